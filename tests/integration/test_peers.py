"""Smoke tests of the real-peer fixtures (tests/peers/): each peer really answers, and refuses
what it must refuse. Clients here are the peers' own CLIs, ncclient and asyncssh."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.peers.etcd import EtcdProcess, etcd_healthy
from tests.peers.netconfd import NetconfdProcess, netconf_hello
from tests.peers.netns import AGENT_ADDR, SnmpdNetns
from tests.peers.snmpd import (
    IF_OPER_STATUS_OID,
    SYS_NAME_OID,
    SnmpdProcess,
    SnmpTrapSender,
    ber_oid,
    snmp_v3_args,
)
from tests.peers.sshd import SshdProcess, TestUser
from tests.peers.util import PeerProcess, PeerStartError, free_port, require_binary, run, skip_or_fail

LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
LINK_UP = "1.3.6.1.6.3.1.1.5.4"
IF_INDEX_2 = ("1.3.6.1.2.1.2.2.1.1.2", "i", "2")


def snmpget(host: str, port: int, *args: str, oid: str = SYS_NAME_OID) -> subprocess.CompletedProcess[str]:
    argv = ["snmpget", "-m", "", "-On", "-Oqv", "-t", "0.5", "-r", "0", *args, f"{host}:{port}", oid]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)


# -- the CI no-skip rule -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_skip_or_fail_fails_when_ci_is_set(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """In CI a missing peer fails the test instead of skipping it."""
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="snmpd not installed"):
        skip_or_fail("snmpd not installed (apt-get install snmpd)")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_skip_or_fail_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Outside CI (CI unset, empty or false) a missing peer skips the test with the reason."""
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="apt-get install snmpd"):
        skip_or_fail("snmpd not installed (apt-get install snmpd)")


def test_missing_binary_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer binary that is not installed skips/fails with the apt-get command that installs it."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install no-such-pkg"):
        require_binary("baton-no-such-binary", "no-such-pkg", paths=["/nonexistent/baton-no-such-binary"])


# -- snmpd ---------------------------------------------------------------------------------------


def test_snmpd_answers_v2c_with_its_sys_name(snmpd_agent: SnmpdProcess) -> None:
    """snmpget v2c with the endpoint's community returns the agent's sysName."""
    ep = snmpd_agent.endpoint
    result = snmpget(ep.host, ep.port, "-v2c", "-c", ep.community)
    assert (0, f'"{ep.sys_name}"') == (result.returncode, result.stdout.strip())


@pytest.mark.parametrize("user_index", [0, 1, 2], ids=["SHA-AES", "SHA256-AES", "SHA512-AES256"])
def test_snmpd_answers_v3_authpriv(snmpd_agent: SnmpdProcess, user_index: int) -> None:
    """Every v3 authPriv user the agent exposes gets the sysName back."""
    ep = snmpd_agent.endpoints[user_index]
    result = snmpget(ep.host, ep.port, *snmp_v3_args(ep))
    assert (0, f'"{ep.sys_name}"') == (result.returncode, result.stdout.strip())


def test_snmpd_wrong_community_times_out(snmpd_agent: SnmpdProcess) -> None:
    """A wrong community gets no answer at all (a timeout), as on a real agent."""
    ep = snmpd_agent.endpoint
    result = snmpget(ep.host, ep.port, "-v2c", "-c", "wrong-community")
    assert result.returncode != 0
    assert "Timeout" in result.stderr


def test_snmpd_wrong_v3_key_is_refused(snmpd_agent: SnmpdProcess) -> None:
    """A v3 request with the wrong auth key fails."""
    ep = snmpd_agent.endpoint
    args = snmp_v3_args(ep)
    args[args.index("-A") + 1] = "wrong-auth-key"
    result = snmpget(ep.host, ep.port, *args)
    assert result.returncode != 0


