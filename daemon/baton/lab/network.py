"""The lab network: offices of simulated devices on loopback addresses, in one process.

Theory of operation. `build_plan` turns a topology spec (offices, devices per office) into a
pure `LabPlan`: every device's id, role, parent, 127.x address and interfaces, every office's
NOC prefix. `Lab` brings a plan to life: one `LabDevice` per planned device (its NETCONF
datastore seeded with the home office's management plane), one SNMP agent for all of them
(`lab.snmp_agent`), one NETCONF/SSH listener per device (`lab.netconf_server`, when present) and
the trap sender. Faults only flip fields of `LabDevice.faults` / interfaces; every protocol front
end reads those on each request, so a fault takes effect on the next packet.

Address plan (all on 127.0.0.0/8, which Linux routes to `lo`, so nothing needs configuring):

    device d of office o   127.(20 + (d-1) // 250).o.((d-1) % 250 + 1)   (o = 1..250)
    office o's NOC         127.10.o.0/24 (a client "in" that office binds a source address there)
    Baton's automation     127.0.0.0/24 (ACL entry "baton"): 127.0.0.1, or one address per
                           vantage (`vantage.source_address`, e.g. 127.0.0.11), so that the lab
                           can cut one vantage's path to an office (`cut OFFICE --from ADDRESS`)
    AAA / syslog of o      127.10.o.10-11 / 127.10.o.20 (addresses only; nothing listens)

SNMP listens on <address>:<snmp_port>/udp and NETCONF+SSH on <address>:<ssh_port>/tcp for every
device: the ports repeat, the addresses differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import resource
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env

from baton.lab.datastore import Datastore, management_xml
from baton.lab.device import Interface, LabDevice, TrapTarget
from baton.lab.snmp_agent import POWER_MAINS, POWER_ON_BATTERY, SnmpAgent, SnmpCredentials
from baton.lab.traps import TrapSender

log = structlog.get_logger("baton.lab")

BATON_PREFIX = "127.0.0.0/24"  # where Baton's vantages connect from
DEFAULT_SNMP_PORT = 16100
DEFAULT_SSH_PORT = 18300
DEFAULT_DEVICES_PER_OFFICE = 4
MAX_OFFICES = 250
MAX_DEVICES_PER_OFFICE = 250 * 200  # second octet 20..219
LAB_USER = "baton"  # the NETCONF/SSH user Baton logs in as
ROLES = frozenset({"core", "agg", "olt"})

T = TypeVar("T")


class LabError(Exception):
    """A lab request that cannot be done (unknown office/device, bad argument). One clear line."""


# --- the plan (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfficeSpec:
    id: str
    name: str
    region: str
    alternates: tuple[str, ...] = ()


# The example inventory's offices (Seoul/Busan/Daegu); the lab does not read `inventory/`.
DEFAULT_OFFICES: tuple[OfficeSpec, ...] = (
    OfficeSpec(
        "seoul-geumcheon", "Seoul Geumcheon", "seoul", ("seoul-bangbae", "seoul-suwon", "seoul-gwacheon")
    ),
    OfficeSpec("seoul-bangbae", "Seoul Bangbae", "seoul", ("seoul-geumcheon", "seoul-gwacheon")),
    OfficeSpec("seoul-suwon", "Seoul Suwon", "seoul", ("seoul-gwacheon", "seoul-geumcheon")),
    OfficeSpec("seoul-gwacheon", "Seoul Gwacheon", "seoul", ("seoul-suwon", "seoul-bangbae")),
    OfficeSpec("busan-jung", "Busan Jung", "busan", ("busan-haeundae",)),
    OfficeSpec("busan-haeundae", "Busan Haeundae", "busan", ("busan-jung",)),
    OfficeSpec("daegu-dongdaegu", "Daegu Dongdaegu", "daegu", ("daegu-suseong",)),
    OfficeSpec("daegu-suseong", "Daegu Suseong", "daegu", ("daegu-dongdaegu",)),
)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    id: str
    office: str
    role: str  # core | agg | olt
    critical: bool
    parent: str | None
    address: str
    interfaces: tuple[tuple[int, str], ...]  # (ifIndex, name); ifIndex 1 is the uplink


@dataclass(frozen=True, slots=True)
class OfficePlan:
    id: str
    name: str
    region: str
    alternates: tuple[str, ...]
    index: int  # o in the address plan, 1-based
    noc_prefix: str
    aaa_servers: tuple[str, ...]
    syslog_servers: tuple[str, ...]

    @property
    def contact(self) -> str:
        return f"noc@{self.id}.lab"


@dataclass(frozen=True, slots=True)
class LabPlan:
    offices: tuple[OfficePlan, ...]
    devices: tuple[DevicePlan, ...]

    def office(self, office_id: str) -> OfficePlan:
        for office in self.offices:
            if office.id == office_id:
                return office
        raise LabError(
            f"no office {office_id!r} in the lab (offices: {', '.join(o.id for o in self.offices)})"
        )


def role_counts(devices_per_office: int) -> tuple[int, int, int]:
    """(core, agg, olt) for an office of N devices: 1-2 cores, 1-2 aggregation, the rest OLTs."""
    n = devices_per_office
    core = 1 if n < 8 else 2
    agg = min(max(n - core, 0), 1 if n < 6 else 2)
    return core, agg, n - core - agg


def device_address(office_index: int, device_index: int) -> str:
    d = device_index - 1
    return f"127.{20 + d // 250}.{office_index}.{d % 250 + 1}"


def select_offices(spec: str | None) -> tuple[OfficeSpec, ...]:
    """`--offices`: None = the built-in eight; "3" = the first three (more are generated);
    "a,b" = those built-in offices, in that order. Alternates outside the set are dropped."""
    if spec is None or not spec.strip():
        chosen = DEFAULT_OFFICES
    elif spec.strip().isdigit():
        count = int(spec)
        if not 1 <= count <= MAX_OFFICES:
            raise LabError(f"--offices must be 1..{MAX_OFFICES}, got {count}")
        extra = tuple(
            OfficeSpec(f"lab-{i:03d}", f"Lab office {i}", "lab", (f"lab-{i + 1 if i < count else 1:03d}",))
            for i in range(len(DEFAULT_OFFICES) + 1, count + 1)
        )
        chosen = (DEFAULT_OFFICES + extra)[:count]
    else:
        known = {o.id: o for o in DEFAULT_OFFICES}
        ids = [s.strip() for s in spec.split(",") if s.strip()]
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise LabError(f"unknown office(s) {', '.join(unknown)}; built-in: {', '.join(known)}")
        chosen = tuple(known[i] for i in dict.fromkeys(ids))
    ids_set = {o.id for o in chosen}
    return tuple(
        OfficeSpec(o.id, o.name, o.region, tuple(a for a in o.alternates if a in ids_set and a != o.id))
        for o in chosen
    )


def build_plan(offices: Sequence[OfficeSpec], devices_per_office: int) -> LabPlan:
    if not 1 <= len(offices) <= MAX_OFFICES:
        raise LabError(f"a lab has 1..{MAX_OFFICES} offices, got {len(offices)}")
    if not 1 <= devices_per_office <= MAX_DEVICES_PER_OFFICE:
        raise LabError(f"--devices-per-office must be 1..{MAX_DEVICES_PER_OFFICE}, got {devices_per_office}")
    office_plans: list[OfficePlan] = []
    devices: list[DevicePlan] = []
    n_core, n_agg, n_olt = role_counts(devices_per_office)
    for o, spec in enumerate(offices, start=1):
        office_plans.append(
            OfficePlan(
                id=spec.id,
                name=spec.name,
                region=spec.region,
                alternates=spec.alternates,
                index=o,
                noc_prefix=f"127.10.{o}.0/24",
                aaa_servers=(f"127.10.{o}.10", f"127.10.{o}.11"),
                syslog_servers=(f"127.10.{o}.20",),
            )
        )
        cores = [f"{spec.id}-core{i}" for i in range(1, n_core + 1)]
        aggs = [f"{spec.id}-agg{i}" for i in range(1, n_agg + 1)]
        width = max(2, len(str(n_olt)))
        olts = [f"{spec.id}-olt{i:0{width}d}" for i in range(1, n_olt + 1)]
        d = 0
        for dev_id in cores:
            d += 1
            ifs = tuple((k, f"ge-0/0/{k - 1}") for k in range(1, 5))
            devices.append(DevicePlan(dev_id, spec.id, "core", True, None, device_address(o, d), ifs))
        for i, dev_id in enumerate(aggs):
            d += 1
            ifs = tuple((k, f"xe-0/0/{k - 1}") for k in range(1, 5))
            parent = cores[i % len(cores)]
            devices.append(DevicePlan(dev_id, spec.id, "agg", True, parent, device_address(o, d), ifs))
        for i, dev_id in enumerate(olts):
            d += 1
            ifs = ((1, "uplink0"), (2, "pon0"), (3, "pon1"))
            parent = aggs[i % len(aggs)] if aggs else cores[0]
            devices.append(DevicePlan(dev_id, spec.id, "olt", False, parent, device_address(o, d), ifs))
    return LabPlan(tuple(office_plans), tuple(devices))


# --- lab configuration and persistent state ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabConfig:
    dir: Path
    offices: tuple[OfficeSpec, ...] = DEFAULT_OFFICES
    devices_per_office: int = DEFAULT_DEVICES_PER_OFFICE
    trap_target: tuple[str, int] | None = None  # Baton's trap listener (host, port)
    snmp_port: int = DEFAULT_SNMP_PORT
    ssh_port: int = DEFAULT_SSH_PORT
    netconf: bool = True  # start the NETCONF/SSH listeners (when the server module exists)
    control: bool = True  # serve the control socket


@dataclass(frozen=True, slots=True)
class LabSecrets:
    """Credentials of the lab; generated once, kept in <dir>/lab/secrets.json (0600)."""

    community: str
    v3_user: str
    v3_auth_key: str
    v3_priv_key: str
    ssh_password: str

    def __repr__(self) -> str:
        return f"LabSecrets(v3_user={self.v3_user!r})"

    @property
    def snmp(self) -> SnmpCredentials:
        return SnmpCredentials(self.community, self.v3_user, self.v3_auth_key, self.v3_priv_key)


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def load_or_create_secrets(state_dir: Path) -> LabSecrets:
    path = state_dir / "secrets.json"
    if path.exists():
        return LabSecrets(**json.loads(path.read_text()))
    made = LabSecrets(
        community=f"lab-{secrets.token_hex(6)}",
        v3_user="baton",
        v3_auth_key=secrets.token_urlsafe(15),
        v3_priv_key=secrets.token_urlsafe(15),
        ssh_password=secrets.token_urlsafe(15),
    )
    write_private(path, json.dumps(asdict(made), indent=2).encode())
    return made


def load_or_create_key(path: Path) -> Any:
    """An ed25519 key (asyncssh SSHKey) kept at `path`, so pinned host keys survive a restart."""
    import asyncssh

    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_private(path, key.export_private_key())
    return key


def public_key_line(key: Any) -> str:
    """'ssh-ed25519 AAAA...' without comment, as the inventory pins it."""
    return " ".join(key.export_public_key().decode().split()[:2])


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- the running lab ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Runtime:
    devices: dict[str, LabDevice] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)  # device id -> DeviceServer
    host_keys: dict[str, Any] = field(default_factory=dict)  # device id -> asyncssh key


class Lab:
    """A running lab network. `await start()`, fault methods, `await stop()`; one event loop."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.plan = build_plan(config.offices, config.devices_per_office)
        self.state_dir = config.dir / "lab"
        self.secrets: LabSecrets | None = None
        self.client_key: Any = None
        self.netconf_available = False
        self.started_at = 0.0
        self.startup_s = 0.0
        self._rt = _Runtime()
        self._agent: SnmpAgent | None = None
        self._traps: TrapSender | None = None
        self._control: Any = None
        self._powered_off: set[str] = set()
        self._cut: set[str] = set()

    # --- lifecycle

    @property
    def devices(self) -> dict[str, LabDevice]:
        return self._rt.devices

    @property
    def control_path(self) -> Path:
        return self.state_dir / "control.sock"

    def host_key(self, device_id: str) -> str:
        return public_key_line(self._rt.host_keys[device_id])

    async def start(self) -> None:
        t0 = time.perf_counter()
        raise_nofile_limit()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.secrets = load_or_create_secrets(self.state_dir)
        self.client_key = load_or_create_key(self.state_dir / "client_ed25519")
        now = time.monotonic()
        for dp in self.plan.devices:
            office = self.plan.office(dp.office)
            self._rt.devices[dp.id] = LabDevice(
                id=dp.id,
                office=dp.office,
                role=dp.role,
                address=dp.address,
                datastore=Datastore(self._initial_mgmt(office)),
                sys_descr=f"Baton lab {dp.role} router" if dp.role != "olt" else "Baton lab OLT",
                interfaces=[Interface(i, name) for i, name in dp.interfaces],
                boot_time=now,
            )
            self._rt.host_keys[dp.id] = load_or_create_key(self.state_dir / "host_keys" / dp.id)
        self._agent = SnmpAgent(self.secrets.snmp, port=self.config.snmp_port)
        self._traps = TrapSender(self._agent)
        try:
            await self._agent.start(self._rt.devices.values())
            if self.config.netconf:
                await self._start_netconf()
            if self.config.control:
                from baton.lab.control import ControlServer

                self._control = ControlServer(self, self.control_path)
                await self._control.start()
        except BaseException:
            await self.stop()
            raise
        self.started_at = time.time()
        self.startup_s = time.perf_counter() - t0
        log.info(
            "lab.started",
            offices=len(self.plan.offices),
            devices=len(self.plan.devices),
            netconf=self.netconf_available,
            startup_s=round(self.startup_s, 3),
        )

    def _initial_mgmt(self, office: OfficePlan) -> str:
        assert self.secrets is not None
        traps: tuple[TrapTarget, ...] = ()
        if self.config.trap_target is not None:
            host, port = self.config.trap_target
            traps = (TrapTarget(host, port, self.secrets.community),)
        return management_xml(
            acl=((office.id, office.noc_prefix), ("baton", BATON_PREFIX)),
            aaa_servers=office.aaa_servers,
            trap_targets=traps,
            syslog_servers=office.syslog_servers,
            contact=office.contact,
        )

    async def _start_netconf(self) -> None:
        try:
            from baton.lab import netconf_server
        except ImportError:
            log.warning("lab.netconf_unavailable", reason="baton.lab.netconf_server not importable")
            return
        users = self._netconf_users(netconf_server)
        sem = asyncio.Semaphore(64)

        async def one(device: LabDevice) -> None:
            async with sem:
                self._rt.servers[device.id] = await netconf_server.start_device_server(
                    device,
                    host=device.address,
                    port=self.config.ssh_port,
                    host_key=self._rt.host_keys[device.id],
                    users=users,
                )

        await asyncio.gather(*(one(d) for d in self._rt.devices.values()))
        self.netconf_available = True

    def _netconf_users(self, netconf_server: Any) -> dict[str, Any]:
        assert self.secrets is not None
        user_auth = netconf_server.UserAuth
        return {
            LAB_USER: user_auth(
                password=self.secrets.ssh_password, authorized_keys=(public_key_line(self.client_key),)
            )
        }

    async def stop(self) -> None:
        if self._control is not None:
            await self._control.close()
            self._control = None
        servers = list(self._rt.servers.values())
        self._rt.servers.clear()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.close()
        if self._agent is not None:
            await self._agent.close()
            self._agent = None
        log.info("lab.stopped", devices=len(self._rt.devices))

    # --- lookups

    def device(self, device_id: str) -> LabDevice:
        try:
            return self._rt.devices[device_id]
        except KeyError:
            raise LabError(f"no device {device_id!r} in the lab") from None

    def office_devices(self, office_id: str) -> list[LabDevice]:
        self.plan.office(office_id)
        return [d for d in self._rt.devices.values() if d.office == office_id]

    def _interface(self, device_id: str, if_index: int) -> tuple[LabDevice, Interface]:
        device = self.device(device_id)
        for iface in device.interfaces:
            if iface.if_index == if_index:
                return device, iface
        indexes = ", ".join(str(i.if_index) for i in device.interfaces)
        raise LabError(f"device {device_id} has no ifIndex {if_index} (has {indexes})")

    def _drop_sessions(self, devices: list[LabDevice], source: str | None = None) -> None:
        # A dead or cut-off box takes its open SSH/NETCONF sessions with it (with `source`, only
        # those from that address: the others' path still works).
        for device in devices:
            server = self._rt.servers.get(device.id)
            if server is not None:
                for session in list(server.sessions.values()):
                    if source is None or session.peer.removeprefix("::ffff:") == source:
                        session.close()

    def _boot(self, device: LabDevice) -> None:
        device.boot_time = time.monotonic()
        assert self._traps is not None
        self._traps.cold_start(device)

    # --- faults (all async so callers on another thread use one way: run_coroutine_threadsafe)

    async def power_off(self, office: str, grace_s: float = 0.0, ups: Sequence[str] = ()) -> str:
        """Office on battery: the power alarm goes out, then after `grace_s` every device dies,
        except those whose role is in `ups` (core, agg, olt): a UPS carries them on."""
        unknown = sorted(set(ups) - ROLES)
        if unknown:
            raise LabError(f"unknown role(s) {', '.join(unknown)} for ups; roles: {', '.join(sorted(ROLES))}")
        devices = self.office_devices(office)
        assert self._agent is not None
        assert self._traps is not None
        self._agent.set_office_power(office, POWER_ON_BATTERY)
        monitor = devices[0]  # the first core router carries the office's power monitor
        if monitor.faults.powered:
            self._traps.power(monitor, failing=True)
        if grace_s > 0:
            await asyncio.sleep(grace_s)
        dark = [d for d in devices if d.role not in ups]
        for device in dark:
            device.faults.powered = False
        self._drop_sessions(dark)
        self._powered_off.add(office)
        log.info("lab.power_off", office=office, devices=len(dark), ups=list(ups))
        if len(dark) == len(devices):
            return f"office {office} powered off ({len(devices)} devices down)"
        return (
            f"office {office} powered off ({len(dark)} devices down, "
            f"{len(devices) - len(dark)} on UPS: {', '.join(sorted(set(ups)))})"
        )

    async def power_on(self, office: str) -> str:
        devices = self.office_devices(office)
        assert self._agent is not None
        assert self._traps is not None
        self._agent.set_office_power(office, POWER_MAINS)
        dark = [d for d in devices if not d.faults.powered]  # a UPS kept the others up: no reboot
        for device in dark:
            device.faults.powered = True
        for device in dark:
            self._boot(device)
        self._traps.power(devices[0], failing=False)
        self._powered_off.discard(office)
        log.info("lab.power_on", office=office, devices=len(dark))
        return f"office {office} powered on ({len(dark)} devices booted)"

    async def cut(self, office: str, source: str | None = None) -> str:
        """Cut the office's uplink: its devices answer nobody. With `source`, only the path from
        that address (one vantage's): what it sends is dropped, its sessions close, traps to it
        are lost; everyone else reaches the office as before."""
        devices = self.office_devices(office)
        if source is None:
            for device in devices:
                device.faults.cut = True
            self._drop_sessions(devices)
            self._cut.add(office)
            log.info("lab.cut", office=office)
            return f"office {office} uplink cut ({len(devices)} devices unreachable)"
        source = _source(source)
        for device in devices:
            device.faults.cut_from.add(source)
        self._drop_sessions(devices, source)
        log.info("lab.cut", office=office, source=source)
        return f"office {office} cut from {source} ({len(devices)} devices unreachable from there only)"

    async def uncut(self, office: str, source: str | None = None) -> str:
        """Restore the office's uplink and every path cut from one source; with `source`, only
        the path from that address."""
        devices = self.office_devices(office)
        if source is None:
            for device in devices:
                device.faults.cut = False
                device.faults.cut_from.clear()
            self._cut.discard(office)
            log.info("lab.uncut", office=office)
            return f"office {office} uplink restored"
        source = _source(source)
        for device in devices:
            device.faults.cut_from.discard(source)
        log.info("lab.uncut", office=office, source=source)
        return f"office {office} reachable from {source} again"

    async def device_down(self, device_id: str) -> str:
        device = self.device(device_id)
        device.faults.powered = False
        self._drop_sessions([device])
        log.info("lab.device_down", device=device_id)
        return f"device {device_id} down"

    async def device_up(self, device_id: str) -> str:
        device = self.device(device_id)
        if not device.faults.powered:
            device.faults.powered = True
            self._boot(device)
        log.info("lab.device_up", device=device_id)
        return f"device {device_id} up"

    async def link_down(self, device_id: str, if_index: int) -> str:
        return self._set_link(device_id, if_index, up=False)

    async def link_up(self, device_id: str, if_index: int) -> str:
        return self._set_link(device_id, if_index, up=True)

    def _set_link(self, device_id: str, if_index: int, *, up: bool) -> str:
        device, iface = self._interface(device_id, if_index)
        word = "up" if up else "down"
        if iface.oper_up != up:
            iface.oper_up = up
            assert self._traps is not None
            self._traps.link_changed(device, iface)
            log.info("lab.link_changed", device=device_id, if_index=if_index, oper=word)
        return f"device {device_id} ifIndex {if_index} ({iface.name}) {word}"

    async def slow(self, device_id: str, seconds: float) -> str:
        if not 0 <= seconds <= 600:
            raise LabError(f"slow seconds must be 0..600, got {seconds}")
        self.device(device_id).faults.slow_s = float(seconds)
        log.info("lab.slow", device=device_id, slow_s=seconds)
        return f"device {device_id} answers after {seconds:g} s"

    async def set_confirmed_commit(self, device_id: str, on: bool) -> str:
        """Make the device a model with (or without) :confirmed-commit, for new sessions."""
        self.device(device_id).confirmed_commit = on
        log.info("lab.confirmed_commit", device=device_id, on=on)
        return f"device {device_id} {'has' if on else 'lacks'} :confirmed-commit"

    async def reset_config(self, device_id: str) -> str:
        """The device's configuration as the lab started it: running and candidate, nothing
        pending, no locks (its open sessions are dropped)."""
        device = self.device(device_id)
        self._drop_sessions([device])
        device.datastore = Datastore(self._initial_mgmt(self.plan.office(device.office)))
        device.history.clear()
        log.info("lab.reset_config", device=device_id)
        return f"device {device_id} configuration reset"

    async def load_config(self, device_id: str, running: str) -> str:
        """Set the device's running (and candidate) configuration to `running` (XML of its
        top-level nodes, as `show` gives it): a test puts a device in a known state at once."""
        device = self.device(device_id)
        self._drop_sessions([device])
        root = etree.fromstring(f"<config>{running}</config>".encode())
        device.datastore = Datastore([etree.tostring(node, encoding="unicode") for node in root])
        log.info("lab.load_config", device=device_id)
        return f"device {device_id} configuration loaded"

    async def refuse_commits(self, device_id: str, on: bool) -> str:
        self.device(device_id).faults.refuse_commits = on
        log.info("lab.refuse_commits", device=device_id, on=on)
        return f"device {device_id} {'refuses' if on else 'accepts'} commits"

    async def drop_mid_rpc(self, device_id: str, on: bool = True) -> str:
        """One-shot: the next NETCONF RPC closes the session instead of being carried out."""
        return self._arm(
            device_id, "drop_mid_rpc", on, "will drop the session on its next RPC (not carried out)"
        )

    async def drop_after_commit(self, device_id: str, on: bool = True) -> str:
        """One-shot: the next <commit> is applied, then the session closes without a reply (a
        confirmed commit without persist is then rolled back, as the session ended)."""
        return self._arm(
            device_id, "drop_after_commit", on, "will apply its next commit, then drop the session unanswered"
        )

    async def no_reply(self, device_id: str, on: bool = True, rpc: str | None = None) -> str:
        """One-shot: the next NETCONF RPC (of operation `rpc`, None: any) is carried out (a
        commit applied) and its reply withheld; the session stays open."""
        return self._arm_reply(device_id, "no_reply", on, rpc, "never answer it")

    async def endless_reply(self, device_id: str, on: bool = True, rpc: str | None = None) -> str:
        """One-shot: the next NETCONF RPC (of operation `rpc`, None: any) is carried out (a
        commit applied), then its reply streams without end-of-message until the client goes."""
        return self._arm_reply(device_id, "endless_reply", on, rpc, "answer it without end")

    async def garbage_reply(self, device_id: str, on: bool = True, rpc: str | None = None) -> str:
        """One-shot: the next NETCONF RPC (of operation `rpc`, None: any) is carried out (a
        commit applied), then answered with a reply that is not well-formed XML (framing intact;
        the session stays open)."""
        return self._arm_reply(device_id, "garbage_reply", on, rpc, "answer it with garbage")

    def _arm_reply(self, device_id: str, fault: str, on: bool, rpc: str | None, what: str) -> str:
        if rpc is not None and not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", rpc):
            raise LabError(f"rpc must be a NETCONF operation name such as commit or get, got {rpc!r}")
        target = rpc or "*"
        which = "RPC" if target == "*" else f"<{target}>"
        return self._arm(
            device_id, fault, target if on else None, f"will carry out its next {which} and {what}"
        )

    def _arm(self, device_id: str, fault: str, value: bool | str | None, armed: str) -> str:
        faults = self.device(device_id).faults
        setattr(faults, fault, value)
        log.info("lab.fault_set", device=device_id, fault=fault, armed=value)
        if value:
            return f"device {device_id} {armed}"
        return f"device {device_id}: {fault.replace('_', '-')} disarmed"

    # --- views

    def status(self) -> dict[str, Any]:
        offices = []
        for office in self.plan.offices:
            devs = [d for d in self._rt.devices.values() if d.office == office.id]
            offices.append(
                {
                    "id": office.id,
                    "noc_prefix": office.noc_prefix,
                    "alternates": list(office.alternates),
                    "powered": office.id not in self._powered_off,
                    "cut": office.id in self._cut,
                    "cut_from": sorted(set().union(*(d.faults.cut_from for d in devs))),
                    "devices": len(devs),
                    "devices_reachable": sum(1 for d in devs if d.faults.reachable),
                }
            )
        return {
            "dir": str(self.config.dir),
            "pid": os.getpid(),
            "snmp_port": self.config.snmp_port,
            "ssh_port": self.config.ssh_port,
            "netconf": self.netconf_available,
            "trap_target": list(self.config.trap_target) if self.config.trap_target else None,
            "offices": offices,
            "devices": [self._device_summary(d) for d in self._rt.devices.values()],
        }

    def _device_summary(self, device: LabDevice) -> dict[str, Any]:
        f = device.faults
        faults = [
            name
            for name, on in (
                ("powered-off", not f.powered),
                ("cut", f.cut),
                *((f"cut from {source}", True) for source in sorted(f.cut_from)),
                (f"slow {f.slow_s:g}s", f.slow_s > 0),
                ("refuse-commits", f.refuse_commits),
                ("drop-mid-rpc", f.drop_mid_rpc),
                ("drop-after-commit", f.drop_after_commit),
                (_armed("no-reply", f.no_reply), f.no_reply is not None),
                (_armed("endless-reply", f.endless_reply), f.endless_reply is not None),
                (_armed("garbage-reply", f.garbage_reply), f.garbage_reply is not None),
            )
            if on
        ]
        faults += [f"if{i.if_index}-down" for i in device.interfaces if not i.oper_up]
        return {
            "id": device.id,
            "office": device.office,
            "role": device.role,
            "address": device.address,
            "reachable": f.reachable,
            "faults": faults,
        }

    def show(self, device_id: str) -> dict[str, Any]:
        device = self.device(device_id)
        mgmt = device.mgmt
        return {
            **self._device_summary(device),
            "uptime_s": round(time.monotonic() - device.boot_time, 1),
            "interfaces": [
                {"if_index": i.if_index, "name": i.name, "oper": "up" if i.oper_up else "down"}
                for i in device.interfaces
            ],
            "host_key": self.host_key(device_id),
            "running": device.datastore.running_xml(),
            "confirm_pending": device.datastore.confirm_pending,
            "confirmed_commit": device.confirmed_commit,
            "history": list(device.history),
            "mgmt": {
                "acl": [
                    {"name": name, "prefix": str(net)}
                    for name, net in zip(mgmt.acl_offices, mgmt.acl, strict=False)
                ],
                "aaa_servers": list(mgmt.aaa_servers),
                "trap_targets": [f"{t.address}:{t.port}" for t in mgmt.trap_targets],
                "syslog_servers": list(mgmt.syslog_servers),
                "contact": mgmt.contact,
            },
        }


