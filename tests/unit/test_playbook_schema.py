"""Playbook validation: every problem at once, with file:line and hints; shipped playbooks pass."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from baton.playbook.schema import (
    NetconfEdit,
    SshCommand,
    Wait,
    check_playbook,
    check_playbooks,
    load_playbook,
    load_playbooks,
)
from baton.yamlsource import ConfigError, Problem

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
name: t
kind: handover
targets: {office: closed}
steps:
"""


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(path: Path) -> list[tuple[int | None, str]]:
    _, problems = check_playbook(path)
    return [(p.line, p.message) for p in problems if p.severity == "error"]


@pytest.mark.parametrize("directory", ["playbooks", "playbooks/examples"])
def test_shipped_playbooks_are_valid(directory: str) -> None:
    """Every playbook shipped in the repository loads with no problem at all."""
    result = check_playbooks(REPO / directory)
    assert [] == [str(p) for p in result.problems]
    assert result.playbooks


def test_minimal_playbook_gets_defaults(tmp_path: Path) -> None:
    """A minimal playbook loads with documented defaults (rollback, concurrency 4, 300 s window)."""
    path = write(tmp_path, HEAD + "  - {name: a, kind: netconf.edit, config: '<x/>'}\n")
    pb = load_playbook(path)
    # no window of its own: the policy's applies (`Playbook.window_for`)
    assert ("rollback", 4, None, False) == (pb.on_failure, pb.concurrency, pb.confirm_window_s, pb.barriers)
    assert isinstance(pb.steps[0], NetconfEdit)
    assert "merge" == pb.steps[0].operation


def test_all_problems_reported_at_once_with_lines(tmp_path: Path) -> None:
    """Unknown keys, a bad kind and a bad value are all reported, each on its own line, with hints."""
    path = write(
        tmp_path,
        """\
        name: t
        kind: handover
        targets: {office: closed}
        concurency: 2
        steps:
          - name: a
            kind: netconf.edti
            config: <x/>
          - name: b
            kind: netconf.edit
            confg: <x/>
          - name: c
            kind: snmp.get
            oid: 1.3.6.1.2.1.1.4.0
            timeout_s: -1
        """,
    )
    _, problems = check_playbook(path)
    assert [
        (4, "unknown key 'concurency'", "did you mean 'concurrency'?"),
        (7, "unknown step kind 'netconf.edti'", "did you mean 'netconf.edit'?"),
        (9, "missing required key 'config'", "add 'config: ...'"),
        (11, "unknown key 'confg'", "did you mean 'config'?"),
        (
            15,
            "-1 is too small: it must be more than 0 s",
            "write a number more than 0 and at most 3600 s, e.g. 30",
        ),
    ] == sorted((p.line, p.message, p.hint) for p in problems)


def test_load_playbook_raises_config_error_with_problems(tmp_path: Path) -> None:
    """load_playbook raises the shared ConfigError carrying file:line problems."""
    path = write(tmp_path, HEAD + "  - {name: a, kind: wait}\n")
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    assert all(isinstance(p, Problem) and p.file == str(path) for p in info.value.problems)
    assert {"missing required key 'until'", "missing required key 'deadline_s'"} <= {
        p.message for p in info.value.problems
    }


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            "{name: a, kind: netconf.edit, config: '<x/>', retries: 2}",
            "a netconf.edit step must not be retried",
        ),
        (
            "{name: a, kind: snmp.set, oid: 1.3.6.1.2.1.1.4.0, type: string, value: x, retries: 1}",
            "a snmp.set step must not be retried",
        ),
        (
            "{name: a, kind: ssh.command, command: reload, retries: 1}",
            "a ssh.command step must not be retried",
        ),
    ],
)
def test_retries_refused_on_non_idempotent_steps(tmp_path: Path, step: str, message: str) -> None:
    """Only idempotent kinds may retry: a retried change could apply twice."""
    path = write(tmp_path, HEAD + f"  - {step}\n")
    assert [(5, message)] == errors(path)


def test_retries_allowed_on_idempotent_kinds(tmp_path: Path) -> None:
    """Reads, waits and ssh commands marked idempotent may retry."""
    path = write(
        tmp_path,
        HEAD
        + """\
  - {name: a, kind: netconf.get, filter: '<x/>', retries: 2}
  - {name: b, kind: snmp.get, oid: 1.3.6.1.2.1.1.4.0, retries: 2}
  - {name: c, kind: ssh.command, command: show version, idempotent: true, retries: 2}
  - name: d
    kind: wait
    deadline_s: 30
    retries: 1
    until: {kind: snmp.get, oid: 1.3.6.1.2.1.1.4.0, expect: [{equals: 1}]}
""",
    )
    pb = load_playbook(path)
    assert isinstance(pb.steps[2], SshCommand)
    assert isinstance(pb.steps[3], Wait)
    assert "1" == pb.steps[3].until.expect[0].equals  # type: ignore[union-attr]