def test_snmpd_factory_runs_agents_on_loopback_aliases(snmpd_factory: Callable[..., SnmpdProcess]) -> None:
    """Agents on 127.0.0.2 and .3 each answer with their own sysName on their own address."""
    agents = [
        snmpd_factory("127.0.0.2", sys_name="co-a-dev1"),
        snmpd_factory("127.0.0.3", sys_name="co-b-dev1"),
    ]
    answers = [snmpget(a.host, a.port, "-v2c", "-c", "public").stdout.strip() for a in agents]
    assert ['"co-a-dev1"', '"co-b-dev1"'] == answers
    assert ["127.0.0.2", "127.0.0.3"] == [a.endpoint.host for a in agents]


def test_snmpd_if_mib_is_deterministic_and_settable(snmpd_agent: SnmpdProcess) -> None:
    """IF-MIB has exactly the 4 configured rows, all up; a SET of ifOperStatus.2 reads back down."""
    walk = snmpd_agent.cli("snmpwalk", "-On", IF_OPER_STATUS_OID)
    rows = [line.split(" = ")[0] for line in walk.stdout.splitlines()]
    assert [f".{IF_OPER_STATUS_OID}.{i}" for i in (1, 2, 3, 4)] == rows
    assert walk.stdout.count("INTEGER: 1") == 4
    snmpd_agent.set_if_oper_status(2, 2)
    after = snmpd_agent.cli("snmpget", "-Oqv", f"{IF_OPER_STATUS_OID}.2")
    assert "2" == after.stdout.strip()


def test_snmpd_restart_keeps_port_and_resets_state(snmpd_agent: SnmpdProcess) -> None:
    """stop() silences the agent; start() brings it back on the same port with config values."""
    ep = snmpd_agent.endpoint
    old_pid = snmpd_agent.pid
    snmpd_agent.set_if_oper_status(1, 2)
    snmpd_agent.stop()
    assert snmpd_agent.pid is None
    assert snmpget(ep.host, ep.port, "-v2c", "-c", ep.community).returncode != 0
    snmpd_agent.start()
    assert ep == snmpd_agent.endpoint
    assert old_pid != snmpd_agent.pid
    assert snmpget(ep.host, ep.port, *snmp_v3_args(ep)).returncode == 0
    assert "1" == snmpd_agent.cli("snmpget", "-Oqv", f"{IF_OPER_STATUS_OID}.1").stdout.strip()


def test_snmpd_on_a_taken_port_reports_the_race(tmp_path: Path) -> None:
    """An agent whose port was taken fails fast with its log, and is recognised as a lost race."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        agent = SnmpdProcess(tmp_path, "127.0.0.1", squatter.getsockname()[1], "taken", ready_timeout_s=5)
        with pytest.raises(PeerStartError, match="exited"):
            agent.start()
    assert agent.lost_port_race()


def test_sshd_on_a_taken_port_reports_the_race(tmp_path: Path, peer_test_user: TestUser) -> None:
    """An sshd whose port was taken fails fast with its log, and is recognised as a lost race."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = SshdProcess(tmp_path, squatter.getsockname()[1], peer_test_user, ready_timeout_s=5)
        with pytest.raises(PeerStartError, match=r"(?s)exited.*Address already in use"):
            server.start()
    assert server.lost_port_race()


# -- snmpd in a network namespace ----------------------------------------------------------------


def _netns_get(pair: SnmpdNetns) -> subprocess.CompletedProcess[str]:
    ep = pair.endpoint
    argv = ["snmpget", "-m", "", "-Oqv", "-v2c", "-c", ep.community, "-t", "0.5", "-r", "0"]
    return pair.run_in_client_ns([*argv, f"{ep.host}:{ep.port}", SYS_NAME_OID], timeout=10)


def test_snmpd_netns_reachable_cut_restore(snmpd_netns: SnmpdNetns) -> None:
    """The agent answers from the client namespace, not after cut(), again after restore()."""
    assert '"netns-dev1"' == _netns_get(snmpd_netns).stdout.strip()
    snmpd_netns.cut()
    assert _netns_get(snmpd_netns).returncode != 0
    snmpd_netns.restore()
    deadline = time.monotonic() + 5
    while _netns_get(snmpd_netns).returncode != 0:  # the link needs a moment to come back
        assert time.monotonic() < deadline, "agent still unreachable 5 s after restore()"
    assert '"netns-dev1"' == _netns_get(snmpd_netns).stdout.strip()


