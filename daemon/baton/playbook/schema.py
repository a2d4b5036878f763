"""The playbook format (YAML in `playbooks/`), its validation, and loading with file:line problems.

A playbook says which devices a run touches (`targets`), how many at once (`concurrency`), what
happens when one fails (`on_failure`), and the ordered `steps`. Each step has a `kind`:

    netconf.edit   edit-config of `config` into the candidate (`operation` is the
                   default-operation: merge | replace | none; delete elements with
                   nc:operation="delete" inside `config`). The runner commits office-wide with
                   a confirmed commit; devices without :confirmed-commit need `compensate`.
    netconf.rpc    a raw `rpc` (optionally checked with `expect`)
    netconf.get    get-config of `source` (running | candidate) or <get> (operational) with a
                   subtree `filter`, checked with `expect` (xpath / contains / equals)
    ssh.command    `command`, checked with `expect` regexes and `expect_exit`
    snmp.set       `oid`, `type`, `value`
    snmp.get       `oid`, checked with `expect` (equals / matches)
    wait           repeat the condition step `until` every `interval_s` until its checks pass
                   or `deadline_s` passes

`unreachable: skip` (default `fail`) lets a run go on without the devices that do not answer at
all when first contacted (connection refused/reset/timed out, no route; never a host key or
authentication failure): they are journaled "skipped: unreachable (pending)" and the run is ok
when every device that answered succeeded.

Every step may have `when` (a Jinja2 expression), `phase` (with `barriers: true` every device
finishes phase k before any starts k+1), `timeout_s`, `retries` (idempotent kinds only) and
`compensate` (the step that undoes it). Templates are checked at load: Jinja2 syntax (with the
line inside the template), XML well-formedness of static XML, static regexes, OIDs and XPaths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

from jinja2 import TemplateSyntaxError, nodes
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from baton.inventory.numbers import bounded
from baton.playbook.render import KeyPath, make_environment, map_templates, xml_problem
from baton.yamlsource import (
    ConfigError,
    Document,
    Problem,
    did_you_mean,
    errors_in,
    pydantic_problems,
    read_document,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# The runner journals its own calls under these names (`baton.playbook.progress`).
RESERVED_STEP_NAMES = frozenset(
    {
        "prepare-candidate",
        "commit",
        "confirm",
        "check-running",
        "cancel-commit",
        "discard-candidate",
        "reapply",
    }
)
OID_PATTERN = re.compile(r"^\.?\d+(\.\d+)+$")
_TEMPLATE_MARK = re.compile(r"\{[{%#]")


class _Model(BaseModel):
    # allow_inf_nan: a backstop behind `bounded` (every number is finite and in range)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


HOUR_S = 3600.0
# Numbers of a playbook: finite, in a range a playbook could mean (the fix names the range).
StepSeconds = Annotated[float, bounded(0, HOUR_S, example=30, unit="s", low_open=True)]
Phase = Annotated[int, bounded(0, 1000, example=1)]
Retries = Annotated[int, bounded(0, 10, example=2)]
ExitStatus = Annotated[int, bounded(0, 255, example=0)]


# --- checks on replies -----------------------------------------------------------------------


class XmlCheck(_Model):
    """One assertion on an XML reply. `xpath` must match (or, with `absent`, must not);
    `equals` compares the text of the first match; `contains` looks for a substring."""

    TEMPLATES: ClassVar[tuple[str, ...]] = ("xpath", "contains", "equals")

    xpath: str | None = None
    namespaces: dict[str, str] = Field(default_factory=dict)  # prefix -> namespace for xpath
    equals: str | None = None
    contains: str | None = None
    absent: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> XmlCheck:
        if self.xpath is None and self.contains is None:
            raise ValueError("a check needs 'xpath' or 'contains'")
        if self.equals is not None and self.xpath is None:
            raise ValueError("'equals' compares the text an 'xpath' selects: add 'xpath'")
        if self.absent and (self.xpath is None or self.equals is not None):
            raise ValueError("'absent' needs an 'xpath' and no 'equals'")
        return self


class ValueCheck(_Model):
    """One assertion on an SNMP value: `equals` (as text) or `matches` (a regex)."""

    TEMPLATES: ClassVar[tuple[str, ...]] = ("equals", "matches")

    equals: str | None = None
    matches: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_text(cls, data: Any) -> Any:
        equals = data.get("equals") if isinstance(data, dict) else None
        if isinstance(equals, float) and not math.isfinite(equals):
            raise ValueError(f"'equals' is {equals}, not a finite number: quote it if you mean the text")
        if isinstance(equals, int | float) and not isinstance(equals, bool):
            return {**data, "equals": str(equals)}
        return data

    @model_validator(mode="after")
    def _one(self) -> ValueCheck:
        if (self.equals is None) == (self.matches is None):
            raise ValueError("a check needs exactly one of 'equals' or 'matches'")
        return self


# --- steps -----------------------------------------------------------------------------------


class _Step(_Model):
    """A step. What each kind *is* is declared once, in class variables the runner, recovery,
    dry run and planning ask instead of testing types:

    CHANGES       the step may change the device (a read changes nothing and is never undone)
    SESSION       the connection it needs: "netconf", "ssh" or "snmp" (SNMP needs none to open)
    IN_CANDIDATE  it goes into the NETCONF candidate: committed office-wide, undone by
                  <cancel-commit> while the confirmed commit is pending, by its `compensate`
                  once committed for good (no :confirmed-commit, or already confirmed)
    candidate_edit()     what it puts into the candidate, (config, default-operation); None
                         unless IN_CANDIDATE. Compensating a candidate edit takes another one.
    describe()           what the rendered step would do, in one line (dry run, `baton plan`)
    rendered_problems()  what its rendered values get wrong that templates hid at load (an OID
                         that is not numeric), one sentence each: `baton plan` refuses the run
    Any other change is undone by its `compensate` step. Compensating steps must be safe to
    run again: a crash can leave one at intent, and recovery then runs it once more.
    How each kind talks to a device is `baton.playbook.steps`' business, keyed by `kind`.
    """

    TEMPLATES: ClassVar[tuple[str, ...]] = ()
    CHANGES: ClassVar[bool] = True
    SESSION: ClassVar[Literal["netconf", "ssh", "snmp"]] = "netconf"
    IN_CANDIDATE: ClassVar[bool] = False

    name: str = ""  # required on top-level steps (checked by the playbook, which knows the path)
    phase: Phase = 0
    timeout_s: StepSeconds = 30.0
    retries: Retries = 0
    when: str | None = None
    compensate: Step | None = None

    @property
    def is_idempotent(self) -> bool:
        return not self.CHANGES

    @property
    def session(self) -> Literal["netconf", "ssh", "snmp"]:
        return self.SESSION

    @property
    def attempt_s(self) -> float:
        """The longest one attempt of this step can take."""
        return self.timeout_s

    @property
    def worst_case_s(self) -> float:
        """The longest this step can take, retries (and their backoff) included."""
        return self.attempt_s * (self.retries + 1) + sum(retry_backoff_s(k) for k in range(self.retries))

    def describe(self) -> str:
        raise NotImplementedError

    def candidate_edit(self) -> tuple[str, str] | None:
        return None

    def rendered_problems(self) -> list[str]:
        return []


def retry_backoff_s(k: int, base_s: float = 0.5, cap_s: float = 5.0) -> float:
    """The pause before retry k (0-based) of an idempotent step."""
    return min(cap_s, base_s * float(2**k))


class NetconfEdit(_Step):
    TEMPLATES: ClassVar[tuple[str, ...]] = ("config",)
    IN_CANDIDATE: ClassVar[bool] = True
    kind: Literal["netconf.edit"]
    target: Literal["candidate"] = "candidate"
    operation: Literal["merge", "replace", "none"] = "merge"  # <default-operation>
    config: str

    def describe(self) -> str:
        return f"would edit candidate (default-operation {self.operation}); committed office-wide"

    def candidate_edit(self) -> tuple[str, str]:
        return self.config, self.operation


class NetconfRpc(_Step):
    TEMPLATES: ClassVar[tuple[str, ...]] = ("rpc",)
    kind: Literal["netconf.rpc"]
    rpc: str
    expect: list[XmlCheck] = Field(default_factory=list)

    def describe(self) -> str:
        return f"would send rpc: {' '.join(self.rpc.split())[:160]}"


class NetconfGet(_Step):
    TEMPLATES: ClassVar[tuple[str, ...]] = ("filter",)
    CHANGES: ClassVar[bool] = False
    kind: Literal["netconf.get"]
    source: Literal["running", "candidate", "operational"] = "running"
    filter: str
    expect: list[XmlCheck] = Field(default_factory=list)

    def describe(self) -> str:
        return f"would check {self.source} ({len(self.expect)} check(s))"


class SshCommand(_Step):
    TEMPLATES: ClassVar[tuple[str, ...]] = ("command", "expect")
    SESSION: ClassVar[Literal["netconf", "ssh", "snmp"]] = "ssh"
    kind: Literal["ssh.command"]
    command: str
    expect: list[str] = Field(default_factory=list)  # regexes that must all match the output
    expect_exit: ExitStatus | None = 0  # None: any exit status
    idempotent: bool = False  # the operator's word that running it twice is harmless

    @property
    def is_idempotent(self) -> bool:
        return self.idempotent

    def describe(self) -> str:
        return f"would run: ssh command {self.command!r}"


SnmpType = Literal[
    "integer", "unsigned", "counter32", "gauge32", "timeticks", "string", "hex", "ipaddress", "oid"
]
_INTEGER_TYPES = frozenset({"integer", "unsigned", "counter32", "gauge32", "timeticks"})


def _oid_problems(oid: str) -> list[str]:
    return [] if OID_PATTERN.match(oid.strip()) else [f"rendered OID '{oid}' is not numeric"]


class SnmpSet(_Step):
    TEMPLATES: ClassVar[tuple[str, ...]] = ("oid", "value")
    SESSION: ClassVar[Literal["netconf", "ssh", "snmp"]] = "snmp"
    kind: Literal["snmp.set"]
    oid: str
    type: SnmpType
    value: str | int

    def describe(self) -> str:
        return f"would run: snmp set {self.oid} {self.type} {self.value}"

    def rendered_problems(self) -> list[str]:
        problems = _oid_problems(self.oid)
        if self.type in _INTEGER_TYPES:
            try:
                int(self.value)
            except ValueError:
                problems.append(f"snmp.set value '{self.value}' is not an integer")
        return problems


class SnmpGet(_Step):
    TEMPLATES: ClassVar[tuple[str, ...]] = ("oid",)
    CHANGES: ClassVar[bool] = False
    SESSION: ClassVar[Literal["netconf", "ssh", "snmp"]] = "snmp"
    kind: Literal["snmp.get"]
    oid: str
    expect: list[ValueCheck] = Field(default_factory=list)

    def describe(self) -> str:
        return f"would check: snmp get {self.oid}"

    def rendered_problems(self) -> list[str]:
        return _oid_problems(self.oid)


Condition = Annotated[NetconfGet | SnmpGet | SshCommand, Field(discriminator="kind")]


class Wait(_Step):
    CHANGES: ClassVar[bool] = False
    kind: Literal["wait"]
    until: Condition
    deadline_s: StepSeconds
    interval_s: StepSeconds = 5.0

    @property
    def session(self) -> Literal["netconf", "ssh", "snmp"]:
        return self.until.session

    @property
    def attempt_s(self) -> float:
        return self.deadline_s + self.until.timeout_s

    def describe(self) -> str:
        return f"would wait up to {self.deadline_s:g} s until: {self.until.describe()}"

    def rendered_problems(self) -> list[str]:
        return self.until.rendered_problems()


Step = Annotated[
    NetconfEdit | NetconfRpc | NetconfGet | SshCommand | SnmpSet | SnmpGet | Wait,
    Field(discriminator="kind"),
]
STEP_CLASSES: dict[str, type[_Step]] = {
    "netconf.edit": NetconfEdit,
    "netconf.rpc": NetconfRpc,
    "netconf.get": NetconfGet,
    "ssh.command": SshCommand,
    "snmp.set": SnmpSet,
    "snmp.get": SnmpGet,
    "wait": Wait,
}
for _cls in STEP_CLASSES.values():
    _cls.model_rebuild()


# --- the playbook ----------------------------------------------------------------------------


class Targets(_Model):
    """Which devices a run touches: those of one side, narrowed by every filter given."""

    office: Literal["closed", "alternate"]
    roles: list[str] = Field(default_factory=list)  # any of these roles
    tags: list[str] = Field(default_factory=list)  # at least one of these tags
    devices: list[str] = Field(default_factory=list)  # only these device ids


class FenceMarker(_Model):
    """Where the device keeps the fencing epoch of the Baton leader that last changed it: read
    from running under the candidate lock before the run's first edit (a higher one means a
    newer leader operates the device: the run stops, and this vantage steps down), and written
    into the candidate with the run's edits, in the same commit. `config` holds `{epoch}`."""

    filter: str  # subtree filter of the marker (get-config running)
    xpath: str  # where the number is in the reply
    namespaces: dict[str, str] = Field(default_factory=dict)
    config: str  # the edit that sets it, with {epoch}


