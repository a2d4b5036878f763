"""Lab fixtures: simulated devices started in-process for contract and integration tests.

| fixture            | gives                                                              |
|--------------------|--------------------------------------------------------------------|
| lab_netconf_device | ThreadedLabDevice: one lab device (NETCONF + CLI over SSH) on      |
|                    | 127.0.0.1, free port, ACL 127.0.0.1/32; `.endpoint`, `.device`     |

The device runs in a background thread with its own asyncio loop, because the clients the
contract suite shares with real netconfd (ncclient) are synchronous and would block a loop they
shared with the server. Async tests may still use asyncssh clients from their own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from baton.lab.datastore import Datastore, management_xml
from baton.lab.device import Interface, LabDevice, TrapTarget
from baton.lab.netconf_server import DeviceServer, UserAuth, start_device_server
from tests.peers.endpoints import SshEndpoint

T = TypeVar("T")

LAB_USER = "labtest"
LAB_PASSWORD = "labpass123"
START_TIMEOUT_S = 10.0


def _public_line(key: asyncssh.SSHKey) -> str:
    """ "ssh-ed25519 AAAA..." without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class ThreadedLabDevice:
    """One lab device served from a private event loop in a daemon thread."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        device_id: str = "lab-nc-1",
        host: str = "127.0.0.1",
        acl: Sequence[tuple[str, str]] = (("test", "127.0.0.1/32"),),
    ) -> None:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        key_path = tmp_path / f"{device_id}_client_ed25519"
        client_key.write_private_key(key_path)
        key_path.chmod(0o600)
        running = management_xml(
            acl=acl,
            aaa_servers=["127.0.0.53"],
            trap_targets=[TrapTarget("127.0.0.1", 1162)],
            syslog_servers=["127.0.0.54"],
            contact="lab noc",
        )
        self.device = LabDevice(
            id=device_id,
            office="co-test",
            role="router",
            address=host,
            datastore=Datastore(running),
            interfaces=[Interface(1, "ge-0/0/1"), Interface(2, "ge-0/0/2", oper_up=False)],
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"lab-{device_id}", daemon=True)
        self._thread.start()
        users = {LAB_USER: UserAuth(password=LAB_PASSWORD, authorized_keys=(_public_line(client_key),))}
        self.server: DeviceServer = self.run(
            start_device_server(self.device, host=host, port=0, host_key=host_key, users=users)
        )
        known_hosts = tmp_path / f"{device_id}_known_hosts"
        known_hosts.write_text(f"[{host}]:{self.server.port} {_public_line(host_key)}\n")
        self.endpoint = SshEndpoint(
            host=host,
            port=self.server.port,
            username=LAB_USER,
            private_key=key_path,
            known_hosts=known_hosts,
            host_key=_public_line(host_key),
            password=LAB_PASSWORD,
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the device's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=START_TIMEOUT_S)

    def call(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the device's loop (for touching the datastore while sessions run)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.run(self.server.close())
        self.run(self._drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT_S)
        self._loop.close()

    async def _drain(self) -> None:
        """Let session tasks finish (their connections are closed) so nothing leaks into later tests."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loop.shutdown_asyncgens()


@pytest.fixture
def lab_netconf_device(tmp_path: Path) -> Iterator[ThreadedLabDevice]:
    """One lab device serving NETCONF and its CLI on 127.0.0.1 (free port), stopped after the test."""
    lab = ThreadedLabDevice(tmp_path)
    try:
        yield lab
    finally:
        lab.stop()


# --- the lab network (baton.lab.network): appended by the lab helper -----------------------------
#
# | fixture          | gives                                                                  |
# |------------------|------------------------------------------------------------------------|
# | lab_network      | RunningLab: a small Lab (2 offices x 3 devices, SNMP + NETCONF + control |
# |                  | socket) in a background thread, traps to `.traps` (a UDP receiver)       |
# | lab_snmp_device  | LabSnmpDevice: one lab device's SNMP agent; `.endpoint: SnmpEndpoint`    |

import socket  # noqa: E402
import time  # noqa: E402