def test_snmpd_netns_drop_udp_silences_the_agent(snmpd_netns: SnmpdNetns) -> None:
    """With drop_udp() the agent times out while its link stays up; undrop_udp() heals it."""
    snmpd_netns.drop_udp()
    assert "Timeout" in _netns_get(snmpd_netns).stderr
    snmpd_netns.undrop_udp()
    assert 0 == _netns_get(snmpd_netns).returncode


def test_snmpd_netns_if_oper_status_follows_the_link(snmpd_netns: SnmpdNetns) -> None:
    """Inside the namespace IF-MIB is real: the veth's ifOperStatus is up, and down after cut()."""
    assert snmpd_netns.agent is not None
    oid = f"{IF_OPER_STATUS_OID}.{snmpd_netns.agent_ifindex}"
    assert "1" == snmpd_netns.agent.cli("snmpget", "-Oqv", oid).stdout.strip()
    snmpd_netns.cut()
    deadline = time.monotonic() + 10  # snmpd caches the interface table for a few seconds
    while "2" != snmpd_netns.agent.cli("snmpget", "-Oqv", oid).stdout.strip():
        assert time.monotonic() < deadline, "ifOperStatus still up 10 s after cut()"
        time.sleep(0.2)


def test_snmpd_netns_is_not_reachable_from_the_host(snmpd_netns: SnmpdNetns) -> None:
    """The host namespace has no route to the agent: only the client namespace reaches it."""
    ep = snmpd_netns.endpoint
    assert AGENT_ADDR == ep.host
    assert snmpget(ep.host, ep.port, "-v2c", "-c", ep.community).returncode != 0


def test_netns_pair_is_deleted_on_destroy(tmp_path: Path) -> None:
    """destroy() removes both namespaces (and the agent)."""
    if os.geteuid() != 0:
        skip_or_fail("netns needs root")
    pair = SnmpdNetns(tmp_path, require_binary("ip", "iproute2"), require_binary("nft", "nftables"))
    try:
        pair.create("gone-dev")
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert pair.agent_ns in listed
    finally:
        pair.destroy()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert (False, False) == (pair.agent_ns in listed, pair.client_ns in listed)


# -- snmptrap / snmpinform -----------------------------------------------------------------------


