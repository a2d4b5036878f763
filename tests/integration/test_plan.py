"""`baton plan` against a real netconfd: the right diff, and running unchanged byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from baton.cli import EX_CONFIG, EX_FAILURE, EX_OK, main
from tests.integration.runner_helpers import PLAYBOOKS, device_for, get_running
from tests.peers.endpoints import SshEndpoint
from tests.peers.netconfd import NetconfdProcess

pytestmark = pytest.mark.peer("netconfd")


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """`baton plan` points structlog at the (captured) stderr; later tests must not inherit it."""
    yield
    structlog.reset_defaults()


def write_inventory(tmp_path: Path, endpoints: list[tuple[str, SshEndpoint]]) -> Path:
    inv = tmp_path / "inventory"
    (inv / "devices").mkdir(parents=True)
    offices = [
        {"id": "gc", "name": "Geumcheon", "region": "seoul", "alternates": ["bb"], "vars": {}},
        {
            "id": "bb",
            "name": "Bangbae",
            "region": "seoul",
            "alternates": ["gc"],
            "vars": {"operator_group": "bb-noc"},
        },
    ]
    (inv / "offices.yaml").write_text(yaml.safe_dump({"offices": offices}))
    devices = [
        {
            "id": device_id,
            "office": "gc",
            "role": "core",
            "address": ep.host,
            "tags": ["netconfd"],
            "host_key": ep.host_key,
            "netconf": {
                "enabled": True,
                "port": ep.port,
                "username": ep.username,
                "private_key": f"file:{ep.private_key}",
            },
        }
        for device_id, ep in endpoints
    ]
    (inv / "devices" / "gc.yaml").write_text(yaml.safe_dump({"devices": devices}))
    return inv


def plan_args(inv: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "plan",
        "gc",
        "--inventory",
        str(inv),
        "--config",
        str(tmp_path / "absent.yaml"),
        "--playbook",
        str(PLAYBOOKS / "netconfd-handover.yaml"),
        *extra,
    ]


def test_plan_shows_the_diff_and_changes_nothing(
    netconfd_device: NetconfdProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON plan has the group in the diff; running is byte-for-byte the same afterwards."""
    device = device_for("gc-nc-1", netconfd_device.endpoint)
    inv = write_inventory(tmp_path, [("gc-nc-1", netconfd_device.endpoint)])
    before = get_running(device, None)
    capsys.readouterr()
    code = main(plan_args(inv, tmp_path, "--json"))
    report = json.loads(capsys.readouterr().out)
    assert EX_OK == code
    assert before == get_running(device, None)
    (entry,) = report["devices"]
    added = [line for line in entry["diff"].splitlines() if line.startswith("+") and "+++" not in line]
    assert "bb" == report["alternate"]
    assert any("<name>bb-noc</name>" in line for line in added)
    assert any("handover plan-" in line for line in added)
    removed = [line for line in entry["diff"].splitlines() if line.startswith("-") and "---" not in line]
    assert [] == [line for line in removed if "<name>" in line]
    assert ["grant-alternate-group", "verify-alternate-group"] == [s["name"] for s in entry["steps"]]
    assert "first of gc's chain" in report["notes"][0]


def test_plan_reports_an_unreachable_device_and_still_shows_the_others(
    netconfd_device: NetconfdProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One device down: exit 1, the other device's diff is still printed."""
    ep = netconfd_device.endpoint
    dead = SshEndpoint("127.0.0.2", 1, ep.username, ep.private_key, ep.known_hosts, ep.host_key)
    inv = write_inventory(tmp_path, [("gc-nc-1", ep), ("gc-nc-2", dead)])
    code = main(plan_args(inv, tmp_path, "--to", "bb"))
    out, err = capsys.readouterr()
    assert EX_FAILURE == code, err
    assert "== gc-nc-1" in out
    assert "<name>bb-noc</name>" in out
    assert "ERROR: netconf connect on gc-nc-2 failed" in out


def test_plan_of_an_invalid_playbook_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A playbook with an unknown step kind is a configuration error."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nkind: handover\ntargets: {office: closed}\nsteps:\n  - {name: x, kind: nope}\n"
    )
    inv = write_inventory(tmp_path, [])
    args = [
        "plan",
        "gc",
        "--inventory",
        str(inv),
        "--config",
        str(tmp_path / "no.yaml"),
        "--playbook",
        str(bad),
    ]
    code = main(args)
    assert EX_CONFIG == code
    assert "unknown step kind 'nope'" in capsys.readouterr().err


def test_plan_without_devices_renders_only(
    netconfd_device: NetconfdProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--no-device renders the steps and contacts nothing (no diff)."""
    inv = write_inventory(tmp_path, [("gc-nc-1", netconfd_device.endpoint)])
    code = main(plan_args(inv, tmp_path, "--no-device", "--json"))
    report = json.loads(capsys.readouterr().out)
    assert EX_OK == code
    assert [None] == [d["diff"] for d in report["devices"]]


@pytest.mark.parametrize(("window_line", "shown"), [("confirm_window_s: 120", "120 s"), ("", "300 s")])
def test_plan_shows_the_window_a_run_would_use(
    netconfd_device: NetconfdProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    window_line: str,
    shown: str,
) -> None:
    """The playbook's window when it sets one, else the policy's (300 s by default): the rule runs
    follow. A playbook without one used to crash the text report."""
    inv = write_inventory(tmp_path, [("gc-nc-1", netconfd_device.endpoint)])
    text = (PLAYBOOKS / "netconfd-handover.yaml").read_text().replace("confirm_window_s: 300", window_line)
    playbook = tmp_path / "windowed.yaml"
    playbook.write_text(text)
    args = [*plan_args(inv, tmp_path, "--no-device")]
    args[args.index("--playbook") + 1] = str(playbook)
    assert EX_OK == main(args)
    assert f"confirm window {shown} (worst case" in capsys.readouterr().out
    assert EX_OK == main([*args, "--json"])
    assert float(shown.split()[0]) == json.loads(capsys.readouterr().out)["confirm_window_s"]
