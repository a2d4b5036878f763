"""`operators:` in baton.yaml — groups of people, grants of roles over scopes, approval rules.

Read like the rest of baton.yaml (pydantic, every problem at once with file:line). The result is
`OperatorSettings`: the `Grants` the API asks `baton.core.grants.authorize` with, and the approval
rules as written (scopes of offices and regions). `apply_to_policy` needs the inventory too: it
checks every office and region named in a scope, turns each rule's regions into offices, and
puts the rules and the grants that end into the `Policy` the core decides with (a reload does it
again, so changed grants and rules apply without a restart).

    operators:
      groups:                          # people by name: unix user names, token:NAME for tokens
        noc-geumcheon: [kim.minsu, lee.jiwoo]
      grants:                          # group:NAME is a group above, or a unix group of peers
        - {to: group:noc-geumcheon, role: operator, scope: [office:seoul-geumcheon]}
        - {to: group:reserve, role: operator, scope: [region:capital], until: 2026-12-24T18:00:00+09:00}
      approvals:                       # runs that need two people
        - {scope: [region:capital], runs: [handover, handback], approvals: 1, ttl_s: 900, auto_proceed_s: 600}
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from baton.core.grants import ALL, Grant, Grants, Role
from baton.core.model import ApprovalRule, Inventory, Policy, RunKind
from baton.inventory.numbers import bounded
from baton.inventory.schema import Strict
from baton.yamlsource import Document, Problem, did_you_mean

DAY_S = 86400.0
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}"
_WHO = re.compile(rf"^(?:(?:token|group):)?{_NAME}$")
_SCOPE = re.compile(rf"^(?:all|office:{_NAME}|region:{_NAME})$")


def _check_who(value: str) -> str:
    if not _WHO.fullmatch(value):
        raise PydanticCustomError(
            "bad_who",
            "not a person, token or group",
            {"hint": "write a unix user name (kim.minsu), token:NAME (a token of api.tokens) or group:NAME"},
        )
    return value


def _check_scope(value: str) -> str:
    if not _SCOPE.fullmatch(value):
        raise PydanticCustomError(
            "bad_scope", "not a scope", {"hint": "write all, office:OFFICE_ID or region:REGION"}
        )
    return value


def _check_group(value: str) -> str:
    if not re.fullmatch(_NAME, value):
        raise PydanticCustomError("bad_group", "not a group name", {"hint": "letters, digits, . _ - @"})
    return value


Who = Annotated[str, AfterValidator(_check_who)]
Scope = Annotated[str, AfterValidator(_check_scope)]
GroupName = Annotated[str, AfterValidator(_check_group)]
Scopes = Annotated[list[Scope], Field(min_length=1)]
TtlSeconds = Annotated[float, bounded(0, DAY_S, example=900, unit="s", low_open=True)]


class GrantFile(Strict):
    to: Who
    role: Literal["viewer", "operator", "admin"]
    scope: Scopes
    until: dt.datetime | str | None = None  # ISO 8601 with a time zone


RunName = Literal["handover", "handback"]
_BOTH: tuple[RunName, ...] = ("handover", "handback")


class ApprovalRuleFile(Strict):
    scope: Scopes
    runs: Annotated[list[RunName], Field(min_length=1)] = Field(default_factory=lambda: list(_BOTH))
    approvals: Annotated[int, bounded(1, 10, example=1)] = 1
    ttl_s: TtlSeconds = 900.0
    auto_proceed_s: TtlSeconds | None = None


class OperatorsFile(Strict):
    groups: dict[GroupName, list[Who]] = Field(default_factory=dict)
    grants: list[GrantFile] = Field(default_factory=list)
    approvals: list[ApprovalRuleFile] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """An approval rule as written: its scope is resolved to offices with the inventory."""

    scope: tuple[str, ...]
    kinds: tuple[RunKind, ...]
    required: int
    ttl_s: float
    auto_proceed_s: float | None
    name: str


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    grants: Grants = field(default_factory=Grants)
    rules: tuple[RuleSpec, ...] = ()


def parse_time(value: dt.datetime | str) -> float:
    """Epoch seconds of an ISO 8601 time with a time zone; ValueError (one sentence) if not."""
    when = value
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 time (write e.g. 2026-12-24T18:00:00+09:00)") from None
    assert isinstance(when, dt.datetime)
    if when.tzinfo is None:
        raise ValueError("a time without a time zone (add +09:00 or Z)")
    return when.timestamp()


def to_settings(parsed: OperatorsFile | None, doc: Document) -> tuple[OperatorSettings, list[Problem]]:
    """The runtime settings, and the problems only the whole section shows."""
    if parsed is None:
        return OperatorSettings(), []
    problems: list[Problem] = []
    grants: list[Grant] = []
    seen: dict[str, int] = {}
    for index, written in enumerate(parsed.grants):
        path = ("operators", "grants", index)
        until = None
        if written.until is not None:
            try:
                until = parse_time(written.until)
            except ValueError as exc:
                problems.append(doc.problem((*path, "until"), f"until: {exc}"))
        grant = Grant(
            written.to, Role(written.role), tuple(written.scope), until, f"{doc.file}:{doc.line_of(path)}"
        )
        if grant.id in seen:
            problems.append(
                doc.problem(
                    path,
                    f"the same grant as operators.grants[{seen[grant.id]}] ({grant.id})",
                    "keep one (give it the later until, if any)",
                )
            )
            continue
        seen[grant.id] = index
        grants.append(grant)
    rules = []
    for index, rule in enumerate(parsed.approvals):
        path = ("operators", "approvals", index)
        if rule.auto_proceed_s is not None and rule.auto_proceed_s >= rule.ttl_s:
            problems.append(
                doc.problem(
                    (*path, "auto_proceed_s"),
                    f"auto_proceed_s ({rule.auto_proceed_s:g}) must be shorter than ttl_s ({rule.ttl_s:g}): "
                    "the request would expire before it proceeds",
                    f"lower auto_proceed_s below {rule.ttl_s:g}, or raise ttl_s",
                )
            )
        rules.append(
            RuleSpec(
                tuple(rule.scope),
                tuple(RunKind(k) for k in dict.fromkeys(rule.runs)),
                rule.approvals,
                rule.ttl_s,
                rule.auto_proceed_s,
                f"operators.approvals[{index}] ({doc.file}:{doc.line_of(path)})",
            )
        )
    groups = {name: frozenset(members) for name, members in parsed.groups.items()}
    return OperatorSettings(Grants(tuple(grants), groups, enforced=True), tuple(rules)), problems


def apply_to_policy(
    settings: OperatorSettings, policy: Policy, inventory: Inventory, doc: Document
) -> tuple[Policy, list[Problem]]:
    """The policy with the approval rules (regions resolved to offices) and the grants that end;
    and every scope that names an office or region the inventory does not have."""
    problems: list[Problem] = []
    regions: dict[str, list[str]] = {}
    for office in inventory.offices.values():
        regions.setdefault(office.region, []).append(office.id)

    def check(scope: tuple[str, ...], path: tuple[str | int, ...]) -> tuple[str, ...]:
        offices: list[str] = []
        for i, item in enumerate(scope):
            kind, _, name = item.partition(":")
            if item == ALL:
                offices.extend(inventory.offices)
            elif kind == "office" and name not in inventory.offices:
                hint = did_you_mean(name, inventory.offices) or "name an office of inventory/offices.yaml"
                problems.append(doc.problem((*path, "scope", i), f"unknown office '{name}'", hint))
            elif kind == "office":
                offices.append(name)
            elif name not in regions:
                hint = did_you_mean(name, regions) or "name a region of inventory/offices.yaml"
                problems.append(doc.problem((*path, "scope", i), f"unknown region '{name}'", hint))
            else:
                offices.extend(regions[name])
        return tuple(sorted(set(offices)))

    for index, grant in enumerate(settings.grants.grants):
        check(grant.scope, ("operators", "grants", index))
    rules = tuple(
        ApprovalRule(
            check(spec.scope, ("operators", "approvals", index)),
            spec.kinds,
            spec.required,
            spec.ttl_s,
            spec.auto_proceed_s,
            spec.name,
        )
        for index, spec in enumerate(settings.rules)
    )
    return replace(policy, approvals=rules, grant_terms=settings.grants.terms()), problems


__all__ = ["OperatorSettings", "OperatorsFile", "RuleSpec", "apply_to_policy", "parse_time", "to_settings"]
