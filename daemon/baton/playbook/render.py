"""Rendering playbook templates: a Jinja2 sandbox where a missing variable is an error, not a blank.

Templates see `office`, `alternate` (id, name, region, vars), `device` (id, role, address, tags,
vars, office), `inventory` (free variables the caller passes) and `run` (id, reason, who, kind).
Secrets are never in the context: devices carry only `SecretRef`s in their protocol settings,
and those settings are not exposed.

Autoescape is off because templates *produce* XML; values that may hold `<` or `&` go through
the `xml_escape` filter. Every mapping and list in the context knows its own path, so an
undefined variable is reported as `'alternate.vars.noc_prefixes' is undefined` instead of
jinja's "'dict object' has no attribute ...".

Rendering has a budget (`Budget`): a playbook is data an operator edits, and rendering it runs
inside the daemon. The sandbox (immutable: templates cannot change lists or dicts) already
refuses attributes that lead out of it (`__class__`, ...); on top of that each rendered field
gets a time limit, a cap on what one operation may build (`'a' * 100000000`, `center(10**9)`,
a `%`/format width, `replace('', ...)`, a join), a cap on everything it builds altogether, a cap
on loop iterations (every `{% for %}` is wrapped to count them) and on its output. Going over is
a `BudgetExceeded` (a `SecurityError`), reported as a RenderError like any other.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from xml.sax.saxutils import escape

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    Undefined,
    UndefinedError,
    nodes,
    pass_environment,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
from jinja2.visitor import NodeTransformer
from lxml import etree  # type: ignore[import-untyped]  # no lxml-stubs in the env
from pydantic import BaseModel

from baton.core.model import Device, Inventory, Office, RunKind, SecretRef

if TYPE_CHECKING:
    from baton.playbook.schema import Step

KeyPath = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

NETCONF_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


class RenderError(Exception):
    """A step could not be rendered for a device. The message names both and the cause.

    `path` is the templated field inside the step (`("compensate", "config")`, `("when",)`),
    `line` the line inside that template where it failed, when known."""

    def __init__(
        self, step: str, device: str, message: str, path: KeyPath = (), line: int | None = None
    ) -> None:
        self.step = step
        self.device = device
        self.message = message
        self.path = path
        self.line = line
        super().__init__(f"step '{step}' for device {device}: {message}")


# --- the budget ------------------------------------------------------------------------------

RENDER_TIME_S = 1.0  # one templated field; real templates take well under a millisecond
MAX_VALUE_CHARS = 1_000_000  # what one operation may build (a string, or a list's contents)
MAX_BUILT_CHARS = 16_000_000  # what the checked operations of one field build altogether
MAX_OUTPUT_CHARS = 1_000_000  # one rendered field
MAX_ITERATIONS = 100_000  # loop iterations of one field, nested loops counted in full


class BudgetExceeded(SecurityError):
    """Rendering one field went over its budget (time, size or iterations)."""


class Budget:
    """What one rendering may still spend: time, characters built, loop iterations."""

    __slots__ = ("built", "deadline", "iterations")

    def __init__(self, time_s: float = RENDER_TIME_S) -> None:
        self.deadline = time.monotonic() + time_s
        self.built = 0
        self.iterations = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"rendering took longer than {RENDER_TIME_S:g} s")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise BudgetExceeded(f"loops ran more than {MAX_ITERATIONS} iterations")
        if not self.iterations % 256:
            self.tick()

    def build(self, value: Any) -> None:
        size = weight(value)
        if size > MAX_VALUE_CHARS:
            raise BudgetExceeded(f"a value of {size} characters (at most {MAX_VALUE_CHARS})")
        self.built += size
        if self.built > MAX_BUILT_CHARS:
            raise BudgetExceeded(f"templates built more than {MAX_BUILT_CHARS} characters")


def weight(value: Any, depth: int = 0) -> int:
    """About how many characters `value` stands for: strings by length, containers by what they
    hold (a list of 1,000 references to one long string weighs 1,000 of them)."""
    if isinstance(value, str):
        return len(value)
    if depth > 4:
        return 1
    if isinstance(value, Mapping):
        items: Any = list(value.items())[:MAX_ITERATIONS]
        return len(value) + sum(weight(k, depth + 1) + weight(v, depth + 1) for k, v in items)
    if isinstance(value, list | tuple | set | frozenset):
        return len(value) + sum(weight(v, depth + 1) for v in list(value)[:MAX_ITERATIONS])
    return 1


def _too_big(what: str, size: int) -> BudgetExceeded:
    return BudgetExceeded(f"{what} would build {size} characters (at most {MAX_VALUE_CHARS})")


# `%d`-style conversions and `{:…}` format specs: the widths and precisions they ask for
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_DIGITS = re.compile(r"\d+")


def _check_widths(fmt: str, specs: re.Pattern[str]) -> None:
    for match in specs.finditer(fmt):
        for group in match.groups():
            if group == "*":
                continue  # the width is an argument: checked with the arguments
            for digits in _DIGITS.findall(group or ""):
                if len(digits) > 7 or int(digits) > MAX_VALUE_CHARS:
                    raise _too_big(f"format width {digits}", int(digits[:12]))


def _check_ints(what: str, args: Sequence[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_VALUE_CHARS:
            raise _too_big(f"{what}({arg})", abs(arg))


def _check_call(obj: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse a string method call that would build more than one value may hold."""
    owner = getattr(obj, "__self__", None)
    wrapped = getattr(obj, "__wrapped__", None)  # the sandbox's str.format wrapper
    if wrapped is not None and isinstance(getattr(wrapped, "__self__", None), str):
        _check_widths(wrapped.__self__, _FORMAT_SPEC)
        _check_ints("format", [*args, *kwargs.values()])
        return
    if not isinstance(owner, str):
        return
    name = getattr(obj, "__name__", "")
    values = [*args, *kwargs.values()]
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_ints(name, values)
    elif name == "expandtabs":
        size = (values[0] if values and isinstance(values[0], int) else 8) * owner.count("\t")
        if size > MAX_VALUE_CHARS:
            raise _too_big("expandtabs", size)
    elif name == "replace" and len(values) >= 2 and isinstance(values[0], str):
        _check_replace(owner, values[0], values[1])
    elif name == "join" and values and isinstance(values[0], list | str):
        size = weight(values[0]) + len(owner) * len(values[0])
        if size > MAX_VALUE_CHARS:
            raise _too_big("join", size)


