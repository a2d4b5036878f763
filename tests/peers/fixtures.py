"""Real-peer fixtures (snmpd, snmptrap, netconfd behind sshd, sshd, etcd, promtool).

Loaded as a pytest plugin by tests/conftest.py. Each fixture starts its peer on free ports in a
tmp dir, waits (bounded) until it really answers, and stops it at teardown. A missing peer binary
skips the test locally and fails it in CI (see ``util.skip_or_fail``).

| fixture            | gives                                             | module     |
|--------------------|---------------------------------------------------|------------|
| snmpd_factory      | start(host="127.0.0.1", sys_name=...) → SnmpdProcess | snmpd.py |
| snmpd_agent        | one SnmpdProcess on 127.0.0.1                     | snmpd.py   |
| snmpd_netns        | SnmpdNetns: agent + client namespaces over veth   | netns.py   |
| snmptrap_sender    | SnmpTrapSender (snmptrap / snmpinform)            | snmpd.py   |
| netconfd_factory   | start() → NetconfdProcess (netconfd + its sshd)   | netconfd.py|
| netconfd_device    | one NetconfdProcess                               | netconfd.py|
| sshd_server        | SshdProcess (plain OpenSSH, pubkey only)          | sshd.py    |
| peer_test_user     | TestUser (session): user, password, client key    | sshd.py    |
| etcd_server        | EtcdProcess: .host .port .url .stop()             | etcd.py    |
| etcd_cluster       | EtcdCluster: .endpoints, .members (kill/stop/start/pause/resume) | etcd.py |
| promtool           | absolute path of promtool                         | etcd.py    |
"""

from tests.peers.etcd import etcd_cluster, etcd_server, promtool
from tests.peers.netconfd import netconfd_device, netconfd_factory
from tests.peers.netns import snmpd_netns
from tests.peers.snmpd import snmpd_agent, snmpd_factory, snmptrap_sender
from tests.peers.sshd import peer_test_user, sshd_server

__all__ = [
    "etcd_cluster",
    "etcd_server",
    "netconfd_device",
    "netconfd_factory",
    "peer_test_user",
    "promtool",
    "snmpd_agent",
    "snmpd_factory",
    "snmpd_netns",
    "snmptrap_sender",
    "sshd_server",
]
