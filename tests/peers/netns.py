"""snmpd inside a network namespace, reached over a veth pair from a second "client" namespace.

Layout (both namespaces created per test, names ``bt<6 hex>a`` / ``bt<6 hex>b``)::

    agent ns  "bt…a": veth ``vA`` 127.100.0.1/30, snmpd on udp 127.100.0.1:1161, nft table ``inet baton``
    client ns "bt…b": veth ``vB`` 127.100.0.2/30

The host namespace gets no address and no route: test clients run inside the client namespace
(``run_in_client_ns``). Inside the agent namespace IF-MIB is real and deterministic: ``lo`` and
``vA`` only (``.agent_ifindex`` is vA's ifIndex), and ``cut()`` really takes vA down (snmpd caches
the interface table: ifOperStatus shows it within about 3 s).
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.peers.endpoints import SnmpEndpoint
from tests.peers.snmpd import COMMUNITY, SYS_NAME_OID, SnmpdProcess
from tests.peers.util import PeerStartError, require_binary, require_root, run, run_checked, skip_or_fail

AGENT_ADDR = "127.100.0.1"
CLIENT_ADDR = "127.100.0.2"
PREFIX_LEN = 30
SNMP_PORT = 1161  # fixed inside the agent's own namespace, where nothing else listens
NFT_TABLE = "baton"


def netns_usable(ip: str) -> str | None:
    """None when `ip netns` works here, else why not."""
    probe = f"btprobe{secrets.token_hex(3)}"
    added = run([ip, "netns", "add", probe])
    if added.returncode != 0:
        return f"ip netns add failed: {added.stderr.strip()}"
    run([ip, "netns", "del", probe])
    return None


class SnmpdNetns:
    """The agent/client namespace pair with an snmpd in the agent namespace."""

    def __init__(self, workdir: Path, ip: str, nft: str) -> None:
        self.ip = ip
        self.nft = nft
        suffix = secrets.token_hex(3)
        self.agent_ns = f"bt{suffix}a"
        self.client_ns = f"bt{suffix}b"
        self.workdir = workdir
        self.agent: SnmpdProcess | None = None
        self._created: list[str] = []

    # -- setup / teardown ---------------------------------------------------------------------
    def create(self, sys_name: str) -> SnmpdNetns:
        ip = self.ip
        for ns in (self.agent_ns, self.client_ns):
            run_checked([ip, "netns", "add", ns])
            self._created.append(ns)
        veth = ["vA", "netns", self.agent_ns, "type", "veth", "peer", "name", "vB", "netns", self.client_ns]
        run_checked([ip, "link", "add", *veth])
        for ns, dev, addr in ((self.agent_ns, "vA", AGENT_ADDR), (self.client_ns, "vB", CLIENT_ADDR)):
            # 127/8 is "martian" on a non-loopback device unless route_localnet is on
            run_checked(
                [
                    ip,
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.route_localnet=1",
                    f"net.ipv4.conf.{dev}.route_localnet=1",
                ]
            )
            run_checked([ip, "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
            run_checked([ip, "-n", ns, "link", "set", "lo", "up"])
            run_checked([ip, "-n", ns, "link", "set", dev, "up"])
        self.agent_ifindex = int(
            run_checked([ip, "-n", self.agent_ns, "-o", "link", "show", "vA"]).stdout.split(":", 1)[0]
        )
        self.agent = SnmpdProcess(
            self.workdir,
            AGENT_ADDR,
            SNMP_PORT,
            sys_name,
            interfaces=0,  # the namespace's real IF-MIB (lo, vA) is already deterministic
            argv_prefix=[ip, "netns", "exec", self.agent_ns],
            is_ready=self._client_sees_agent,
            client_net=str(ipaddress.ip_interface(f"{AGENT_ADDR}/{PREFIX_LEN}").network),
        )
        self.agent.start()
        return self

    def destroy(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        for ns in reversed(self._created):
            run([self.ip, "netns", "del", ns])
        self._created.clear()

    # -- handle -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> SnmpEndpoint:
        assert self.agent is not None
        return self.agent.endpoint

    @property
    def endpoints(self) -> tuple[SnmpEndpoint, ...]:
        assert self.agent is not None
        return self.agent.endpoints

    def run_in_client_ns(
        self, argv: Sequence[str], timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the client namespace (text output captured, never raises on exit)."""
        return run([self.ip, "netns", "exec", self.client_ns, *argv], timeout)

    def run_in_agent_ns(self, argv: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return run([self.ip, "netns", "exec", self.agent_ns, *argv], timeout)

    def _client_sees_agent(self) -> bool:
        result = self.run_in_client_ns(
            [
                "snmpget",
                "-m",
                "",
                "-v2c",
                "-c",
                COMMUNITY,
                "-t",
                "0.3",
                "-r",
                "0",
                f"{AGENT_ADDR}:{SNMP_PORT}",
                SYS_NAME_OID,
            ],
            timeout=5.0,
        )
        return result.returncode == 0

    def cut(self) -> None:
        """Take the agent's link down (the client sees timeouts; ifOperStatus of vA goes down)."""
        run_checked([self.ip, "-n", self.agent_ns, "link", "set", "vA", "down"])

    def restore(self) -> None:
        """Bring the agent's link back up."""
        run_checked([self.ip, "-n", self.agent_ns, "link", "set", "vA", "up"])

    def drop_udp(self) -> None:
        """Drop incoming SNMP in the agent namespace with nftables (link stays up: a silent agent)."""
        t = NFT_TABLE
        script = (
            f"table inet {t} {{\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "}\n"
            f"add rule inet {t} input udp dport {SNMP_PORT} drop\n"
        )
        self.run_in_agent_ns([self.nft, "flush", "ruleset"])
        result = run([self.ip, "netns", "exec", self.agent_ns, self.nft, "-f", "-"], input=script)
        if result.returncode != 0:
            raise PeerStartError(f"nft in {self.agent_ns} failed: {result.stderr.strip()}")

    def undrop_udp(self) -> None:
        """Remove the drop rule."""
        self.run_in_agent_ns([self.nft, "flush", "ruleset"])

    def __repr__(self) -> str:
        return f"SnmpdNetns(agent {self.agent_ns} {AGENT_ADDR}:{SNMP_PORT}, client {self.client_ns})"


@pytest.fixture
def snmpd_netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnmpdNetns]:
    """An snmpd in its own namespace, reachable from a client namespace over veth; both deleted after."""
    require_root("snmpd_netns (ip netns)")
    ip = require_binary("ip", "iproute2", paths=["/usr/sbin/ip", "/sbin/ip"])
    nft = require_binary("nft", "nftables", paths=["/usr/sbin/nft"])
    require_binary("snmpd", "snmpd", paths=["/usr/sbin/snmpd"])
    require_binary("snmpget", "snmp")
    why = netns_usable(ip)
    if why is not None:
        skip_or_fail(f"network namespaces not usable here: {why}")
    pair = SnmpdNetns(tmp_path_factory.mktemp("snmpd-netns"), ip, nft)
    try:
        pair.create("netns-dev1")
        yield pair
    finally:
        pair.destroy()
