"""Each run's progress, shared in etcd, so that another vantage can finish it (a takeover).

Theory of operation. With `etcd:`, every record a run journals (its plan, its decision, its
confirmed-commit window, each step's intent and result, its end) is written to etcd too, right
after the local journal and *before* the runner goes on: `Journal.after_call` calls `after`, and
the runner's next action waits for it. So whatever a run did to a device, etcd holds at least its
intent — the rule recovery needs to treat an unfinished step as possibly done.

    <prefix>runs/<run id>/run            the run row, and its end once finished
    <prefix>runs/<run id>/plan/<n>       its rendered plan, compressed, in parts that each fit in
                                         an etcd request (written before the row that names them)
    <prefix>runs/<run id>/dev/<device>   that device's step records, in journal order

Every write is a transaction conditioned on the writer's term (`EtcdLeadership.term`): a vantage
that stopped leading writes nothing. A write no etcd member answers is retried while the term
holds; once it does not, the run stops where it is (`FenceLost`), unfinished, for whoever leads.
A write etcd refuses (its quota full, a permission) stops the run the same way and this vantage
steps down (`step_down`): a leader that cannot share what it does must not act, and whoever
leads next — this vantage again, perhaps — adopts and finishes the run.
The keys are on no lease: a dead leader's runs outlive it. A finished run keeps its row (a new
leader learns how it ended, even if the old one died before the others adopted its state) for
`KEEP_FINISHED_S`, on a lease of its own that nobody keeps alive, and loses its device records;
a row older than that which is still there (no lease could be had) is removed at takeover.

A vantage that becomes leader calls `adopt` before recovering: every run etcd holds replaces
what its journal had of it (`Journal.adopt_run`), and a run its journal shows unfinished that
etcd does not hold was never shared, so it never touched a device (every change comes after
its intent is shared): it is finished as not started, and the core decides again.

Configuration backups stay in the journal of the vantage that took them (configurations carry
secrets): a takeover undoes edits that were committed for good by their compensating steps,
and a pending confirmed commit by <cancel-commit> with the persist id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from baton.adapters.etcd import EtcdClient, EtcdError, EtcdUnavailable, delete_prefix, put
from baton.core.model import RunKind
from baton.journal import Journal, RunRecord, StepRecord, StepStatus
from baton.logs import get_logger
from baton.playbook.runner import FenceLost
from baton.runs import NOT_STARTED

log = get_logger(component="runmirror")

KEEP_FINISHED_S = 3600.0
PLAN_PART_CHARS = 512 * 1024  # etcd refuses requests above 1.5 MiB (--max-request-bytes)
_RUN_WRITES = frozenset({"start_run", "set_plan", "decide", "set_confirm"})
_RETRY_S = 0.1


class RunMirror:
    """Shares one vantage's run records in etcd and adopts the others' (module docstring)."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        journal: Journal,
        term: Callable[[], list[dict[str, Any]]],
        held: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        step_down: Callable[[str], None] = lambda why: None,
        count_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.prefix = f"{prefix}runs/"
        self.journal = journal
        self.term = term
        self.held = held
        self.clock = clock
        self.step_down = step_down
        self.count_error = count_error  # baton_etcd_errors_total

    def _run_key(self, run_id: str) -> str:
        return f"{self.prefix}{run_id}/run"

    def _device_key(self, run_id: str, device: str) -> str:
        return f"{self.prefix}{run_id}/dev/{device}"

    async def after(self, name: str, args: tuple[Any, ...]) -> None:
        """After the journal call `name(*args)`: what it wrote, in etcd (`Journal.after_call`)."""
        journal = self.journal
        if name in _RUN_WRITES:
            record = await journal.call(journal.run_row, str(args[0]))
            if record is None:
                return
            parts = plan_parts(record.plan)
            if name in ("set_plan", "start_run"):
                for n, part in enumerate(parts):
                    await self._write([put(f"{self.prefix}{record.id}/plan/{n}", part)])
            await self._write([put(self._run_key(record.id), run_doc(record, len(parts)))])
        elif name in ("step_intent", "step_result"):
            if name == "step_intent":
                run_id, device = str(args[0]), str(args[1])
            else:
                step = await journal.call(journal.step, int(args[0]))
                if step is None:
                    return
                run_id, device = step.run_id, step.device
            steps = await journal.call(journal.device_steps, run_id, device)
            await self._write([put(self._device_key(run_id, device), steps_doc(steps))])
        elif name == "finish_run":
            record = await journal.call(journal.run_row, str(args[0]))
            if record is not None:
                # The row of a finished run goes by itself after KEEP_FINISHED_S: on a lease of its
                # own that nobody keeps alive (without one, the next takeover removes it).
                try:
                    lease, _ = await self.client.grant(KEEP_FINISHED_S)
                except EtcdError as exc:
                    log.warning("runmirror.no_lease", error=str(exc))
                    lease = 0
                await self._write(
                    [
                        put(self._run_key(record.id), run_doc(replace(record, plan=None), 0), lease),
                        delete_prefix(f"{self.prefix}{record.id}/dev/"),
                        delete_prefix(f"{self.prefix}{record.id}/plan/"),
                    ]
                )

    async def _write(self, operations: Sequence[Mapping[str, Any]]) -> None:
        """The operations, under this vantage's term; retried while the term holds."""
        while True:
            if not self.held():
                raise FenceLost("this vantage's term ended before the run's progress was shared")
            try:
                written = await self.client.txn(self.term(), operations)
            except EtcdUnavailable as exc:
                self.count_error()
                log.warning("runmirror.write_failed", error=str(exc))
                await asyncio.sleep(_RETRY_S)
                continue
            except EtcdError as exc:
                self.count_error()
                why = f"etcd refused the run's progress ({exc}): this vantage cannot act"
                log.critical("runmirror.write_refused", error=str(exc))
                self.step_down(why)
                raise FenceLost(why) from exc
            if not written.succeeded:
                raise FenceLost("another vantage leads: the run's progress was not shared")
            return

    async def adopt(self) -> list[str]:
        """Leading now: every run etcd holds, into the journal; the runs adopted (module docstring)."""
        journal = self.journal
        kvs = await self.client.get_prefix(self.prefix)
        runs: dict[str, dict[str, Any]] = {}
        devices: dict[str, list[StepRecord]] = {}
        plans: dict[str, dict[int, str]] = {}
        unreadable: set[str] = set()
        for kv in kvs:
            run_id, _, rest = kv.key.removeprefix(self.prefix).partition("/")
            try:
                if rest == "run":
                    runs[run_id] = kv.json()
                elif rest.startswith("dev/"):
                    devices.setdefault(run_id, []).extend(steps_from_doc(run_id, kv.text))
                elif rest.startswith("plan/"):
                    plans.setdefault(run_id, {})[int(rest.removeprefix("plan/"))] = kv.text
            except (ValueError, KeyError, TypeError) as exc:
                # One device's records missing would read as "never touched": the whole run is
                # left out, for this vantage's own journal (if it has the run) and an operator.
                log.critical("runmirror.bad_record", key=kv.key, error=str(exc))
                unreadable.add(run_id)
        adopted = []
        # Records of a run without its row: a leader that died between the plan and the row,
        # before the run touched anything. Nobody else writes now: they go.
        stale = list({*devices, *plans} - {*runs, *unreadable})
        for run_id, doc in runs.items():
            try:
                if run_id in unreadable:
                    raise ValueError("some of its records are unreadable")
                record = run_from_doc(doc, tuple(devices.get(run_id, ())), plans.get(run_id, {}))
            except (ValueError, KeyError, TypeError, zlib.error) as exc:
                log.critical("runmirror.run_not_adopted", run_id=run_id, error=str(exc))
                continue
            if record.finished is not None and self.clock() - record.finished > KEEP_FINISHED_S:
                stale.append(run_id)
            if await journal.call(journal.adopt_run, record):
                adopted.append(run_id)
                log.warning("runmirror.adopted", run_id=run_id, office=record.office, steps=len(record.steps))
        for record in await journal.call(journal.unfinished_runs):
            if record.id not in runs:
                detail = "never shared with the other vantages before its leader stopped: touched no device"
                await journal.call(journal.finish_run, record.id, NOT_STARTED, detail, self.clock())
        for run_id in stale:
            await self._write([delete_prefix(f"{self.prefix}{run_id}/")])
        return adopted


