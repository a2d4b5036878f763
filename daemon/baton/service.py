"""`baton daemon`: the service loop — observe, decide, journal, act.

Theory of operation. One asyncio loop runs:

* the **monitor** (SNMP polls, NETCONF probes, traps), which turns each poll round into one
  `OfficeObserved` event per office;
* the **ticker**, once a second: a `Ticked` event per office (hold-down, declared `until`,
  handback hold and anti-flap expiry are all decided on time passing), then metrics, then the
  systemd watchdog ping — sent only after an iteration that really completed, so a wedged loop
  is restarted by systemd rather than pinging on;
* the **control API** (operator commands become events through the controller);
* **runs**: a `StartRun` action becomes a task executing the playbook; its result comes back as a
  `RunFinished` event, like everything else;
* **catch-ups** (`baton.catchup`), decided on each tick: a HANDED_OVER office's devices that the
  handover skipped as unreachable are handed over by a run of their own once the monitor judges
  them UP. The office stays HANDED_OVER; a handback aborts a catch-up in progress first.

Every event goes through `Controller.apply`: the pure core decides, the journal records, then
actions are carried out. At start the journal is replayed (the last state of every office), and
runs the journal shows unfinished are resumed or rolled back before anything new starts.

Signals: SIGHUP reloads inventory, config and playbooks after validating all of them — a broken
file is refused, its problems logged, and the running configuration stays. SIGTERM/SIGINT stop:
no new device work starts, runs in flight are cancelled at a safe point (their confirmed commits
are cancelled, or revert on their own), and the journal is closed last.

Leadership is an interface: `LocalLeadership` always holds the lease (one vantage); etcd can take
its place so that several vantages never act twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from baton import api
from baton.adapters.snmp_access import PysnmpAccess
from baton.adapters.traps import TrapReceiverError
from baton.catchup import CatchUps
from baton.config import Config
from baton.controller import Controller, initial_state
from baton.core.actions import AbortRun, StartRun
from baton.core.events import LeaseChanged, RunFinished, Ticked
from baton.core.model import Inventory, Phase, RunKind
from baton.journal import Journal, JournalError
from baton.loading import load_all
from baton.logs import get_logger
from baton.metrics import Metrics
from baton.monitor import Monitor, trap_receiver_config
from baton.playbook import dryrun
from baton.playbook.choice import choose_playbook
from baton.playbook.plan import RunPlan, plan_run
from baton.playbook.recovery import recover
from baton.playbook.render import RunInfo
from baton.playbook.runner import RunOutcome, StepOutcome, execute
from baton.playbook.schema import Playbook
from baton.playbook.steps import Connectors
from baton.sdnotify import Notifier
from baton.secrets import resolve
from baton.yamlsource import ConfigError

log = get_logger()

TICK_S = 1.0
EXECUTOR_THREADS = 128
STOP_GRACE_S = 60.0


class Leadership(Protocol):
    """Who may act. `held` is read on every decision; `run` keeps (or seeks) the lease."""

    @property
    def held(self) -> bool: ...

    async def run(self, on_change: Callable[[bool], None]) -> None: ...


class LocalLeadership:
    """A single vantage: the lease is always held."""

    @property
    def held(self) -> bool:
        return True

    async def run(self, on_change: Callable[[bool], None]) -> None:
        on_change(True)
        await asyncio.Event().wait()  # hold it until cancelled


@dataclass(frozen=True, slots=True)
class RunResult:
    ok: bool
    detail: str


# What executes one run: the playbook runner, behind a callable so the loop stays small. The
# event asks the run to stop and roll back (an operator's abort, or a lost lease).
RunLauncher = Callable[[StartRun, asyncio.Event], Awaitable[RunResult]]


class RunManager:
    """Turns StartRun/AbortRun actions into tasks, and their results into RunFinished events."""

    def __init__(self, launcher: RunLauncher, report: Callable[[RunFinished], None]) -> None:
        self._launcher = launcher
        self._report = report
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._aborts: dict[str, asyncio.Event] = {}
        self.accepting = True

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def start_run(self, action: StartRun) -> None:
        if not self.accepting:
            # Stopping: no new device work. The office stays HANDING_*; the restart recovers it.
            log.warning("run.not_started", run_id=action.run_id, office=action.office, why="stopping")
            return
        abort = asyncio.Event()
        self._aborts[action.run_id] = abort
        task = asyncio.get_running_loop().create_task(self._run(action, abort), name=f"run {action.run_id}")
        self._tasks[action.run_id] = task

    def abort_run(self, action: AbortRun) -> None:
        abort = self._aborts.get(action.run_id)
        if abort is not None:
            log.warning("run.abort", run_id=action.run_id, office=action.office, reason=action.reason)
            abort.set()

    async def _run(self, action: StartRun, abort: asyncio.Event) -> None:
        bound = log.bind(run_id=action.run_id, office=action.office, kind=action.kind.value)
        bound.info("run.started", alternate=action.alternate, reason=action.reason)
        try:
            result = await self._launcher(action, abort)
        except asyncio.CancelledError:
            # Shutdown past its grace: like a crash. The journal holds the truth and recovery
            # finishes the run at the next start; pending confirmed commits revert on their own.
            bound.warning("run.interrupted")
            raise
        except Exception as exc:  # a bug in a step must fail the run, never the daemon
            bound.exception("run.crashed")
            result = RunResult(False, f"run crashed: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(action.run_id, None)
            self._aborts.pop(action.run_id, None)
        bound.info("run.finished", ok=result.ok, detail=result.detail)
        self._report(RunFinished(action.office, action.run_id, action.kind, result.ok, result.detail))

    async def shutdown(self, grace_s: float) -> None:
        """Start nothing new; let runs in flight finish (a safe point), cancel what outlasts `grace_s`."""
        self.accepting = False
        tasks = list(self._tasks.values())
        if not tasks:
            return
        log.info("runs.draining", runs=len(tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


class Service:
    """The daemon. `run()` returns the process exit code."""

    def __init__(
        self,
        config_path: Path,
        *,
        launcher_factory: Callable[[Service], RunLauncher] | None = None,
        leadership: Leadership | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.leadership: Leadership = leadership or LocalLeadership()
        self.clock = clock
        self.metrics = Metrics()
        self._launcher_factory = launcher_factory
        self._progress: dict[str, dict[str, dict[str, str]]] = {}
        self._stopping = asyncio.Event()
        self._reload_requested = False
        self.started_at = clock()
        self.last_loop_at: float | None = None
        # Set in run():
        self.config: Config
        self.inventory: Inventory
        self.playbooks: dict[str, Playbook]
        self.journal: Journal
        self.controller: Controller
        self.runs: RunManager
        self.catchups: CatchUps
        self.monitor: Monitor | None = None

    # --- life cycle --------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            loaded = load_all(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config.problem", problem=str(problem))
            log.error("daemon.refused", why=f"{len(exc.problems)} problem(s) in configuration")
            return 78
        self.config, self.inventory, self.playbooks = loaded.config, loaded.inventory, loaded.playbooks
        for problem in loaded.warnings:
            log.warning("config.problem", problem=str(problem))
        try:
            self.journal = Journal.open(self.config.journal_path)
        except JournalError as exc:
            log.error("daemon.refused", why=str(exc))
            return 73  # EX_CANTCREAT
        try:
            return await self._serve()
        finally:
            self.journal.close()

    async def _serve(self) -> int:
        flags = self.journal.last_flags()
        journaled = self.journal.last_states()
        shadow = flags.shadow if self.journal.commands(limit=1) else self.config.shadow
        state = initial_state(
            self.inventory, journaled, paused=flags.paused, shadow=shadow, leader=self.leadership.held
        )
        launcher = self._launcher_factory(self) if self._launcher_factory else self._launch
        self.runs = RunManager(launcher, self._report_run)
        self.controller = Controller(state, self.config.policy, self.journal, self.runs, self.clock)
        self.catchups = CatchUps(self.journal, self._plan_catchup, self._run_catchup, clock=self.clock)
        await self._recover()

        loop = asyncio.get_running_loop()
        # ncclient is blocking: each NETCONF call holds a thread. The default pool (cores + 4)
        # would queue probes and run steps behind each other.
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="baton-io")
        )
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "SIGINT")

        metrics_runner = await self._serve_metrics()
        listeners = await self._start_api()
        await self._start_monitor()
        lease_task = loop.create_task(self.leadership.run(self._lease_changed), name="leadership")
        log.info(
            "daemon.started",
            offices=len(self.inventory.offices),
            devices=len(self.inventory.devices),
            vantage=self.config.vantage.id,
        )
        try:
            await self._first_round()
            self.notifier.ready(self.summary())
            await self._tick_loop()
        finally:
            self.notifier.stopping("stopping: cancelling runs at a safe point")
            await self.runs.shutdown(STOP_GRACE_S)
            await self.catchups.shutdown(STOP_GRACE_S)
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
            if self.monitor is not None:
                await self.monitor.stop()
            await listeners.close()
            await metrics_runner.cleanup()
            if "connectors" in self.__dict__:  # created on first use (cached_property)
                snmp_access = self.connectors.snmp
                if isinstance(snmp_access, PysnmpAccess):
                    snmp_access.close()
            log.info("daemon.stopped")
        return 0

    async def _first_round(self) -> None:
        if self.monitor is None:
            return
        # READY=1 waits for the first poll round, bounded so a dead network cannot wedge start-up.
        deadline = max(30.0, 3 * self.config.policy.poll_interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.monitor.first_round_done.wait(), timeout=deadline)

    async def _tick_loop(self) -> None:
        while not self._stopping.is_set():
            if self._reload_requested:
                self._reload_requested = False
                await self.reload()
            self._tick()
            self.last_loop_at = self.clock()
            self.notifier.watchdog()
            # systemd wants a ping within WATCHDOG_USEC: tick at least every half of it.
            tick_s = min(TICK_S, self.notifier.watchdog_interval_s or TICK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=tick_s)

    def _tick(self) -> None:
        for office in list(self.controller.state.offices):
            self.apply(Ticked(office))
        self.catchups.tick(self.controller.state, self._device_verdicts)
        self.notifier.status(self.summary())

    def apply(self, event: Any) -> None:
        """Feed one event to the controller; a journal failure is logged and counted, never fatal."""
        try:
            self.controller.apply(event)
        except JournalError as exc:
            # Not journaled means not acted on: the core's state did not change either.
            self.metrics.journal_errors_total.inc()
            log.error("journal.write_failed", error=str(exc), trigger=type(event).__name__)

    def _report_run(self, event: RunFinished) -> None:
        result = "ok" if event.ok else "failed"
        now = self.clock()
        self.metrics.runs_total.labels(kind=event.kind.value, result=result).inc()
        record = self.journal.run(event.run_id)
        if record is not None:
            self.metrics.run_duration_seconds.labels(kind=event.kind.value, result=result).observe(
                max(0.0, now - record.started)
            )
        office = self.controller.state.offices.get(event.office)
        if event.ok and event.kind is RunKind.HANDOVER and office is not None and office.closure is not None:
            # From the moment the office was judged closed to every device confirmed.
            self.metrics.handover_seconds.observe(max(0.0, now - office.closure.at))
        self.apply(event)

    def _lease_changed(self, held: bool) -> None:
        log.info("lease.changed", held=held)
        self.apply(LeaseChanged(held=held))

    def _request_reload(self) -> None:
        self._reload_requested = True

    def _request_stop(self, signame: str) -> None:
        log.info("daemon.stopping", signal=signame)
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()

    async def reload(self) -> bool:
        """Validate everything again; adopt it only if valid. The old configuration stays otherwise."""
        self.notifier.reloading()
        try:
            loaded = load_all(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config.problem", problem=str(problem))
            log.error(
                "reload.refused", problems=len(exc.problems), why="configuration invalid; keeping the old one"
            )
            self.notifier.ready(self.summary())
            return False
        config, inventory = loaded.config, loaded.inventory
        for problem in loaded.warnings:
            log.warning("config.problem", problem=str(problem))
        restart_needed = [
            name
            for name in ("journal_path", "api", "metrics_listen", "traps", "vantage", "etcd")
            if getattr(config, name) != getattr(self.config, name)
        ]
        if restart_needed:
            log.warning("reload.partial", needs_restart=restart_needed)
        self.config, self.inventory, self.playbooks = config, inventory, loaded.playbooks
        self.controller.reconfigure(inventory, config.policy)
        if self.monitor is not None:
            await self.monitor.reconfigure(inventory, config.policy)
        log.info("reload.done", offices=len(inventory.offices), devices=len(inventory.devices))
        self.notifier.ready(self.summary())
        return True

    def summary(self) -> str:
        """One line for systemd's STATUS= and `systemctl status`."""
        state = self.controller.state
        counts: dict[str, int] = {}
        for office in state.offices.values():
            counts[office.phase.value] = counts.get(office.phase.value, 0) + 1
        phases = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
        flags = [
            name
            for name, on in (("PAUSED", state.paused), ("SHADOW", state.shadow), ("STORM", state.storm))
            if on
        ]
        if not state.leader:
            flags.append("NOT LEADER")
        running = len(self.runs.running)
        text = f"{len(state.offices)} offices: {phases}"
        if running:
            text += f"; {running} run(s) in progress"
        return text + (f" [{' '.join(flags)}]" if flags else "")

    # --- parts started by run() ---------------------------------------------------------------

    def resolve(self, ref: Any) -> str:
        """Inventory credentials: `file:` references start at the inventory directory."""
        return resolve(ref, base_dir=self.config.inventory)

    @functools.cached_property
    def connectors(self) -> Connectors:
        """How runs reach devices; one instance (and one SNMP access, whose engines are reused)."""
        return Connectors(resolve=self.resolve, snmp=PysnmpAccess(self.resolve))

    def _plan(
        self, kind: RunKind, office: str, alternate: str, run_id: str, reason: str, who: str
    ) -> RunPlan | str:
        known = self.inventory.offices.get(office)
        if known is None:
            return f"office {office} is not in the inventory"
        chosen = choose_playbook(kind, known.vars, self.config, self.playbooks)
        if isinstance(chosen, str):
            return chosen
        info = RunInfo(id=run_id, kind=kind, reason=reason, who=who)
        return plan_run(chosen, self.inventory, office, alternate, info)

    async def _launch(self, action: StartRun, abort: asyncio.Event) -> RunResult:
        if action.kind is RunKind.HANDBACK:
            # Never two runs for one office: a catch-up in progress is aborted (rolled back) first.
            await self.catchups.settle(action.office)
        closure = self.controller.state.offices[action.office].closure
        who = closure.who if closure is not None and closure.who else "baton"
        plan = self._plan(action.kind, action.office, action.alternate, action.run_id, action.reason, who)
        if isinstance(plan, str):
            return RunResult(False, f"cannot plan the run: {plan}")
        progress = self._progress.setdefault(action.run_id, {})

        def on_step(outcome: StepOutcome) -> None:
            progress[outcome.device] = {
                "step": outcome.name,
                "phase": outcome.phase,
                "status": outcome.status.value,
                "detail": outcome.detail,
            }

        try:
            outcome: RunOutcome = await execute(
                plan,
                journal=self.journal,
                connectors=self.connectors,
                confirm_window_s=plan.playbook.window_for(self.config.policy.confirm_window_s),
                run_timeout_s=self.config.policy.run_timeout_s,
                progress=on_step,
                abort=abort,
                clock=self.clock,
            )
        finally:
            # Keep the last runs' progress for `baton run ID`; the journal has it all anyway.
            while len(self._progress) > 20:
                self._progress.pop(next(iter(self._progress)))
        return RunResult(outcome.ok, outcome.detail)

    # --- catch-up of devices a handover left pending (baton.catchup) ---------------------------

    def _device_verdicts(self, office: str) -> dict[str, str]:
        if self.monitor is None:
            return {}
        return {str(v["id"]): str(v["verdict"]) for v in self.monitor.device_views(office)}

    def _plan_catchup(
        self, office: str, alternate: str, run_id: str, devices: frozenset[str]
    ) -> RunPlan | str:
        reason = f"catch-up: {', '.join(sorted(devices))} answer(s) again"
        plan = self._plan(RunKind.HANDOVER, office, alternate, run_id, reason, "baton")
        if isinstance(plan, str):
            return plan
        narrowed = plan.only(devices)
        if not narrowed.devices:
            return f"{', '.join(sorted(devices))} no longer targets of the handover playbook"
        return narrowed

    async def _run_catchup(self, plan: RunPlan, abort: asyncio.Event) -> RunOutcome:
        return await execute(
            plan,
            journal=self.journal,
            connectors=self.connectors,
            confirm_window_s=plan.playbook.window_for(self.config.policy.confirm_window_s),
            run_timeout_s=self.config.policy.run_timeout_s,
            abort=abort,
            clock=self.clock,
        )

    def run_progress(self, run_id: str) -> dict[str, Any] | None:
        progress = self._progress.get(run_id)
        return None if progress is None else dict(progress)

    async def plan(self, office: str, to: str | None) -> dict[str, Any]:
        """Dry-run of what a handover (or, for a handed-over office, a handback) would change."""
        state = self.controller.state.offices.get(office)
        if state is None:
            raise KeyError(office)
        if state.phase in (Phase.HANDED_OVER, Phase.HANDING_BACK, Phase.FAILED) and state.alternate:
            kind, alternate = RunKind.HANDBACK, state.alternate
        else:
            kind = RunKind.HANDOVER
            open_ = [
                a for a in state.alternates if self.controller.state.offices.get(a, state).phase is Phase.OPEN
            ]
            alternate = to or (open_[0] if open_ else (state.alternates[0] if state.alternates else ""))
        if not alternate:
            return {"office": office, "kind": kind.value, "error": f"office {office} has no alternate office"}
        plan = self._plan(kind, office, alternate, f"plan-{office}", "dry run", "baton")
        if isinstance(plan, str):
            return {"office": office, "kind": kind.value, "error": plan}
        result = await dryrun.dry_run(plan, self.connectors)
        return dryrun.as_dict(result)

    async def _recover(self) -> None:
        """Finish what a previous process left: unfinished runs are rolled back or completed."""
        if not self.journal.unfinished_runs():
            return

        def plan_for(record: Any) -> RunPlan | None:
            plan = self._plan(
                record.kind, record.office, record.alternate, record.id, record.reason, record.who
            )
            return None if isinstance(plan, str) else plan

        for outcome in await recover(
            self.journal,
            connectors=self.connectors,
            inventory=self.inventory,
            plan_for=plan_for,
            clock=self.clock,
        ):
            log.warning("recovery.done", run_id=outcome.run_id, office=outcome.office, result=outcome.result)
            self._report_run(outcome.to_event())

    async def _serve_metrics(self) -> web.AppRunner:
        async def metrics_handler(_request: web.Request) -> web.Response:
            self._update_state_metrics()
            return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", metrics_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = self.config.metrics_listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        return runner

    def _update_state_metrics(self) -> None:
        self.metrics.update_state(self.controller.state, self.last_loop_at)
        self.metrics.runs_in_progress.set(len(self.runs.running))

    async def _start_api(self) -> api.Listeners:
        app = api.create_app(self, tokens=(), allow_peercred=True)
        # Config references are absolute already; tokens are loaded from them here, once.
        return await api.start_listeners(app, self.config.api, self.resolve)

    async def _start_monitor(self) -> None:
        def make(with_traps: bool) -> Monitor:
            return Monitor(
                self.inventory,
                self.config.policy,
                resolve=self.resolve,
                metrics=self.metrics,
                on_observed=self.apply,
                traps=trap_receiver_config(self.config.traps) if with_traps else None,
            )

        self.monitor = make(with_traps=True)
        try:
            await self.monitor.start()
        except TrapReceiverError as exc:
            # Traps only speed detection up; polling decides. Run without them, loudly.
            log.error("traps.unavailable", error=str(exc), port=self.config.traps.port)
            self.monitor = make(with_traps=False)
            await self.monitor.start()

    # --- what the API reads ---------------------------------------------------------------------

    def device_views(self, office: str) -> list[dict[str, Any]]:
        views = [] if self.monitor is None else self.monitor.device_views(office)
        pending = set(self.catchups.pending(office))
        # pending: left unreachable by the handover, handed over when it answers (a catch-up).
        return [{**view, "pending": view["id"] in pending} for view in views]

    def status_extra(self) -> dict[str, Any]:
        return {
            "vantage": self.config.vantage.id,
            "vantage_office": self.config.vantage.office,
            "leader": self.controller.state.leader,
            "uptime_s": self.clock() - self.started_at,
            "last_loop_at": self.last_loop_at,
            "runs_in_progress": list(self.runs.running),
            "catchups_in_progress": list(self.catchups.running),
            "pending_devices": self.catchups.all_pending(),  # office -> devices awaiting a catch-up
        }

    def offices_in(self, *phases: Phase) -> list[str]:
        return [o.office for o in self.controller.state.offices.values() if o.phase in phases]
