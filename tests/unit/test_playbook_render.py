"""Template rendering: strict variables with named paths, xml_escape, a sandbox, no secrets."""

from __future__ import annotations

import pytest

from baton.core.model import Device, NetconfSettings, Office, RunKind, SecretRef
from baton.playbook.render import (
    RenderError,
    RunInfo,
    evaluate_when,
    render_step,
    template_context,
    xml_escape,
)
from baton.playbook.schema import NetconfEdit, NetconfGet, XmlCheck

OFFICE = Office("gc", "Geumcheon", "capital", vars={"noc_prefixes": ["10.10.0.0/16"], "contact": "A & B"})
ALTERNATE = Office("bb", "Bangbae", "capital", vars={"noc_prefixes": ["10.11.0.0/16"]})
DEVICE = Device(
    "gc-core-1",
    "gc",
    "core-router",
    "10.1.0.1",
    tags=("router",),
    netconf=NetconfSettings(enabled=True, username="baton", password=SecretRef("env", "NC_PASSWORD")),
)
RUN = RunInfo("r-7", RunKind.HANDOVER, "fire drill", "kim")
CONTEXT = template_context(OFFICE, ALTERNATE, DEVICE, RUN, {"site": "lab"})


def edit(config: str) -> NetconfEdit:
    return NetconfEdit(name="acl", kind="netconf.edit", config=config)


def test_renders_office_alternate_device_run_and_inventory() -> None:
    """Every documented variable is available to templates."""
    step = edit(
        "<x>{{ office.name }}/{{ alternate.vars.noc_prefixes[0] }}/{{ device.id }}/{{ device.role }}/"
        "{{ device.tags[0] }}/{{ run.id }}/{{ run.kind }}/{{ inventory.site }}</x>"
    )
    rendered = render_step(step, CONTEXT, DEVICE.id)
    assert "<x>Geumcheon/10.11.0.0/16/gc-core-1/core-router/router/r-7/handover/lab</x>" == rendered.config


def test_undefined_variable_names_step_device_and_path() -> None:
    """A missing variable is a RenderError naming the step, the device and the full variable path."""
    with pytest.raises(RenderError) as info:
        render_step(edit("<x>{{ alternate.vars.aaa_servers[0] }}</x>"), CONTEXT, DEVICE.id)
    assert ("acl", "gc-core-1", "undefined variable: 'alternate.vars.aaa_servers' is undefined") == (
        info.value.step,
        info.value.device,
        info.value.message,
    )


def test_undefined_list_index_names_the_path() -> None:
    """An index past the end of a list names the list's path."""
    with pytest.raises(RenderError, match=r"'office\.vars\.noc_prefixes\[3\]' is undefined"):
        render_step(edit("<x>{{ office.vars.noc_prefixes[3] }}</x>"), CONTEXT, DEVICE.id)


def test_xml_escape_filter_and_no_autoescape() -> None:
    """Values are inserted raw unless passed through xml_escape, which escapes markup characters."""
    rendered = render_step(
        edit("<x a='{{ \"<q'\" | xml_escape }}'>{{ office.vars.contact | xml_escape }}</x>"), CONTEXT, "d"
    )
    assert "<x a='&lt;q&apos;'>A &amp; B</x>" == rendered.config


def test_rendered_xml_must_be_well_formed() -> None:
    """A value that breaks the XML (unescaped &) is a render error, not a malformed RPC."""
    with pytest.raises(RenderError, match="not well-formed XML"):
        render_step(edit("<x>{{ office.vars.contact }}</x>"), CONTEXT, DEVICE.id)


def test_nested_templates_are_rendered() -> None:
    """Compensating steps and expect checks are rendered too."""
    step = NetconfGet(
        name="verify",
        kind="netconf.get",
        filter="<acl/>",
        expect=[
            XmlCheck(
                xpath="//entry[name='{{ alternate.id }}']", equals="{{ alternate.vars.noc_prefixes[0] }}"
            )
        ],
        compensate=edit("<undo>{{ alternate.id }}</undo>"),
    )
    rendered = render_step(step, CONTEXT, DEVICE.id)
    assert ("//entry[name='bb']", "10.11.0.0/16", "<undo>bb</undo>") == (
        rendered.expect[0].xpath,
        rendered.expect[0].equals,
        rendered.compensate.config,  # type: ignore[union-attr]
    )


def test_secrets_are_not_in_the_context() -> None:
    """Templates cannot reach device credentials: protocol settings are not exposed."""
    with pytest.raises(RenderError, match=r"'device\.netconf' is undefined"):
        render_step(edit("<x>{{ device.netconf.password }}</x>"), CONTEXT, DEVICE.id)


def test_sandbox_blocks_python_internals() -> None:
    """The sandbox refuses attribute access to Python internals."""
    with pytest.raises(RenderError):
        render_step(edit("<x>{{ office.__class__.__mro__ }}</x>"), CONTEXT, DEVICE.id)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("device.role == 'core-router'", True),
        ("'router' in device.tags", True),
        ("alternate.id == 'gc'", False),
        ("office.vars.noc_prefixes | length > 1", False),
    ],
)
def test_when_expressions(expression: str, expected: bool) -> None:
    """`when` expressions evaluate against the same context."""
    assert expected == evaluate_when(expression, CONTEXT, "s", DEVICE.id)


def test_when_with_undefined_variable_is_an_error() -> None:
    """An undefined variable in `when` is an error, not a silent false."""
    with pytest.raises(RenderError, match=r"'device\.vars\.site' is undefined"):
        evaluate_when("device.vars.site == 'x'", CONTEXT, "s", DEVICE.id)


def test_xml_escape() -> None:
    """xml_escape escapes the five XML special characters."""
    assert "&lt;a&gt; &amp; &quot;b&quot; &apos;c&apos;" == xml_escape("<a> & \"b\" 'c'")
