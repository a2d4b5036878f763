"""Baton's durable record: office phases, flags, runs and their steps, operator commands, alerts.

Theory of operation. The journal is one SQLite file in WAL mode with `synchronous=FULL`, so a
commit returns only after the log is on disk. Every public write is exactly one transaction,
committed before the method returns: the service journals a transition *before* it acts on it,
and the runner journals a step's intent *before* running it and its result after. A process
killed at any moment therefore leaves the journal at a transaction boundary, and whatever a
caller was told is written, is written.

After a restart, `last_states()` replays the last recorded `OfficeState` of every office (each
transition stores the complete state after it, so replay is a lookup, not a fold) and
`last_flags()` the global pause/shadow switches. `unfinished_runs()` lists the runs that started
and never finished, with every step and its status: a step left at `intent` may or may not have
reached the device, so the runner must check or compensate it, never simply run it again.

The schema is versioned with `PRAGMA user_version`; `_MIGRATIONS[n]` brings a journal from
version n to n+1, inside one transaction. A journal written by a newer Baton is refused.

Secrets: the journal stores only what callers pass, and no method takes a credential. Free-form
values (command arguments) are JSON-encoded with an encoder that refuses `baton.secrets.Secret`,
so a resolved credential handed in by mistake raises instead of reaching the disk.

Every failure (corrupt file, unwritable directory, disk full, a newer schema) is a
`JournalError` naming the path and the cause: Baton never loses a record silently.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from baton import audit
from baton.audit import AuditEntry, AuditRecord, Verification
from baton.codec import dumps, office_from_dict, office_to_dict
from baton.core.model import OfficeState, Phase, RunKind, SecretRef
from baton.secrets import Secret

SCHEMA_VERSION = 4


class JournalError(Exception):
    """The journal cannot be opened, read or written. Says which file and why."""

    def __init__(self, path: str, cause: str) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"journal {path}: {cause}")


class StepStatus(StrEnum):
    INTENT = "intent"  # journaled before the step runs; may or may not have reached the device
    DONE = "done"
    FAILED = "failed"  # the device answered: it did not happen (or a check did not hold)
    UNKNOWN = "unknown"  # no answer that tells: it may have happened (timeout, session lost)
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"


FINAL_STEP_STATUSES = frozenset(StepStatus) - {StepStatus.INTENT}


class RunResult(StrEnum):
    """Suggested `finish_run` results (any short word is accepted)."""

    OK = "ok"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class StepRecord:
    id: int
    run_id: str
    device: str
    index: int  # position of the step in the playbook
    name: str
    phase: str  # the part of the run: "apply", "verify", "confirm", "rollback", ...
    status: StepStatus
    started: float
    finished: float | None
    detail: str
    attempt: int
    # What the step's result says, as data (never read back from `detail`): e.g. {"cc": true}
    # for a commit with :confirmed-commit, {"pending": false} for a confirm that found nothing
    # pending, {"unreachable": true} for a device skipped for not answering.
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    office: str
    kind: RunKind
    alternate: str
    reason: str
    who: str
    started: float
    finished: float | None
    result: str | None
    detail: str
    confirm_deadline: float | None  # when the devices roll back on their own unless confirmed
    persist_id: str | None  # confirmed-commit <persist> token, to confirm/cancel after a restart
    steps: tuple[StepRecord, ...] = ()
    # "forward" once every device passed verify (a restart finishes the handover), "back" once
    # the run turned to rolling back; None before either (a restart rolls back)
    decision: str | None = None
    decision_reason: str = ""
    plan: str | None = None  # the rendered plan (JSON), so recovery undoes what was meant
    window_s: float | None = None
    done: frozenset[str] = frozenset()  # devices handed over (or back) for good, once finished
    pending: frozenset[str] = frozenset()  # devices skipped as unreachable, once finished

    @property
    def is_finished(self) -> bool:
        return self.finished is not None


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    id: int
    office: str
    from_phase: Phase | None
    to_phase: Phase
    reason: str
    at: float
    state: OfficeState


@dataclass(frozen=True, slots=True)
class CommandRecord:
    id: int
    who: str
    at: float
    command: str
    args: Mapping[str, Any]
    reason: str


@dataclass(frozen=True, slots=True)
class Flags:
    paused: bool = False
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision, as the controller journals it in one transaction (see `record_decision`)."""

    at: float
    event: str  # the input, JSON (`baton.codec`)
    reason: str
    actions: str  # JSON list
    flags: str  # JSON: the state beside the offices, after the decision
    offices: Mapping[str, str | None]  # office -> its state after (JSON), None: dropped
    transitions: tuple[tuple[str, str | None, str, str], ...] = ()  # (office, from, to, state JSON)
    alerts: tuple[tuple[str, str | None, bool, str], ...] = ()  # (alert, office, raised, message)
    flags_changed: tuple[bool, bool] | None = None  # (paused, shadow) when they changed
    runs: tuple[
        tuple[str, str, RunKind, str, str, str], ...
    ] = ()  # (id, office, kind, alternate, reason, who)
    command: tuple[str, str, Mapping[str, Any], str] | None = None  # (who, name, args, reason)
    who: str = "baton"
    durable: bool = True  # fsync before returning; False only for decisions with no actions
    audit: AuditEntry | None = None  # the audit trail's row for it (`baton.audit`), if it is one


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    id: int
    at: float
    event: str
    reason: str
    actions: str
    flags: str
    offices: str


