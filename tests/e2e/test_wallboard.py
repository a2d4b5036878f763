"""The NOC wallboard in a real browser (Debian's headless Chromium) while the lab runs a handover.

One lab (4 offices in 2 regions, 4 devices each) and the daemon as a process, its API also on
loopback TCP with a token. The browser is signed in the way an operator signs in a wall screen (a
login URL asked for on the unix socket), then `baton handover seoul-geumcheon --reason … --yes`
runs as its own process while the test reads the page's DOM: the tile goes HANDING OVER then
HANDED OVER, per-device progress appears, without the page ever reloading. Screenshots of each
stage are saved under $TMPDIR and their paths printed.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.apiclient import ApiClient
from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import LabProcess, free_port
from tests.peers.browser import Browser, browser

pytestmark = pytest.mark.slow

OFFICES = "seoul-geumcheon,seoul-bangbae,busan-jung,busan-haeundae"
OFFICE, ALTERNATE = "seoul-geumcheon", "seoul-bangbae"
TOKEN = "e2e-wallboard-" + os.urandom(12).hex()
RUN_TIMEOUT_S = 120.0
PAGE_TIMEOUT_S = 30.0
SLOW_ANSWER_S = 1.0  # every NETCONF answer of the office's core router: a run that lasts seconds

# What the page shows, read from its DOM (data attributes and the text a person sees).
READ_PAGE = """
const tiles = {};
for (const t of document.querySelectorAll('.tile[data-office]')) {
  tiles[t.dataset.office] = {
    phase: t.dataset.phase, verdict: t.dataset.verdict,
    region: t.closest('.region').dataset.region, text: t.innerText,
  };
}
const runs = [...document.querySelectorAll('.run[data-run]')].map((r) => ({
  id: r.dataset.run, office: r.dataset.runOffice, text: r.innerText,
  devices: [...r.querySelectorAll('li[data-device]')].map((d) => ({
    id: d.dataset.device, status: d.dataset.status, text: d.innerText,
  })),
}));
const recent = [...document.querySelectorAll('[data-recent-run]')].map((li) => li.innerText);
return {
  tiles, runs, recent,
  connection: document.getElementById('connection').dataset.state,
  signedOut: !document.getElementById('signed-out').hidden,
  approvalsShown: !document.getElementById('approvals').hidden,
  vantagesShown: !document.getElementById('vantages').hidden,
  who: document.getElementById('who').innerText,
};
"""


def _prepare(lab: LabProcess, ports: dict[str, Any]) -> None:
    """The API also on loopback TCP, where the browser reaches it, with a token."""
    token_file = lab.dir / "inventory" / "credentials" / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    ports["api"] = free_port()
    data = yaml.safe_load(lab.config_path.read_text())
    data["api"]["tcp_listen"] = f"127.0.0.1:{ports['api']}"
    data["api"]["tokens"] = ["file:inventory/credentials/api-token"]
    lab.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    with office_lab(
        tmp_path_factory.mktemp("wallboard"),
        offices=OFFICES,
        devices_per_office=4,
        policy={"storm_max_ratio": 0.5},
        prepare=_prepare,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def shots() -> Path:
    """Where the screenshots go: a new directory under $TMPDIR, kept for a person to look at."""
    return Path(tempfile.mkdtemp(prefix="baton-wallboard-", dir=tempfile.gettempdir()))


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _page(page: Browser) -> dict[str, Any]:
    seen: dict[str, Any] = page.run(READ_PAGE)
    return seen


def _sign_in(e2e: E2E, page: Browser, ttl_s: float = 600.0) -> dict[str, Any]:
    """A login URL asked for on the unix socket (as the operator), opened in the browser."""
    issued: dict[str, Any] = ApiClient(socket_path=e2e.daemon.socket).post(
        "/v1/wallboard/session", {"ttl_s": ttl_s}
    )
    page.open(issued["url"])
    page.wait_for(lambda: len(_page(page)["tiles"]) == 4, PAGE_TIMEOUT_S, "the page shows 4 offices")
    return issued


def test_the_page_is_closed_without_a_session(e2e: E2E, tmp_path: Path) -> None:
    """A browser without a session gets 401 on the page and on its events, not the page."""
    base = f"http://127.0.0.1:{e2e.ports['api']}"
    with browser(tmp_path / "browser") as page:
        for path in ("/v1/wallboard/", "/v1/wallboard/events", "/v1/wallboard/login?ticket=guess"):
            page.open(base + path)
            text = page.text()
            assert '"error"' in text, (path, text)
            assert "BATON" not in text, path
        assert [] == page.cookies()


def test_the_wallboard_follows_a_declared_handover_live(
    e2e: E2E, tmp_path: Path, shots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiles by region; the office goes HANDING OVER with per-device progress, then HANDED OVER,
    live: the page is never reloaded. The operator's sentence and the alternate are on the tile."""
    daemon, lab = e2e.daemon, e2e.lab
    saved: list[Path] = []
    with browser(tmp_path / "browser") as page:
        issued = _sign_in(e2e, page)
        assert issued["url"].startswith(f"http://127.0.0.1:{e2e.ports['api']}/v1/wallboard/login?ticket=")
        [cookie] = page.cookies()
        assert (True, "Strict", "/v1/wallboard") == (cookie["httpOnly"], cookie["sameSite"], cookie["path"])
        # The page must follow what happens without reloading: a reload would drop this marker.
        page.run("window.__batonMarker = 'not reloaded'; return true;")

        seen = page.wait_for(
            lambda: (
                (s := _page(page))["connection"] == "live"
                and all(t["verdict"] == "HEALTHY" for t in s["tiles"].values())
                and s
            ),
            PAGE_TIMEOUT_S,
            "every office HEALTHY on a live page",
        )
        assert {
            "seoul-geumcheon": ("seoul", "OPEN"),
            "seoul-bangbae": ("seoul", "OPEN"),
            "busan-jung": ("busan", "OPEN"),
            "busan-haeundae": ("busan", "OPEN"),
        } == {office: (t["region"], t["phase"]) for office, t in seen["tiles"].items()}
        tile = seen["tiles"][OFFICE]["text"]
        assert "OPEN" in tile
        assert "HEALTHY" in tile
        assert "alternate: Seoul Bangbae" in tile
        assert [] == seen["runs"]
        assert (False, False) == (seen["approvalsShown"], seen["vantagesShown"])  # not reported yet
        saved.append(page.screenshot(shots / "1-all-open.png"))

        lab("slow", device=f"{OFFICE}-core1", seconds=SLOW_ANSWER_S)
        handover = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "baton.cli",
                "handover",
                OFFICE,
                "--reason",
                "sealed for disinfection",
                "--yes",
                "--socket",
                str(daemon.socket),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            handing = page.wait_for(
                lambda: (s := _page(page))["tiles"][OFFICE]["phase"] == "HANDING_OVER" and s,
                PAGE_TIMEOUT_S,
                f"{OFFICE} HANDING_OVER on the page",
            )
            tile = handing["tiles"][OFFICE]["text"]
            assert "HANDING OVER" in tile
            assert "operated from Seoul Bangbae" in tile
            assert "sealed for disinfection" in tile

            progress = page.wait_for(
                lambda: (s := _page(page))["runs"] and s["runs"][0]["devices"] and s,
                PAGE_TIMEOUT_S,
                "per-device progress of the run",
            )
            [run] = progress["runs"]
            assert OFFICE == run["office"]
            assert "HANDOVER Seoul Geumcheon" in run["text"]
            saved.append(page.screenshot(shots / "2-handing-over.png"))

            # Follow the run on the page until the tile says HANDED OVER; every device row seen.
            statuses: dict[str, set[str]] = {}
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                seen = _page(page)
                for card in seen["runs"]:
                    for device in card["devices"]:
                        statuses.setdefault(device["id"], set()).add(device["status"])
                if seen["tiles"][OFFICE]["phase"] == "HANDED_OVER":
                    break
                assert time.monotonic() < deadline, f"{OFFICE} not HANDED_OVER on the page: {seen}"
                time.sleep(0.1)
            output, _ = handover.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if handover.poll() is None:
                handover.kill()
                handover.wait(timeout=10)
            lab("slow", device=f"{OFFICE}-core1", seconds=0.0)
        assert 0 == handover.returncode, output.decode(errors="replace")

        # The handover's routers were shown with their progress (OLTs follow their router).
        assert {f"{OFFICE}-core1", f"{OFFICE}-agg1"} <= set(statuses), statuses
        assert "running" in statuses[f"{OFFICE}-core1"], statuses
        tile = seen["tiles"][OFFICE]["text"]
        assert "HANDED OVER" in tile
        assert "operated from Seoul Bangbae" in tile
        assert f"declared closed by {_me()}: sealed for disinfection" in tile
        assert ALTERNATE == daemon.office(OFFICE)["alternate"]
        done = page.wait_for(
            lambda: (s := _page(page))["recent"] and not s["runs"] and s,
            PAGE_TIMEOUT_S,
            "the finished run among recent runs",
        )
        assert any("handover Seoul Geumcheon → Seoul Bangbae OK" in line for line in done["recent"]), done
        assert "not reloaded" == page.run("return window.__batonMarker;")
        saved.append(page.screenshot(shots / "3-handed-over.png"))

        # Signing out ends the stream: the page says so, and the cookie opens nothing any more.
        assert 200 == page.run(
            "return fetch('/v1/wallboard/logout', {method: 'POST'}).then((r) => r.status);"
        )
        signed_out = page.wait_for(
            lambda: (s := _page(page))["signedOut"] and s, PAGE_TIMEOUT_S, "the signed-out notice"
        )
        assert "signed-out" == signed_out["connection"]
        saved.append(page.screenshot(shots / "4-signed-out.png"))
        page.open(f"http://127.0.0.1:{e2e.ports['api']}/v1/wallboard/")
        assert '"error"' in page.text()

    # Neither the login ticket nor the session id is written to the daemon's log.
    ticket = issued["path"].partition("ticket=")[2]
    assert ticket not in daemon.log.read_text(errors="replace")
    assert cookie["value"] not in daemon.log.read_text(errors="replace")
    with capsys.disabled():
        print("\nwallboard screenshots:\n" + "\n".join(f"  {path}" for path in saved))
