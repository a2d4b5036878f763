"""`operators:` in baton.yaml: grants and approval rules, validated with file:line like the rest."""

from __future__ import annotations

from pathlib import Path

from baton.config import check_all
from baton.core.grants import Role
from baton.core.model import RunKind

REPO = Path(__file__).resolve().parents[2]
CAPITAL = ("seoul-bangbae", "seoul-geumcheon", "seoul-gwacheon", "seoul-suwon")


def test_the_shipped_operators_section() -> None:
    """NOC groups per office, a reserve pool that ends, an approval rule for the capital's offices."""
    checked = check_all(REPO / "inventory", REPO / "baton.yaml")
    assert [] == [str(p) for p in checked.problems if p.severity == "error"]
    config = checked.config
    assert config is not None
    grants = config.operators.grants
    assert grants.enforced
    reserve = next(g for g in grants.grants if g.to == "group:reserve-pool")
    assert (Role.OPERATOR, ("region:capital",), 1798707600.0) == (reserve.role, reserve.scope, reserve.until)
    assert "kim.minsu" in grants.groups["noc-geumcheon"]
    [rule] = config.policy.approvals
    assert (CAPITAL, (RunKind.HANDOVER, RunKind.HANDBACK), 1, 900.0, 600.0) == (
        rule.offices,
        rule.kinds,
        rule.required,
        rule.ttl_s,
        rule.auto_proceed_s,
    )
    assert [reserve.id] == [t.grant for t in config.policy.grant_terms]


def _here(config: str) -> str:
    """The shipped baton.yaml, moved: its inventory and credential files found where they are."""
    return config.replace("inventory: inventory", f"inventory: {REPO / 'inventory'}").replace(
        "file:inventory/", f"file:{REPO / 'inventory'}/"
    )


def test_scopes_are_checked_against_the_inventory(tmp_path: Path) -> None:
    config = (REPO / "baton.yaml").read_text()
    config = config[: config.index("\noperators:")] + (
        "\noperators:\n"
        "  grants:\n"
        "    - {to: kim, role: operator, scope: [office:seoul-geumchon]}\n"
        "    - {to: lee, role: viewer, scope: [region:capitol]}\n"
        "    - {to: park, role: operator, scope: [all], until: 2026-12-31T18:00:00}\n"
        "    - {to: kim, role: operator, scope: [office:seoul-geumchon]}\n"
        "  approvals:\n"
        "    - {scope: [region:capital], approvals: 2, ttl_s: 600, auto_proceed_s: 600}\n"
    )
    path = tmp_path / "baton.yaml"
    path.write_text(_here(config))
    checked = check_all(None, path)
    line = config.count("\n", 0, config.index("\noperators:")) + 2
    problems = sorted((p.line, p.message, p.hint) for p in checked.problems if p.severity == "error")
    assert [
        (
            line + 2,
            "unknown office 'seoul-geumchon'",
            "did you mean 'seoul-geumcheon'?",
        ),
        (line + 3, "unknown region 'capitol'", "did you mean 'capital'?"),
        (line + 4, "until: a time without a time zone (add +09:00 or Z)", ""),
        (
            line + 5,
            "the same grant as operators.grants[0] (kim/operator/office:seoul-geumchon)",
            "keep one (give it the later until, if any)",
        ),
        (
            line + 7,
            "auto_proceed_s (600) must be shorter than ttl_s (600): the request would expire before "
            "it proceeds",
            "lower auto_proceed_s below 600, or raise ttl_s",
        ),
    ] == problems


def test_the_schema_refuses_bad_roles_names_and_scopes(tmp_path: Path) -> None:
    config = (REPO / "baton.yaml").read_text()
    config = config[: config.index("\noperators:")] + (
        "\noperators:\n"
        "  grants:\n"
        "    - {to: kim, role: overlord, scope: [all]}\n"
        '    - {to: "bad name!", role: viewer, scope: [everything]}\n'
        "  approvals:\n"
        "    - {scope: [all], runs: [handover], approvals: 0}\n"
    )
    path = tmp_path / "baton.yaml"
    path.write_text(_here(config))
    problems = sorted((p.where, p.message) for p in check_all(None, path).problems if p.severity == "error")
    assert [
        ("operators.approvals[0].approvals", problems[0][1]),
        ("operators.grants[0].role", "expected one of 'viewer', 'operator' or 'admin'"),
        ("operators.grants[1].scope[0]", "not a scope"),
        ("operators.grants[1].to", "not a person, token or group"),
    ] == problems
    assert "1" in problems[0][1]
