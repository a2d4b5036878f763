"""The first hour of a new user: what `baton validate` (and so the daemon's start and reload) refuses.

Each test starts from a copy of the repo's example configuration (baton.yaml, inventory/,
playbooks/), which is valid, and breaks one thing the way a new user did:

- a handover that cannot render for some office and alternate (an undefined variable, XML that
  does not come out well-formed, a playbook directory that does not exist);
- a number that is not finite or not in range (`confirm_window_s: .inf`);
- a template that tries to leave the sandbox, or to allocate without bound.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from baton.cli import EX_CONFIG, EX_OK, main
from baton.core.model import Device, Office, RunKind
from baton.loading import check_everything, load_all
from baton.playbook.render import RenderError, RunInfo, render_step, template_context
from baton.playbook.schema import NetconfEdit, check_playbook
from baton.yamlsource import ConfigError, Problem, errors_in

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the example configuration; returns its baton.yaml."""
    for name in ("inventory", "playbooks"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "baton.yaml", tmp_path / "baton.yaml")
    return tmp_path / "baton.yaml"


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def errors(config: Path) -> list[Problem]:
    return errors_in(check_everything(config).problems)


def line_of(path: Path, line: int | None) -> str:
    assert line is not None
    return path.read_text().splitlines()[line - 1]


def test_the_example_configuration_is_valid(site: Path) -> None:
    """The starting point of every test here: the shipped example validates, renders and loads."""
    assert [] == errors(site)
    assert EX_OK == main(["validate", "--config", str(site)])
    assert {"lab-handover", "lab-handback"} <= set(load_all(site).playbooks)


# --- every handover and handback rendered ----------------------------------------------------


def test_undefined_variable_names_office_alternate_playbook_and_line(site: Path) -> None:
    """An office without trap_collectors: its handovers (and its peers' to it) are refused, each
    problem naming the office, the alternate, the playbook file and the template's line."""
    offices = site.parent / "inventory" / "offices.yaml"
    edit(offices, "      trap_collectors: [172.16.10.30]\n", "")  # seoul-geumcheon
    found = errors(site)
    handover = str(site.parent / "playbooks" / "handover.yaml")
    mine = [p for p in found if p.file == handover and "'office.vars.trap_collectors'" in p.message]
    theirs = [p for p in found if p.file == handover and "'alternate.vars.trap_collectors'" in p.message]
    assert 1 == len(mine)
    assert mine[0].where.startswith("handover of seoul-geumcheon to seoul-bangbae (devices gc-")
    assert "step 'point-services-at-alternate'" in mine[0].where
    assert "office.vars.trap_collectors" in line_of(Path(handover), mine[0].line)
    assert "set vars.trap_collectors for office seoul-geumcheon in offices.yaml" in mine[0].hint
    # seoul-geumcheon is an alternate of three offices: their handovers to it fail too
    assert 1 == len(theirs)
    assert re.search(r"handover of seoul-\w+ to seoul-geumcheon", theirs[0].where)
    assert "alternate.vars.trap_collectors" in line_of(Path(handover), theirs[0].line)
    assert any(p.file.endswith("handback.yaml") for p in found)
    assert EX_CONFIG == main(["validate", "--config", str(site)])


def test_daemon_start_and_reload_refuse_what_cannot_render(site: Path) -> None:
    """load_all (the daemon's start and its reload) refuses the same configuration."""
    edit(site.parent / "inventory" / "offices.yaml", "      trap_collectors: [172.16.11.30]\n", "")
    with pytest.raises(ConfigError, match="trap_collectors' is undefined"):
        load_all(site)


def test_rendered_xml_that_is_not_well_formed_is_refused(site: Path) -> None:
    """A variable that breaks the XML for one office only is found for that office."""
    edit(site.parent / "inventory" / "offices.yaml", '"NOC Suwon +82-31-000-0103"', '"NOC Suwon <24h>"')
    edit(
        site.parent / "playbooks" / "handover.yaml",
        "{{ alternate.vars.contact | xml_escape }}",
        "{{ alternate.vars.contact }}",
    )
    found = [p for p in errors(site) if "well-formed XML" in p.message]
    assert found, "the contact with '<' breaks the XML"
    assert {"seoul-suwon"} == {m for p in found for m in re.findall(r"to (seoul-suwon)", p.where)}
    assert all(p.file.endswith("handover.yaml") and p.line is not None for p in found)


