"""The Grafana dashboard (grafana/baton.json) against Debian's real Prometheus.

Prometheus scrapes a daemon every second while the daemon watches the lab through an automatic
closure, the handover, the devices' return (coldStart traps, handback proposed) and an operator's
handback; then every query of the dashboard (each panel target, each variable, each annotation)
is evaluated over that time range through Prometheus' HTTP API, with Grafana's variables
substituted as Grafana would ("All" for the template variables, $__rate_interval from the scrape
interval): each must parse and return data, with at least one number that is not NaN.

Grafana itself is not in Debian, so the model's shape is checked separately: unique panel ids,
panels inside the 24-column grid and not overlapping, every target on the dashboard's datasource
variable, every variable used defined, and the provisioning examples pointing where the Debian
package installs the dashboard.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import free_port, wait_for
from tests.peers.util import PeerProcess, require_binary

pytestmark = [pytest.mark.slow, pytest.mark.peer("prometheus")]

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARD = GRAFANA / "baton.json"
SCRAPE_INTERVAL_S = 1
OFFICE, ALTERNATE = "busan-jung", "busan-haeundae"
# agg1 is one of busan-jung's two critical devices (ratio 0.5 → DOWN); the OLTs hang off it.
DARK = ("busan-jung-agg1", "busan-jung-olt01", "busan-jung-olt02")
PHASE_TIMEOUT_S = 90.0
PROMETHEUS_READY_S = 30.0
# Grafana's own variables, as Grafana fills them for a 1 s scrape interval and a 1 s step:
# $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval", "__interval_ms", "__range_s"}
VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


@dataclass(frozen=True)
class Query:
    where: str  # "panel 'Office phase over time' target A"
    expr: str


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every PromQL expression of the dashboard: panel targets and annotations."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append(Query(f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append(Query(f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def template_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def substitute(expr: str, dashboard: dict[str, Any], range_s: int) -> str:
    """The expression as Grafana sends it with every template variable on All."""
    variables = template_variables(dashboard)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "__rate_interval":
            return RATE_INTERVAL
        if name == "__range":
            return f"{range_s}s"
        if name == "__range_s":
            return str(range_s)
        if name == "__interval":
            return f"{SCRAPE_INTERVAL_S}s"
        if name == "__interval_ms":
            return str(SCRAPE_INTERVAL_S * 1000)
        variable = variables[name]
        assert variable["includeAll"], f"${name} has no All value to test with"
        return str(variable.get("allValue") or ".*")

    return VARIABLE.sub(value, expr)


# --- the dashboard model ---------------------------------------------------------------------------


def test_dashboard_model_is_well_formed() -> None:
    """Unique ids, panels on the 24-column grid without overlap, targets on the datasource variable."""
    dashboard = load_dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in dashboard, key
    every = panels(dashboard)
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"], panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']!r} has no description"
        assert datasource == panel["datasource"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids, panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(datasource == t["datasource"] for t in panel["targets"]), panel["title"]
    variables = template_variables(dashboard)
    assert "datasource" == variables["datasource"]["type"]
    assert "prometheus" == variables["datasource"]["query"]
    used = {m.group(1) for q in queries(dashboard) for m in VARIABLE.finditer(q.expr)}
    used |= {m.group(1) for v in variables.values() for m in VARIABLE.finditer(v.get("definition", ""))}
    assert set() == used - set(variables) - BUILTIN_VARIABLES


def test_provisioning_examples_match_the_dashboard_and_the_package() -> None:
    """The datasource example is the dashboard's default; the dashboards example reads where the
    Debian package installs baton.json."""
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "baton.yaml").read_text())
    (source,) = datasources["datasources"]
    assert "prometheus" == source["type"]
    default = template_variables(load_dashboard())["datasource"]["current"]["value"]
    assert default == source["uid"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "baton.yaml").read_text())
    (provider,) = providers["providers"]
    installed = (REPO / "debian" / "baton.install").read_text()
    target = re.search(r"^grafana/baton\.json\s+(\S+)$", installed, re.M)
    assert target is not None, "debian/baton.install does not ship grafana/baton.json"
    assert Path("/", target.group(1)) == Path(provider["options"]["path"])


# --- against Prometheus ------------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping one target every second."""

    def __init__(self, base: Path, target: str) -> None:
        binary = require_binary("prometheus", "prometheus")
        base.mkdir(parents=True, exist_ok=True)
        config = base / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                        "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                    },
                    "scrape_configs": [{"job_name": "baton", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = PeerProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            base / "prometheus.log",
        )

    def start(self) -> None:
        self.process.spawn()
        self.process.wait_ready(self._ready, PROMETHEUS_READY_S, "/-/ready answers")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return body

    def stop(self) -> None:
        self.process.stop(timeout_s=15.0)


@dataclass
class Scraped:
    e2e: E2E
    prometheus: Prometheus
    start: float  # Unix time of the first sample
    end: float


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """A daemon watching the lab through a handover and a handback, scraped by Prometheus."""
    base = tmp_path_factory.mktemp("dashboard")
    with office_lab(
        base,
        offices=f"{OFFICE},{ALTERNATE}",
        devices_per_office=4,
        policy={"storm_max_ratio": 0.5},  # one office DOWN out of two is not a storm here
    ) as e2e:
        prometheus = Prometheus(base / "prometheus", f"127.0.0.1:{e2e.ports['metrics']}")
        try:
            prometheus.start()
            # Target discovery is throttled to 5 s: the first sample comes after about 6 s.
            first = wait_for(
                lambda: prometheus.api("query", query='up{job="baton"} == 1')["data"]["result"],
                30.0,
                "Prometheus' first scrape of the daemon",
                interval_s=0.5,
            )
            start = float(first[0]["value"][0])
            lab, daemon = e2e.lab, e2e.daemon
            for device in DARK:
                lab("device_down", device=device)
            daemon.wait_phase(OFFICE, "HANDED_OVER", PHASE_TIMEOUT_S)
            for device in DARK:
                lab("device_up", device=device)  # they reboot: coldStart traps
            proposed = f'baton_alert_active{{alert="handback_proposed", office="{OFFICE}"}} == 1'
            wait_for(
                lambda: prometheus.api("query", query=proposed)["data"]["result"],
                PHASE_TIMEOUT_S,
                "Prometheus to see the handback proposed once the office is healthy again",
                interval_s=0.5,
            )
            result = daemon.cli("handback", OFFICE, "--reason", "power restored", "--yes")
            assert 0 == result.code, result
            daemon.wait_phase(OFFICE, "OPEN", PHASE_TIMEOUT_S)
            time.sleep(3 * SCRAPE_INTERVAL_S)  # the last phase change reaches Prometheus
            yield Scraped(e2e, prometheus, start, time.time())
        finally:
            prometheus.stop()
            shutil.rmtree(base / "prometheus" / "data", ignore_errors=True)


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _t, v in series.get("values", [])]


