"""Cut one process's network paths, and only its own: a cgroup v2 per process, nft rules on it.

A test gives each process it wants to be able to cut off (a Baton vantage) a cgroup of its own
(`Partition.group(name)`), and starts the process inside it (`Group.argv(...)` wraps a command
line: the shell writes its pid into the cgroup, then execs the command, so every socket the
process ever opens belongs to the group). `Group.cut(...)` adds rules to one nft table of the
host namespace that drop the group's packets, and only the group's: rules match on the socket's
cgroup (`socket cgroupv2`), so the lab, etcd and every other process on the same loopback keep
talking. Both directions are dropped — what the group sends (output hook) and what is sent to it
(input hook) — so the cut is what a partition looks like from both sides: silence, every request
waiting out its timeout, nothing reaching the other end (a keepalive that got through would keep
a lease alive on the far side). `Cut.restore()` deletes the rules; `Partition.close()` deletes
the table and the cgroups.

Why not a TCP proxy: it is another hop on every request of every vantage (latency on a loaded
2-core runner), covers TCP only (the SNMP polls are UDP), and a proxy that stops forwarding
still completes TCP handshakes. Why not a network namespace per vantage: reaching the lab and
etcd in the host namespace would need addresses and routes there. Needs root, `nft` and cgroup
v2 mounted under /sys/fs/cgroup (nft resolves cgroup paths there); `partition_usable()` says why
not when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.util import PeerStartError, run, run_checked

CGROUP_ROOT = Path("/sys/fs/cgroup")  # where nft looks cgroup v2 paths up
_HANDLE = re.compile(r"# handle (\d+)\s*$", re.MULTILINE)


def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (`/sys/fs/cgroup` itself, or `/sys/fs/cgroup/unified` on a
    hybrid host), None when it is not."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    return None


def partition_usable(nft: str) -> str | None:
    """None when cgroup-matched nft rules work here, else why not."""
    if os.geteuid() != 0:
        return "cutting a process's paths needs root (cgroups and nft)"
    mount = cgroup2_mount()
    if mount is None:
        return "cgroup v2 is not mounted"
    if mount != CGROUP_ROOT and CGROUP_ROOT not in mount.parents:
        return f"cgroup v2 is mounted at {mount}, outside {CGROUP_ROOT} where nft looks cgroups up"
    listed = run([nft, "list", "tables"])
    if listed.returncode != 0:
        return f"nft does not work here: {listed.stderr.strip()}"
    return None


@dataclass
class Cut:
    """Rules in force for one cut; `restore()` deletes them (safe to call twice)."""

    partition: Partition
    what: str
    handles: list[tuple[str, int]] = field(default_factory=list)  # (chain, rule handle)

    def restore(self) -> None:
        for chain, handle in self.handles:
            self.partition.nft("delete", "rule", "inet", self.partition.table, chain, "handle", str(handle))
        self.handles.clear()

    @property
    def active(self) -> bool:
        return bool(self.handles)


@dataclass
class Group:
    """One cgroup: the processes started through `argv` are in it; `cut` drops their packets."""

    partition: Partition
    name: str
    path: Path  # the cgroup's directory

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command`, started inside this cgroup (same pid: the shell execs it)."""
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > {shlex.quote(str(procs))} && exec "$@"', "sh", *command]

    @property
    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        return []

    @property
    def _match(self) -> str:
        relative = self.path.relative_to(CGROUP_ROOT)
        level = len(self.path.relative_to(self.partition.mount).parts)
        return f'socket cgroupv2 level {level} "{relative}"'

    def cut_ports(self, ports: Iterable[int], what: str) -> Cut:
        """Drop this group's TCP traffic to and from these ports (of servers on this host)."""
        listed = ", ".join(str(p) for p in sorted(set(ports)))
        return self._cut(
            what, [("baton_out", f"tcp dport {{ {listed} }}"), ("baton_in", f"tcp sport {{ {listed} }}")]
        )

    def cut_addresses(self, addresses: Iterable[str], what: str) -> Cut:
        """Drop this group's traffic (any protocol) to and from these addresses."""
        listed = ", ".join(sorted(set(addresses)))
        return self._cut(
            what, [("baton_out", f"ip daddr {{ {listed} }}"), ("baton_in", f"ip saddr {{ {listed} }}")]
        )

    def _cut(self, what: str, rules: Sequence[tuple[str, str]]) -> Cut:
        cut = Cut(self.partition, f"{self.name}: {what}")
        try:
            for chain, match in rules:
                # The input hook sees a packet before it is delivered: the socket is looked up.
                cut.handles.append(
                    (chain, self.partition.add_rule(chain, f"{match} {self._match} counter drop"))
                )
        except PeerStartError:
            cut.restore()
            raise
        self.partition.cuts.append(cut)
        return cut


class Partition:
    """An nft table of the host namespace and the cgroups its rules match (see the module
    docstring); `close()` removes both."""

    def __init__(self, nft: str) -> None:
        mount = cgroup2_mount()
        if mount is None:
            raise PeerStartError("cgroup v2 is not mounted")
        self.mount = mount
        self.nft_binary = nft
        self.tag = f"bt{secrets.token_hex(3)}"
        self.table = f"baton_partition_{self.tag}"
        self.groups: dict[str, Group] = {}
        self.cuts: list[Cut] = []
        self._created_table = False

    def open(self) -> Partition:
        self.nft("add", "table", "inet", self.table)
        self._created_table = True
        # Priority -10: before any filter a host may have at 0 (ours only ever drops).
        self.nft("add", "chain", "inet", self.table, "baton_out", "{ type filter hook output priority -10; }")
        self.nft("add", "chain", "inet", self.table, "baton_in", "{ type filter hook input priority -10; }")
        return self

    def nft(self, *args: str) -> str:
        return run_checked([self.nft_binary, *args]).stdout

    def add_rule(self, chain: str, rule: str) -> int:
        out = run_checked(
            [self.nft_binary, "--echo", "--handle", "add", "rule", "inet", self.table, chain, rule]
        ).stdout
        found = _HANDLE.search(out)
        if found is None:
            raise PeerStartError(f"nft gave no handle for the rule {rule!r}: {out.strip()}")
        return int(found.group(1))

    def group(self, name: str) -> Group:
        path = self.mount / f"{self.tag}-{name}"
        path.mkdir()
        group = Group(self, name, path)
        self.groups[name] = group
        return group

    def counters(self) -> str:
        """The table as nft lists it (each rule's packet counter: what was dropped)."""
        return run([self.nft_binary, "list", "table", "inet", self.table]).stdout

    def close(self) -> list[str]:
        """Delete the table and the cgroups; what could not be removed (a cgroup whose process
        still runs), as sentences."""
        problems: list[str] = []
        if self._created_table:
            deleted = run([self.nft_binary, "delete", "table", "inet", self.table])
            if deleted.returncode != 0:
                problems.append(f"nft table {self.table} not deleted: {deleted.stderr.strip()}")
            self._created_table = False
        for group in self.groups.values():
            try:
                group.path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cgroup {group.path} not removed (pids {group.pids}): {exc}")
        self.groups.clear()
        return problems