def test_missing_playbook_directory_is_reported_at_the_playbooks_key(site: Path) -> None:
    """`playbooks:` naming a directory that does not exist is an error on that line of baton.yaml."""
    edit(site, "playbooks: playbooks ", "playbooks: lab-playbooks ")
    found = errors(site)
    at_key = [p for p in found if p.file == str(site) and "playbook directory not found" in p.message]
    assert 1 == len(at_key)
    assert line_of(site, at_key[0].line).startswith("playbooks: lab-playbooks")
    assert EX_CONFIG == main(["validate", "--config", str(site)])


def test_missing_named_playbook_is_reported_by_validate(site: Path) -> None:
    """A handover_playbook that is not in the directory: validate says so (it used to say valid)."""
    edit(site, "handover_playbook: lab-handover", "handover_playbook: lab-handover-v2")
    assert any("'lab-handover-v2' is not a playbook" in p.message for p in errors(site))
    assert EX_CONFIG == main(["validate", "--config", str(site)])


def test_validate_json_lists_the_playbooks(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON report names the playbooks it checked."""
    assert EX_OK == main(["validate", "--config", str(site), "--json"])
    assert "lab-handover" in capsys.readouterr().out


# --- numbers: finite and in range ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (".inf", "inf is not a finite number"),
        (".nan", "nan is not a finite number"),
        ("-300", "-300 is too small: it must be more than 0 s"),
        ("1.0e+12", "1000000000000 is too large: it must be at most 86400 s"),
    ],
)
def test_policy_numbers_are_finite_and_in_range(site: Path, value: str, message: str) -> None:
    """`policy.confirm_window_s: .inf` is refused at its line with the range and an example."""
    edit(site, "confirm_window_s: 300 ", f"confirm_window_s: {value} ")
    found = errors(site)
    assert [message] == [p.message for p in found]
    assert "write a number more than 0 and at most 86400 s, e.g. 300" == found[0].hint
    assert line_of(site, found[0].line).startswith(f"  confirm_window_s: {value}")
    with pytest.raises(ConfigError):
        load_all(site)  # the daemon's start and reload


@pytest.mark.parametrize(
    ("key", "old", "new", "message"),
    [
        ("hold_down_s", "hold_down_s: 30 ", "hold_down_s: .nan ", "nan is not a finite number"),
        ("anti_flap_block_s", "anti_flap_block_s: 3600 ", "anti_flap_block_s: 1.0e+300 ", "too large"),
        ("storm_max_offices", "storm_max_offices: 2 ", "storm_max_offices: 0 ", "too small"),
        ("office_down_ratio", "office_down_ratio: 0.5 ", "office_down_ratio: .inf ", "not a finite"),
        ("handback_hold_s", "handback_hold_s: 600 ", "handback_hold_s: -.inf ", "not a finite"),
    ],
)
def test_every_policy_number_is_checked(site: Path, key: str, old: str, new: str, message: str) -> None:
    """Other policy values, each refused on its own line."""
    edit(site, old, new)
    found = errors(site)
    assert 1 == len(found), found
    assert message in found[0].message
    assert line_of(site, found[0].line).lstrip().startswith(key)


def test_inventory_numbers_are_finite_and_in_range(site: Path) -> None:
    """An SNMP timeout of .inf and vars of .nan are refused at their lines."""
    inventory = site.parent / "inventory"
    busan = inventory / "devices" / "busan.yaml"
    edit(busan, "asn: 64620}", "asn: .nan}")
    edit(busan, "    parent: bj-core-1\n", "    parent: bj-core-1\n    snmp: {timeout_s: .inf}\n")
    offices = inventory / "offices.yaml"
    edit(
        offices, "      operator_group: noc-suwon\n", "      operator_group: noc-suwon\n      weight: .NaN\n"
    )
    found = sorted(errors(site), key=lambda p: (p.file, p.line or 0))
    assert [
        (str(busan), "nan is not a finite number"),
        (str(busan), "inf is not a finite number"),
        (str(offices), "nan is not a finite number"),
    ] == [(p.file, p.message) for p in found]
    assert "asn: .nan" in line_of(busan, found[0].line)
    assert "timeout_s: .inf" in line_of(busan, found[1].line)
    assert "write a number more than 0 and at most 600 s, e.g. 5" == found[1].hint
    assert "weight: .NaN" in line_of(offices, found[2].line)
    assert "quote it" in found[2].hint


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("concurrency: 4", "concurrency: 1.0e+9", "is too large: it must be at most 256"),
        ("confirm_window_s: 300", "confirm_window_s: .inf", "inf is not a finite number"),
        ("timeout_s: 20", "timeout_s: .nan", "nan is not a finite number"),
    ],
)
def test_playbook_numbers_are_finite_and_in_range(site: Path, old: str, new: str, message: str) -> None:
    """Playbook numbers too, at their line."""
    playbook = site.parent / "playbooks" / "handover.yaml"
    edit(playbook, old, new)
    found = [p for p in errors(site) if p.file == str(playbook)]
    assert 1 == len(found), found
    assert message in found[0].message
    assert new in line_of(playbook, found[0].line)


# --- the sandbox and the rendering budget ----------------------------------------------------

OFFICE = Office("gc", "Geumcheon", "capital", vars={"contact": "noc"})
ALTERNATE = Office("bb", "Bangbae", "capital", vars={"contact": "noc"})
DEVICE = Device("gc-core-1", "gc", "core-router", "10.1.0.1")
CONTEXT = template_context(OFFICE, ALTERNATE, DEVICE, RunInfo("r", RunKind.HANDOVER, "drill", "kim"))


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("<x>{{ ('a'*100000000)|length }}</x>", "100000000 characters"),
        ("<x>{{ 'a'|center(1000000000) }}</x>", "center(1000000000)"),
        ("<x>{{ '%1000000000d' % 1 }}</x>", "format width"),
        ("<x>{{ '{:>1000000000}'.format(1) }}</x>", "format width"),
        ("<x>{{ ('a'*900000).replace('', 'bb') }}</x>", "replace"),
        ("<x>{{ 10 ** (10 ** 10) }}</x>", "bits"),
        (
            "<x>{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}</x>",
            "iterations",
        ),
        ("{% set s = 'a'*900000 %}<x>{{ [s, s, s, s, s, s]|join }}</x>", "join"),
        ("{% set n = namespace(s='ab') %}{% for i in range(40) %}{% set n.s = n.s ~ n.s %}{% endfor %}", "~"),
        ("{% macro f(n) %}{{ f(n - 1) }}{{ f(n - 1) }}{% endmacro %}<x>{{ f(40) }}</x>", ""),
    ],
)
def test_rendering_has_a_budget(template: str, why: str) -> None:
    """Templates that would allocate or loop without bound are refused, quickly."""
    started = time.monotonic()
    with pytest.raises(RenderError) as info:
        render_step(NetconfEdit(name="s", kind="netconf.edit", config=template), CONTEXT, DEVICE.id)
    assert time.monotonic() - started < 5.0
    assert why in info.value.message
    assert ("config",) == info.value.path


def test_sandbox_escape_is_refused_when_the_playbook_is_read(tmp_path: Path) -> None:
    """`__class__` in a template is an error at load time, with the template's line."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nkind: handover\ntargets: {office: closed}\nsteps:\n"
        "  - name: s\n    kind: netconf.edit\n    config: |\n      <x>\n"
        "      {{ ''.__class__.__mro__[1].__subclasses__() }}\n      </x>\n"
    )
    playbook, problems = check_playbook(path)
    assert playbook is None
    message = "template reaches for '__class__' (line 2 of the template): the sandbox refuses names"
    assert [(9, f"{message} starting with '_'")] == [(p.line, p.message) for p in problems]