@dataclass(frozen=True, slots=True)
class AlertRecord:
    id: int
    alert: str
    office: str | None
    raised: bool
    message: str
    at: float


# --- OfficeState <-> JSON --------------------------------------------------------------------


def state_to_json(state: OfficeState) -> str:
    return dumps(office_to_dict(state))


def state_from_json(text: str) -> OfficeState:
    # Missing keys take the dataclass defaults, so states journaled before a field existed replay.
    return office_from_dict(json.loads(text))


def _json_default(value: object) -> Any:
    if isinstance(value, Secret):
        raise TypeError("refusing to journal a resolved secret")
    if isinstance(value, SecretRef):
        return str(value)  # where a secret lives is not itself secret
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot journal a value of type {type(value).__name__}")


# --- schema ----------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY,
    office TEXT NOT NULL,
    from_phase TEXT,
    to_phase TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX transitions_office ON transitions (office, id);
CREATE TABLE flags (
    id INTEGER PRIMARY KEY,
    paused INTEGER NOT NULL,
    shadow INTEGER NOT NULL,
    who TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    office TEXT NOT NULL,
    kind TEXT NOT NULL,
    alternate TEXT NOT NULL,
    reason TEXT NOT NULL,
    who TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    result TEXT,
    detail TEXT NOT NULL DEFAULT '',
    confirm_deadline REAL,
    persist_id TEXT
);
CREATE INDEX runs_office ON runs (office, started);
CREATE INDEX runs_unfinished ON runs (finished) WHERE finished IS NULL;
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id),
    device TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    step_name TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    detail TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL
);
CREATE INDEX steps_run ON steps (run_id, id);
CREATE TABLE commands (
    id INTEGER PRIMARY KEY,
    who TEXT NOT NULL,
    at REAL NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    alert TEXT NOT NULL,
    office TEXT,
    raised INTEGER NOT NULL,
    message TEXT NOT NULL,
    at REAL NOT NULL
);
"""


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


_SCHEMA_V2 = """
ALTER TABLE steps ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN decision TEXT;
ALTER TABLE runs ADD COLUMN decision_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN plan TEXT;
ALTER TABLE runs ADD COLUMN window_s REAL
"""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V2.split(";"):
        if statement.strip():
            conn.execute(statement)


_SCHEMA_V3 = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    reason TEXT NOT NULL,
    actions TEXT NOT NULL,
    flags TEXT NOT NULL,
    offices TEXT NOT NULL
);
CREATE INDEX decisions_at ON decisions (at);
CREATE TABLE office_state (
    office TEXT PRIMARY KEY,
    decision INTEGER NOT NULL,
    state TEXT NOT NULL
);
ALTER TABLE runs ADD COLUMN outcome TEXT
"""


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V3.split(";"):
        if statement.strip():
            conn.execute(statement)
    # Offices journaled before decisions were: their last transition is their state.
    rows = conn.execute(
        "SELECT office, id, state FROM transitions"
        " WHERE id IN (SELECT MAX(id) FROM transitions GROUP BY office)"
    ).fetchall()
    conn.executemany(
        "INSERT INTO office_state (office, decision, state) VALUES (?, 0, ?)", [(o, s) for o, _, s in rows]
    )


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    for statement in audit.SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


# _MIGRATIONS[n] takes a journal from user_version n to n+1. Append; never edit a shipped one.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


# --- the journal -----------------------------------------------------------------------------


P = ParamSpec("P")
T = TypeVar("T")
# Called around every write transaction with ("before" | "after", the write's number from 1,
# the method that writes): crash tests kill the process there. Production passes none.
WriteHook = Callable[[str, int, str], None]
# Called after every `Journal.call` with the method's name and arguments (`baton.runmirror`
# shares a run's records with the other vantages before the runner acts on them).
AfterCall = Callable[[str, tuple[Any, ...]], Awaitable[None]]