def _check_replace(text: str, old: str, new: Any) -> None:
    count = len(text) + 1 if old == "" else text.count(old)
    size = len(text) + count * len(str(new))
    if size > MAX_VALUE_CHARS:
        raise _too_big("replace", size)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What templates may know about the run (`run.*`)."""

    id: str
    kind: RunKind
    reason: str
    who: str


# --- the environment -------------------------------------------------------------------------


class _Scope(dict[str, Any]):
    """A context mapping that knows its dotted path, for error messages."""

    __slots__ = ("path",)

    def __init__(self, path: str, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self.path = path


class _Seq(list[Any]):
    __slots__ = ("path",)

    def __init__(self, path: str, items: Sequence[Any]) -> None:
        super().__init__(items)
        self.path = path


def _wrap(path: str, value: Any) -> Any:
    if isinstance(value, SecretRef):
        return str(value)  # the reference, never the secret
    if isinstance(value, Mapping):
        return _Scope(path, {str(k): _wrap(f"{path}.{k}", v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return _Seq(path, [_wrap(f"{path}[{i}]", v) for i, v in enumerate(value)])
    return value


_LOOP = "baton_loop_budget"
_CONCAT = "baton_concat_budget"
# Filters whose arguments say how much to build: their integers are bounded like str methods'.
_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})


class _Guard(NodeTransformer):
    """Counts every loop iteration, and checks the size of every `~` concatenation."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.For)
        visited.iter = nodes.Filter(visited.iter, _LOOP, [], [], None, None, lineno=visited.lineno)
        return visited

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.Concat)
        return nodes.Filter(nodes.List(visited.nodes), _CONCAT, [], [], None, None, lineno=visited.lineno)


@pass_environment
def _loop_budget(env: _Environment, iterable: Any) -> Iterator[Any]:
    budget = env.budget
    for item in iterable:
        budget.iterate()
        yield item


@pass_environment
def _concat_budget(env: _Environment, items: list[Any]) -> str:
    size = sum(weight(item) for item in items)
    if size > MAX_VALUE_CHARS:
        raise _too_big("~", size)
    text = "".join(map(str, items))
    env.budget.build(text)
    return text