def test_a_template_over_budget_is_refused_by_validate_and_reload(site: Path) -> None:
    """`{{ ('a'*100000000)|length }}` in a shipped playbook: validate and reload refuse it."""
    playbook = site.parent / "playbooks" / "handover.yaml"
    edit(
        playbook,
        "<contact>{{ alternate.vars.contact | xml_escape }}</contact>",
        "<contact>{{ ('a'*100000000)|length }}</contact>",
    )
    found = errors(site)
    assert found
    assert all("over its budget" in p.message for p in found)
    assert "('a'*100000000)" in line_of(playbook, found[0].line)
    with pytest.raises(ConfigError):
        load_all(site)


def test_validate_refuses_a_window_an_office_cannot_fit(tmp_path: Path) -> None:
    """The window a run would use (the playbook's here) is checked against each office's size."""
    import shutil

    from baton.cli import main

    root = Path(__file__).resolve().parents[2]
    for name in ("inventory", "playbooks"):
        shutil.copytree(root / name, tmp_path / name)
    shutil.copy(root / "baton.yaml", tmp_path / "baton.yaml")
    handover = tmp_path / "playbooks" / "handover.yaml"
    handover.write_text(handover.read_text().replace("confirm_window_s: 300", "confirm_window_s: 60"))
    code = main(
        ["validate", "--inventory", str(tmp_path / "inventory"), "--config", str(tmp_path / "baton.yaml")]
    )
    assert 78 == code