class Playbook(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    kind: Literal["handover", "handback"]
    targets: Targets
    concurrency: Annotated[int, bounded(1, 256, example=4)] = 4
    # The confirmed-commit window. The rule: the playbook's value when it sets one, else the
    # policy's `confirm_window_s`; validation checks the value that is used (`window_for`).
    confirm_window_s: Annotated[float, bounded(0, 86400, example=300, unit="s", low_open=True)] | None = None
    commit_timeout_s: StepSeconds = 30.0  # one <commit> RPC
    confirm_timeout_s: StepSeconds = 15.0  # one confirming <commit> RPC
    # rollback: any device's failure rolls every device back (the office is never mixed);
    # rollback_device: only the failing device is rolled back, the others are handed over
    on_failure: Literal["rollback", "rollback_device"] = "rollback"
    barriers: bool = False
    # A device whose first contact fails at the connection level (refused, reset, timed out,
    # no route): `fail` fails the run like any failure; `skip` leaves it "unreachable (pending)"
    # and hands over the others (the daemon catches it up when it answers again).
    unreachable: Literal["fail", "skip"] = "fail"
    fence: FenceMarker | None = None  # the leadership epoch on the device (several vantages)
    steps: list[Step] = Field(min_length=1)

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(sorted({s.phase for s in self.steps}))

    @property
    def worst_case_per_device_s(self) -> float:
        return sum(s.worst_case_s for s in self.steps)

    def window_for(self, policy_window_s: float) -> float:
        """The confirmed-commit window a run of this playbook uses (see `confirm_window_s`)."""
        return self.confirm_window_s if self.confirm_window_s is not None else policy_window_s


# --- loading ---------------------------------------------------------------------------------


class _Errors:
    """Stands in for a ValidationError whose error locations were rewritten (see `_pydantic`)."""

    def __init__(self, errors: list[Any]) -> None:
        self._errors = errors

    def errors(self, include_url: bool = True) -> list[Any]:
        return self._errors


def _pydantic(doc: Document, exc: ValidationError) -> list[Problem]:
    # A discriminated union puts the tag in the location ("steps", 0, "netconf.edit", "config"); the
    # YAML has no such key, so drop it for lines, and use it for did-you-mean on unknown keys.
    raw = exc.errors(include_url=False)
    fixed: list[dict[str, Any]] = []
    tags: list[str | None] = []
    for error in raw:
        loc: list[str | int] = []
        tag: str | None = None
        for part in error["loc"]:
            if isinstance(part, str) and part in STEP_CLASSES:
                tag = part
                continue
            loc.append(part)
        fixed.append({**error, "loc": tuple(loc)})
        tags.append(tag)
    problems = pydantic_problems(doc, cast(ValidationError, _Errors(fixed)), Playbook)
    result = []
    for fixed_error, tag, problem in zip(fixed, tags, problems, strict=True):
        kind = fixed_error["type"]
        if kind == "extra_forbidden" and tag is not None and not problem.hint:
            problem = replace(
                problem, hint=did_you_mean(str(fixed_error["loc"][-1]), STEP_CLASSES[tag].model_fields)
            )
        elif kind == "union_tag_invalid":
            got = (fixed_error.get("ctx") or {}).get("tag", "?")
            problem = replace(
                problem,
                line=doc.line_of((*fixed_error["loc"], "kind")),
                message=f"unknown step kind '{got}'",
                hint=did_you_mean(str(got), STEP_CLASSES),
            )
        elif kind == "union_tag_not_found":
            problem = replace(
                problem, message="missing required key 'kind'", hint="one of: " + ", ".join(STEP_CLASSES)
            )
        result.append(problem)
    return result


def _steps_with_paths(playbook: Playbook) -> Iterator[tuple[_Step, KeyPath, str]]:
    """Every step, nested ones included, with its path and how it is nested ("", compensate, until)."""
    for i, step in enumerate(playbook.steps):
        path: KeyPath = ("steps", i)
        yield step, path, ""
        if step.compensate is not None:
            yield step.compensate, (*path, "compensate"), "compensate"
        if isinstance(step, Wait):
            yield step.until, (*path, "until"), "until"


def _template_line(doc: Document, path: KeyPath, text: str, line_in_template: int | None) -> int | None:
    line = doc.line_of(path)
    # A multi-line value is a block scalar (`config: |`) starting on the line after its key.
    if line is not None and line_in_template is not None and "\n" in text:
        return line + line_in_template
    return line


def _check_templates(doc: Document, playbook: Playbook) -> list[Problem]:
    env = make_environment()
    problems: list[Problem] = []

    def check(text: str, path: KeyPath) -> str:
        try:
            tree = env.parse(text)
        except TemplateSyntaxError as exc:
            problems.append(
                Problem(
                    doc.file,
                    _template_line(doc, path, text, exc.lineno),
                    doc.describe(path),
                    f"template syntax error (line {exc.lineno} of the template): {exc.message}",
                    "check {{ }} / {% %} pairs and filter names",
                )
            )
            return text
        problems.extend(_private_access(doc, path, text, tree))
        field = path[-1] if path else ""
        if field in ("config", "rpc", "filter") and "{%" not in text:
            # Expressions stand for text; with no block tags the rest is the XML that will be sent.
            static = re.sub(r"\{\{.*?\}\}|\{#.*?#\}", "x", text, flags=re.DOTALL)
            bad = xml_problem(static)
            if bad is not None:
                line, message = bad
                problems.append(
                    Problem(
                        doc.file,
                        _template_line(doc, path, text, line),
                        doc.describe(path),
                        f"not well-formed XML (line {line} of the template): {message}",
                        "close every element; escape & and < as &amp; and &lt;",
                    )
                )
        if _TEMPLATE_MARK.search(text) is None:
            problems.extend(_check_static(doc, path, text))
        return text

    for step, path, _nesting in _steps_with_paths(playbook):
        if step.when is not None:
            try:
                env.compile_expression(step.when)
                tree = env.parse("{{ " + step.when + " }}")
            except TemplateSyntaxError as exc:
                problems.append(
                    doc.problem(
                        (*path, "when"),
                        f"bad 'when' expression: {exc.message}",
                        "write a Jinja2 expression, without {{ }}",
                    )
                )
            else:
                problems.extend(_private_access(doc, (*path, "when"), step.when, tree))
    for i, step in enumerate(playbook.steps):
        map_templates(step, check, ("steps", i))
    return problems


def _private_access(doc: Document, path: KeyPath, text: str, tree: nodes.Template) -> list[Problem]:
    """Attributes the sandbox refuses at render time (`__class__`, `_private`), found at load:
    a template reaching for them is trying to leave the sandbox, not to configure a device."""
    found: list[tuple[int, str]] = []
    for node in tree.find_all(nodes.Getattr):
        if node.attr.startswith("_"):
            found.append((node.lineno, node.attr))
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.arg, nodes.Const) and str(item.arg.value).startswith("_"):
            found.append((item.lineno, str(item.arg.value)))
    if not found:
        return []
    line, name = min(found)  # the first one says it: `__class__.__mro__...` is one attempt
    return [
        Problem(
            doc.file,
            _template_line(doc, path, text, line),
            doc.describe(path),
            f"template reaches for '{name}' (line {line} of the template): the sandbox refuses "
            "names starting with '_'",
            "use only the office, alternate, device, inventory and run variables",
        )
    ]


