"""net-snmp peers: snmpd agents on loopback aliases, and the real snmptrap/snmpinform binaries.

Each agent answers v2c (community ``public``, read-write ``private``) and v3 authPriv with one user
per supported protocol pair (see ``V3_USERS``). Its IF-MIB is fixed, whatever the host has: snmpd
runs without its interfaces modules, and ``override`` lines serve ``interfaces`` rows (default 4)::

    ifNumber.0                 1.3.6.1.2.1.2.1.0          INTEGER  N
    ifIndex.i                  1.3.6.1.2.1.2.2.1.1.i      INTEGER  i
    ifDescr.i                  1.3.6.1.2.1.2.2.1.2.i      STRING   "ge-0/0/i"
    ifType.i                   1.3.6.1.2.1.2.2.1.3.i      INTEGER  6 (ethernetCsmacd)
    ifAdminStatus.i  (rw)      1.3.6.1.2.1.2.2.1.7.i      INTEGER  1 (up)
    ifOperStatus.i   (rw)      1.3.6.1.2.1.2.2.1.8.i      INTEGER  1 (up)
    ifName.i                   1.3.6.1.2.1.31.1.1.1.1.i   STRING   "ge-0/0/i"

``SnmpdProcess.set_if_oper_status(i, 2)`` (an SNMP SET with the rw community) flips a link; a
restart resets every row to up. sysName.0 (1.3.6.1.2.1.1.5.0) is the ``sys_name`` given to start.
"""

from __future__ import annotations

import itertools
import socket
import string
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.endpoints import SnmpEndpoint
from tests.peers.util import (
    PeerProcess,
    PeerStartError,
    free_port,
    require_binary,
    run,
    tail,
)

DATA = Path(__file__).parent / "data"

SYS_NAME_OID = "1.3.6.1.2.1.1.5.0"
IF_NUMBER_OID = "1.3.6.1.2.1.2.1.0"
IF_ADMIN_STATUS_OID = "1.3.6.1.2.1.2.2.1.7"
IF_OPER_STATUS_OID = "1.3.6.1.2.1.2.2.1.8"
IF_DESCR_OID = "1.3.6.1.2.1.2.2.1.2"
IF_NAME_OID = "1.3.6.1.2.1.31.1.1.1.1"

COMMUNITY = "public"
RW_COMMUNITY = "private"
AUTH_KEY = "authpass123"
PRIV_KEY = "privpass123"


@dataclass(frozen=True)
class V3User:
    name: str
    auth_protocol: str  # as in SnmpEndpoint: "SHA", "SHA256", "SHA512"
    priv_protocol: str  # "AES", "AES192", "AES256"


# All measured to work with Debian 12's snmpd 5.9.3 (built with OpenSSL); the first is `.endpoint`.
V3_USERS = (
    V3User("baton-sha", "SHA", "AES"),
    V3User("baton-sha256", "SHA256", "AES"),
    V3User("baton-sha512", "SHA512", "AES256"),
    V3User("baton-sha-aes256", "SHA", "AES256"),  # AES-256 key extended from a 20-octet SHA-1 key
    V3User("baton-sha256-aes256", "SHA256", "AES256"),
    V3User("baton-sha-aes192", "SHA", "AES192"),
)

_NETSNMP_NAMES = {
    "MD5": "MD5",
    "SHA": "SHA",
    "SHA1": "SHA",
    "SHA224": "SHA-224",
    "SHA256": "SHA-256",
    "SHA384": "SHA-384",
    "SHA512": "SHA-512",
    "DES": "DES",
    "AES": "AES",
    "AES128": "AES",
    "AES192": "AES-192",
    "AES256": "AES-256",
}


def netsnmp_protocol(name: str) -> str:
    """The net-snmp CLI spelling (-a/-x, createUser) of an SnmpEndpoint protocol name."""
    return _NETSNMP_NAMES[name.upper().replace("-", "")]


def snmp_v3_args(endpoint: SnmpEndpoint) -> list[str]:
    """net-snmp CLI arguments for an endpoint's v3 authPriv user."""
    return [
        "-v3",
        "-l",
        "authPriv",
        "-u",
        endpoint.v3_user,
        "-a",
        netsnmp_protocol(endpoint.v3_auth_protocol),
        "-A",
        endpoint.v3_auth_key,
        "-x",
        netsnmp_protocol(endpoint.v3_priv_protocol),
        "-X",
        endpoint.v3_priv_key,
    ]


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(body)) + body


def ber_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out.extend(reversed(chunk))
    return _tlv(0x06, bytes(out))


