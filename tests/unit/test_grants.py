"""core.grants: who may do what, for which offices, until when (pure, time as an argument)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.core.grants import COMMANDS, Grant, Grants, Identity, Role, Target, authorize, rank

GRANTS = Grants(
    grants=(
        Grant("group:noc-geumcheon", Role.OPERATOR, ("office:seoul-geumcheon",)),
        Grant("group:noc-capital", Role.VIEWER, ("region:capital",)),
        Grant("group:reserve", Role.OPERATOR, ("region:capital",), until=1000.0),
        Grant("lead", Role.ADMIN, ("region:capital",)),
        Grant("root", Role.ADMIN, ("all",)),
        Grant("token:siem", Role.VIEWER, ("all",)),
    ),
    groups={
        "noc-geumcheon": frozenset({"kim"}),
        "noc-capital": frozenset({"kim", "lee"}),
        "reserve": frozenset({"park"}),
    },
    enforced=True,
)
GEUMCHEON = ("seoul-geumcheon", "capital")
BANGBAE = ("seoul-bangbae", "capital")
BUSAN = ("busan-jung", "busan")

# (who, unix groups, command, office, now, allowed)
TABLE = [
    ("kim", (), "handover", GEUMCHEON, 0.0, True),
    ("kim", (), "handover", BANGBAE, 0.0, False),  # viewer there only
    ("kim", (), "read", BANGBAE, 0.0, True),
    ("kim", (), "read", BUSAN, 0.0, False),
    ("kim", (), "pause", None, 0.0, False),
    ("lee", (), "approve", GEUMCHEON, 0.0, False),
    ("lee", ("noc-geumcheon",), "approve", GEUMCHEON, 0.0, True),  # a unix group of that name
    ("park", (), "handback", BANGBAE, 999.0, True),
    ("park", (), "handback", BANGBAE, 1000.0, False),  # the reserve's grant ended
    ("lead", (), "resolve", BANGBAE, 0.0, True),
    ("lead", (), "resolve", BUSAN, 0.0, False),
    ("lead", (), "shadow", None, 0.0, False),  # the whole daemon: needs admin for all
    ("root", (), "shadow", None, 0.0, True),
    ("root", (), "grants", None, 0.0, True),
    ("token:siem", (), "list", None, 0.0, True),
    ("token:siem", (), "abort", BUSAN, 0.0, False),
    ("mallory", (), "list", None, 0.0, False),
    ("mallory", (), "read", GEUMCHEON, 0.0, False),
]


@pytest.mark.parametrize(("who", "groups", "command", "office", "now", "allowed"), TABLE)
def test_role_command_scope(
    who: str, groups: tuple[str, ...], command: str, office: tuple[str, str] | None, now: float, allowed: bool
) -> None:
    """Each (person, command, office, time) → allowed or not, as the grants say."""
    target = Target(command, *(office or (None, None)))
    verdict = authorize(GRANTS, Identity(who, frozenset(groups)), target, now)
    assert allowed == verdict.allowed, verdict.reason


@pytest.mark.parametrize(
    ("who", "command", "office", "now", "reason"),
    [
        (
            "kim",
            "handover",
            BANGBAE,
            0.0,
            "kim may not hand over seoul-bangbae: that needs the operator role for office seoul-bangbae or "
            "region capital (or all offices); they hold operator for office seoul-geumcheon; viewer for "
            "region capital",
        ),
        (
            "park",
            "handover",
            BANGBAE,
            2000.0,
            "park may not hand over seoul-bangbae: that needs the operator role for office seoul-bangbae or "
            "region capital (or all offices), and the grant group:reserve/operator/region:capital ended at "
            "1970-01-01T00:16:40Z",
        ),
        (
            "lead",
            "pause",
            None,
            0.0,
            "lead may not pause automation: that needs the admin role for all offices; they hold admin for "
            "region capital",
        ),
        (
            "mallory",
            "list",
            None,
            0.0,
            "mallory may not read Baton's state: that needs the viewer role for any office; they hold no "
            "live grant (ask an admin: operators.grants in baton.yaml)",
        ),
    ],
)
def test_a_refusal_names_the_role_and_scope_needed(
    who: str, command: str, office: tuple[str, str] | None, now: float, reason: str
) -> None:
    verdict = authorize(GRANTS, Identity(who), Target(command, *(office or (None, None))), now)
    assert (False, reason) == (verdict.allowed, verdict.reason)


def test_the_longest_lasting_grant_is_the_one_named() -> None:
    """A request is recorded under the grant that lasts longest (a grant without end first)."""
    grants = Grants(
        grants=(
            Grant("park", Role.OPERATOR, ("all",), until=500.0),
            Grant("group:reserve", Role.OPERATOR, ("all",), until=900.0),
        ),
        groups={"reserve": frozenset({"park"})},
        enforced=True,
    )
    assert "group:reserve/operator/all" == authorize(grants, Identity("park"), Target("ack", "x"), 0.0).grant


def test_without_an_operators_section_everyone_who_gets_in_is_an_admin() -> None:
    assert authorize(Grants(), Identity("anyone"), Target("shadow"), 0.0).allowed


def test_terms_are_the_grants_that_end() -> None:
    assert ["group:reserve/operator/region:capital"] == [t.grant for t in GRANTS.terms()]


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(list(Role)),
    scope=st.sampled_from([("all",), ("office:o1",), ("region:r1",), ("office:o2", "region:r2")]),
    command=st.sampled_from(sorted(COMMANDS)),
    office=st.sampled_from([None, ("o1", "r1"), ("o2", "r1"), ("o3", "r2")]),
    until=st.one_of(st.none(), st.floats(0, 100)),
    now=st.floats(0, 100),
)
def test_a_grant_allows_exactly_its_role_scope_and_time(
    role: Role,
    scope: tuple[str, ...],
    command: str,
    office: tuple[str, str] | None,
    until: float | None,
    now: float,
) -> None:
    """One grant: allowed ⇔ role high enough ∧ (scope covers the target) ∧ not ended."""
    grant = Grant("p", role, scope, until)
    grants = Grants((grant,), enforced=True)
    target = Target(command, *(office or (None, None)))
    verdict = authorize(grants, Identity("p"), target, now)
    global_command = command in ("pause", "resume", "shadow", "grants")
    anywhere = command == "list" or (command == "read" and office is None)
    if anywhere:
        covered = True
    elif global_command or office is None:
        covered = "all" in scope
    else:
        covered = "all" in scope or f"office:{office[0]}" in scope or f"region:{office[1]}" in scope
    expected = rank(role) >= rank(COMMANDS[command]) and covered and (until is None or until > now)
    assert expected == verdict.allowed, verdict.reason
    assert verdict.allowed == (verdict.grant == grant.id)
    assert not authorize(grants, Identity("q"), target, now).allowed, "nobody else"