def _environment_of(first: Any) -> _Environment:
    found = first if isinstance(first, _Environment) else getattr(first, "environment", None)
    assert isinstance(found, _Environment)
    return found


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` under the budget: its input weighed first, its sizing arguments bounded, its
    result counted. The guard receives the environment (or the context the filter wants)."""
    own_pass = getattr(func, "jinja_pass_arg", None) is None

    @functools.wraps(func)
    def guarded(first: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _environment_of(first).budget
        budget.tick()
        if args:
            if name == "join" and not isinstance(args[0], str | Mapping):
                args = (list(args[0]), *args[1:])  # weighed now, joined below: read once
                separator = args[1] if len(args) > 1 else kwargs.get("d", "")
                size = weight(args[0]) + len(str(separator)) * len(args[0])
                if size > MAX_VALUE_CHARS:
                    raise _too_big("join", size)
            size = weight(args[0])
            if size > MAX_VALUE_CHARS:
                raise _too_big(f"|{name}", size)
            if name in _SIZING_FILTERS:
                _check_ints(name, [*args[1:], *kwargs.values()])
            if name == "indent" and isinstance(args[0], str):
                width = args[1] if len(args) > 1 else kwargs.get("width", 4)
                unit = len(width) if isinstance(width, str) else int(width)
                size = len(args[0]) + unit * (args[0].count("\n") + 1)
                if size > MAX_VALUE_CHARS:
                    raise _too_big("indent", size)
            elif name == "format" and isinstance(args[0], str):
                _check_widths(args[0], _PERCENT_SPEC)
                _check_ints(name, [*args[1:], *kwargs.values()])
            elif name == "replace" and isinstance(args[0], str) and len(args) >= 3:
                _check_replace(args[0], str(args[1]), args[2])
        result = func(*args, **kwargs) if own_pass else func(first, *args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.build(result)
        return result

    return pass_environment(guarded) if own_pass else guarded


@pass_environment
def _finalize(env: _Environment, value: Any) -> Any:
    """Every `{{ value }}` before it becomes text: a huge list would otherwise be printed whole."""
    size = weight(value)
    if size > MAX_OUTPUT_CHARS:
        raise BudgetExceeded(f"output of {size} characters (at most {MAX_OUTPUT_CHARS})")
    return value


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        # `from_string` compiles anew on every call (Jinja caches only loader templates); a plan
        # renders the same few templates for every device: ~2 ms each, 2.5 s for 200 devices.
        self._compiled: dict[str, Template] = {}
        # templates that went over their budget once, with why: not tried again for every device
        self.exhausted: dict[str, str] = {}
        self.budget = Budget()
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: nothing a device needs
        self.filters["xml_escape"] = xml_escape
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP] = _loop_budget
        self.filters[_CONCAT] = _concat_budget

    def start(self) -> Budget:
        """A fresh budget for rendering one field."""
        self.budget = Budget()
        return self.budget

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        guarded: nodes.Template = _Guard().visit(tree)
        return guarded

    def compiled(self, source: str) -> Template:
        """`from_string(source)`, compiled once per environment."""
        template = self._compiled.get(source)
        if template is None:
            template = self._compiled[source] = self.from_string(source)
        return template

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.budget.tick()
        if getattr(obj, "__name__", "") == "join" and args and not isinstance(args[0], str):
            args = (list(args[0]), *args[1:])  # weighed by the check, then joined: read once
        _check_call(obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            self.budget.build(result)
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.budget.tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and times > 1:
                    size = weight(seq) * times
                    if size > MAX_VALUE_CHARS:
                        raise _too_big("*", size)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            bits = abs(left).bit_length() * right
            if abs(left) > 1 and bits > 64 * 1024:
                raise BudgetExceeded(f"{left} ** {right} is a number of about {bits} bits")
        elif operator == "%" and isinstance(left, str):
            _check_widths(left, _PERCENT_SPEC)
            _check_ints("%", right if isinstance(right, tuple) else (right,))
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, str | list | tuple):
            self.budget.build(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        value = super().getattr(obj, attribute)
        if isinstance(value, Undefined) and isinstance(obj, _Scope | _Seq) and not attribute.startswith("_"):
            return self.undefined(hint=f"'{obj.path}.{attribute}' is undefined", obj=obj, name=attribute)
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        private = isinstance(argument, str) and argument.startswith("_")
        if isinstance(value, Undefined) and isinstance(obj, _Scope | _Seq) and not private:
            return self.undefined(
                hint=f"'{obj.path}[{argument!r}]' is undefined", obj=obj, name=str(argument)
            )
        return value


def xml_escape(value: Any) -> str:
    """Escape text for an XML element or a double/single-quoted attribute."""
    return escape(str(value), {'"': "&quot;", "'": "&apos;"})


def make_environment() -> SandboxedEnvironment:
    return _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


# --- the context -----------------------------------------------------------------------------


def office_context(office: Office) -> dict[str, Any]:
    return {"id": office.id, "name": office.name, "region": office.region, "vars": dict(office.vars)}


def device_context(device: Device) -> dict[str, Any]:
    # Deliberately not the snmp/netconf/ssh settings: they hold credential references.
    return {
        "id": device.id,
        "role": device.role,
        "address": device.address,
        "tags": list(device.tags),
        "vars": dict(device.vars),
        "office": device.office,
    }


def template_context(
    office: Office,
    alternate: Office,
    device: Device,
    run: RunInfo,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The variables every template of one device sees."""
    raw: dict[str, Any] = {
        "office": office_context(office),
        "alternate": office_context(alternate),
        "device": device_context(device),
        "inventory": dict(variables or {}),
        "run": {"id": run.id, "reason": run.reason, "who": run.who, "kind": run.kind.value},
    }
    return {name: _wrap(name, value) for name, value in raw.items()}


def context_for(
    inventory: Inventory,
    office_id: str,
    alternate_id: str,
    device: Device,
    run: RunInfo,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return template_context(
        inventory.offices[office_id], inventory.offices[alternate_id], device, run, variables
    )


# --- walking the templated fields of a step --------------------------------------------------


def map_templates(model: M, fn: Callable[[str, KeyPath], str], path: KeyPath = ()) -> M:
    """A copy of `model` with every templated string replaced by `fn(text, path)`, recursively.

    A model class lists its templated fields in a `TEMPLATES` class variable; nested models
    (compensate, until, expect items) are walked too.
    """
    templated: tuple[str, ...] = getattr(type(model), "TEMPLATES", ())
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        here = (*path, name)
        if isinstance(value, BaseModel):
            updates[name] = map_templates(value, fn, here)
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            updates[name] = [map_templates(v, fn, (*here, i)) for i, v in enumerate(value)]
        elif name in templated:
            if isinstance(value, str):
                updates[name] = fn(value, here)
            elif isinstance(value, list):
                updates[name] = [fn(v, (*here, i)) if isinstance(v, str) else v for i, v in enumerate(value)]
    return model.model_copy(update=updates)


XML_FIELDS = frozenset({"config", "rpc", "filter"})


def xml_problem(text: str) -> tuple[int, str] | None:
    """(line, message) if `text` is not a well-formed XML fragment, else None."""
    if not text.strip():
        return None
    # The wrapper lets a fragment hold several elements and use the nc: prefix undeclared.
    wrapped = f'<baton-fragment xmlns:nc="{NETCONF_NS}">{text}</baton-fragment>'
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        etree.fromstring(wrapped.encode(), parser)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else 1
        return line, str(exc.msg).replace("baton-fragment", "(end of template)")
    return None


def _line_in_template(exc: BaseException) -> int | None:
    """The template line an exception was raised at (Jinja rewrites tracebacks to point there)."""
    line = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _explain(exc: Exception, field: str) -> str:
    if isinstance(exc, UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, BudgetExceeded):
        return f"rendering {field} went over its budget: {exc}"
    if isinstance(exc, SecurityError):
        return f"refused by the template sandbox in {field}: {exc}"
    if isinstance(exc, TemplateError):
        return f"template error in {field}: {exc}"
    # a filter or an operator can raise anything; report, don't crash
    return f"{type(exc).__name__} in {field}: {exc}"


def _render_text(env: SandboxedEnvironment, text: str, context: Mapping[str, Any]) -> str:
    """One template, within a fresh budget (output size included)."""
    if not isinstance(env, _Environment):
        return env.from_string(text).render(context)
    template = env.compiled(text)
    budget = env.start()
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise BudgetExceeded(f"output longer than {MAX_OUTPUT_CHARS} characters")
        budget.tick()
        chunks.append(chunk)
    return "".join(chunks)


def render_step(
    step: Step, context: Mapping[str, Any], device: str, env: SandboxedEnvironment | None = None
) -> Step:
    """`step` with every template rendered for one device; RenderError if any cannot be."""
    env = env or make_environment()
    exhausted = env.exhausted if isinstance(env, _Environment) else {}

    def render(text: str, path: KeyPath) -> str:
        field = _dotted(path)
        if text in exhausted:
            raise RenderError(step.name, device, exhausted[text], path)
        try:
            result = _render_text(env, text, context)
        except Exception as exc:
            message = _explain(exc, field)
            if isinstance(exc, BudgetExceeded):
                exhausted[text] = message  # the same for every device: do not spend it again
            raise RenderError(step.name, device, message, path, _line_in_template(exc)) from None
        if path and path[-1] in XML_FIELDS:
            bad = xml_problem(result)
            if bad is not None:
                line, message = bad
                raise RenderError(
                    step.name,
                    device,
                    f"rendered {field} is not well-formed XML (line {line}: {message})",
                    path,
                )
        return result

    return map_templates(step, render)


def evaluate_when(
    expression: str,
    context: Mapping[str, Any],
    step: str,
    device: str,
    env: SandboxedEnvironment | None = None,
) -> bool:
    """Evaluate a step's `when` expression for one device."""
    env = env or make_environment()
    if isinstance(env, _Environment):
        env.start()
    try:
        value = env.compile_expression(expression, undefined_to_none=False)(**context)
        return bool(value)
    except UndefinedError as exc:
        raise RenderError(step, device, f"undefined variable in when: {exc.message}", ("when",)) from None
    except Exception as exc:
        raise RenderError(step, device, f"when: {_explain(exc, 'when')}", ("when",)) from None


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "template"
