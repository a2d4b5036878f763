"""Numbers in configuration files: finite, and in a range that makes sense, or refused with the fix.

YAML reads `.inf`, `.nan` and `1.0e+999` as floats, and pydantic's `gt=0` lets infinity through: a
confirmed-commit window of `.inf` would pass validation and crash every handover. Every number
field of baton.yaml, the inventory and playbooks is declared with `bounded(...)` (finite, in
[low, high], with a hint naming the range and an example); models also set `allow_inf_nan=False`
as a backstop. Free-form `vars` are not typed, so `non_finite_problems` walks them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from baton.yamlsource import Document, KeyPath, Problem


def _n(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}"


def bounded(
    low: float,
    high: float,
    *,
    example: float,
    unit: str = "",
    low_open: bool = False,
) -> BeforeValidator:
    """A validator for a number field: finite and in [low, high] ((low, high] with `low_open`).

    It runs before pydantic's own type check, so a non-number is still reported by pydantic as
    the wrong type; only numbers are judged here."""
    suffix = f" {unit}" if unit else ""
    opening = f"more than {_n(low)}" if low_open else f"at least {_n(low)}"
    hint = f"write a number {opening} and at most {_n(high)}{suffix}, e.g. {_n(example)}"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError(
                "not_finite", "{value} is not a finite number", {"value": str(value), "hint": hint}
            )
        if value <= low if low_open else value < low:
            raise PydanticCustomError(
                "too_small",
                "{value} is too small: it must be {limit}",
                {"value": _n(value), "limit": f"{opening}{suffix}", "hint": hint},
            )
        if value > high:
            raise PydanticCustomError(
                "too_large",
                "{value} is too large: it must be at most {limit}",
                {"value": _n(value), "limit": f"{_n(high)}{suffix}", "hint": hint},
            )
        return value

    return BeforeValidator(check)


def non_finite(data: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, float]]:
    """Every non-finite float in plain YAML data, with its key path."""
    if isinstance(data, float) and not math.isfinite(data):
        yield path, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from non_finite(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from non_finite(value, (*path, index))


def non_finite_problems(doc: Document, under: str) -> list[Problem]:
    """A problem for every `.inf`/`.nan` below a key named `under` (free-form values: `vars`);
    typed fields are judged by their models."""
    return [
        doc.problem(
            where,
            f"{value} is not a finite number",
            "write a finite number, or quote it if you mean the text (e.g. '.inf')",
        )
        for where, value in non_finite(doc.data)
        if under in where
    ]