def _source(text: str) -> str:
    """A source address, as the devices see it (what a client binds)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise LabError(f"not an IP address: {text!r}") from None


def _armed(name: str, rpc: str | None) -> str:
    """How status shows a reply fault: "no-reply" (any RPC) or "no-reply <commit>"."""
    return name if rpc in (None, "*") else f"{name} <{rpc}>"


def noc_source(plan: LabPlan, office_id: str, host: int = 100) -> str:
    """A source address inside an office's NOC prefix, for connecting 'from' that office."""
    net = ipaddress.ip_network(plan.office(office_id).noc_prefix)
    return str(net.network_address + host)


class LabThread:
    """A Lab on its own event loop in a background thread (tests, bench, embedding)."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.lab = Lab(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="baton-lab", daemon=True)

    def start(self, timeout_s: float = 120.0) -> Lab:
        self._thread.start()
        try:
            self.run(self.lab.start(), timeout_s)
        except BaseException:
            self._halt()
            raise
        return self.lab

    def run(self, coro: Awaitable[T], timeout_s: float = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result(timeout_s)

    def call(self, fn: Callable[[Lab], Awaitable[T]], timeout_s: float = 30.0) -> T:
        return self.run(fn(self.lab), timeout_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        try:
            self.run(self.lab.stop(), timeout_s)
        finally:
            self._halt()

    def _halt(self) -> None:
        async def drain() -> None:
            # Tasks left by servers (sessions, timers) end here, not as "destroyed but pending".
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().shutdown_asyncgens()

        with contextlib.suppress(Exception):
            self.run(drain(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