def test_template_syntax_error_points_into_the_template(tmp_path: Path) -> None:
    """A Jinja2 syntax error names the line inside the template and the file line it is on."""
    path = write(
        tmp_path,
        HEAD
        + """\
  - name: a
    kind: netconf.edit
    config: |
      <acl>
        <name>{{ alternate.id }</name>
      </acl>
""",
    )
    [(line, message)] = errors(path)
    assert 9 == line
    assert message.startswith("template syntax error (line 2 of the template)")


def test_malformed_static_xml_is_refused(tmp_path: Path) -> None:
    """XML that is not well-formed (expressions aside) is refused at load."""
    path = write(
        tmp_path,
        HEAD
        + """\
  - name: a
    kind: netconf.edit
    config: |
      <acl>
        <name>{{ alternate.id }}</nme>
      </acl>
""",
    )
    [(line, message)] = errors(path)
    assert 9 == line
    assert message.startswith("not well-formed XML (line 2 of the template)")


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{name: a, kind: snmp.get, oid: sysContact.0}", "not a numeric OID"),
        (
            "{name: a, kind: ssh.command, command: x, expect: ['(unclosed']}",
            "bad regular expression: missing ), unterminated subpattern",
        ),
        (
            "{name: a, kind: netconf.get, filter: '<x/>', expect: [{xpath: '//a['}]}",
            "bad XPath: Invalid expression",
        ),
        (
            "{name: a, kind: netconf.get, filter: '<x/>', when: 'office.id =='}",
            "bad 'when' expression: unexpected 'end of template'",
        ),
    ],
)
def test_static_values_are_checked(tmp_path: Path, step: str, message: str) -> None:
    """OIDs, regexes, XPaths and when-expressions without templates are checked at load."""
    path = write(tmp_path, HEAD + f"  - {step}\n")
    assert [message] == [m for _, m in errors(path)]


def test_cross_field_rules(tmp_path: Path) -> None:
    """Duplicate names, phases out of order, nested compensate and a check-less wait are refused."""
    path = write(
        tmp_path,
        """\
name: t
kind: handover
targets: {office: closed}
barriers: true
steps:
  - {name: a, kind: netconf.edit, config: '<x/>', phase: 1}
  - name: a
    kind: netconf.edit
    config: '<x/>'
    phase: 0
    compensate:
      kind: netconf.edit
      config: '<y/>'
      compensate: {kind: netconf.edit, config: '<z/>'}
  - {name: w, kind: wait, deadline_s: 5, interval_s: 10, phase: 1, until: {kind: netconf.get, filter: '<x/>'}}
""",
    )
    assert [
        (7, "duplicate step name 'a' (first is steps[0])"),
        (10, "phase 0 after phase 1"),
        (14, "a step inside 'compensate' cannot have its own compensate"),
        (15, "'until' needs 'expect' checks to wait for"),
        (15, "interval_s must be shorter than deadline_s"),
    ] == sorted(errors(path))


def test_phase_without_barriers_is_a_warning(tmp_path: Path) -> None:
    """A phase without barriers loads, with a warning saying it has no effect."""
    path = write(tmp_path, HEAD + "  - {name: a, kind: netconf.edit, config: '<x/>', phase: 1}\n")
    playbook, problems = check_playbook(path)
    assert playbook is not None
    assert [("warning", "phase has no effect without 'barriers: true'")] == [
        (p.severity, p.message) for p in problems
    ]


def test_duplicate_playbook_names_across_files(tmp_path: Path) -> None:
    """Two files declaring the same playbook name make the directory invalid."""
    for file in ("a.yaml", "b.yaml"):
        write(tmp_path, HEAD + "  - {name: a, kind: netconf.edit, config: '<x/>'}\n", file)
    with pytest.raises(ConfigError, match="duplicate playbook name 't'"):
        load_playbooks(tmp_path)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    """Broken YAML is a problem with a line, not a traceback."""
    path = write(tmp_path, "name: t\nsteps: [\n")
    [(line, message)] = errors(path)
    assert line is not None
    assert message.startswith("YAML syntax error")


def test_runner_step_names_are_reserved(tmp_path: Path) -> None:
    """A step named like one of the runner's own calls would be folded as that call: refused."""
    path = write(tmp_path, HEAD + "  - {name: commit, kind: netconf.edit, config: '<x/>'}\n")
    assert [(5, "step name 'commit' is reserved: the runner journals its own calls under it")] == errors(path)


def test_on_failure_stop_is_gone(tmp_path: Path) -> None:
    """'stop' left devices committed for good: only rollback and rollback_device remain."""
    path = write(
        tmp_path,
        HEAD.replace("steps:", "on_failure: stop\nsteps:")
        + "  - {name: a, kind: netconf.edit, config: '<x/>'}\n",
    )
    [(_, message)] = errors(path)
    assert "rollback" in message