def v2c_get_packet(community: str, oid: str, request_id: int = 1) -> bytes:
    """A BER-encoded SNMPv2c GetRequest (used to poll an agent for readiness without a library)."""
    varbind = _tlv(0x30, ber_oid(oid) + b"\x05\x00")
    pdu = _tlv(
        0xA0,
        _tlv(0x02, request_id.to_bytes(4, "big"))
        + _tlv(0x02, b"\x00")
        + _tlv(0x02, b"\x00")
        + _tlv(0x30, varbind),
    )
    return _tlv(0x30, _tlv(0x02, b"\x01") + _tlv(0x04, community.encode()) + pdu)


def snmp_answers(host: str, port: int, community: str = COMMUNITY, timeout_s: float = 0.1) -> bool:
    """True when an agent at host:port/udp answers a v2c GET of sysName.0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect((host, port))
            s.send(v2c_get_packet(community, SYS_NAME_OID))
            return bool(s.recv(4096))
        except OSError:  # timeout, or ICMP port unreachable while the agent binds
            return False


def _interface_lines(count: int) -> str:
    lines = [f"override {IF_NUMBER_OID} integer {count}"]
    for i in range(1, count + 1):
        name = f"ge-0/0/{i}"
        lines += [
            f"override 1.3.6.1.2.1.2.2.1.1.{i} integer {i}",
            f'override {IF_DESCR_OID}.{i} octet_str "{name}"',
            f"override 1.3.6.1.2.1.2.2.1.3.{i} integer 6",
            f"override -rw {IF_ADMIN_STATUS_OID}.{i} integer 1",
            f"override -rw {IF_OPER_STATUS_OID}.{i} integer 1",
            f'override {IF_NAME_OID}.{i} octet_str "{name}"',
        ]
    return "\n".join(lines)


def render_snmpd_conf(
    host: str, port: int, sys_name: str, *, interfaces: int, client_net: str = "127.0.0.0/8"
) -> str:
    users = []
    for u in V3_USERS:
        users.append(
            f'createUser {u.name} {netsnmp_protocol(u.auth_protocol)} "{AUTH_KEY}" '
            f'{netsnmp_protocol(u.priv_protocol)} "{PRIV_KEY}"'
        )
        users.append(f"rouser {u.name} priv")
    template = string.Template((DATA / "snmpd.conf.in").read_text())
    return template.substitute(
        host=host,
        port=port,
        sys_name=sys_name,
        community=COMMUNITY,
        rw_community=RW_COMMUNITY,
        client_net=client_net,
        v3_users="\n".join(users),
        interfaces=_interface_lines(interfaces) if interfaces else "",
    )


class SnmpdProcess:
    """One snmpd agent: ``.endpoint`` (v2c + SHA/AES user), ``.endpoints`` (one per v3 user),
    ``.stop()``, ``.start()`` (restart on the same port, same engine id, engineBoots + 1), ``.pid``."""

    def __init__(
        self,
        workdir: Path,
        host: str,
        port: int,
        sys_name: str,
        *,
        interfaces: int = 4,
        argv_prefix: Sequence[str] = (),
        is_ready: Callable[[], bool] | None = None,
        client_net: str = "127.0.0.0/8",
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.snmpd = require_binary("snmpd", "snmpd", paths=["/usr/sbin/snmpd"])
        self.workdir = workdir
        self.host = host
        self.port = port
        self.sys_name = sys_name
        self.interfaces = interfaces
        self.rw_community = RW_COMMUNITY
        self.ready_timeout_s = ready_timeout_s
        self.ready_after_s: float | None = None
        self._argv_prefix = list(argv_prefix)
        self._is_ready = is_ready or (lambda: snmp_answers(self.host, self.port))
        self._client_net = client_net
        self.persist_dir = workdir / "persist"
        self.conf_path = workdir / "snmpd.conf"
        self.persist_dir.mkdir(parents=True, exist_ok=True)
        self._proc: PeerProcess | None = None

    @property
    def endpoints(self) -> tuple[SnmpEndpoint, ...]:
        return tuple(
            SnmpEndpoint(
                host=self.host,
                port=self.port,
                community=COMMUNITY,
                v3_user=u.name,
                v3_auth_protocol=u.auth_protocol,
                v3_auth_key=AUTH_KEY,
                v3_priv_protocol=u.priv_protocol,
                v3_priv_key=PRIV_KEY,
                sys_name=self.sys_name,
            )
            for u in V3_USERS
        )

    @property
    def endpoint(self) -> SnmpEndpoint:
        return self.endpoints[0]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_running() else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "snmpd.log"

    def start(self) -> SnmpdProcess:
        """Start (or restart) the agent on its port; returns when it answers a v2c GET."""
        if self._proc is not None and self._proc.is_running():
            raise PeerStartError(f"snmpd {self.host}:{self.port} already running")
        self.conf_path.write_text(
            render_snmpd_conf(
                self.host,
                self.port,
                self.sys_name,
                interfaces=self.interfaces,
                client_net=self._client_net,
            )
        )
        argv = [
            *self._argv_prefix,
            "env",
            f"SNMP_PERSISTENT_DIR={self.persist_dir}",
            self.snmpd,
            "-C",
            "-c",
            # -C skips the persistent snmpd.conf too: name it, so that a restart keeps the engine
            # id and counts engineBoots up (as a real agent does) instead of being a new engine
            ",".join(str(p) for p in (self.conf_path, self.persist_dir / "snmpd.conf") if p.exists()),
            "-f",
            "-Lo",
            "-m",
            "",
            "-I",
            # without the interfaces modules the override rows are the whole IF-MIB;
            # interfaces=0 keeps the real one (deterministic inside a namespace)
            "-smux,interfaces,ifTable,ifXTable" if self.interfaces else "-smux",
        ]
        self._proc = PeerProcess(f"snmpd {self.host}:{self.port}", argv, self.log_path)
        self._proc.spawn()
        self.ready_after_s = self._proc.wait_ready(self._is_ready, self.ready_timeout_s, "answering SNMP")
        return self

    def lost_port_race(self) -> bool:
        return self._proc is not None and self._proc.lost_port_race()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()

    def log_tail(self) -> str:
        return tail(self.log_path)

    def cli(self, tool: str, *args: str, timeout_s: float = 5.0) -> subprocess.CompletedProcess[str]:
        """Run a net-snmp CLI tool (snmpget, snmpset, snmpwalk ...) against this agent, v2c rw."""
        argv = [
            *self._argv_prefix,
            tool,
            "-m",
            "",
            "-v2c",
            "-c",
            self.rw_community,
            "-t",
            "1",
            "-r",
            "1",
            f"{self.host}:{self.port}",
            *args,
        ]
        return run(argv, timeout_s)

    def set_if_oper_status(self, index: int, status: int) -> None:
        """SET ifOperStatus.index (1 up, 2 down) through SNMP, as an operator's test harness would."""
        result = self.cli("snmpset", f"{IF_OPER_STATUS_OID}.{index}", "i", str(status))
        if result.returncode != 0:
            raise PeerStartError(f"snmpset ifOperStatus.{index} failed: {result.stderr.strip()}")

    def __repr__(self) -> str:
        return f"SnmpdProcess({self.sys_name} at {self.host}:{self.port}, pid {self.pid})"


