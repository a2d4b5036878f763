"""A simulated device of the lab: identity, interfaces, faults, and its management plane.

The management plane (who may manage the device, AAA servers, trap/syslog targets, contact) lives
in the device's NETCONF datastore (`baton.lab.datastore`), so a handover playbook changes it with
ordinary edit-config + commit and a check can read it back with get-config. Every protocol front
end (NETCONF/SSH in `lab.netconf_server` / `lab.ssh_cli`, SNMP in `lab.snmp_agent`) reads the same
object, so what one protocol changes the others see at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baton.lab.datastore import Datastore


@dataclass(frozen=True, slots=True)
class TrapTarget:
    address: str
    port: int = 162
    community: str = "public"


@dataclass(frozen=True, slots=True)
class MgmtView:
    """The running management-plane configuration, as read from the datastore."""

    acl: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # who may open sessions
    acl_offices: tuple[str, ...] = ()  # office ids the ACL entries are named after
    aaa_servers: tuple[str, ...] = ()
    trap_targets: tuple[TrapTarget, ...] = ()
    syslog_servers: tuple[str, ...] = ()
    contact: str = ""

    def allows(self, source: str) -> bool:
        """May a management session come from `source`? An empty ACL allows nobody."""
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(addr in net for net in self.acl)


@dataclass(slots=True)
class Interface:
    if_index: int
    name: str
    oper_up: bool = True


@dataclass(slots=True)
class Faults:
    """Faults injected on command. Mutated in place by the lab's control API.

    The first five hold until changed. The NETCONF reply faults below are one-shot: each fires
    on the next RPC it applies to (on any session of the device: a running Baton's probes too),
    then clears itself. no_reply, endless_reply and garbage_reply hold the operation they wait
    for: "*" for any RPC, or one name ("commit", "edit-config", "get"...), so a probe's <get>
    does not set off a fault meant for a handover's commit; None is off. Several armed at once
    fire in this order: drop_mid_rpc, drop_after_commit, no_reply, endless_reply, garbage_reply
    (the first that applies wins; the others stay armed).
    """

    powered: bool = True  # False: the device answers nothing at all
    cut: bool = False  # path to the device cut: unreachable, though it still runs
    # Paths cut from these source addresses only (one vantage's uplink): what comes from them is
    # dropped, traps to them are not sent; everyone else reaches the device as before.
    cut_from: set[str] = field(default_factory=set)
    slow_s: float = 0.0  # delay added to every answer
    refuse_commits: bool = False  # <commit> fails with an rpc-error
    # The next RPC closes the session instead of replying; the RPC is NOT carried out.
    drop_mid_rpc: bool = False
    # The next <commit> is carried out (applied to running if it succeeds), then the session is
    # closed without a reply. As on a real device, closing the session rolls back a confirmed
    # commit made without <persist>; a plain or persisted commit stays.
    drop_after_commit: bool = False
    # The next RPC is carried out (a commit IS applied), then the reply is withheld; the session
    # stays open and answers the RPCs after it as usual.
    no_reply: str | None = None
    # The next RPC is carried out (a commit IS applied), then its reply starts and never ends:
    # bytes stream without an end-of-message (or end-of-chunks) until the client goes away.
    endless_reply: str | None = None
    # The next RPC is carried out (a commit IS applied), then its reply is well framed but not
    # well-formed XML; the session stays open.
    garbage_reply: str | None = None

    def take(self, fault: str, operation: str) -> bool:
        """Is the one-shot reply fault `fault` armed for `operation`? If so it fires: disarmed."""
        armed = getattr(self, fault)
        if armed is None or armed not in ("*", operation):
            return False
        setattr(self, fault, None)
        return True

    @property
    def reachable(self) -> bool:
        return self.powered and not self.cut

    def reaches(self, source: str) -> bool:
        """Does what `source` sends reach the device (and its answers reach `source`)?"""
        return self.reachable and source.removeprefix("::ffff:") not in self.cut_from


@dataclass(slots=True)
class LabDevice:
    id: str
    office: str
    role: str
    address: str  # 127.x.y.z loopback address the device listens on
    datastore: Datastore
    sys_descr: str = "Baton lab device"
    interfaces: list[Interface] = field(default_factory=list)
    boot_time: float = 0.0  # monotonic time of the last (simulated) boot: sysUpTime counts from it
    faults: Faults = field(default_factory=Faults)
    # A model without :confirmed-commit (its hello leaves it out, and <confirmed/> is refused):
    # what a playbook's `compensate` steps exist for.
    confirmed_commit: bool = True
    history: list[str] = field(default_factory=list)  # announce/retract commands run on its CLI

    @property
    def mgmt(self) -> MgmtView:
        return self.datastore.running_mgmt()
