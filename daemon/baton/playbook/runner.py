"""The playbook runner: executes a `RunPlan` over many devices with an office-wide confirmed commit.

Theory of operation
-------------------
`execute(plan, ...)` runs one planned run. It creates the journal's run row unless the caller
already did (same id), and always finishes it: the journal says how every run ended.

1. Refusals, before any device is touched: an invalid plan; SNMP steps with no SNMP access; a
   device without `:confirmed-commit` when some `netconf.edit` for it has no `compensate` (only
   then are capabilities read up front, one short session per device).
2. Devices run with bounded concurrency (a semaphore of the playbook's `concurrency`), their
   steps in order. With `barriers`, the run is cut into phases: every device finishes phase k
   before any starts k+1. A device keeps one NETCONF session for the whole run (edits, commit,
   verify across the barrier, confirm) while file descriptors allow (`held_sessions`); beyond
   that budget its sessions are closed between phases unless one must stay open.
3. Per device, the first `netconf.edit` locks the candidate and discards it (a clean start);
   edits go to the candidate; right after the device's *last* edit the candidate is committed
   (which validates it) with `<confirmed/>`, confirm-timeout = the confirm window and a `<persist>` id
   unique to the run, then unlocked. The persist id and the deadline are journaled
   (`set_confirm`) before the first commit goes out. Steps after the commit are the verify
   steps; their timeouts are capped by what is left of the window.
4. When every device passed, each is confirmed (`<commit><persist-id>`), unless the window is
   nearly over (less than `confirm_margin_s` left since the first commit): then the run fails
   and rolls back instead of confirming late.
5. On a failure, per the playbook's `on_failure`: `rollback` stops the other devices at their
   next step and undoes every touched device; `rollback_device` undoes only the failing device
   and confirms the rest; `stop` undoes nothing (pending confirmed commits revert on their own
   when the window ends) and reports. In every mode an uncommitted candidate is discarded.
   Undo = `<cancel-commit>` (persist id) on a device whose confirmed commit is pending; the
   `compensate` of each netconf.edit on a device committed without a pending confirmed commit
   (no `:confirmed-commit`, or already confirmed); the `compensate` of every ssh/snmp/rpc step
   that ran, newest first.

6. Unreachable devices, with the playbook's `unreachable: skip`: before a device's first step, the
   session that step needs is opened ("first contact"). When that fails at the connection level
   (`is_unreachable`: refused, reset, timed out, no route, the peer closing before the SSH
   banner; never a host key or authentication failure, never an rpc-error), every step of the
   device is journaled `skipped` with a detail starting "unreachable (pending)", the device ends
   UNREACHABLE, and the others go on: the run is `ok` when every device that answered
   succeeded, even when none answered ("ok: 0 device(s) handed over, 3 unreachable (pending)").
   That is deliberate: the office is closed and nobody can operate those devices now; a failed
   run would leave the office FAILED for an operator who could do nothing either, whereas the
   daemon catches the pending devices up when they answer again (`baton.catchup`). A device
   that fails *after* first contact (its session drops mid-run) is a real failure. With the
   default `unreachable: fail` nothing of this happens: the connect error fails the run.

Every step, including the runner's own (prepare-candidate, commit, confirm, cancel-commit,
discard-candidate, compensate:NAME), is journaled at `intent` before it runs and gets exactly one
result after: done, failed (with the cause), skipped (why) or rolled_back (undo steps that
succeeded). A retry of an idempotent step is a new journal row with the next attempt number.
Cancelling `execute` behaves like a crash: the journal holds the truth and `recovery` finishes
the run; an operator's abort is the `abort` event, which rolls back like a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import structlog

from baton.adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    HostKeyError,
    NetconfConnectError,
    NetconfError,
    NetconfRpcError,
    NetconfSessionError,
    SshConnectError,
)
from baton.core.events import RunFinished
from baton.core.model import RunKind
from baton.journal import Journal, StepRecord, StepStatus
from baton.playbook.plan import DevicePlan, PlannedStep, RunPlan
from baton.playbook.schema import (
    NetconfEdit,
    NetconfGet,
    NetconfRpc,
    SnmpGet,
    SnmpSet,
    SshCommand,
    Step,
    Wait,
)
from baton.playbook.steps import Connectors, DeviceSession, StepFailed, run_step, wrap_config

log = structlog.get_logger("baton.runner")

# Names of the runner's own journal steps (the playbook's steps keep their names).
PREPARE = "prepare-candidate"
COMMIT = "commit"
CONFIRM = "confirm"
CANCEL = "cancel-commit"
DISCARD = "discard-candidate"
COMPENSATE = "compensate:"
# How the steps of a device skipped for not answering start their detail (the catch-up reads it).
UNREACHABLE = "unreachable (pending)"

OnFailure = Literal["rollback", "rollback_device", "stop"]
Progress = Callable[["StepOutcome"], None]

_BACKSTOP_S = 2.0  # over a step's own timeout, in case an adapter does not honour it
# File descriptors one open NETCONF session takes (TCP socket, paramiko's channel pipe, the
# reader thread's epoll): sessions are held across barriers only while they fit in half of what
# is left under the process's RLIMIT_NOFILE (the rest stays for probes, journal, API, logs).
FDS_PER_SESSION = 4


class DeviceStatus(StrEnum):
    PENDING = "pending"  # not reached (run stopped before it)
    RUNNING = "running"
    COMMITTED = "committed"  # confirmed commit pending, or committed without one
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    LEFT = "left"  # on_failure stop: left as it is
    UNREACHABLE = "unreachable"  # unreachable: skip, and it did not answer: skipped, pending


@dataclass(frozen=True, slots=True)
class StepOutcome:
    device: str
    index: int
    name: str
    phase: str  # apply | commit | verify | confirm | rollback
    status: StepStatus
    detail: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    device: str
    status: DeviceStatus
    committed: bool
    confirmed: bool
    rolled_back: bool
    error: str | None
    steps: tuple[StepOutcome, ...]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    office: str
    alternate: str
    kind: RunKind
    result: str  # ok | rolled_back | failed | refused
    detail: str  # one sentence for operators
    devices: tuple[DeviceOutcome, ...] = ()
    persist_id: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    def device(self, device_id: str) -> DeviceOutcome:
        return next(d for d in self.devices if d.device == device_id)

    @property
    def unreachable(self) -> tuple[str, ...]:
        """Devices skipped because they did not answer (pending a catch-up)."""
        return tuple(d.device for d in self.devices if d.status is DeviceStatus.UNREACHABLE)

    def to_event(self) -> RunFinished:
        return RunFinished(
            office=self.office, run_id=self.run_id, kind=self.kind, ok=self.ok, detail=self.detail
        )


# --- pure decisions (unit-tested without I/O) ---------------------------------------------------


def commit_position(steps: Sequence[PlannedStep]) -> int | None:
    """Position (in the device's steps) of the last netconf.edit: the commit follows it."""
    last = None
    for pos, ps in enumerate(steps):
        if isinstance(ps.step, NetconfEdit):
            last = pos
    return last


def segments(phases: Sequence[int], barriers: bool) -> tuple[frozenset[int], ...]:
    """The groups of phases devices run through between barriers (one group without barriers)."""
    if not phases:
        return ()
    if not barriers:
        return (frozenset(phases),)
    return tuple(frozenset({p}) for p in sorted(phases))


def retry_delays(step: Step, base_s: float = 0.5, cap_s: float = 5.0) -> tuple[float, ...]:
    """Backoff before each retry; none for a step that is not idempotent (never run twice)."""
    if not step.is_idempotent:
        return ()
    return tuple(min(cap_s, base_s * 2**k) for k in range(step.retries))


def rollback_scope(
    on_failure: OnFailure, failed: Iterable[str], touched: Iterable[str], aborted: bool = False
) -> frozenset[str]:
    """Which devices to undo after a failure (an operator's abort always rolls back all)."""
    if aborted or on_failure == "rollback":
        return frozenset(touched)
    if on_failure == "rollback_device":
        return frozenset(failed)
    return frozenset()


def stops_others(on_failure: OnFailure) -> bool:
    """Does one device's failure stop the others at their next step?"""
    return on_failure != "rollback_device"


def uncompensated_edits(plan: RunPlan) -> dict[str, tuple[str, ...]]:
    """Per device, the netconf.edit steps without `compensate` (safe only with confirmed commit)."""
    found: dict[str, tuple[str, ...]] = {}
    for dp in plan.devices:
        names = tuple(
            ps.name for ps in dp.steps if isinstance(ps.step, NetconfEdit) and ps.step.compensate is None
        )
        if names:
            found[dp.device.id] = names
    return found


def refusal(plan: RunPlan, confirmed_commit: Mapping[str, bool]) -> str | None:
    """Why the run must not start, given which devices have :confirmed-commit; None if it may."""
    bad = [
        f"{device} ({', '.join(names)})"
        for device, names in sorted(uncompensated_edits(plan).items())
        if not confirmed_commit.get(device, False)
    ]
    if not bad:
        return None
    return (
        f"refused: {len(bad)} device(s) lack :confirmed-commit and their netconf.edit steps have no "
        f"compensate, so a failure could not be undone: {'; '.join(bad)}"
    )


def held_sessions(fd_limit: int, fds_open: int = 0) -> int:
    """How many devices may keep their session open across barriers: half of the file
    descriptors left under RLIMIT_NOFILE (soft limit `fd_limit`, -1 for none)."""
    if fd_limit < 0:  # RLIM_INFINITY
        return 1 << 30
    return max(0, (fd_limit - fds_open) // 2 // FDS_PER_SESSION)


def _fds_open() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count none
        return 0


def confirm_margin(window_s: float) -> float:
    """How much of the window must be left to confirm: a fifth, at least 5 s (less for tiny windows)."""
    return min(max(5.0, window_s * 0.2), window_s / 2)


def is_too_late(first_commit_at: float | None, window_s: float, margin_s: float, now: float) -> bool:
    return first_commit_at is not None and now > first_commit_at + window_s - margin_s


_UNREACHABLE_MARKS = (
    "tcp connect to",  # refused, timed out, no route, network unreachable...
    "error reading ssh protocol banner",  # accepted, then closed/reset before SSH spoke
    "connection reset",
    "connection refused",
    "connection lost",
    "timed out",
    "no route to host",
    "unreachable",
    "no netconf session with",  # the whole establishment timed out
    "no ssh session with",
)


def is_unreachable(exc: BaseException) -> bool:
    """Did a connect fail at the connection level (the device does not answer at all)?

    Host key and authentication failures, missing credentials and rpc-errors are not: the device
    (or something claiming to be it) answered. The adapters' connect errors carry a cause text
    only, so this reads it; tests against the lab pin what a dead device gives.
    """
    if not isinstance(exc, NetconfConnectError | SshConnectError) or isinstance(exc, HostKeyError):
        return False
    cause = exc.cause.lower()
    if "authentication failed" in cause or "credentials" in cause:
        return False
    return any(mark in cause for mark in _UNREACHABLE_MARKS)


def unreachable_devices(steps: Iterable[StepRecord]) -> frozenset[str]:
    """The devices a run skipped as unreachable, read from its journaled steps."""
    return frozenset(
        s.device for s in steps if s.status is StepStatus.SKIPPED and s.detail.startswith(UNREACHABLE)
    )


def summarize(
    result: str, devices: Sequence[DeviceOutcome], reason: str = "", kind: RunKind = RunKind.HANDOVER
) -> str:
    """One sentence for the journal, logs and the RunFinished event."""
    unreachable = sum(1 for d in devices if d.status is DeviceStatus.UNREACHABLE)
    if result == "ok" and unreachable:
        done = "handed over" if kind is RunKind.HANDOVER else "handed back"
        text = f"ok: {len(devices) - unreachable} device(s) {done}, {unreachable} unreachable (pending)"
        return f"{text}; {reason}" if reason else text
    counts: dict[str, int] = {}
    for d in devices:
        counts[d.status.value] = counts.get(d.status.value, 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    text = f"{result}: {len(devices)} device(s)" + (f" ({tally})" if tally else "")
    return f"{text}; {reason}" if reason else text


# --- execution -----------------------------------------------------------------------------------


class _DeviceFailed(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclass(eq=False)
class _Dev:
    plan: DevicePlan
    session: DeviceSession
    commit_at: int | None
    status: DeviceStatus = DeviceStatus.PENDING
    next_pos: int = 0
    locked: bool = False
    hold: bool = False  # keep the session open across barriers (one session for the whole run)
    confirmed_commit: bool = True  # known once connected
    persist: bool = True  # :confirmed-commit:1.1 (the commit outlives the session)
    committed: bool = False
    commit_uncertain: bool = False  # the commit RPC timed out: it may or may not have happened
    confirmed: bool = False
    rolled_back: bool = False
    failed: str | None = None
    unreachable: str | None = None  # why it was skipped as not answering (unreachable: skip)
    ran: list[PlannedStep] = field(default_factory=list)  # steps that may have changed something
    outcomes: list[StepOutcome] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.plan.device.id

    @property
    def touched(self) -> bool:
        return bool(self.ran) or self.committed or self.locked

    @property
    def holds_session(self) -> bool:
        # The lock, and a confirmed commit without <persist>, live only as long as the session.
        return self.locked or (self.committed and not self.persist and not self.confirmed)

    def outcome(self) -> DeviceOutcome:
        return DeviceOutcome(
            self.id,
            self.status,
            self.committed,
            self.confirmed,
            self.rolled_back,
            self.failed if self.failed is not None else self.unreachable,
            tuple(self.outcomes),
        )


class _Run:
    def __init__(
        self,
        plan: RunPlan,
        journal: Journal,
        connectors: Connectors,
        *,
        concurrency: int,
        window_s: int,
        margin_s: float,
        progress: Progress | None,
        abort: asyncio.Event | None,
        clock: Callable[[], float],
        unreachable: Mapping[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.skip_unreachable = plan.playbook.unreachable == "skip"
        self.known_unreachable = dict(unreachable or {})  # found so by the capabilities read
        self.journal = journal
        self.connectors = connectors
        self.run_id = plan.run.id
        self.on_failure: OnFailure = plan.playbook.on_failure
        self.sem = asyncio.Semaphore(concurrency)
        self.window_s = window_s
        self.margin_s = margin_s
        self.progress = progress
        self.abort = abort or asyncio.Event()
        self.clock = clock
        self.stop = asyncio.Event()  # a failure that stops the other devices
        self.persist_id = f"baton-{self.run_id}-{secrets.token_hex(4)}"
        self.first_commit_at: float | None = None  # monotonic, taken just before the first commit
        self._confirm_journaled = asyncio.Lock()
        self._journaled = False
        self.devs = [
            _Dev(dp, DeviceSession(dp.device, connectors), commit_position(dp.steps)) for dp in plan.devices
        ]
        # One session per device for the whole run (edit, commit, verify, confirm) where the file
        # descriptors allow: a connect costs ~11 ms CPU (SSH handshake), an idle session almost
        # nothing since its reader thread sleeps until data arrives (`adapters.netconf._Session`).
        budget = held_sessions(resource.getrlimit(resource.RLIMIT_NOFILE)[0], _fds_open())
        for dev in self.devs[:budget]:
            dev.hold = True
        self.log = log.bind(office=plan.office, run_id=self.run_id)

    # --- journal (SQLite with fsync: off the event loop) ---------------------------------------

    async def _intent(self, dev: _Dev, index: int, name: str, phase: str, attempt: int = 1) -> int:
        return await asyncio.to_thread(
            self.journal.step_intent, self.run_id, dev.id, index, name, self.clock(), phase, attempt
        )

    async def _result(
        self,
        dev: _Dev,
        step_id: int,
        index: int,
        name: str,
        phase: str,
        status: StepStatus,
        detail: str,
        attempt: int = 1,
    ) -> None:
        await asyncio.to_thread(self.journal.step_result, step_id, status, detail, self.clock())
        outcome = StepOutcome(dev.id, index, name, phase, status, detail, attempt)
        dev.outcomes.append(outcome)
        event = "runner.step_" + status.value
        if status is StepStatus.FAILED:
            self.log.warning(event, device=dev.id, step=name, phase=phase, attempt=attempt, detail=detail)
        else:
            self.log.info(event, device=dev.id, step=name, phase=phase, attempt=attempt, detail=detail)
        if self.progress is not None:
            self.progress(outcome)

    async def _journaled_call(
        self,
        dev: _Dev,
        index: int,
        name: str,
        phase: str,
        action: Callable[[], Awaitable[str]],
        ok_status: StepStatus = StepStatus.DONE,
    ) -> str:
        """Journal intent, await `action()` (a coroutine returning a detail), journal the result."""
        step_id = await self._intent(dev, index, name, phase)
        try:
            detail = await action()
        except (AdapterError, StepFailed, TimeoutError) as exc:
            await self._result(dev, step_id, index, name, phase, StepStatus.FAILED, _describe(exc))
            raise
        await self._result(dev, step_id, index, name, phase, ok_status, str(detail))
        return str(detail)

    # --- the run -----------------------------------------------------------------------------

    async def go(self) -> RunOutcome:
        started = time.monotonic()
        reason = ""
        try:
            for group in segments(self.plan.phases, self.plan.playbook.barriers):
                await asyncio.gather(*(self._segment(dev, group) for dev in self.devs))
                if self.stop.is_set() or self.abort.is_set():
                    break
            for dev in self.devs:
                if dev.next_pos < len(dev.plan.steps) and dev.failed is None:
                    await self._skip_rest(dev, self._stop_reason())
            failed = [d for d in self.devs if d.failed is not None]
            aborted = self.abort.is_set()
            if failed or aborted:
                result, reason = await self._after_failure(failed, aborted)
            else:
                result, reason = await self._confirm_all()
        finally:
            await asyncio.gather(*(dev.session.close() for dev in self.devs), return_exceptions=True)
        outcomes = tuple(d.outcome() for d in self.devs)
        detail = summarize(result, outcomes, reason, self.plan.run.kind)
        return RunOutcome(
            self.run_id,
            self.plan.office,
            self.plan.alternate,
            self.plan.run.kind,
            result,
            detail,
            outcomes,
            self.persist_id if self._journaled else None,
            time.monotonic() - started,
        )

    def _stop_reason(self) -> str:
        if self.abort.is_set():
            return "run aborted by an operator"
        failed = [d.id for d in self.devs if d.failed is not None]
        return f"run stopped after a failure on {', '.join(failed[:5])}" if failed else "run stopped"

    def _should_stop(self, dev: _Dev) -> bool:
        if dev.failed is not None or self.abort.is_set():
            return True
        return self.stop.is_set() and stops_others(self.on_failure)

    async def _skip_rest(self, dev: _Dev, reason: str) -> None:
        for ps in dev.plan.steps[dev.next_pos :]:
            step_id = await self._intent(dev, ps.index, ps.name, "apply")
            await self._result(dev, step_id, ps.index, ps.name, "apply", StepStatus.SKIPPED, reason)
        dev.next_pos = len(dev.plan.steps)

    async def _segment(self, dev: _Dev, group: frozenset[int]) -> None:
        async with self.sem:
            try:
                while dev.next_pos < len(dev.plan.steps):
                    pos = dev.next_pos
                    ps = dev.plan.steps[pos]
                    if ps.phase not in group:
                        break
                    if self._should_stop(dev):
                        if dev.failed is None:
                            await self._skip_rest(dev, self._stop_reason())
                        break
                    if dev.status is DeviceStatus.PENDING:
                        if self.skip_unreachable:
                            cause = self.known_unreachable.get(dev.id) or await self._first_contact(dev, ps)
                            if cause is not None:
                                await self._mark_unreachable(dev, cause)
                                break
                        dev.status = DeviceStatus.RUNNING
                    try:
                        if isinstance(ps.step, NetconfEdit) and not dev.locked:
                            await self._prepare(dev, ps)
                        await self._run_planned(dev, ps)
                        if pos == dev.commit_at:
                            await self._commit(dev, ps)
                    except _DeviceFailed as exc:
                        await self._device_failed(dev, exc.detail)
                        break
                    dev.next_pos = pos + 1
            finally:
                # A device that goes on keeps its session (see `hold`) for the next segment and
                # the confirm; a failed or skipped one has nothing left to do with it.
                keep = dev.hold and dev.failed is None and dev.unreachable is None
                if not (keep or dev.holds_session):
                    await dev.session.close()

    async def _first_contact(self, dev: _Dev, ps: PlannedStep) -> str | None:
        """Open the session the device's first step needs; the cause when it does not answer.

        Any other connect error is left for the step itself to meet again (and journal) as a
        real failure; SNMP steps have no session to open, so they are never skipped.
        """
        step = ps.step.until if isinstance(ps.step, Wait) else ps.step
        try:
            if isinstance(step, NetconfEdit | NetconfRpc | NetconfGet):
                await dev.session.netconf()
            elif isinstance(step, SshCommand):
                await dev.session.ssh()
        except AdapterError as exc:
            if is_unreachable(exc):
                return _describe(exc)
        return None

    async def _mark_unreachable(self, dev: _Dev, cause: str) -> None:
        dev.unreachable = f"{UNREACHABLE}: {cause}"
        dev.status = DeviceStatus.UNREACHABLE
        self.log.warning("runner.device_unreachable", device=dev.id, detail=cause)
        await self._skip_rest(dev, f"{UNREACHABLE}: {cause}")

    async def _device_failed(self, dev: _Dev, detail: str) -> None:
        dev.failed = detail
        dev.status = DeviceStatus.FAILED
        self.log.warning("runner.device_failed", device=dev.id, detail=detail)
        if stops_others(self.on_failure):
            self.stop.set()
        if dev.locked:
            await self._discard(dev)
        dev.next_pos = len(dev.plan.steps)

    def _window_left(self) -> float | None:
        if self.first_commit_at is None:
            return None
        return self.first_commit_at + self.window_s - self.margin_s - time.monotonic()

    async def _run_planned(self, dev: _Dev, ps: PlannedStep) -> None:
        step = ps.step
        phase = "verify" if dev.committed else "apply"
        delays = retry_delays(step)
        attempt = 0
        while True:
            attempt += 1
            timeout = step.deadline_s + step.until.timeout_s if isinstance(step, Wait) else step.timeout_s
            left = self._window_left()
            step_id = await self._intent(dev, ps.index, ps.name, phase, attempt)
            if left is not None and left <= 0:
                detail = "confirm window nearly over: not running further steps"
                await self._result(dev, step_id, ps.index, ps.name, phase, StepStatus.FAILED, detail, attempt)
                raise _DeviceFailed(f"{ps.name}: {detail}")
            if left is not None:
                timeout = min(timeout, left)
            if not _is_read_only(step):
                dev.ran.append(ps)  # from here on it may have changed the device: undo it on rollback
            try:
                detail = await asyncio.wait_for(run_step(step, dev.session, timeout), timeout + _BACKSTOP_S)
            except (AdapterError, StepFailed, TimeoutError) as exc:
                cause = _describe(exc, timeout)
                retry = attempt <= len(delays) and not self._should_stop(dev)
                shown = f"{cause} (retrying)" if retry else cause
                await self._result(dev, step_id, ps.index, ps.name, phase, StepStatus.FAILED, shown, attempt)
                if retry:
                    await asyncio.sleep(delays[attempt - 1])
                    continue
                raise _DeviceFailed(f"{ps.name}: {cause}") from None
            await self._result(dev, step_id, ps.index, ps.name, phase, StepStatus.DONE, detail, attempt)
            return

    async def _prepare(self, dev: _Dev, ps: PlannedStep) -> None:
        async def prepare() -> str:
            nc = await dev.session.netconf()
            if not nc.supports_candidate:
                raise StepFailed("device has no :candidate datastore; edits go to candidate only")
            dev.confirmed_commit = nc.supports_confirmed_commit
            dev.persist = nc.supports_persist
            try:
                await nc.lock("candidate")
            except NetconfRpcError:
                # A candidate left dirty (by a dead session) refuses the lock: clear it, try once more.
                await nc.discard_changes()
                await nc.lock("candidate")
            dev.locked = True
            await nc.discard_changes()
            return "candidate locked and clean" + ("" if dev.confirmed_commit else " (no :confirmed-commit)")

        try:
            await self._journaled_call(dev, ps.index, PREPARE, "apply", prepare)
        except (AdapterError, StepFailed, TimeoutError) as exc:
            raise _DeviceFailed(f"{PREPARE}: {_describe(exc)}") from None

    async def _ensure_confirm_journaled(self) -> None:
        async with self._confirm_journaled:
            if self._journaled:
                return
            # Journaled before any commit goes out, so a restart can always cancel or confirm.
            deadline = self.clock() + self.window_s
            await asyncio.to_thread(self.journal.set_confirm, self.run_id, deadline, self.persist_id)
            self.first_commit_at = time.monotonic()
            self._journaled = True

    async def _commit(self, dev: _Dev, ps: PlannedStep) -> None:
        if dev.confirmed_commit:
            await self._ensure_confirm_journaled()
        timeout = ps.step.timeout_s

        async def commit() -> str:
            nc = await dev.session.netconf()
            # No separate <validate>: <commit> validates the candidate anyway (RFC 6241 8.3), and
            # yuma123 netconfd 2.13 commits *nothing* after an explicit <validate> (measured).
            try:
                if dev.confirmed_commit:
                    await nc.commit(
                        confirmed=True,
                        timeout_s=self.window_s,
                        persist=self.persist_id if dev.persist else None,
                        rpc_timeout_s=timeout,
                    )
                else:
                    await nc.commit(rpc_timeout_s=timeout)
            except AdapterTimeoutError:
                dev.commit_uncertain = True  # no answer: it may have committed; undo treats it so
                dev.committed = True
                raise
            dev.committed = True
            dev.status = DeviceStatus.COMMITTED
            with contextlib.suppress(NetconfError):
                await nc.unlock("candidate")
            dev.locked = False
            if dev.confirmed_commit:
                return f"confirmed commit, confirm-timeout {self.window_s} s" + (
                    ", persist" if dev.persist else ", session held (no :confirmed-commit:1.1)"
                )
            return "committed (no :confirmed-commit: undo by compensating steps)"

        try:
            await self._journaled_call(dev, ps.index, COMMIT, "commit", commit)
        except (AdapterError, StepFailed, TimeoutError) as exc:
            raise _DeviceFailed(f"{COMMIT}: {_describe(exc)}") from None

    async def _discard(self, dev: _Dev) -> None:
        async def discard() -> str:
            nc = await dev.session.netconf()
            await nc.discard_changes()
            with contextlib.suppress(NetconfError):
                await nc.unlock("candidate")
            return "candidate discarded, running untouched"

        index = dev.plan.steps[min(dev.next_pos, len(dev.plan.steps) - 1)].index
        with contextlib.suppress(AdapterError, StepFailed, TimeoutError):
            await self._journaled_call(dev, index, DISCARD, "rollback", discard, StepStatus.ROLLED_BACK)
        # Even when discard failed, the lock dies with the session; the next run discards first.
        dev.locked = False
        await dev.session.close()

    # --- after the devices ran -----------------------------------------------------------------

    async def _confirm_all(self) -> tuple[str, str]:
        pending = [d for d in self.devs if d.committed and d.confirmed_commit and not d.confirmed]
        if pending and is_too_late(self.first_commit_at, self.window_s, self.margin_s, time.monotonic()):
            reason = (
                f"confirm window nearly over (less than {self.margin_s:g} s of {self.window_s} s left): "
                "not confirming late"
            )
            for dev in pending:
                dev.failed = reason
            return await self._after_failure(pending, False, reason)
        failures = await self._bounded(self._confirm, pending)
        for dev in self.devs:
            if dev.committed and not dev.confirmed_commit:
                dev.confirmed = True
                dev.status = DeviceStatus.CONFIRMED
        bad = [d for d, ok in zip(pending, failures, strict=True) if not ok]
        if bad:
            return await self._after_failure(bad, False, f"confirm failed on {', '.join(d.id for d in bad)}")
        return "ok", ""

    async def _confirm(self, dev: _Dev) -> bool:
        index = dev.plan.steps[dev.commit_at].index if dev.commit_at is not None else 0

        async def confirm() -> str:
            held = dev.session.has_netconf
            nc = await dev.session.netconf()
            persist_id = self.persist_id if dev.persist else None
            detail = "confirmed"
            try:
                await nc.commit(persist_id=persist_id)
            except NetconfSessionError:
                # A session held since the commit died while idle (the device dropped it): with
                # <persist> the confirmed commit outlives it, so confirm once on a fresh session.
                # (Had this confirm reached the device, the retry meets an rpc-error: no harm.)
                if not (held and dev.persist):
                    raise
                await dev.session.close()
                nc = await dev.session.netconf()
                await nc.commit(persist_id=persist_id)
                detail = "confirmed (on a fresh session: the held one had closed)"
            dev.confirmed = True
            dev.status = DeviceStatus.CONFIRMED
            return detail

        try:
            await self._journaled_call(dev, index, CONFIRM, "confirm", confirm)
        except (AdapterError, StepFailed, TimeoutError) as exc:
            dev.failed = f"{CONFIRM}: {_describe(exc)}"
            dev.status = DeviceStatus.FAILED
            return False
        finally:
            await dev.session.close()
        return True

    async def _bounded(self, fn: Callable[[_Dev], Awaitable[bool]], devs: Sequence[_Dev]) -> list[bool]:
        async def one(dev: _Dev) -> bool:
            async with self.sem:
                return await fn(dev)

        return list(await asyncio.gather(*(one(d) for d in devs)))

    async def _after_failure(
        self, failed: Sequence[_Dev], aborted: bool, reason: str = ""
    ) -> tuple[str, str]:
        touched = [d.id for d in self.devs if d.touched]
        scope = rollback_scope(self.on_failure, (d.id for d in failed), touched, aborted)
        reason = reason or self._stop_reason()
        undo = [d for d in self.devs if d.id in scope]
        results = await self._bounded(self._rollback, undo)
        clean = all(results)
        for dev in self.devs:
            if dev.id not in scope and dev.committed and not dev.confirmed:
                dev.status = DeviceStatus.LEFT
        if self.on_failure == "rollback_device" and not aborted:
            survivors = [
                d
                for d in self.devs
                if d.failed is None and d.committed and d.confirmed_commit and not d.confirmed
            ]
            if survivors and not is_too_late(
                self.first_commit_at, self.window_s, self.margin_s, time.monotonic()
            ):
                await self._bounded(self._confirm, survivors)
                for dev in survivors:
                    if dev.status is DeviceStatus.LEFT and dev.confirmed:
                        dev.status = DeviceStatus.CONFIRMED
            for dev in self.devs:
                if dev.committed and not dev.confirmed_commit and dev.failed is None:
                    dev.confirmed = True
                    dev.status = DeviceStatus.CONFIRMED
            return "failed", f"{reason}; failed device(s) rolled back, the others confirmed"
        if self.on_failure == "stop" and not aborted:
            left = [d.id for d in self.devs if d.status is DeviceStatus.LEFT]
            suffix = (
                f"; {len(left)} device(s) left with a pending confirmed commit (they revert on their own)"
                if left
                else ""
            )
            return "failed", f"{reason}{suffix}"
        if clean:
            return "rolled_back", reason
        return "failed", f"{reason}; rollback incomplete, an operator must check"

    async def _rollback(self, dev: _Dev) -> bool:
        """Undo what the run did to one device; True when everything was undone."""
        ok = True
        index = dev.plan.steps[dev.commit_at].index if dev.commit_at is not None else 0
        try:
            if dev.locked:
                await self._discard(dev)
            if dev.committed and dev.confirmed_commit and not dev.confirmed:

                async def cancel() -> str:
                    nc = await dev.session.netconf()
                    try:
                        await nc.cancel_commit(persist_id=self.persist_id if dev.persist else None)
                    except NetconfRpcError as exc:
                        if dev.commit_uncertain:
                            return f"nothing to cancel (the commit had not happened): {exc.cause}"
                        raise
                    return "confirmed commit cancelled: running is back to before the run"

                try:
                    await self._journaled_call(dev, index, CANCEL, "rollback", cancel, StepStatus.ROLLED_BACK)
                except (AdapterError, StepFailed, TimeoutError):
                    ok = False
            elif dev.committed:
                # Committed for good (no :confirmed-commit, or already confirmed): compensate edits.
                ok = await self._compensate_edits(dev) and ok
            for ps in reversed(dev.ran):
                if isinstance(ps.step, NetconfEdit):
                    continue
                ok = await self._compensate(dev, ps) and ok
        finally:
            await dev.session.close()
        dev.rolled_back = ok
        if ok:
            dev.status = DeviceStatus.ROLLED_BACK
        return ok

    async def _compensate_edits(self, dev: _Dev) -> bool:
        edits = [ps for ps in reversed(dev.ran) if isinstance(ps.step, NetconfEdit)]
        missing = [ps.name for ps in edits if ps.compensate is None]
        if missing:
            dev.failed = (dev.failed or "") + f"; no compensate for {', '.join(missing)}: left as is"
            return False
        if not edits:
            return True

        async def apply() -> str:
            nc = await dev.session.netconf()
            async with nc.locked("candidate"):
                await nc.discard_changes()
                for ps in edits:
                    comp = ps.compensate
                    assert isinstance(comp, NetconfEdit)
                    await nc.edit_config(
                        "candidate", wrap_config(comp.config), comp.operation, rpc_timeout_s=comp.timeout_s
                    )
                await nc.commit()
            return f"compensating edits committed ({', '.join(ps.name for ps in edits)})"

        name = COMPENSATE + ",".join(ps.name for ps in edits)
        try:
            await self._journaled_call(dev, edits[0].index, name, "rollback", apply, StepStatus.ROLLED_BACK)
        except (AdapterError, StepFailed, TimeoutError):
            return False
        return True

    async def _compensate(self, dev: _Dev, ps: PlannedStep) -> bool:
        comp = ps.compensate
        if comp is None:
            dev.failed = (dev.failed or "") + f"; step {ps.name} has no compensate: left as is"
            return False

        async def run() -> str:
            if isinstance(comp, NetconfEdit):  # compensating a netconf.rpc with an edit
                nc = await dev.session.netconf()
                async with nc.locked("candidate"):
                    await nc.discard_changes()
                    await nc.edit_config("candidate", wrap_config(comp.config), comp.operation)
                    await nc.commit()
                return "compensating edit committed"
            return await asyncio.wait_for(
                run_step(comp, dev.session, comp.timeout_s), comp.timeout_s + _BACKSTOP_S
            )

        try:
            await self._journaled_call(
                dev, ps.index, COMPENSATE + ps.name, "rollback", run, StepStatus.ROLLED_BACK
            )
        except (AdapterError, StepFailed, TimeoutError):
            return False
        return True


def _is_read_only(step: Step) -> bool:
    return isinstance(step, NetconfGet | SnmpGet | Wait)


def _describe(exc: BaseException, timeout_s: float | None = None) -> str:
    if isinstance(exc, StepFailed):
        return exc.detail
    if isinstance(exc, AdapterError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no result within {timeout_s:g} s" if timeout_s is not None else "timed out"
    return f"{type(exc).__name__}: {exc}"


async def _capabilities(
    plan: RunPlan, connectors: Connectors, concurrency: int, devices: Iterable[str]
) -> tuple[dict[str, bool], dict[str, AdapterError]]:
    """Which of `devices` support :confirmed-commit (one short session each) and which failed."""
    wanted = set(devices)
    sem = asyncio.Semaphore(concurrency)
    result: dict[str, bool] = {}
    errors: dict[str, AdapterError] = {}

    async def one(dp: DevicePlan) -> None:
        async with sem:
            try:
                nc = await connectors.netconf(dp.device)
            except AdapterError as exc:
                errors[dp.device.id] = exc
                return
            try:
                result[dp.device.id] = nc.supports_confirmed_commit
            finally:
                await nc.close()

    await asyncio.gather(*(one(dp) for dp in plan.devices if dp.device.id in wanted))
    return result, errors


async def execute(
    plan: RunPlan,
    *,
    journal: Journal,
    connectors: Connectors,
    concurrency: int | None = None,
    confirm_window_s: float | None = None,
    confirm_margin_s: float | None = None,
    progress: Progress | None = None,
    abort: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> RunOutcome:
    """Execute `plan` (see the module docstring); never raises for a device's failure.

    concurrency: devices at once (default: the playbook's); confirm_window_s: the confirmed-commit
    window (default: the playbook's; whole seconds on the wire); confirm_margin_s: how much of the
    window must be left to confirm (default `confirm_margin`); progress: called with every step
    result; abort: set it to stop the run and roll back everything it did.
    """
    pb = plan.playbook
    window = max(1, math.ceil(confirm_window_s if confirm_window_s is not None else pb.confirm_window_s))
    margin = confirm_margin(window) if confirm_margin_s is None else confirm_margin_s
    workers = concurrency or pb.concurrency
    run = plan.run
    bound = log.bind(office=plan.office, run_id=run.id)
    existing = await asyncio.to_thread(journal.run, run.id)
    if existing is None:
        await asyncio.to_thread(
            journal.start_run, run.id, plan.office, run.kind, plan.alternate, run.reason, run.who, clock()
        )

    async def refuse(reason: str) -> RunOutcome:
        await asyncio.to_thread(journal.finish_run, run.id, "refused", reason, clock())
        bound.warning("runner.refused", reason=reason)
        return RunOutcome(run.id, plan.office, plan.alternate, run.kind, "refused", reason)

    if not plan.ok:
        return await refuse(
            "refused: the plan has problems: " + "; ".join(str(p) for p in plan.problems[:10])
        )
    snmp_steps = [
        ps.name
        for dp in plan.devices
        for ps in dp.steps
        for s in (ps.step, ps.step.compensate, getattr(ps.step, "until", None))
        if isinstance(s, SnmpGet | SnmpSet)
    ]
    if snmp_steps and connectors.snmp is None:
        return await refuse(
            f"refused: steps {sorted(set(snmp_steps))} need SNMP access and none is configured"
        )
    if margin >= window:
        return await refuse(f"refused: confirm margin {margin:g} s is not shorter than the window {window} s")
    unsafe = uncompensated_edits(plan)
    unreachable: dict[str, str] = {}
    if unsafe:
        caps, errors = await _capabilities(plan, connectors, workers, unsafe)
        if pb.unreachable == "skip":
            unreachable = {d: _describe(e) for d, e in errors.items() if is_unreachable(e)}
        refused = [f"{d}: {e}" for d, e in sorted(errors.items()) if d not in unreachable]
        if refused:
            return await refuse("refused: cannot read capabilities of " + "; ".join(refused[:10]))
        why = refusal(plan.only(d.device.id for d in plan.devices if d.device.id not in unreachable), caps)
        if why is not None:
            return await refuse(why)

    bound.info("runner.started", devices=len(plan.devices), window_s=window, concurrency=workers)
    state = _Run(
        plan,
        journal,
        connectors,
        concurrency=workers,
        window_s=window,
        margin_s=margin,
        progress=progress,
        abort=abort,
        clock=clock,
        unreachable=unreachable,
    )
    outcome = await state.go()
    await asyncio.to_thread(journal.finish_run, run.id, outcome.result, outcome.detail, clock())
    bound.info(
        "runner.finished",
        result=outcome.result,
        detail=outcome.detail,
        duration_s=round(outcome.duration_s, 3),
    )
    return outcome