def start_snmpd(
    workdir: Path, host: str, sys_name: str, *, interfaces: int = 4, **kwargs: object
) -> SnmpdProcess:
    """Start an agent on a free UDP port of host; one retry with another port if it lost the race."""
    for attempt in (1, 2):
        agent = SnmpdProcess(
            workdir,
            host,
            free_port(host, kind=socket.SOCK_DGRAM),
            sys_name,
            interfaces=interfaces,
            **kwargs,  # type: ignore[arg-type]
        )
        try:
            return agent.start()
        except PeerStartError:
            agent.stop()
            if attempt == 2 or not agent.lost_port_race():
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def snmpd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SnmpdProcess]]:
    """``start(host="127.0.0.1", sys_name=...)`` → a started SnmpdProcess; all stopped at teardown."""
    require_binary("snmpd", "snmpd", paths=["/usr/sbin/snmpd"])
    require_binary("snmpget", "snmp")  # the net-snmp CLI: set_if_oper_status() and most tests use it
    agents: list[SnmpdProcess] = []
    counter = itertools.count(1)
    base = tmp_path_factory.mktemp("snmpd")

    def start(host: str = "127.0.0.1", sys_name: str | None = None, *, interfaces: int = 4) -> SnmpdProcess:
        n = next(counter)
        workdir = base / f"agent{n}"
        workdir.mkdir()
        agent = start_snmpd(workdir, host, sys_name or f"test-dev{n}", interfaces=interfaces)
        agents.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture
def snmpd_agent(snmpd_factory: Callable[..., SnmpdProcess]) -> SnmpdProcess:
    """One started snmpd agent on 127.0.0.1 (sysName "test-dev1")."""
    return snmpd_factory("127.0.0.1")


Varbind = tuple[str, str, str]  # (numeric OID, net-snmp type char: i u c s x d n o t a ..., value)