@pytest.fixture
def udp_sink() -> Iterator[socket.socket]:
    """A UDP socket on a free 127.0.0.1 port that the trap tests read datagrams from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def test_trap_v1_is_sent(snmptrap_sender: SnmpTrapSender, udp_sink: socket.socket) -> None:
    """trap_v1 exits 0 and a datagram with the community and enterprise OID arrives."""
    port = udp_sink.getsockname()[1]
    result = snmptrap_sender.trap_v1(
        "127.0.0.1", port, "public", "1.3.6.1.4.1.8072", "127.0.0.9", 2, 0, [IF_INDEX_2]
    )
    assert 0 == result.returncode, result.stderr
    datagram = udp_sink.recv(65535)
    assert b"public" in datagram
    assert ber_oid("1.3.6.1.4.1.8072") in datagram


def test_trap_v2c_is_sent(snmptrap_sender: SnmpTrapSender, udp_sink: socket.socket) -> None:
    """trap_v2c exits 0 and a datagram carrying the trap OID and the varbind OIDs arrives."""
    port = udp_sink.getsockname()[1]
    result = snmptrap_sender.trap_v2c("127.0.0.1", port, "public", LINK_DOWN, [IF_INDEX_2])
    assert 0 == result.returncode, result.stderr
    datagram = udp_sink.recv(65535)
    assert ber_oid(LINK_DOWN) in datagram
    assert ber_oid(IF_INDEX_2[0]) in datagram


def test_trap_v3_is_sent(snmptrap_sender: SnmpTrapSender, udp_sink: socket.socket) -> None:
    """trap_v3 exits 0 and an authPriv datagram with the user and the sender's engine id arrives."""
    port = udp_sink.getsockname()[1]
    result = snmptrap_sender.trap_v3(
        "127.0.0.1", port, "trapuser", "SHA", "authpass123", "AES", "privpass123",
        "0x8000000001020304", LINK_DOWN, [IF_INDEX_2],
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    datagram = udp_sink.recv(65535)
    assert b"trapuser" in datagram
    assert bytes.fromhex("8000000001020304") in datagram
    assert ber_oid(LINK_DOWN) not in datagram  # the PDU is encrypted


@pytest.fixture
def snmptrapd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real snmptrapd acknowledging informs (v2c community "public", v3 user "informuser")."""
    binary = require_binary("snmptrapd", "snmptrapd", paths=["/usr/sbin/snmptrapd"])
    port = free_port(kind=socket.SOCK_DGRAM)
    conf = tmp_path / "snmptrapd.conf"
    conf.write_text(
        f"snmpTrapdAddr udp:127.0.0.1:{port}\n"
        "authCommunity log public\n"
        "createUser informuser SHA authpass123 AES privpass123\n"
        "authUser log informuser priv\n"
        "format2 TRAP %b %v\\n\n"
    )
    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path / "persist")}
    log = tmp_path / "snmptrapd.log"
    proc = PeerProcess(
        "snmptrapd", [binary, "-f", "-Lo", "-C", "-c", str(conf), "-m", "", "-n"], log, env=env
    )
    proc.spawn()
    try:
        proc.wait_ready(lambda: "NET-SNMP version" in log.read_text(), 10, "logging its start")
        yield port, log
    finally:
        proc.stop()


def _wait_for_text(path: Path, text: str, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_inform_v2c_is_acknowledged(snmptrap_sender: SnmpTrapSender, snmptrapd: tuple[int, Path]) -> None:
    """inform_v2c exits 0 once snmptrapd acknowledges, and snmptrapd logged the notification."""
    port, log = snmptrapd
    result = snmptrap_sender.inform_v2c("127.0.0.1", port, "public", LINK_UP, [IF_INDEX_2])
    assert 0 == result.returncode, result.stderr
    assert _wait_for_text(log, LINK_UP.split(".", 1)[1])


def test_inform_v3_is_acknowledged(snmptrap_sender: SnmpTrapSender, snmptrapd: tuple[int, Path]) -> None:
    """inform_v3 (authPriv, receiver's engine id discovered) exits 0 once snmptrapd acknowledges."""
    port, log = snmptrapd
    result = snmptrap_sender.inform_v3(
        "127.0.0.1", port, "informuser", "SHA", "authpass123", "AES", "privpass123", LINK_DOWN, [IF_INDEX_2]
    )
    assert 0 == result.returncode, result.stderr
    assert _wait_for_text(log, LINK_DOWN.split(".", 1)[1])


def test_inform_without_receiver_fails_in_bounded_time(snmptrap_sender: SnmpTrapSender) -> None:
    """An inform nobody acknowledges exits non-zero after its short timeout (no hang)."""
    port = free_port(kind=socket.SOCK_DGRAM)
    started = time.monotonic()
    result = snmptrap_sender.inform_v2c("127.0.0.1", port, "public", LINK_UP, timeout_s=0.5, retries=0)
    assert result.returncode != 0
    assert time.monotonic() - started < 5


# -- netconfd ------------------------------------------------------------------------------------


def test_netconfd_hello_with_pinned_host_key(netconfd_device: NetconfdProcess) -> None:
    """ncclient gets a hello with candidate and confirmed-commit over SSH, host key pinned."""
    capabilities = netconf_hello(netconfd_device.endpoint)
    assert "urn:ietf:params:netconf:capability:candidate:1.0" in capabilities
    assert "urn:ietf:params:netconf:capability:confirmed-commit:1.1" in capabilities


def test_netconfd_refuses_a_wrong_pinned_host_key(netconfd_factory: Callable[..., NetconfdProcess]) -> None:
    """Pinning another device's host key makes the connection fail (verification is really on)."""
    from ncclient.transport.errors import SSHError

    first, second = netconfd_factory(), netconfd_factory()
    assert first.endpoint.port != second.endpoint.port
    wrong = dataclasses.replace(first.endpoint, host_key=second.endpoint.host_key)
    with pytest.raises(SSHError, match=r"(?i)unknown host key"):
        netconf_hello(wrong)


def test_netconfd_accepts_password_login(netconfd_device: NetconfdProcess) -> None:
    """The endpoint's password logs in too (no client key)."""
    from ncclient import manager

    ep = netconfd_device.endpoint
    assert ep.password
    with manager.connect(
        host=ep.host, port=ep.port, username=ep.username, password=ep.password,
        allow_agent=False, look_for_keys=False, hostkey_verify=True, hostkey_b64=ep.host_key_b64, timeout=5,
    ) as session:  # fmt: skip
        assert session.connected


def test_netconfd_restart_after_kill(netconfd_device: NetconfdProcess) -> None:
    """After kill() the device is unreachable; start() brings it back on the same port."""
    ep = netconfd_device.endpoint
    netconfd_device.kill()
    assert netconfd_device.pid is None
    netconfd_device.start()
    assert ep == netconfd_device.endpoint
    assert netconf_hello(ep)


# -- sshd ----------------------------------------------------------------------------------------


async def test_sshd_runs_a_command_with_known_hosts(sshd_server: SshdProcess) -> None:
    """asyncssh logs in with the client key, checks the pinned host key, and runs a command."""
    ep = sshd_server.endpoint
    async with asyncssh.connect(
        ep.host, port=ep.port, username=ep.username, client_keys=[str(ep.private_key)],
        known_hosts=str(ep.known_hosts), agent_path=None, connect_timeout=10,
    ) as conn:  # fmt: skip
        result = await conn.run("id -un", check=True, timeout=10)
    assert ep.username == str(result.stdout).strip()


async def test_sshd_refuses_a_wrong_host_key(sshd_server: SshdProcess, tmp_path: Path) -> None:
    """A known_hosts entry with another key makes asyncssh refuse the server."""
    ep = sshd_server.endpoint
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{ep.host}]:{ep.port} {' '.join(other)}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(
            ep.host, port=ep.port, username=ep.username, client_keys=[str(ep.private_key)],
            known_hosts=str(known_hosts), agent_path=None, connect_timeout=10,
        )  # fmt: skip


async def test_sshd_refuses_a_wrong_client_key(sshd_server: SshdProcess) -> None:
    """A client key not in authorized_keys is refused (and there is no password fallback)."""
    ep = sshd_server.endpoint
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            ep.host, port=ep.port, username=ep.username,
            client_keys=[asyncssh.generate_private_key("ssh-ed25519")], password="anything",
            known_hosts=str(ep.known_hosts), agent_path=None, connect_timeout=10,
        )  # fmt: skip


# -- etcd and promtool ---------------------------------------------------------------------------


def test_etcd_put_get(etcd_server: EtcdProcess) -> None:
    """etcdctl puts a key and reads the same value back."""
    etcdctl = require_binary("etcdctl", "etcd-client")
    env = {**os.environ, "ETCDCTL_API": "3"}
    base = [etcdctl, f"--endpoints={etcd_server.url}", "--command-timeout=5s"]
    put = run([*base, "put", "/baton/test", "lease-holder-a"], 15, env=env)
    assert 0 == put.returncode, put.stderr
    get = run([*base, "get", "--print-value-only", "/baton/test"], 15, env=env)
    assert "lease-holder-a" == get.stdout.strip()


def test_etcd_stop_makes_it_unhealthy(etcd_server: EtcdProcess) -> None:
    """After stop() the health endpoint no longer answers."""
    assert etcd_healthy(etcd_server.url)
    etcd_server.stop()
    assert not etcd_healthy(etcd_server.url)


def test_promtool_runs(promtool: str) -> None:
    """The promtool fixture is an absolute path to a working promtool."""
    result = subprocess.run([promtool, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert Path(promtool).is_absolute()
    assert 0 == result.returncode
    assert "promtool" in (result.stdout + result.stderr)
