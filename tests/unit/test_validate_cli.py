"""`baton validate` through `baton.cli.main`: exit codes, summary lines, JSON, and no secrets shown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from baton.cli import EX_CONFIG, EX_OK, main

REPO = Path(__file__).parents[2]
BROKEN = Path(__file__).parent / "data" / "broken"


def test_shipped_example_validates(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example inventory/ and baton.yaml pass as shipped, with the defaults of both flags."""
    monkeypatch.chdir(REPO)
    assert EX_OK == main(["validate"])
    assert (
        "inventory/ valid: 8 offices, 30 devices; baton.yaml valid; 4 playbooks, every handover and "
        "handback renders\n"
    ) == capsys.readouterr().out


def test_broken_inventory_exits_78_and_counts_problems(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All problems are printed, one per line, then the count; the exit code is EX_CONFIG."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("BATON_TEST_AUTH", raising=False)
    monkeypatch.delenv("BATON_TEST_UNSET_PASSWORD", raising=False)
    assert EX_CONFIG == main(["validate", "--inventory", str(BROKEN), "--config", str(REPO / "baton.yaml")])
    lines = capsys.readouterr().out.splitlines()
    assert "22 problems found (and 2 warnings)" == lines[-1]
    assert 24 == len(lines[:-1])


def test_json_report_lists_problems_with_place_and_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json gives scripts the verdict, counts and each problem's file, line, message and hint."""
    monkeypatch.delenv("BATON_TEST_AUTH", raising=False)
    assert EX_CONFIG == main(
        ["validate", "--json", "--inventory", str(BROKEN), "--config", str(REPO / "baton.yaml")]
    )
    report = json.loads(capsys.readouterr().out)
    assert (False, 22, 2, None) == (report["valid"], report["errors"], report["warnings"], report["offices"])
    assert {
        "file": f"{BROKEN}/devices/site.yaml",
        "line": 7,
        "where": "devices[0] (a-core-1).snmp",
        "message": "unknown key 'comunity'",
        "hint": "did you mean 'community'?",
        "severity": "error",
    } in report["problems"]


def test_inventory_named_by_the_config_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --inventory, the config's `inventory:` (relative to the config) is validated."""
    shutil.copytree(REPO / "inventory", tmp_path / "net")
    config = (REPO / "baton.yaml").read_text().replace("inventory: inventory", "inventory: net")
    config = config.replace("file:inventory/", "file:net/")
    config = config.replace("playbooks: playbooks", f"playbooks: {REPO / 'playbooks'}")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "baton.yaml").write_text(
        config.replace("file:net/", "file:../net/").replace("inventory: net", "inventory: ../net")
    )
    assert EX_OK == main(["validate", "--config", str(tmp_path / "conf" / "baton.yaml")])
    assert f"{tmp_path}/conf/../net/ valid: 8 offices, 30 devices;" in capsys.readouterr().out


def test_unreadable_and_missing_inputs_are_problems_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing inventory and a config with a YAML syntax error give lines with a place, and exit 78."""
    bad = tmp_path / "baton.yaml"
    bad.write_text("vantage:\n  id: v1\n office: alpha\n")
    assert EX_CONFIG == main(["validate", "--inventory", str(tmp_path / "none"), "--config", str(bad)])
    assert [
        f"{tmp_path}/none: inventory directory does not exist — pass --inventory DIR, or set `inventory:` in"
        " baton.yaml",
        f"{bad}:3: YAML syntax error: expected <block end>, but found '<block mapping start>' —"
        " check indentation"
        " and quoting on this line or the one before",
        "2 problems found",
    ] == capsys.readouterr().out.splitlines()


def test_cross_checks_of_config_against_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The vantage's office must exist, and the poll interval must outlast every SNMP probe."""
    config = (REPO / "baton.yaml").read_text()
    config = (
        config.replace("office: seoul-gwacheon", "office: seoul-gwachon")
        .replace("poll_interval_s: 10 ", "poll_interval_s: 5  ")
        .replace("hold_down_s: 30 ", "hold_down_s: 90 ")
    )
    config = config.replace("file:inventory/", f"file:{REPO}/inventory/")
    config = config.replace("playbooks: playbooks", f"playbooks: {REPO / 'playbooks'}")
    path = tmp_path / "baton.yaml"
    path.write_text(config)
    assert EX_CONFIG == main(["validate", "--inventory", str(REPO / "inventory"), "--config", str(path)])
    out = capsys.readouterr().out.splitlines()
    lines = config.splitlines()
    office_line = lines.index("  office: seoul-gwachon") + 1
    # reported where the first value involved is written
    policy_line = next(i for i, line in enumerate(lines, 1) if line.startswith("  poll_interval_s:"))
    assert [
        f"{path}:{office_line}: vantage.office: unknown office 'seoul-gwachon'"
        " — did you mean 'seoul-gwacheon'?",
        f"{path}:{policy_line}: policy: poll_interval_s (5) is shorter than the SNMP probe time of 10"
        " device(s): timeout_s ×"
        " (retries + 1) = 3 × 2 = 6 s for sw-olt-1 (the longest) — raise poll_interval_s to at"
        " least 6, or lower"
        " snmp timeout_s/retries in the inventory",
        "2 problems found",
    ] == out


def test_no_secret_value_reaches_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Secrets written in clear, or read from credential files, never appear in text or JSON output."""
    inventory = tmp_path / "inv"
    shutil.copytree(REPO / "inventory", inventory)
    groups = inventory / "groups.yaml"
    groups.write_text(
        groups.read_text().replace("community: file:credentials/snmp-community", "community: pl41n")
    )
    (inventory / "credentials" / "snmp-v3-seoul-priv").write_text("")  # resolves, but empty
    for extra in ([], ["--json"]):
        assert EX_CONFIG == main(
            ["validate", *extra, "--inventory", str(inventory), "--config", str(REPO / "baton.yaml")]
        )
        out = capsys.readouterr().out
        assert "a literal secret is not allowed here" in out
        assert "resolves to an empty value" in out
        for secret in ("pl41n", "EXAMPLE-ONLY"):
            assert secret not in out