def plan_parts(plan: str | None) -> list[str]:
    """The plan compressed, in parts that each fit in one etcd request."""
    if plan is None:
        return []
    text = base64.b64encode(zlib.compress(plan.encode())).decode()
    return [text[i : i + PLAN_PART_CHARS] for i in range(0, len(text), PLAN_PART_CHARS)]


def run_doc(record: RunRecord, parts: int) -> str:
    """The run row; its plan is in `parts` parts beside it (0: none)."""
    return json.dumps(
        {
            "id": record.id,
            "office": record.office,
            "kind": record.kind.value,
            "alternate": record.alternate,
            "reason": record.reason,
            "who": record.who,
            "started": record.started,
            "finished": record.finished,
            "result": record.result,
            "detail": record.detail,
            "confirm_deadline": record.confirm_deadline,
            "persist_id": record.persist_id,
            "decision": record.decision,
            "decision_reason": record.decision_reason,
            "plan_parts": parts,
            "window_s": record.window_s,
            "done": sorted(record.done),
            "pending": sorted(record.pending),
        },
        sort_keys=True,
    )


def run_from_doc(
    doc: Mapping[str, Any], steps: tuple[StepRecord, ...], parts: Mapping[int, str]
) -> RunRecord:
    count = int(doc["plan_parts"])
    if any(n not in parts for n in range(count)):
        raise ValueError(f"run {doc['id']}: {count - len(parts)} part(s) of its plan missing")
    joined = "".join(parts[n] for n in range(count))
    plan = zlib.decompress(base64.b64decode(joined)).decode() if count else None
    return RunRecord(
        id=str(doc["id"]),
        office=str(doc["office"]),
        kind=RunKind(doc["kind"]),
        alternate=str(doc["alternate"]),
        reason=str(doc["reason"]),
        who=str(doc["who"]),
        started=float(doc["started"]),
        finished=None if doc["finished"] is None else float(doc["finished"]),
        result=doc["result"],
        detail=str(doc["detail"]),
        confirm_deadline=doc["confirm_deadline"],
        persist_id=doc["persist_id"],
        steps=steps,
        decision=doc["decision"],
        decision_reason=str(doc["decision_reason"]),
        plan=plan,
        window_s=doc["window_s"],
        done=frozenset(doc["done"]),
        pending=frozenset(doc["pending"]),
    )


def steps_doc(steps: Sequence[StepRecord]) -> str:
    return json.dumps(
        [
            {
                "id": s.id,
                "device": s.device,
                "index": s.index,
                "name": s.name,
                "phase": s.phase,
                "status": s.status.value,
                "started": s.started,
                "finished": s.finished,
                "detail": s.detail,
                "attempt": s.attempt,
                "facts": dict(s.facts),
            }
            for s in steps
        ],
        sort_keys=True,
    )


def steps_from_doc(run_id: str, text: str) -> list[StepRecord]:
    return [
        StepRecord(
            id=int(d["id"]),
            run_id=run_id,
            device=str(d["device"]),
            index=int(d["index"]),
            name=str(d["name"]),
            phase=str(d["phase"]),
            status=StepStatus(d["status"]),
            started=float(d["started"]),
            finished=None if d["finished"] is None else float(d["finished"]),
            detail=str(d["detail"]),
            attempt=int(d["attempt"]),
            facts=dict(d["facts"]),
        )
        for d in json.loads(text)
    ]