class Journal:
    """The SQLite journal. Thread-safe (one lock). Asyncio callers use `call`, which runs the
    (fsyncing) write on the journal's own thread: a journal write never queues behind network
    calls in a shared pool, and never blocks the event loop."""

    def __init__(self, conn: sqlite3.Connection, path: str, write_hook: WriteHook | None = None) -> None:
        self._conn = conn
        self._path = path
        self._lock = threading.Lock()
        self._write_hook = write_hook
        self._writes = 0
        self._durable = True
        self._executor: ThreadPoolExecutor | None = None
        self.after_call: AfterCall | None = None

    # --- device configuration backups -------------------------------------------------------
    #
    # A run saves what running held of the subtrees it edits, to undo committed edits exactly.
    # Configurations carry secrets (communities, keys), which never go into the journal: they
    # are kept in files beside it (0600, written and fsynced before the step that took them is
    # journaled), and the journal keeps only their digest.

    @property
    def backup_dir(self) -> Path:
        return Path(self._path).parent / (Path(self._path).name + ".backups")

    def save_backup(self, run_id: str, device: str, text: str) -> str:
        """Keep `text` for (run, device); returns the digest the journal records."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        directory = self.backup_dir / _safe_name(run_id)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            final = directory / f"{_safe_name(device)}-{digest[:16]}.xml"
            tmp = final.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise JournalError(
                self._path, f"cannot keep a configuration backup: {exc.strerror or exc}"
            ) from exc
        return digest

    def load_backup(self, run_id: str, device: str, digest: str) -> str | None:
        """The backup of (run, device) if it is there and intact, else None."""
        path = self.backup_dir / _safe_name(run_id) / f"{_safe_name(device)}-{digest[:16]}.xml"
        try:
            text = path.read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            return None
        return text if hashlib.sha256(text.encode()).hexdigest() == digest else None

    def drop_backups(self, run_id: str) -> None:
        """The run is finished: its backups are not needed any more."""
        shutil.rmtree(self.backup_dir / _safe_name(run_id), ignore_errors=True)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` (a method of this journal) on the journal's own thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-journal")
        result = await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs)
        )
        if self.after_call is not None:
            await self.after_call(getattr(fn, "__name__", ""), args)
        return result

    @property
    def path(self) -> str:
        return self._path

    @classmethod
    def open(cls, path: str | Path, write_hook: WriteHook | None = None) -> Journal:
        """Open (creating if needed) and migrate the journal at `path`; JournalError if unusable."""
        name = str(path)
        try:
            # isolation_level=None: no implicit transactions; each write opens its own.
            conn = sqlite3.connect(name, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise JournalError(name, _cause(exc)) from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(name, f"cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Catch a damaged file now, at startup, not at the first write of a handover.
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise JournalError(name, f"database is corrupt ({check})")
            _migrate(conn, name)
        except JournalError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise JournalError(name, _cause(exc)) from exc
        return cls(conn, name, write_hook)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, durable: bool = True, label: str = "write") -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            self._writes += 1
            if self._write_hook is not None:
                self._write_hook("before", self._writes, label)
            try:
                if durable != self._durable:
                    # WAL: NORMAL still commits atomically; FULL also fsyncs (and so makes every
                    # earlier NORMAL commit durable too: the journal is always a prefix).
                    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise JournalError(self._path, _cause(exc)) from exc
            if self._write_hook is not None:
                self._write_hook("after", self._writes, label)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._conn.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return list(cursor.fetchall())
            except sqlite3.Error as exc:
                raise JournalError(self._path, _cause(exc)) from exc

    # --- office phases, flags, commands, alerts ----------------------------------------------

    def record_decision(self, decision: Decision) -> int:
        """Journal one decision — its input, the resulting state, its actions, the run rows of
        the runs it starts, the operator command that asked for it — in ONE transaction, so
        that a restart finds either all of it or none of it (never a HANDING_* office without
        its run). Decisions with no actions may skip the fsync (`durable=False`): a power loss
        then loses a suffix of them, which leaves the journal at an earlier consistent state."""
        with self._write(label="record_decision", durable=decision.durable) as conn:
            cursor = conn.execute(
                "INSERT INTO decisions (at, event, reason, actions, flags, offices)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision.at,
                    decision.event,
                    decision.reason,
                    decision.actions,
                    decision.flags,
                    json.dumps(dict(decision.offices), sort_keys=True),
                ),
            )
            decision_id = _rowid(cursor)
            for office, state in decision.offices.items():
                if state is None:
                    conn.execute("DELETE FROM office_state WHERE office = ?", (office,))
                else:
                    conn.execute(
                        "INSERT INTO office_state (office, decision, state) VALUES (?, ?, ?)"
                        " ON CONFLICT (office) DO UPDATE SET decision = excluded.decision,"
                        " state = excluded.state",
                        (office, decision_id, state),
                    )
            for office, from_phase, to_phase, after in decision.transitions:
                conn.execute(
                    "INSERT INTO transitions (office, from_phase, to_phase, reason, at, state)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (office, from_phase, to_phase, decision.reason, decision.at, after),
                )
            for alert, alerted, raised, message in decision.alerts:
                conn.execute(
                    "INSERT INTO alerts (alert, office, raised, message, at) VALUES (?, ?, ?, ?, ?)",
                    (alert, alerted, int(raised), message, decision.at),
                )
            if decision.flags_changed is not None:
                paused, shadow = decision.flags_changed
                conn.execute(
                    "INSERT INTO flags (paused, shadow, who, reason, at) VALUES (?, ?, ?, ?, ?)",
                    (int(paused), int(shadow), decision.who, decision.reason, decision.at),
                )
            for run_id, office, kind, alternate, reason, who in decision.runs:
                self._insert_run(conn, run_id, office, kind, alternate, reason, who, decision.at)
            if decision.command is not None:
                who, name, args, reason = decision.command
                conn.execute(
                    "INSERT INTO commands (who, at, command, args, reason) VALUES (?, ?, ?, ?, ?)",
                    (who, decision.at, name, self._args_json(name, args), reason),
                )
            if decision.audit is not None:
                audit.append(conn, decision.audit)
            return decision_id

    def last_state(self) -> tuple[dict[str, Any] | None, dict[str, OfficeState]]:
        """Replay: the flags of the last decision (None: no decision yet) and every office's last
        journaled state."""
        rows = self._read("SELECT flags FROM decisions ORDER BY id DESC LIMIT 1")
        flags = json.loads(rows[0]["flags"]) if rows else None
        offices = {}
        for row in self._read("SELECT office, state FROM office_state"):
            try:
                offices[row["office"]] = state_from_json(row["state"])
            except (ValueError, KeyError, TypeError) as exc:
                raise JournalError(self._path, f"office {row['office']}: unreadable state ({exc})") from exc
        return flags, offices

    def decisions(self, since: float | None = None, limit: int | None = None) -> list[DecisionRecord]:
        """Decisions in order (oldest first), from `since`."""
        sql = "SELECT * FROM decisions WHERE at >= ? ORDER BY id LIMIT ?"
        params = (since if since is not None else float("-inf"), limit if limit is not None else -1)
        return [
            DecisionRecord(r["id"], r["at"], r["event"], r["reason"], r["actions"], r["flags"], r["offices"])
            for r in self._read(sql, params)
        ]

    def compact(self, before: float) -> int:
        """Delete the decisions older than `before`, replacing them by one snapshot row (the
        state they add up to, and the policy then in force), so `baton replay` still starts
        from a known state. Returns how many rows went."""
        with self._write(label="compact") as conn:
            rows = conn.execute(
                "SELECT id, at, event, flags, offices FROM decisions WHERE at < ? ORDER BY id", (before,)
            ).fetchall()
            if not rows:
                return 0
            offices: dict[str, str | None] = {}
            policy: Any = None
            stopping = False  # a process's flag, not in the rows' flags: followed from the inputs
            for _, _, event, _, changed in rows:
                data = json.loads(event)
                kind = data.get("type")
                if kind in ("Snapshot", "ConfigLoaded"):
                    policy = data.get("policy", policy)
                    stopping = bool(data.get("stopping", False))
                    if kind == "Snapshot":
                        offices = {}
                elif kind == "Stopping":
                    stopping = True
                offices.update(json.loads(changed))
            last_id, last_at, _, flags, _ = rows[-1]
            conn.execute("DELETE FROM decisions WHERE id <= ?", (last_id,))
            snapshot = {"type": "Snapshot", "policy": policy or {}, "stopping": stopping}
            conn.execute(
                "INSERT INTO decisions (id, at, event, reason, actions, flags, offices)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    last_id,
                    last_at,
                    dumps(snapshot),
                    f"snapshot of {len(rows)} decision(s) before {before:.0f}",
                    "[]",
                    flags,
                    json.dumps({k: v for k, v in offices.items() if v is not None}, sort_keys=True),
                ),
            )
        return len(rows)

    def record_transition(
        self, before: OfficeState | None, after: OfficeState, reason: str, at: float
    ) -> int:
        """Journal that an office went from `before` to `after` (None: first state ever seen)."""
        if before is not None and before.office != after.office:
            raise ValueError(f"transition between two offices: {before.office} → {after.office}")
        state = state_to_json(after)
        with self._write(label="record_transition") as conn:
            cursor = conn.execute(
                "INSERT INTO transitions (office, from_phase, to_phase, reason, at, state)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    after.office,
                    before.phase.value if before is not None else None,
                    after.phase.value,
                    reason,
                    at,
                    state,
                ),
            )
            return _rowid(cursor)

    def record_flags(self, paused: bool, shadow: bool, who: str, reason: str, at: float) -> int:
        with self._write(label="record_flags") as conn:
            cursor = conn.execute(
                "INSERT INTO flags (paused, shadow, who, reason, at) VALUES (?, ?, ?, ?, ?)",
                (int(paused), int(shadow), who, reason, at),
            )
            return _rowid(cursor)

    def _args_json(self, command: str, args: Mapping[str, Any]) -> str:
        try:
            return json.dumps(dict(args), sort_keys=True, default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as exc:
            # The message names the type, never the value.
            raise JournalError(self._path, f"command '{command}': {exc}") from exc

    def record_command(self, who: str, command: str, args: Mapping[str, Any], reason: str, at: float) -> int:
        """Journal an operator command. `args` must be JSON-able and never hold a credential."""
        encoded = self._args_json(command, args)
        with self._write(label="record_command") as conn:
            cursor = conn.execute(
                "INSERT INTO commands (who, at, command, args, reason) VALUES (?, ?, ?, ?, ?)",
                (who, at, command, encoded, reason),
            )
            return _rowid(cursor)

    def record_alert(self, alert: str, office: str | None, raised: bool, message: str, at: float) -> int:
        with self._write(label="record_alert") as conn:
            cursor = conn.execute(
                "INSERT INTO alerts (alert, office, raised, message, at) VALUES (?, ?, ?, ?, ?)",
                (str(alert), office, int(raised), message, at),
            )
            return _rowid(cursor)

    # --- runs and steps ----------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        office: str,
        kind: RunKind,
        alternate: str,
        reason: str,
        who: str,
        at: float,
        confirm_deadline: float | None = None,
        persist_id: str | None = None,
        plan: str | None = None,
        window_s: float | None = None,
    ) -> None:
        with self._write(label="start_run") as conn:
            self._insert_run(
                conn, run_id, office, kind, alternate, reason, who, at, confirm_deadline, persist_id
            )
            if plan is not None or window_s is not None:
                conn.execute("UPDATE runs SET plan = ?, window_s = ? WHERE id = ?", (plan, window_s, run_id))

    @staticmethod
    def _insert_run(
        conn: sqlite3.Connection,
        run_id: str,
        office: str,
        kind: RunKind,
        alternate: str,
        reason: str,
        who: str,
        at: float,
        confirm_deadline: float | None = None,
        persist_id: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO runs (id, office, kind, alternate, reason, who, started,"
            " confirm_deadline, persist_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, office, RunKind(kind).value, alternate, reason, who, at, confirm_deadline, persist_id),
        )

    def set_plan(self, run_id: str, plan: str, window_s: float) -> None:
        """Journal the rendered plan and the window the run uses, before it touches a device."""
        with self._write(label="set_plan") as conn:
            cursor = conn.execute(
                "UPDATE runs SET plan = ?, window_s = ? WHERE id = ? AND finished IS NULL",
                (plan, window_s, run_id),
            )
            if cursor.rowcount != 1:
                raise JournalError(self._path, f"no unfinished run '{run_id}'")

    def decide(self, run_id: str, decision: str, reason: str, at: float) -> None:
        """Journal the run's direction: "forward" (every device passed verify: finish it, even
        after a restart) or "back" (roll every device back). Forward may turn back, never the
        other way round."""
        if decision not in ("forward", "back"):
            raise ValueError(f"a run's decision is forward or back, not {decision!r}")
        with self._write(label="decide") as conn:
            row = conn.execute("SELECT decision, finished FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row[1] is not None:
                raise JournalError(self._path, f"no unfinished run '{run_id}'")
            if row[0] == "back" and decision == "forward":
                raise JournalError(self._path, f"run '{run_id}' already turned back")
            conn.execute(
                "UPDATE runs SET decision = ?, decision_reason = ? WHERE id = ?", (decision, reason, run_id)
            )

    def set_confirm(self, run_id: str, confirm_deadline: float | None, persist_id: str | None) -> None:
        """Journal the confirmed-commit window (before committing), so a restart can confirm or cancel."""
        with self._write(label="set_confirm") as conn:
            cursor = conn.execute(
                "UPDATE runs SET confirm_deadline = ?, persist_id = ? WHERE id = ?",
                (confirm_deadline, persist_id, run_id),
            )
            if cursor.rowcount != 1:
                raise JournalError(self._path, f"no run '{run_id}'")

    def step_intent(
        self,
        run_id: str,
        device: str,
        index: int,
        name: str,
        at: float,
        phase: str = "apply",
        attempt: int = 1,
        facts: Mapping[str, Any] | None = None,
    ) -> int:
        """Journal that a step is about to run; returns the step id for `step_result`."""
        with self._write(label="step_intent") as conn:
            row = conn.execute("SELECT finished FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise JournalError(self._path, f"step for unknown run '{run_id}'")
            if row[0] is not None:
                raise JournalError(self._path, f"step for run '{run_id}', which is finished")
            cursor = conn.execute(
                "INSERT INTO steps (run_id, device, step_index, step_name, phase, status, started,"
                " attempt, facts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    device,
                    index,
                    name,
                    phase,
                    StepStatus.INTENT.value,
                    at,
                    attempt,
                    _facts_json(facts),
                ),
            )
            return _rowid(cursor)

    def step_result(
        self,
        step_id: int,
        status: StepStatus,
        detail: str,
        at: float,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        """Journal how a step ended (`facts` are merged into the intent's). Exactly one result."""
        status = StepStatus(status)
        if status is StepStatus.INTENT:
            raise ValueError("a step result cannot be 'intent'")
        with self._write(label="step_result") as conn:
            row = conn.execute("SELECT facts FROM steps WHERE id = ?", (step_id,)).fetchone()
            merged = {**(json.loads(row[0]) if row is not None else {}), **(facts or {})}
            cursor = conn.execute(
                "UPDATE steps SET status = ?, detail = ?, finished = ?, facts = ?"
                " WHERE id = ? AND status = ?",
                (status.value, detail, at, _facts_json(merged), step_id, StepStatus.INTENT.value),
            )
            if cursor.rowcount != 1:
                raise JournalError(self._path, f"step {step_id} is unknown or already has a result")

    def finish_run(
        self,
        run_id: str,
        result: str,
        detail: str,
        at: float,
        *,
        done: frozenset[str] = frozenset(),
        pending: frozenset[str] = frozenset(),
    ) -> None:
        """Journal how a run ended, with the devices it handed over (or back) for good and those
        it left pending: what the core is told (`RunFinished`), even after a restart."""
        outcome = json.dumps({"done": sorted(done), "pending": sorted(pending)})
        with self._write(label="finish_run") as conn:
            cursor = conn.execute(
                "UPDATE runs SET finished = ?, result = ?, detail = ?, outcome = ?"
                " WHERE id = ? AND finished IS NULL",
                (at, str(result), detail, outcome, run_id),
            )
            if cursor.rowcount != 1:
                raise JournalError(self._path, f"run '{run_id}' is unknown or already finished")
            audit.append(conn, _run_audit(conn, run_id, str(result), detail, at, done, pending))

    def record_audit(self, entry: AuditEntry) -> int:
        """Append one row to the audit trail on its own (a request the API refused)."""
        with self._write(label="record_audit") as conn:
            return audit.append(conn, entry)

    # --- reading -----------------------------------------------------------------------------

    def audit_records(
        self, office: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditRecord]:
        """The audit trail, oldest first: `office` (rows about it), from `since`, the last `limit`."""
        sql = "SELECT * FROM audit WHERE at >= ?"
        params: list[Any] = [since if since is not None else float("-inf")]
        if office is not None:
            # A decision about several offices names them in its detail.
            sql += " AND (office = ? OR (office IS NULL AND instr(detail, ?) > 0))"
            params += [office, json.dumps(office)]
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit if limit is not None else -1)
        return [audit.record(row) for row in reversed(self._read(sql, tuple(params)))]

    def verify_audit(self) -> Verification:
        """Check the audit trail's hash chain (`baton audit verify`)."""
        return audit.verify(self._read("SELECT * FROM audit ORDER BY id"))

    def run(self, run_id: str) -> RunRecord | None:
        record = self.run_row(run_id)
        return None if record is None else replace(record, steps=self.steps_of(run_id))

    def run_row(self, run_id: str) -> RunRecord | None:
        """The run without its steps."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run_record(rows[0], ()) if rows else None

    def runs(self, limit: int = 50, office: str | None = None) -> list[RunRecord]:
        """The most recent runs first (without their steps)."""
        if office is None:
            rows = self._read("SELECT * FROM runs ORDER BY started DESC, rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                "SELECT * FROM runs WHERE office = ? ORDER BY started DESC, rowid DESC LIMIT ?",
                (office, limit),
            )
        return [_run_record(row, ()) for row in rows]

    def steps_of(self, run_id: str) -> tuple[StepRecord, ...]:
        rows = self._read("SELECT * FROM steps WHERE run_id = ? ORDER BY id", (run_id,))
        return tuple(_step_record(row) for row in rows)

    def device_steps(self, run_id: str, device: str) -> tuple[StepRecord, ...]:
        rows = self._read("SELECT * FROM steps WHERE run_id = ? AND device = ? ORDER BY id", (run_id, device))
        return tuple(_step_record(row) for row in rows)

    def step(self, step_id: int) -> StepRecord | None:
        rows = self._read("SELECT * FROM steps WHERE id = ?", (step_id,))
        return _step_record(rows[0]) if rows else None

    def adopt_run(self, record: RunRecord) -> bool:
        """Take a run as etcd holds it (a takeover, `baton.runmirror`): its row and every step
        record replace what this journal had of it, in one transaction — etcd's is the run's
        story, this journal's may be older — unless both show it finished. True if adopted."""
        outcome = json.dumps({"done": sorted(record.done), "pending": sorted(record.pending)})
        with self._write(label="adopt_run") as conn:
            row = conn.execute("SELECT finished FROM runs WHERE id = ?", (record.id,)).fetchone()
            if row is not None and row[0] is not None and record.finished is not None:
                return False
            if row is None:
                self._insert_run(
                    conn,
                    record.id,
                    record.office,
                    record.kind,
                    record.alternate,
                    record.reason,
                    record.who,
                    record.started,
                )
            conn.execute(
                "UPDATE runs SET confirm_deadline = ?, persist_id = ?, decision = ?, decision_reason = ?,"
                " plan = ?, window_s = ?, finished = ?, result = ?, detail = ?, outcome = ? WHERE id = ?",
                (
                    record.confirm_deadline,
                    record.persist_id,
                    record.decision,
                    record.decision_reason,
                    record.plan,
                    record.window_s,
                    record.finished,
                    record.result,
                    record.detail,
                    outcome,
                    record.id,
                ),
            )
            conn.execute("DELETE FROM steps WHERE run_id = ?", (record.id,))
            for step in record.steps:
                conn.execute(
                    "INSERT INTO steps (run_id, device, step_index, step_name, phase, status, started,"
                    " finished, detail, attempt, facts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        step.device,
                        step.index,
                        step.name,
                        step.phase,
                        StepStatus(step.status).value,
                        step.started,
                        step.finished,
                        step.detail,
                        step.attempt,
                        _facts_json(step.facts),
                    ),
                )
            return True

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs started and never finished, oldest first, with all their steps."""
        rows = self._read("SELECT * FROM runs WHERE finished IS NULL ORDER BY started, rowid")
        return [_run_record(row, self.steps_of(row["id"])) for row in rows]

    def transitions(self, office: str | None = None, limit: int = 100) -> list[TransitionRecord]:
        """The most recent transitions first."""
        if office is None:
            rows = self._read("SELECT * FROM transitions ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                "SELECT * FROM transitions WHERE office = ? ORDER BY id DESC LIMIT ?", (office, limit)
            )
        return [self._transition_record(row) for row in rows]

    def commands(self, limit: int = 100) -> list[CommandRecord]:
        rows = self._read("SELECT * FROM commands ORDER BY id DESC LIMIT ?", (limit,))
        return [
            CommandRecord(
                row["id"], row["who"], row["at"], row["command"], json.loads(row["args"]), row["reason"]
            )
            for row in rows
        ]

    def last_states(self) -> dict[str, OfficeState]:
        """Replay: the last journaled state of every office."""
        rows = self._read(
            "SELECT * FROM transitions WHERE id IN (SELECT MAX(id) FROM transitions GROUP BY office)"
        )
        return {row["office"]: self._transition_record(row).state for row in rows}

    def last_flags(self) -> Flags:
        rows = self._read("SELECT paused, shadow FROM flags ORDER BY id DESC LIMIT 1")
        return Flags(bool(rows[0]["paused"]), bool(rows[0]["shadow"])) if rows else Flags()

    def active_alerts(self) -> list[AlertRecord]:
        """Alerts whose last record raised them (each (alert, office) pair once)."""
        rows = self._read(
            "SELECT * FROM alerts WHERE id IN (SELECT MAX(id) FROM alerts GROUP BY alert, office)"
            " AND raised = 1 ORDER BY id"
        )
        return [
            AlertRecord(row["id"], row["alert"], row["office"], True, row["message"], row["at"])
            for row in rows
        ]

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check`: "ok", or what is wrong."""
        rows = self._read("PRAGMA integrity_check")
        return "; ".join(str(row[0]) for row in rows)

    def _transition_record(self, row: sqlite3.Row) -> TransitionRecord:
        try:
            state = state_from_json(row["state"])
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(self._path, f"transition {row['id']}: unreadable state ({exc})") from exc
        return TransitionRecord(
            id=row["id"],
            office=row["office"],
            from_phase=Phase(row["from_phase"]) if row["from_phase"] is not None else None,
            to_phase=Phase(row["to_phase"]),
            reason=row["reason"],
            at=row["at"],
            state=state,
        )