@pytest.mark.timeout(600)  # the drill runs in this test's setup
def test_every_dashboard_query_returns_data(scraped: Scraped) -> None:
    """Each panel target and annotation parses and returns series with numbers over the drill."""
    dashboard = load_dashboard()
    range_s = max(1, math.ceil(scraped.end - scraped.start))
    problems = []
    for query in queries(dashboard):
        expr = substitute(query.expr, dashboard, range_s)
        assert "$" not in expr, f"{query.where}: unsubstituted variable in {expr}"
        answer = scraped.prometheus.api(
            "query_range",
            query=expr,
            start=f"{scraped.start:.3f}",
            end=f"{scraped.end:.3f}",
            step=f"{SCRAPE_INTERVAL_S}s",
        )
        if answer.get("status") != "success":
            problems.append(f"{query.where}: {answer.get('errorType')}: {answer.get('error')}\n  {expr}")
            continue
        numbers = _numbers(answer["data"]["result"])
        if not any(math.isfinite(n) for n in numbers):
            problems.append(f"{query.where}: no data ({len(numbers)} samples, none a number)\n  {expr}")
    assert [] == problems, "\n".join(problems)


def test_every_template_variable_has_values(scraped: Scraped) -> None:
    """label_values(...) of every query variable finds values (Grafana's dropdowns are not empty)."""
    dashboard = load_dashboard()
    for name, variable in template_variables(dashboard).items():
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert match is not None, f"${name}: {variable['definition']}"
        selector = substitute(match.group(1), dashboard, 60)
        answer = scraped.prometheus.api(
            "series", **{"match[]": selector, "start": f"{scraped.start:.3f}", "end": f"{scraped.end:.3f}"}
        )
        assert "success" == answer["status"], answer
        values = {series[match.group(2)] for series in answer["data"] if match.group(2) in series}
        assert values, f"${name}: no values for {variable['definition']}"
    phases = scraped.prometheus.api("series", **{"match[]": "baton_office_phase"})["data"]
    offices = {series["office"] for series in phases}
    assert {OFFICE, ALTERNATE} == offices


def test_drill_shows_in_the_phase_timeline(scraped: Scraped) -> None:
    """The phase panel shows the office OPEN, then HANDED_OVER, then OPEN again (through its value map)."""
    dashboard = load_dashboard()
    panel = next(p for p in panels(dashboard) if p["title"] == "Office phase over time")
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    expr = substitute(panel["targets"][0]["expr"], dashboard, 60)
    answer = scraped.prometheus.api(
        "query_range", query=expr, start=f"{scraped.start:.3f}", end=f"{scraped.end:.3f}", step="1s"
    )
    (series,) = [s for s in answer["data"]["result"] if s["metric"].get("office") == OFFICE]
    seen: list[str] = []
    for _t, value in series["values"]:
        phase = mapping[str(int(float(value)))]["text"]
        if not seen or seen[-1] != phase:
            seen.append(phase)
    # (a run shorter than a scrape interval leaves no HANDING_OVER/HANDING_BACK sample)
    assert "OPEN" == seen[0]
    assert "HANDED_OVER" in seen
    assert "OPEN" == seen[-1]
