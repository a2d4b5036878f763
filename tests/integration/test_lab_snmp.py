"""The lab's SNMP agent and traps as Baton sees them: per-address devices, power, links, cuts."""

from __future__ import annotations

import subprocess

import asyncssh
import pytest

from baton.lab.device import LabDevice
from baton.lab.network import Lab, noc_source
from baton.lab.traps import (
    OID_LAB_TRAP_OFFICE,
    TRAP_COLD_START,
    TRAP_LINK_DOWN,
    TRAP_LINK_UP,
    TRAP_POWER_FAIL,
)
from tests.lab_fixtures import RunningLab

SYS_NAME = "1.3.6.1.2.1.1.5.0"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"
LAB_OFFICE_POWER = "1.3.6.1.4.1.8072.9999.4242.1.1.0"


def dotted(oid: tuple[int, ...]) -> str:
    return ".".join(map(str, oid))


def snmpget(
    running: RunningLab, device: LabDevice, *oids: str, source: str | None = None
) -> subprocess.CompletedProcess[str]:
    assert running.lab.secrets is not None
    argv = ["snmpget", "-m", "", "-Oqv", "-t", "0.5", "-r", "0", "-v2c", "-c", running.lab.secrets.community]
    if source is not None:
        argv.append(f"--clientaddr={source}")  # the request leaves from this address
    argv += [f"{device.address}:{running.lab.config.snmp_port}", *oids]
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)