def _migrate(conn: sqlite3.Connection, name: str) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise JournalError(
            name, f"schema version {version} was written by a newer Baton (this one knows {SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target}")  # PRAGMA takes no parameters; an int
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _rowid(cursor: sqlite3.Cursor) -> int:
    rowid = cursor.lastrowid
    assert rowid is not None
    return rowid


def _cause(exc: sqlite3.Error) -> str:
    text = str(exc) or type(exc).__name__
    if "not a database" in text or "malformed" in text:
        return f"database is corrupt ({text})"
    if "readonly" in text or "unable to open" in text:
        return f"{text}: check the path exists and is writable by the baton user"
    return text


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]


def _facts_json(facts: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(facts or {}), sort_keys=True, default=_json_default, allow_nan=False)


def _step_record(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        id=row["id"],
        run_id=row["run_id"],
        device=row["device"],
        index=row["step_index"],
        name=row["step_name"],
        phase=row["phase"],
        status=StepStatus(row["status"]),
        started=row["started"],
        finished=row["finished"],
        detail=row["detail"],
        attempt=row["attempt"],
        facts=json.loads(row["facts"]) if row["facts"] else {},
    )


def _run_record(row: sqlite3.Row, steps: tuple[StepRecord, ...]) -> RunRecord:
    outcome = json.loads(row["outcome"]) if row["outcome"] else {}
    return RunRecord(
        id=row["id"],
        office=row["office"],
        kind=RunKind(row["kind"]),
        alternate=row["alternate"],
        reason=row["reason"],
        who=row["who"],
        started=row["started"],
        finished=row["finished"],
        result=row["result"],
        detail=row["detail"],
        confirm_deadline=row["confirm_deadline"],
        persist_id=row["persist_id"],
        steps=steps,
        decision=row["decision"],
        decision_reason=row["decision_reason"],
        plan=row["plan"],
        window_s=row["window_s"],
        done=frozenset(outcome.get("done", ())),
        pending=frozenset(outcome.get("pending", ())),
    )


