"""Step kinds: what each kind is (changes, session, candidate, undo, rendered checks) is declared
once on its class, and every kind has one executor."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from baton.playbook.schema import STEP_CLASSES, Step
from baton.playbook.steps import EXECUTORS

STEP = TypeAdapter[Step](Step)
GET = {"kind": "snmp.get", "oid": "1.3.6.1.2.1.1.5.0", "expect": [{"equals": "x"}]}

# kind -> (a rendered step, CHANGES, SESSION, IN_CANDIDATE, candidate_edit())
KINDS: dict[str, tuple[dict[str, Any], bool, str, bool, tuple[str, str] | None]] = {
    "netconf.edit": (
        {"kind": "netconf.edit", "config": "<a/>", "operation": "replace"},
        True,
        "netconf",
        True,
        ("<a/>", "replace"),
    ),
    "netconf.rpc": ({"kind": "netconf.rpc", "rpc": "<x/>"}, True, "netconf", False, None),
    "netconf.get": ({"kind": "netconf.get", "filter": "<a/>"}, False, "netconf", False, None),
    "ssh.command": ({"kind": "ssh.command", "command": "true"}, True, "ssh", False, None),
    "snmp.set": (
        {"kind": "snmp.set", "oid": "1.3.6.1.2.1.1.4.0", "type": "integer", "value": "7"},
        True,
        "snmp",
        False,
        None,
    ),
    "snmp.get": (GET, False, "snmp", False, None),
    "wait": ({"kind": "wait", "until": GET, "deadline_s": 10, "interval_s": 1}, False, "snmp", False, None),
}


def test_every_kind_is_declared_here_and_has_an_executor() -> None:
    """Adding a kind means one class in the schema and one executor: this table covers them all."""
    assert set(STEP_CLASSES) == set(KINDS)
    assert set(STEP_CLASSES) == set(EXECUTORS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_declarations(kind: str) -> None:
    """Each kind says whether it changes the device, the session it needs and its candidate edit."""
    data, changes, session, in_candidate, edit = KINDS[kind]
    step = STEP.validate_python(data)
    assert type(step) is STEP_CLASSES[kind]
    assert (changes, session, in_candidate, edit) == (
        step.CHANGES,
        step.session,
        step.IN_CANDIDATE,
        step.candidate_edit(),
    )
    assert in_candidate == (step.candidate_edit() is not None)
    assert (not changes) == step.is_idempotent  # ssh.command: unless the operator says so
    assert [] == step.rendered_problems()
    assert step.describe().startswith("would ")


BAD_OID = "{{ device.id }}-rendered"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**GET, "oid": BAD_OID}, [f"rendered OID '{BAD_OID}' is not numeric"]),
        (
            {"kind": "snmp.set", "oid": BAD_OID, "type": "gauge32", "value": "gc-agg-1"},
            [f"rendered OID '{BAD_OID}' is not numeric", "snmp.set value 'gc-agg-1' is not an integer"],
        ),
        ({"kind": "snmp.set", "oid": "1.3.6.1.2.1.1.4.0", "type": "string", "value": "gc-agg-1"}, []),
        (
            {"kind": "wait", "until": {**GET, "oid": BAD_OID}, "deadline_s": 10, "interval_s": 1},
            [f"rendered OID '{BAD_OID}' is not numeric"],
        ),
        ({"kind": "netconf.get", "filter": "<a/>"}, []),
    ],
)
def test_rendered_problems(data: dict[str, Any], expected: list[str]) -> None:
    """A rendered value that templates hid at load (OID, integer) is the step's own problem to name."""
    assert expected == STEP.validate_python(data).rendered_problems()
