"""Who may do what: operators' roles and scopes, decided as pure functions.

Theory of operation. `baton.yaml`'s `operators:` section becomes one immutable `Grants`: named
groups of people (unix user names from the API socket's peer credentials, `token:NAME` for the
bearer tokens of the TCP API) and grants, each giving one person or group (`group:NAME`: the
members listed under `operators.groups`, or for unix-socket peers the members of the unix group
NAME) a role over a scope, optionally `until` a time.

Roles are ordered: a viewer reads; an operator also hands over, hands back, acks, aborts,
approves, denies and dry-runs, for the offices in its scope; an admin also pauses, resumes,
switches shadow mode, forces an office's phase (`resolve`) and sees every grant. A scope is
`all`, `office:ID` or `region:NAME`. Commands about the whole daemon (pause, resume, shadow, the
grant list) need the role for `all`.

`authorize(grants, identity, target, now)` is the only place that says yes or no; the API asks it
before it hands a command to the controller, and answers 403 with its one sentence (the role and
scope needed, and what the person holds). A grant past its `until` is refused by the same
comparison the core makes when it journals the expiry (`GrantTerm`s in the policy, decided on
`Ticked`), so what the API allows and what the journal says never disagree. Time is an argument:
no clock, no I/O.

Without an `operators:` section (`enforced=False`) everyone who gets into the API is an admin
everywhere: the socket's group and the tokens are the only gate (Baton before grants).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from baton.core.model import GrantTerm, frozen_map


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
ALL = "all"

# The role each command needs (`read`: any view; office reads need it for that office).
COMMANDS: Mapping[str, Role] = frozen_map(
    {
        "read": Role.VIEWER,
        "list": Role.VIEWER,
        "handover": Role.OPERATOR,
        "handback": Role.OPERATOR,
        "ack": Role.OPERATOR,
        "abort": Role.OPERATOR,
        "approve": Role.OPERATOR,
        "deny": Role.OPERATOR,
        "plan": Role.OPERATOR,
        "resolve": Role.ADMIN,
        "pause": Role.ADMIN,
        "resume": Role.ADMIN,
        "shadow": Role.ADMIN,
        "grants": Role.ADMIN,
    }
)
# Commands about the whole daemon: the role is needed for `all`.
GLOBAL = frozenset({"pause", "resume", "shadow", "grants"})
# Commands that need the role somewhere, for no office in particular.
ANYWHERE = frozenset({"list"})

_VERBS = {
    "read": "read",
    "handover": "hand over",
    "handback": "hand back",
    "ack": "acknowledge",
    "abort": "abort a run of",
    "approve": "approve a run of",
    "deny": "deny a run of",
    "plan": "dry-run a handover of",
    "resolve": "set the phase of",
    "pause": "pause automation",
    "resume": "resume automation",
    "shadow": "switch shadow mode",
    "grants": "list every grant",
    "list": "read Baton's state",
}


def rank(role: Role) -> int:
    return _RANK[role]


@dataclass(frozen=True, slots=True)
class Grant:
    """`to` (a person, `token:NAME`, or `group:NAME`) holds `role` over `scope` until `until`."""

    to: str
    role: Role
    scope: tuple[str, ...]  # "all", "office:ID", "region:NAME"
    until: float | None = None
    where: str = ""  # "baton.yaml:42", for people reading `baton grants`

    @property
    def id(self) -> str:
        """Stable across reloads while who, role and scope stay (an extended `until` keeps it)."""
        return f"{self.to}/{self.role.value}/{','.join(self.scope)}"

    def is_live(self, now: float) -> bool:
        return self.until is None or self.until > now

    def covers(self, office: str | None, region: str | None) -> bool:
        """Does the scope include `office` (in `region`)? None/None: the whole daemon."""
        if ALL in self.scope:
            return True
        if office is None:
            return False
        return f"office:{office}" in self.scope or (region is not None and f"region:{region}" in self.scope)

    def scope_text(self) -> str:
        return "all offices" if ALL in self.scope else ", ".join(s.replace(":", " ") for s in self.scope)


@dataclass(frozen=True, slots=True)
class Grants:
    grants: tuple[Grant, ...] = ()
    groups: Mapping[str, frozenset[str]] = field(default_factory=frozen_map)  # group -> members
    enforced: bool = False  # False: no `operators:` section, everyone who gets in is an admin

    def terms(self) -> tuple[GrantTerm, ...]:
        """The grants that end, for the core to journal their expiry (sorted: stable policy)."""
        return tuple(sorted(GrantTerm(g.id, g.until) for g in self.grants if g.until is not None))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who asks: a unix user name (with its unix groups) or a token's name (`token:api-ops`)."""

    name: str
    unix_groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is about: a command, and the office (with its region) it concerns."""

    command: str
    office: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    grant: str | None = None  # the grant that allows it: the one that lasts longest


def groups_of(grants: Grants, identity: Identity) -> frozenset[str]:
    listed = {name for name, members in grants.groups.items() if identity.name in members}
    return frozenset(listed | identity.unix_groups)


def applies_to(grant: Grant, identity: Identity, groups: frozenset[str]) -> bool:
    if grant.to.startswith("group:"):
        return grant.to.removeprefix("group:") in groups
    return grant.to == identity.name


def grants_for(grants: Grants, identity: Identity) -> tuple[Grant, ...]:
    """Every grant that names `identity` (directly or through a group), live or not."""
    groups = groups_of(grants, identity)
    return tuple(g for g in grants.grants if applies_to(g, identity, groups))


def needed_role(command: str) -> Role:
    return COMMANDS.get(command, Role.ADMIN)


def when(timestamp: float) -> str:
    """A time for a sentence: ISO 8601 in UTC (pure: no local time zone)."""
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def authorize(grants: Grants, identity: Identity, target: Target, now: float) -> Verdict:
    """May `identity` do `target` at `now`? With the grant that allows it, or why not."""
    if not grants.enforced:
        return Verdict(True, f"{identity.name} may {_what(target)}: no operators are configured", None)
    role = needed_role(target.command)
    scope_office = None if target.command in GLOBAL else target.office
    anywhere = target.command in ANYWHERE or (target.command == "read" and target.office is None)
    held = grants_for(grants, identity)
    fitting = [
        g
        for g in held
        if rank(g.role) >= rank(role)
        and (anywhere or g.covers(scope_office, target.region if scope_office else None))
    ]
    live = [g for g in fitting if g.is_live(now)]
    if live:
        best = max(live, key=lambda g: (g.until is None, g.until or 0.0, g.id))
        return Verdict(True, f"{identity.name} may {_what(target)} under grant {best.id}", best.id)
    need = _need(role, target, anywhere)
    if fitting:
        ended = max(fitting, key=lambda g: g.until or 0.0)
        assert ended.until is not None
        return Verdict(
            False,
            f"{identity.name} may not {_what(target)}: that needs {need}, and the grant "
            f"{ended.id} ended at {when(ended.until)}",
        )
    holds = [g for g in held if g.is_live(now)]
    has = (
        "; ".join(f"{g.role.value} for {g.scope_text()}" for g in holds[:3])
        if holds
        else "no live grant (ask an admin: operators.grants in baton.yaml)"
    )
    return Verdict(False, f"{identity.name} may not {_what(target)}: that needs {need}; they hold {has}")


def _what(target: Target) -> str:
    verb = _VERBS.get(target.command, target.command)
    if target.office is None or target.command in GLOBAL:
        return verb
    return f"{verb} {target.office}"


def _need(role: Role, target: Target, anywhere: bool) -> str:
    if anywhere:
        return f"the {role.value} role for any office"
    if target.command in GLOBAL or target.office is None:
        return f"the {role.value} role for all offices"
    region = f" or region {target.region}" if target.region else ""
    return f"the {role.value} role for office {target.office}{region} (or all offices)"


__all__ = [
    "ALL",
    "COMMANDS",
    "Grant",
    "Grants",
    "Identity",
    "Role",
    "Target",
    "Verdict",
    "authorize",
    "grants_for",
    "groups_of",
    "needed_role",
    "when",
]
