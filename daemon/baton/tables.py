"""Plain-text tables and times for people: aligned columns, relative times ("3m12s ago")."""

from __future__ import annotations

from collections.abc import Sequence

ELLIPSIS = "…"


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, width: int | None = None
) -> str:
    """Left-aligned columns two spaces apart. With `width`, the last column is cut to fit it
    (a terminal); without, nothing is cut (a pipe or a file keeps every word)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len(text))
    lines = [_line(headers, widths, width), *(_line(row, widths, width) for row in cells)]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    # A cell is one line: newlines in reasons would break the columns; and it is shown, never
    # interpreted: control characters and bidirectional overrides are escaped.
    return safe_text(" ".join(str(value).split())) or "-"


def _line(row: Sequence[str], widths: Sequence[int], width: int | None) -> str:
    parts = [text.ljust(widths[i]) for i, text in enumerate(row[:-1])]
    line = "  ".join([*parts, row[-1]]) if row else ""
    if width is not None and len(line) > width:
        line = line[: max(width - 1, 0)] + ELLIPSIS
    return line.rstrip()


def duration(seconds: float) -> str:
    """A short duration: 45s, 3m12s, 2h05m, 3d04h."""
    total = max(round(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def relative(when: float | None, now: float) -> str:
    """`when` relative to `now`: "3m12s ago", "in 2h05m", or "-" when unknown."""
    if when is None:
        return "-"
    delta = now - when
    if -1 < delta < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


__all__ = ["duration", "relative", "render_table"]


_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def safe_text(text: str) -> str:
    """`text` for a terminal: control characters (NUL, ESC, BEL...) and bidirectional overrides
    shown escaped, so nothing journaled can move the cursor or reorder what an operator reads."""
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    return "".join(
        ch if (ch.isprintable() and ch not in _BIDI) or ch == " " else ch.encode("unicode_escape").decode()
        for ch in text
    )