from baton.lab.network import Lab, LabConfig, LabThread, select_offices  # noqa: E402
from baton.lab.traps import ReceivedTrap, decode_v2c_trap  # noqa: E402
from tests.peers.endpoints import SnmpEndpoint  # noqa: E402

LAB_OFFICES = "seoul-geumcheon,busan-jung"


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TrapReceiver:
    """A UDP socket on 127.0.0.1 (free port) that decodes the v2c traps it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.seen: list[tuple[str, ReceivedTrap]] = []  # (source address, trap)

    def wait_for(self, trap_oid: str, source: str | None = None, timeout_s: float = 5.0) -> ReceivedTrap:
        """The first trap with `trap_oid` (from `source`), waiting up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            for src, trap in self.seen:
                if trap.trap_oid == trap_oid and (source is None or src == source):
                    return trap
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no trap {trap_oid} from {source or 'anyone'}; got {self.seen}")
            self.sock.settimeout(remaining)
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.seen.append((addr[0], decode_v2c_trap(data)))

    def close(self) -> None:
        self.sock.close()


class RunningLab:
    """A Lab on its own loop in a thread: `.lab` to read, `.call(lambda lab: lab.cut(...))` to act."""

    def __init__(self, tmp_path: Path, offices: str, devices_per_office: int, *, netconf: bool) -> None:
        self.traps = TrapReceiver()
        self.dir = tmp_path / "lab"
        last: Exception | None = None
        for _ in range(3):  # a port picked free can be taken by someone else before the lab binds it
            self.thread = LabThread(
                LabConfig(
                    dir=self.dir,
                    offices=select_offices(offices),
                    devices_per_office=devices_per_office,
                    trap_target=self.traps.address,
                    snmp_port=_free_udp_port("127.0.0.1"),
                    ssh_port=_free_tcp_port("127.0.0.1"),
                    netconf=netconf,
                )
            )
            try:
                self.lab: Lab = self.thread.start()
                break
            except OSError as exc:
                last = exc
        else:
            self.traps.close()
            raise RuntimeError(f"lab did not start: {last}")

    def call(self, fn: Callable[[Lab], Coroutine[Any, Any, T]], timeout_s: float = 30.0) -> T:
        return self.thread.call(fn, timeout_s)

    def stop(self) -> None:
        try:
            self.thread.stop()
        finally:
            self.traps.close()


@pytest.fixture
def handover_lab(tmp_path: Path) -> Iterator[RunningLab]:
    """Geumcheon and its alternate Bangbae, 4 devices each over NETCONF, for runs that hand
    Geumcheon over."""
    running = RunningLab(tmp_path, "seoul-geumcheon,seoul-bangbae", 4, netconf=True)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def lab_network(tmp_path: Path) -> Iterator[RunningLab]:
    """A lab of 2 offices x 3 devices (SNMP, NETCONF/SSH, control socket), stopped after the test."""
    running = RunningLab(tmp_path, LAB_OFFICES, 3, netconf=True)
    try:
        yield running
    finally:
        running.stop()


class LabSnmpDevice:
    def __init__(self, running: RunningLab, device_id: str) -> None:
        self.running = running
        self.device = running.lab.device(device_id)
        creds = running.lab.secrets
        assert creds is not None
        snmp = creds.snmp
        self.endpoint = SnmpEndpoint(
            host=self.device.address,
            port=running.lab.config.snmp_port,
            community=snmp.community,
            v3_user=snmp.v3_user,
            v3_auth_protocol=snmp.v3_auth_protocol,
            v3_auth_key=snmp.v3_auth_key,
            v3_priv_protocol=snmp.v3_priv_protocol,
            v3_priv_key=snmp.v3_priv_key,
            sys_name=self.device.id,
        )


@pytest.fixture
def lab_snmp_device(tmp_path: Path) -> Iterator[LabSnmpDevice]:
    """One lab device's SNMP agent (a one-device lab, SNMP only), stopped after the test."""
    running = RunningLab(tmp_path, "busan-jung", 2, netconf=False)
    try:
        yield LabSnmpDevice(running, "busan-jung-agg1")
    finally:
        running.stop()