def _check_static(doc: Document, path: KeyPath, text: str) -> list[Problem]:
    """Checks only possible when a value holds no template: OIDs, regexes, XPaths."""
    field = next((p for p in reversed(path) if isinstance(p, str)), "")
    if field == "oid" and OID_PATTERN.match(text.strip()) is None:
        return [doc.problem(path, "not a numeric OID", "write it as digits and dots, e.g. 1.3.6.1.2.1.1.4.0")]
    if field == "matches" or (field == "expect" and isinstance(path[-1], int)):
        try:
            re.compile(text)
        except re.error as exc:
            return [doc.problem(path, f"bad regular expression: {exc.msg}", "escape special characters")]
    if field == "xpath":
        try:
            etree.XPath(text)
        except etree.XPathSyntaxError as exc:
            return [doc.problem(path, f"bad XPath: {exc}", "check brackets and quotes")]
    return []


def _check_playbook(doc: Document, playbook: Playbook) -> list[Problem]:
    """Rules across fields, with the line of the part at fault."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    last_phase = 0
    for i, step in enumerate(playbook.steps):
        path: KeyPath = ("steps", i)
        if not step.name:
            problems.append(
                doc.problem(path, "missing required key 'name'", "name every step: the journal uses it")
            )
        elif step.name in RESERVED_STEP_NAMES:
            problems.append(
                doc.problem(
                    (*path, "name"),
                    f"step name '{step.name}' is reserved: the runner journals its own calls under it",
                    f"rename it, e.g. '{step.name}-1'",
                )
            )
        elif step.name in seen:
            problems.append(
                doc.problem(
                    (*path, "name"), f"duplicate step name '{step.name}' (first is steps[{seen[step.name]}])"
                )
            )
        else:
            seen[step.name] = i
        if step.phase < last_phase:
            problems.append(
                doc.problem(
                    (*path, "phase"),
                    f"phase {step.phase} after phase {last_phase}",
                    "list steps in phase order: they run top to bottom",
                )
            )
        last_phase = max(last_phase, step.phase)
        if step.phase and not playbook.barriers:
            problems.append(
                doc.problem(
                    (*path, "phase"), "phase has no effect without 'barriers: true'", severity="warning"
                )
            )

    for item, path, nesting in _steps_with_paths(playbook):
        if item.retries and not item.is_idempotent:
            hint = (
                "mark the command 'idempotent: true' if running it twice is harmless"
                if isinstance(item, SshCommand)
                else "only netconf.get, snmp.get, wait and idempotent ssh.command may retry"
            )
            problems.append(
                doc.problem((*path, "retries"), f"a {_kind(item)} step must not be retried", hint)
            )
        if nesting and item.compensate is not None:
            problems.append(
                doc.problem(
                    (*path, "compensate"), f"a step inside '{nesting}' cannot have its own compensate"
                )
            )
        if nesting == "compensate" and item.when is not None:
            problems.append(
                doc.problem((*path, "when"), "a compensating step runs whenever its step ran: no 'when'")
            )
        if nesting == "compensate" and not item.CHANGES:
            problems.append(
                doc.problem(path, f"a {_kind(item)} step undoes nothing", "compensate with a change")
            )
        if not nesting and not item.CHANGES and item.compensate is not None:
            problems.append(
                doc.problem((*path, "compensate"), "a read-only step has nothing to undo", severity="warning")
            )
        if isinstance(item, Wait):
            cond = item.until
            has_check = bool(cond.expect) or (isinstance(cond, SshCommand) and cond.expect_exit is not None)
            if not has_check:
                problems.append(doc.problem((*path, "until"), "'until' needs 'expect' checks to wait for"))
            if item.interval_s >= item.deadline_s:
                problems.append(
                    doc.problem(
                        (*path, "interval_s"), "interval_s must be shorter than deadline_s", "poll more often"
                    )
                )
            if cond.when is not None or cond.retries:
                problems.append(
                    doc.problem((*path, "until"), "the 'until' condition takes no 'when' or 'retries'")
                )
    return problems


def _kind(step: _Step) -> str:
    return str(getattr(step, "kind", type(step).__name__))


def check_document(doc: Document) -> tuple[Playbook | None, list[Problem]]:
    if not isinstance(doc.data, dict):
        return None, [doc.problem((), "a playbook is a mapping (name:, kind:, targets:, steps: ...)")]
    try:
        playbook = Playbook.model_validate(doc.data)
    except ValidationError as exc:
        return None, _pydantic(doc, exc)
    problems = _check_playbook(doc, playbook) + _check_templates(doc, playbook)
    return (None if errors_in(problems) else playbook), problems


def check_playbook(path: Path, display: str | None = None) -> tuple[Playbook | None, list[Problem]]:
    """Read and validate one playbook file: the playbook if it has no errors, and every problem."""
    playbook, problems, _doc = _read_playbook(path, display)
    return playbook, problems


def _read_playbook(
    path: Path, display: str | None = None
) -> tuple[Playbook | None, list[Problem], Document | None]:
    doc, problems = read_document(path, display)
    if doc is None or errors_in(problems):
        return None, problems, doc
    playbook, more = check_document(doc)
    return playbook, problems + more, doc


def load_playbook(path: Path) -> Playbook:
    """One playbook; ConfigError with every problem if it has errors."""
    playbook, problems = check_playbook(path)
    if playbook is None:
        raise ConfigError(problems)
    return playbook


@dataclass(frozen=True, slots=True)
class PlaybookSet:
    playbooks: dict[str, Playbook]
    problems: list[Problem]
    # each playbook's file as read, by playbook name: rendering problems found later (for an
    # office and an alternate) point at the step's line in it
    documents: dict[str, Document] = field(default_factory=dict)


def step_line(
    doc: Document, step_index: int, path: KeyPath = (), line_in_template: int | None = None
) -> int | None:
    """The line of a step's templated field (and of a line inside that template) in its file."""
    where: KeyPath = ("steps", step_index, *path)
    node: Any = doc.data
    for part in where:
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if 0 <= part < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    text = node if isinstance(node, str) else ""
    return _template_line(doc, where, text, line_in_template)


