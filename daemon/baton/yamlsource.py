"""YAML documents that remember where each value was written, and the problems that point into them.

Every configuration error Baton reports names a file and a line, so an operator can go straight
to it. PyYAML's composer keeps a start mark on every node; `read_document` walks the node tree
once, building the plain Python data and a map from key paths (`("devices", 3, "snmp")`) to the
line the key or item starts on. Pydantic errors (`loc` tuples) and cross-checks look lines up
there, falling back to the nearest enclosing key when a path was never written (a missing key).

Messages built here never contain input values: a misplaced secret must not end up in a log.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

KeyPath = tuple[str | int, ...]
Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or worth a look) in a configuration file."""

    file: str
    line: int | None
    where: str  # "devices[3] (gc-core-1).snmp"
    message: str
    hint: str = ""
    severity: Severity = "error"

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line is not None else self.file]
        if self.severity == "warning":
            parts.append("warning")
        if self.where:
            parts.append(self.where)
        text = ": ".join(parts) + ": " + self.message
        return f"{text} — {self.hint}" if self.hint else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "where": self.where,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }


class ConfigError(Exception):
    """The inventory or configuration cannot be used; `problems` says every reason at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid configuration")


def errors_in(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


@dataclass(slots=True)
class Document:
    """Plain data read from one YAML file, with the line of every key and list item."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest written ancestor (a missing key has no line)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def describe(self, path: KeyPath) -> str:
        """`("devices", 3, "snmp")` → `devices[3] (gc-core-1).snmp`, naming list items by id."""
        text = ""
        node: Any = self.data
        for part in path:
            if isinstance(part, int):
                text += f"[{part}]"
                node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
                item_id = node.get("id") if isinstance(node, dict) else None
                if isinstance(item_id, str) and item_id:
                    text += f" ({item_id})"
            else:
                text += f".{part}" if text else str(part)
                node = node.get(part) if isinstance(node, dict) else None
        return text

    def problem(self, path: KeyPath, message: str, hint: str = "", severity: Severity = "error") -> Problem:
        return Problem(self.file, self.line_of(path), self.describe(path), message, hint, severity)


def read_document(path: Path, display: str | None = None) -> tuple[Document | None, list[Problem]]:
    """Read one YAML file; on any failure, no document and problems saying why (never a traceback)."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(name, None, "", "file not found", "create it or fix the path")]
    except IsADirectoryError:
        return None, [Problem(name, None, "", "is a directory, not a file", "give the path of a YAML file")]
    except PermissionError:
        return None, [Problem(name, None, "", "permission denied", "make it readable by the baton user")]
    except UnicodeDecodeError as exc:
        return None, [Problem(name, None, "", f"not UTF-8 text ({exc.reason})", "save the file as UTF-8")]
    except OSError as exc:
        return None, [Problem(name, None, "", f"cannot read: {exc.strerror}", "check the file")]
    return parse_document(text, name)


def parse_document(text: str, name: str) -> tuple[Document | None, list[Problem]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [Problem(name, None, "", "file is empty", "write the section this file holds")]
        doc = Document(name, None)
        problems: list[Problem] = []
        doc.data = _build(loader, node, (), doc, problems)
        return doc, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or "malformed YAML"
        return None, [Problem(name, line, "", f"YAML syntax error: {what}", _yaml_hint(what))]
    except yaml.YAMLError as exc:
        return None, [Problem(name, None, "", f"YAML error: {type(exc).__name__}", "check the YAML syntax")]
    finally:
        loader.dispose()


def _yaml_hint(what: str) -> str:
    if "tab" in what:
        return "indent with spaces, not tabs"
    if "mapping values" in what:
        return "a value containing ': ' must be quoted"
    return "check indentation and quoting on this line or the one before"


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, doc: Document, problems: list[Problem]
) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(doc.file, line, doc.describe(path), "a key must be a plain word"))
                continue
            key = loader.construct_object(key_node)
            if not isinstance(key, str | int | bool | float) or key is None:
                key = str(key)
            if key in result:
                first = doc.lines.get((*path, key))
                problems.append(
                    Problem(
                        doc.file,
                        line,
                        doc.describe(path),
                        f"duplicate key '{key}' (first at line {first})",
                        "keep one; YAML would silently use the last",
                    )
                )
            doc.lines[(*path, key)] = line
            result[key] = _build(loader, value_node, (*path, key), doc, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            doc.lines[(*path, index)] = item.start_mark.line + 1
            items.append(_build(loader, item, (*path, index), doc, problems))
        return items
    return loader.construct_object(node)


# --- pydantic errors → problems ------------------------------------------------------------

_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value)",
    "model_type": "expected a mapping (key: value)",
    "model_attributes_type": "expected a mapping (key: value)",
}


def pydantic_problems(
    doc: Document, exc: ValidationError, model: type[BaseModel], prefix: KeyPath = ()
) -> list[Problem]:
    """Turn a pydantic error into problems with file:line, never echoing the input value."""
    problems = []
    for error in exc.errors(include_url=False):
        loc: KeyPath = tuple(error["loc"])
        path = (*prefix, *loc)
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            hint = did_you_mean(key, fields_at(model, loc[:-1]))
            # the unknown key was written, so its own line; described from where it sits
            where = doc.describe(path[:-1])
            problems.append(Problem(doc.file, doc.line_of(path), where, f"unknown key '{key}'", hint))
        elif kind == "missing":
            key = str(loc[-1]) if loc else "?"
            problems.append(doc.problem(path[:-1], f"missing required key '{key}'", f"add '{key}: ...'"))
        elif kind in _TYPE_MESSAGES:
            got = type(error.get("input")).__name__
            got = {"NoneType": "nothing", "dict": "a mapping", "list": "a list"}.get(got, got)
            problems.append(doc.problem(path, f"{_TYPE_MESSAGES[kind]}, got {got}"))
        elif kind == "literal_error":
            problems.append(doc.problem(path, f"expected one of {ctx.get('expected', '?')}"))
        elif "hint" in ctx:
            problems.append(doc.problem(path, str(error["msg"]), str(ctx["hint"])))
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(doc.problem(path, message[:1].lower() + message[1:]))
    return problems


def fields_at(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """The keys allowed at `loc` inside `model` (for did-you-mean on an unknown key)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = getattr(current, "__args__", ())
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            args = tuple(getattr(current, "__args__", ()))
            current = args[1] if len(args) == 2 else None  # dict[str, X]
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X; Annotated[X, ...] → X."""
    while True:
        metadata = getattr(annotation, "__metadata__", None)
        if metadata is not None:
            annotation = annotation.__origin__
            continue
        args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        origin = getattr(annotation, "__origin__", None)
        if origin is None and len(args) == 1:  # types.UnionType (X | None)
            annotation = args[0]
            continue
        return annotation


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(set(choices))
    if not choices:
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if len(choices) <= 12:
        return "expected one of: " + ", ".join(choices)
    return ""


def mapping_or_none(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None
