"""Real-peer fixtures (snmpd, snmptrap, netconfd behind sshd, sshd, etcd, promtool).

Loaded as a pytest plugin by tests/conftest.py. Each fixture starts its peer on free ports in a
tmp dir, waits (bounded) until it really answers, and stops it at teardown. A missing peer binary
skips the test locally and fails it in CI (see ``util.skip_or_fail``).
"""

from tests.peers.snmpd import snmpd_agent, snmpd_factory, snmptrap_sender

__all__ = [
    "snmpd_agent",
    "snmpd_factory",
    "snmptrap_sender",
]
