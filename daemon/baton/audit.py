"""The audit trail: who asked for what, when and why, what Baton decided, every run's result.

Theory of operation. The journal's `audit` table holds one row per thing a regulator asks about:
an operator's command and what the core made of it (`command`), a request the API refused for
want of a grant (`refused`), a decision Baton took on its own that changed a phase, started or
stopped a run, raised or cleared an alert, or ended a grant (`decision`), and how each run ended
with every device's result (`run`). Rows are written in the same transaction as what they
describe (`Journal.record_decision`, `Journal.finish_run`), so the trail never disagrees with
the journal.

Rows are hash-chained: each row's `hash` is SHA-256 over its id, its fields and the previous
row's hash (`prev`; the first row's is 64 zeros), as canonical JSON. Changing, deleting or
inserting a row breaks the chain at that row; `verify` walks it and names the first row that
does not hold (`baton audit verify`). The chain shows tampering by someone who cannot recompute
it for every later row; for that, export it regularly (`baton audit --json` to a SIEM): a copy
outside the machine pins what was there.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
KINDS = ("command", "refused", "decision", "run")

SCHEMA = """
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    office TEXT,
    who TEXT NOT NULL,
    what TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_office ON audit (office, id);
CREATE INDEX audit_at ON audit (at)
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row to append (its id, `prev` and `hash` are the chain's)."""

    at: float
    kind: str  # one of KINDS
    who: str
    what: str  # the command, the trigger of a decision, or the run id
    reason: str
    office: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: float
    kind: str
    office: str | None
    who: str
    what: str
    reason: str
    detail: Mapping[str, Any]
    prev: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "office": self.office,
            "who": self.who,
            "what": self.what,
            "reason": self.reason,
            "detail": dict(self.detail),
            "prev": self.prev,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    rows: int
    broken_id: int | None = None
    why: str = ""


def digest(
    row_id: int,
    at: float,
    kind: str,
    office: str | None,
    who: str,
    what: str,
    reason: str,
    detail: str,
    prev: str,
) -> str:
    canonical = json.dumps(
        [row_id, at, kind, office, who, what, reason, detail, prev], ensure_ascii=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def detail_json(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, ensure_ascii=True, allow_nan=False, default=str)


def append(conn: sqlite3.Connection, entry: AuditEntry) -> int:
    """Append `entry` to the chain, inside the caller's transaction; its id."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    row_id, prev = (1, GENESIS) if last is None else (int(last[0]) + 1, str(last[1]))
    detail = detail_json(entry.detail)
    value = digest(
        row_id, entry.at, entry.kind, entry.office, entry.who, entry.what, entry.reason, detail, prev
    )
    conn.execute(
        "INSERT INTO audit (id, at, kind, office, who, what, reason, detail, prev, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row_id,
            entry.at,
            entry.kind,
            entry.office,
            entry.who,
            entry.what,
            entry.reason,
            detail,
            prev,
            value,
        ),
    )
    return row_id


def record(row: sqlite3.Row) -> AuditRecord:
    try:
        detail = json.loads(row["detail"])
    except (TypeError, ValueError):
        detail = {"unreadable": True}
    return AuditRecord(
        row["id"],
        row["at"],
        row["kind"],
        row["office"],
        row["who"],
        row["what"],
        row["reason"],
        detail if isinstance(detail, dict) else {"value": detail},
        row["prev"],
        row["hash"],
    )


def verify(rows: Iterable[sqlite3.Row]) -> Verification:
    """Walk the chain in id order: the first row whose link or hash does not hold, if any."""
    prev, expected_id, count = GENESIS, None, 0
    for row in rows:
        count += 1
        row_id = int(row["id"])
        if expected_id is not None and row_id != expected_id:
            return Verification(
                False, count, row_id, f"row {expected_id} is missing (the chain jumps to {row_id})"
            )
        if row["prev"] != prev:
            return Verification(
                False, count, row_id, f"row {row_id} does not follow row {row_id - 1} (its prev hash differs)"
            )
        try:
            value = digest(
                row_id,
                row["at"],
                row["kind"],
                row["office"],
                row["who"],
                row["what"],
                row["reason"],
                row["detail"],
                row["prev"],
            )
        except (TypeError, ValueError):
            return Verification(False, count, row_id, f"row {row_id} has values no row of Baton's can have")
        if value != row["hash"]:
            return Verification(
                False, count, row_id, f"row {row_id} was changed after it was written (its hash differs)"
            )
        prev, expected_id = str(row["hash"]), row_id + 1
    return Verification(True, count)


__all__ = ["GENESIS", "KINDS", "AuditEntry", "AuditRecord", "Verification", "append", "record", "verify"]