def _varbind_args(varbinds: Sequence[Varbind]) -> list[str]:
    out: list[str] = []
    for oid, kind, value in varbinds:
        out += [oid, kind, str(value)]
    return out


class SnmpTrapSender:
    """Sends notifications with the real net-snmp ``snmptrap``/``snmpinform`` (numeric OIDs only).

    Every method returns the CompletedProcess (text) and never raises for a non-zero exit;
    informs wait for an acknowledgement for ``timeout_s`` per try, ``retries`` times.
    """

    def __init__(self, snmptrap: str, snmpinform: str) -> None:
        self.snmptrap = snmptrap
        self.snmpinform = snmpinform

    def _run(self, argv: list[str], hard_timeout_s: float) -> subprocess.CompletedProcess[str]:
        return run(argv, hard_timeout_s)

    def trap_v1(
        self,
        host: str,
        port: int,
        community: str,
        enterprise_oid: str,
        agent_addr: str,
        generic: int,
        specific: int,
        varbinds: Sequence[Varbind] = (),
        *,
        uptime: str = "",
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.snmptrap, "-m", "", "-v1", "-c", community, f"{host}:{port}", enterprise_oid]
        argv += [agent_addr, str(generic), str(specific), uptime, *_varbind_args(varbinds)]
        return self._run(argv, 10.0)

    def trap_v2c(
        self,
        host: str,
        port: int,
        community: str,
        trap_oid: str,
        varbinds: Sequence[Varbind] = (),
        *,
        uptime: str = "",
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.snmptrap, "-m", "", "-v2c", "-c", community, f"{host}:{port}", uptime, trap_oid]
        return self._run(argv + _varbind_args(varbinds), 10.0)

    def inform_v2c(
        self,
        host: str,
        port: int,
        community: str,
        trap_oid: str,
        varbinds: Sequence[Varbind] = (),
        *,
        uptime: str = "",
        timeout_s: float = 1.0,
        retries: int = 0,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.snmpinform, "-m", "", "-v2c", "-c", community, "-t", str(timeout_s), "-r", str(retries)]
        argv += [f"{host}:{port}", uptime, trap_oid, *_varbind_args(varbinds)]
        return self._run(argv, timeout_s * (retries + 1) + 10.0)

    def _v3_args(
        self, user: str, auth_protocol: str, auth_key: str, priv_protocol: str, priv_key: str
    ) -> list[str]:
        return [
            "-m",
            "",
            "-v3",
            "-l",
            "authPriv",
            "-u",
            user,
            "-a",
            netsnmp_protocol(auth_protocol),
            "-A",
            auth_key,
            "-x",
            netsnmp_protocol(priv_protocol),
            "-X",
            priv_key,
        ]

    def trap_v3(
        self,
        host: str,
        port: int,
        user: str,
        auth_protocol: str,
        auth_key: str,
        priv_protocol: str,
        priv_key: str,
        engine_id: str,
        trap_oid: str,
        varbinds: Sequence[Varbind] = (),
        *,
        uptime: str = "",
    ) -> subprocess.CompletedProcess[str]:
        """engine_id: the sender's (authoritative) engine id, hex, e.g. "0x8000000001020304"."""
        argv = [self.snmptrap, *self._v3_args(user, auth_protocol, auth_key, priv_protocol, priv_key)]
        argv += ["-e", engine_id, f"{host}:{port}", uptime, trap_oid, *_varbind_args(varbinds)]
        return self._run(argv, 10.0)

    def inform_v3(
        self,
        host: str,
        port: int,
        user: str,
        auth_protocol: str,
        auth_key: str,
        priv_protocol: str,
        priv_key: str,
        trap_oid: str,
        varbinds: Sequence[Varbind] = (),
        *,
        uptime: str = "",
        timeout_s: float = 1.0,
        retries: int = 0,
    ) -> subprocess.CompletedProcess[str]:
        """The receiver is authoritative for informs: its engine id is discovered, not given."""
        argv = [self.snmpinform, *self._v3_args(user, auth_protocol, auth_key, priv_protocol, priv_key)]
        argv += ["-t", str(timeout_s), "-r", str(retries), f"{host}:{port}", uptime, trap_oid]
        return self._run(argv + _varbind_args(varbinds), timeout_s * (retries + 1) * 2 + 10.0)


@pytest.fixture(scope="session")
def snmptrap_sender() -> SnmpTrapSender:
    """Sends v1/v2c/v3 traps and v2c/v3 informs with the real net-snmp binaries."""
    return SnmpTrapSender(
        require_binary("snmptrap", "snmp"),
        require_binary("snmpinform", "snmp"),
    )
