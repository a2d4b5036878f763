"""How a test reaches a peer. The lab's simulated devices and the real peers (snmpd, netconfd
behind OpenSSH, sshd) hand out the same shapes, so one contract suite can run against both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SshEndpoint:
    """An SSH server (plain shell, or the `netconf` subsystem) with a pinned host key."""

    host: str
    port: int
    username: str
    private_key: Path  # client key file (OpenSSH format, no passphrase)
    known_hosts: Path  # a file with the pinned host key line for [host]:port
    host_key: str  # "ssh-ed25519 AAAA..." (type and base64, no comment)
    password: str | None = None

    @property
    def host_key_b64(self) -> str:
        return self.host_key.split()[1]


@dataclass(frozen=True)
class SnmpEndpoint:
    """An SNMP agent answering v2c (community) and v3 authPriv (user) on host:port/udp."""

    host: str
    port: int
    community: str
    v3_user: str
    v3_auth_protocol: str  # "SHA", "SHA256", ...
    v3_auth_key: str
    v3_priv_protocol: str  # "AES", ...
    v3_priv_key: str
    sys_name: str