def _run_audit(
    conn: sqlite3.Connection,
    run_id: str,
    result: str,
    detail: str,
    at: float,
    done: frozenset[str],
    pending: frozenset[str],
) -> AuditEntry:
    """The audit row of a finished run: how it ended and every device's result (its last step)."""
    row = conn.execute("SELECT office, kind, alternate, who FROM runs WHERE id = ?", (run_id,)).fetchone()
    office, kind, alternate, who = row if row is not None else (None, "?", "?", "baton")
    devices: dict[str, dict[str, Any]] = {}
    for device, name, status, step_detail in conn.execute(
        "SELECT device, step_name, status, detail FROM steps WHERE run_id = ? ORDER BY id", (run_id,)
    ):
        entry = devices.setdefault(device, {"steps": 0, "failed": 0})
        entry["steps"] += 1
        entry["failed"] += int(status in ("failed", "unknown"))
        entry.update(last_step=name, status=status, detail=step_detail)
    return AuditEntry(
        at=at,
        kind="run",
        who=who,
        what=run_id,
        reason=f"{kind} run {run_id} of {office} ({alternate}) ended {result}"
        + (f": {detail}" if detail else ""),
        office=office,
        detail={
            "kind": kind,
            "alternate": alternate,
            "result": result,
            "devices": devices,
            "done": sorted(done),
            "pending": sorted(pending),
        },
    )
