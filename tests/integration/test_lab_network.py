"""A running lab driven like an operator would: `baton lab ...` through the control socket."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from baton.cli import EX_FAILURE, EX_OK, EX_UNAVAILABLE, main
from baton.config import check_all
from baton.lab.control import ControlError, request
from baton.lab.inventory_writer import write_inventory
from tests.lab_fixtures import RunningLab


def lab_cli(running: RunningLab, *args: str) -> int:
    return main(["lab", "--dir", str(running.dir), *args])


def printed_json(out: str) -> Any:
    """The JSON document the command printed last (the in-process lab's log lines come before it)."""
    return json.loads(out[out.rindex("\n{") + 1 :] if not out.startswith("{") else out)


def test_status_lists_offices_devices_and_addresses(
    lab_network: RunningLab, capsys: pytest.CaptureFixture[str]
) -> None:
    """`baton lab status --json` shows both offices and every device with its address."""
    assert EX_OK == lab_cli(lab_network, "--json", "status")
    status = printed_json(capsys.readouterr().out)
    assert ["seoul-geumcheon", "busan-jung"] == [o["id"] for o in status["offices"]]
    expected = {d.id: d.address for d in lab_network.lab.devices.values()}
    assert expected == {d["id"]: d["address"] for d in status["devices"]}


def test_fault_commands_change_the_lab(lab_network: RunningLab, capsys: pytest.CaptureFixture[str]) -> None:
    """power-off, cut, slow, refuse-commits, drop-session and link-down reach the devices' faults."""
    olt = "seoul-geumcheon-olt01"
    assert EX_OK == lab_cli(lab_network, "power-off", "busan-jung")
    assert EX_OK == lab_cli(lab_network, "cut", "seoul-geumcheon")
    assert EX_OK == lab_cli(lab_network, "slow", olt, "1.5")
    assert EX_OK == lab_cli(lab_network, "refuse-commits", olt, "on")
    assert EX_OK == lab_cli(lab_network, "drop-session", olt)
    assert EX_OK == lab_cli(lab_network, "link-down", olt, "3")
    capsys.readouterr()
    assert EX_OK == lab_cli(lab_network, "--json", "show", olt)
    shown = printed_json(capsys.readouterr().out)
    assert ["cut", "slow 1.5s", "refuse-commits", "drop-mid-rpc", "if3-down"] == shown["faults"]
    assert [False] * 3 == [d.faults.powered for d in lab_network.lab.office_devices("busan-jung")]

    assert EX_OK == lab_cli(lab_network, "power-on", "busan-jung")
    assert EX_OK == lab_cli(lab_network, "uncut", "seoul-geumcheon")
    assert all(d.faults.reachable for d in lab_network.lab.devices.values())


def test_power_off_with_ups_keeps_those_roles_up(lab_network: RunningLab) -> None:
    """`power-off --ups core` darkens all but the core router; power-on boots only the dark ones."""
    devices = {d.role: d for d in lab_network.lab.office_devices("busan-jung")}
    core_boot = devices["core"].boot_time
    assert EX_OK == lab_cli(lab_network, "power-off", "busan-jung", "--ups", "core")
    assert {"core": True, "agg": False, "olt": False} == {r: d.faults.powered for r, d in devices.items()}

    assert EX_OK == lab_cli(lab_network, "power-on", "busan-jung")
    assert all(d.faults.powered for d in devices.values())
    assert core_boot == devices["core"].boot_time  # the UPS kept it up: no reboot
    with pytest.raises(ControlError, match="unknown role"):
        request(lab_network.dir, "power_off", office="busan-jung", ups=["dc"])
    assert all(d.faults.powered for d in devices.values())


def test_cut_from_one_source_shows_and_is_restored(
    lab_network: RunningLab, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cut OFFICE --from ADDRESS` shows in status and show; `uncut OFFICE --from ADDRESS`
    restores that path, plain `uncut` every path; an address that is not one is refused."""
    office = "seoul-geumcheon"
    assert EX_OK == lab_cli(lab_network, "cut", office, "--from", "127.0.0.13")
    assert EX_OK == lab_cli(lab_network, "cut", office, "--from", "127.0.0.12")
    capsys.readouterr()
    assert EX_OK == lab_cli(lab_network, "status")
    out = capsys.readouterr().out
    assert "cut from 127.0.0.12, 127.0.0.13" in out
    assert EX_OK == lab_cli(lab_network, "--json", "show", f"{office}-core1")
    shown = printed_json(capsys.readouterr().out)
    assert (["cut from 127.0.0.12", "cut from 127.0.0.13"], True) == (shown["faults"], shown["reachable"])

    assert EX_OK == lab_cli(lab_network, "uncut", office, "--from", "127.0.0.13")
    assert {"127.0.0.12"} == lab_network.lab.device(f"{office}-core1").faults.cut_from
    assert EX_OK == lab_cli(lab_network, "uncut", office)
    assert all(not d.faults.cut_from for d in lab_network.lab.devices.values())
    capsys.readouterr()
    assert EX_FAILURE == lab_cli(lab_network, "cut", office, "--from", "vantage-3")
    assert ["baton lab: not an IP address: 'vantage-3'"] == capsys.readouterr().err.splitlines()


def test_show_prints_running_mgmt(lab_network: RunningLab, capsys: pytest.CaptureFixture[str]) -> None:
    """`show` prints the device's running mgmt config: home NOC and Baton in the ACL, trap target."""
    assert EX_OK == lab_cli(lab_network, "show", "busan-jung-core1")
    out = capsys.readouterr().out
    host, port = lab_network.traps.address
    assert "acl: busan-jung=127.10.2.0/24, baton=127.0.0.0/24" in out
    assert f"trap targets: {host}:{port}" in out


def test_unknown_device_is_one_line_error(
    lab_network: RunningLab, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown device: exit 1 and one line on stderr naming it."""
    assert EX_FAILURE == lab_cli(lab_network, "slow", "no-such-device", "1")
    err = capsys.readouterr().err
    assert ["baton lab: no device 'no-such-device' in the lab"] == err.splitlines()


def test_no_lab_running_exits_69(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Talking to a directory where no lab runs: exit 69 and one line saying so."""
    assert EX_UNAVAILABLE == main(["lab", "--dir", str(tmp_path), "status"])
    assert 1 == len(capsys.readouterr().err.splitlines())


def test_control_socket_rejects_bad_requests(lab_network: RunningLab) -> None:
    """Unknown commands and missing arguments are refused with a reason, not a crash."""
    with pytest.raises(ControlError, match="unknown command"):
        request(lab_network.dir, "explode")
    with pytest.raises(ControlError, match="missing argument 'office'"):
        request(lab_network.dir, "power_off")
    assert "busan-jung" == request(lab_network.dir, "status")["offices"][1]["id"]


def test_written_inventory_validates(lab_network: RunningLab) -> None:
    """The inventory and baton.yaml written for the lab pass Baton's own validation."""
    inventory = write_inventory(lab_network.lab)
    result = check_all(inventory, lab_network.dir / "baton.yaml")
    assert [] == [str(p) for p in result.problems if p.severity == "error"]
    assert result.is_valid
    assert EX_OK == main(
        ["validate", "--inventory", str(inventory), "--config", str(lab_network.dir / "baton.yaml")]
    )


def test_written_secrets_are_private(lab_network: RunningLab) -> None:
    """Credential files are 0600 in a 0700 directory, and pinned host keys match the devices'."""
    inventory = write_inventory(lab_network.lab)
    creds = inventory / "credentials"
    assert 0o700 == stat.S_IMODE(creds.stat().st_mode)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in creds.iterdir() if not p.name.endswith(".pub")}
    assert dict.fromkeys(modes, 0o600) == modes
    text = (inventory / "devices" / "busan-jung.yaml").read_text()
    assert lab_network.lab.host_key("busan-jung-core1") in text