def values(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert 0 == result.returncode, result.stderr
    return [line.strip('"') for line in result.stdout.splitlines()]


def uptime_ticks(running: RunningLab, device: LabDevice) -> int:
    # -Oqv prints TimeTicks as "0:0:00:01.23"; -Ot asks for the raw number
    assert running.lab.secrets is not None
    argv = ["snmpget", "-m", "", "-Oqvt", "-t", "0.5", "-r", "0", "-v2c", "-c", running.lab.secrets.community]
    result = subprocess.run(
        [*argv, f"{device.address}:{running.lab.config.snmp_port}", SYS_UPTIME],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    return int(result.stdout.strip())


async def ssh_login(running: RunningLab, device: LabDevice, source: str = "127.0.0.1") -> str:
    known = asyncssh.import_known_hosts(
        f"[{device.address}]:{running.lab.config.ssh_port} {running.lab.host_key(device.id)}\n"
    )
    async with asyncssh.connect(
        device.address,
        running.lab.config.ssh_port,
        local_addr=(source, 0),
        username="baton",
        client_keys=[running.lab.client_key],
        known_hosts=known,
        connect_timeout=5,
    ) as conn:
        return conn.get_extra_info("server_version") or ""


def test_each_address_answers_as_its_own_device(lab_network: RunningLab) -> None:
    """Two devices on two addresses (same port) each answer with their own sysName and office."""
    a = lab_network.lab.device("seoul-geumcheon-core1")
    b = lab_network.lab.device("busan-jung-olt01")
    assert [a.id, "seoul-geumcheon"] == values(snmpget(lab_network, a, SYS_NAME, "1.3.6.1.2.1.1.6.0"))
    assert [b.id, "busan-jung"] == values(snmpget(lab_network, b, SYS_NAME, "1.3.6.1.2.1.1.6.0"))


async def test_power_off_silences_snmp_and_ssh_and_power_on_reboots(lab_network: RunningLab) -> None:
    """Power-off: UPS alarm trap, then no SNMP and no SSH; power-on: coldStart, sysUpTime restarts."""
    core = lab_network.lab.device("busan-jung-core1")
    other = lab_network.lab.device("seoul-geumcheon-core1")
    assert "" != await ssh_login(lab_network, core)

    async def age(lab: Lab) -> None:
        lab.device(core.id).boot_time -= 1000.0  # up for 1000 s, so a restart shows without timing

    lab_network.call(age)
    assert uptime_ticks(lab_network, core) >= 100_000

    lab_network.call(lambda lab: lab.power_off("busan-jung"))

    alarm = lab_network.traps.wait_for(dotted(TRAP_POWER_FAIL), source=core.address)
    assert "busan-jung" == alarm.var_binds[dotted(OID_LAB_TRAP_OFFICE)]
    assert "Timeout" in snmpget(lab_network, core, SYS_NAME).stderr
    with pytest.raises((asyncssh.Error, OSError)):
        await ssh_login(lab_network, core)
    assert [other.id] == values(snmpget(lab_network, other, SYS_NAME))  # other offices unaffected

    lab_network.call(lambda lab: lab.power_on("busan-jung"))

    lab_network.traps.wait_for(dotted(TRAP_COLD_START), source=core.address)
    assert [core.id] == values(snmpget(lab_network, core, SYS_NAME))
    assert uptime_ticks(lab_network, core) < 100_000  # counts from the new boot
    assert "" != await ssh_login(lab_network, core)


def test_link_down_sends_trap_and_shows_in_if_oper_status(lab_network: RunningLab) -> None:
    """link-down flips ifOperStatus to down(2) and sends linkDown with the ifIndex."""
    olt = lab_network.lab.device("seoul-geumcheon-olt01")
    lab_network.call(lambda lab: lab.link_down(olt.id, 2))
    trap = lab_network.traps.wait_for(dotted(TRAP_LINK_DOWN), source=olt.address)
    assert "2" == trap.var_binds[f"{IF_OPER_STATUS}.2"]
    assert ["1", "2", "1"] == values(snmpget(lab_network, olt, *(f"{IF_OPER_STATUS}.{i}" for i in (1, 2, 3))))


def test_cut_makes_office_unreachable_until_uncut(lab_network: RunningLab) -> None:
    """A cut uplink: the office's devices time out, and come back after uncut with no reboot."""
    agg = lab_network.lab.device("seoul-geumcheon-agg1")
    lab_network.call(lambda lab: lab.cut("seoul-geumcheon"))
    assert "Timeout" in snmpget(lab_network, agg, SYS_NAME).stderr
    lab_network.call(lambda lab: lab.uncut("seoul-geumcheon"))
    assert [agg.id, "1"] == values(snmpget(lab_network, agg, SYS_NAME, LAB_OFFICE_POWER))


async def test_a_path_cut_from_one_source_hides_the_office_from_that_source_only(
    lab_network: RunningLab,
) -> None:
    """`cut OFFICE --from ADDRESS` (one vantage's uplink): SNMP and SSH from that address get
    nothing, from any other address the office answers as before; uncut --from restores it."""
    office = "seoul-geumcheon"
    agg = lab_network.lab.device(f"{office}-agg1")
    cut_off, other = "127.0.0.13", "127.0.0.11"
    lab_network.call(lambda lab: lab.cut(office, cut_off))
    assert "Timeout" in snmpget(lab_network, agg, SYS_NAME, source=cut_off).stderr
    assert [agg.id] == values(snmpget(lab_network, agg, SYS_NAME, source=other))
    assert [agg.id] == values(snmpget(lab_network, agg, SYS_NAME))  # from 127.0.0.1
    with pytest.raises((asyncssh.Error, OSError)):
        await ssh_login(lab_network, agg, source=cut_off)
    assert "" != await ssh_login(lab_network, agg, source=other)
    offices = {o["id"]: o for o in lab_network.lab.status()["offices"]}
    assert (False, [cut_off]) == (offices[office]["cut"], offices[office]["cut_from"])
    assert [] == offices["busan-jung"]["cut_from"]
    assert agg.faults.reachable  # it still runs, and answers everyone else

    lab_network.call(lambda lab: lab.uncut(office, cut_off))
    assert [agg.id] == values(snmpget(lab_network, agg, SYS_NAME, source=cut_off))
    assert "" != await ssh_login(lab_network, agg, source=cut_off)


def test_traps_are_not_sent_over_a_cut_path(lab_network: RunningLab) -> None:
    """A path cut from the trap collector's address: the device's traps do not reach it; once
    restored, they do."""
    olt = lab_network.lab.device("seoul-geumcheon-olt01")
    collector = lab_network.traps.address[0]
    lab_network.call(lambda lab: lab.cut(olt.office, collector))
    lab_network.call(lambda lab: lab.link_down(olt.id, 2))
    lab_network.call(lambda lab: lab.uncut(olt.office, collector))
    lab_network.call(lambda lab: lab.link_up(olt.id, 2))
    lab_network.traps.wait_for(dotted(TRAP_LINK_UP), source=olt.address)
    # Sent in order over loopback: a linkDown that had gone out would have arrived first.
    assert [] == [t for src, t in lab_network.traps.seen if t.trap_oid == dotted(TRAP_LINK_DOWN)]


async def test_ssh_acl_admits_home_noc_and_refuses_other_office(lab_network: RunningLab) -> None:
    """The initial mgmt ACL admits the home office's NOC prefix and refuses another office's."""
    core = lab_network.lab.device("busan-jung-core1")
    home = noc_source(lab_network.lab.plan, "busan-jung")
    foreign = noc_source(lab_network.lab.plan, "seoul-geumcheon")
    assert "" != await ssh_login(lab_network, core, source=home)
    with pytest.raises((asyncssh.Error, OSError)):
        await ssh_login(lab_network, core, source=foreign)