def check_playbooks(directory: Path) -> PlaybookSet:
    """Every `*.yaml`/`*.yml` directly in `directory` (not subdirectories), checked together."""
    problems: list[Problem] = []
    playbooks: dict[str, Playbook] = {}
    documents: dict[str, Document] = {}
    origin: dict[str, str] = {}
    if not directory.is_dir():
        return PlaybookSet(
            {},
            [Problem(str(directory), None, "", "playbook directory not found", "create it or fix the path")],
        )
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        problems.append(Problem(str(directory), None, "", "no playbooks (*.yaml) found"))
    for file in files:
        playbook, found, doc = _read_playbook(file)
        problems.extend(found)
        if playbook is None or doc is None:
            continue
        if playbook.name in playbooks:
            problems.append(
                Problem(
                    str(file),
                    None,
                    "name",
                    f"duplicate playbook name '{playbook.name}' (also in {origin[playbook.name]})",
                )
            )
            continue
        playbooks[playbook.name] = playbook
        documents[playbook.name] = doc
        origin[playbook.name] = str(file)
    return PlaybookSet(playbooks, problems, documents)


def load_playbooks(directory: Path) -> dict[str, Playbook]:
    """All playbooks of a directory by name; ConfigError with every problem of every file."""
    result = check_playbooks(directory)
    if errors_in(result.problems):
        raise ConfigError(result.problems)
    return result.playbooks
