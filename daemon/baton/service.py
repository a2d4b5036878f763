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
  `RunFinished` event, like everything else.

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
import importlib
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from baton.config import Config, check_all
from baton.controller import Controller, initial_state
from baton.core.actions import AbortRun, StartRun
from baton.core.events import LeaseChanged, RunFinished, Ticked
from baton.core.model import Inventory, Phase
from baton.journal import Journal, JournalError
from baton.logs import get_logger
from baton.metrics import Metrics
from baton.playbook.schema import Playbook, check_playbooks
from baton.sdnotify import Notifier
from baton.yamlsource import ConfigError, Problem, errors_in

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


# What executes one run: the playbook runner, behind a callable so the loop stays small.
RunLauncher = Callable[[StartRun], Awaitable[RunResult]]


class RunManager:
    """Turns StartRun/AbortRun actions into tasks, and their results into RunFinished events."""

    def __init__(self, launcher: RunLauncher, report: Callable[[RunFinished], None]) -> None:
        self._launcher = launcher
        self._report = report
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.accepting = True

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def start_run(self, action: StartRun) -> None:
        if not self.accepting:
            # Stopping: no new device work. The office stays HANDING_*; the restart recovers it.
            log.warning("run.not_started", run_id=action.run_id, office=action.office, why="stopping")
            return
        task = asyncio.get_running_loop().create_task(self._run(action), name=f"run {action.run_id}")
        self._tasks[action.run_id] = task

    def abort_run(self, action: AbortRun) -> None:
        task = self._tasks.get(action.run_id)
        if task is not None:
            log.warning("run.abort", run_id=action.run_id, office=action.office, reason=action.reason)
            task.cancel()

    async def _run(self, action: StartRun) -> None:
        bound = log.bind(run_id=action.run_id, office=action.office, kind=action.kind.value)
        bound.info("run.started", alternate=action.alternate, reason=action.reason)
        try:
            result = await self._launcher(action)
        except asyncio.CancelledError:
            result = RunResult(
                False, "run cancelled (abort or shutdown); confirmed commits cancelled or reverting"
            )
            self._tasks.pop(action.run_id, None)
            self._finish(action, result)
            raise
        except Exception as exc:  # a bug in a step must fail the run, never the daemon
            bound.exception("run.crashed")
            result = RunResult(False, f"run crashed: {type(exc).__name__}: {exc}")
        self._tasks.pop(action.run_id, None)
        self._finish(action, result)

    def _finish(self, action: StartRun, result: RunResult) -> None:
        log.info(
            "run.finished", run_id=action.run_id, office=action.office, ok=result.ok, detail=result.detail
        )
        self._report(RunFinished(action.office, action.run_id, action.kind, result.ok, result.detail))

    async def shutdown(self, grace_s: float) -> None:
        self.accepting = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)


@dataclass(frozen=True, slots=True)
class Loaded:
    config: Config
    inventory: Inventory
    playbooks: dict[str, Playbook]
    warnings: list[Problem]


def load_all(config_path: Path) -> Loaded:
    """Config, inventory and playbooks, validated together; ConfigError with every problem if not."""
    validation = check_all(None, config_path)
    problems = list(validation.problems)
    playbooks = check_playbooks(validation.config.playbooks) if validation.config is not None else None
    if playbooks is not None:
        problems.extend(playbooks.problems)
    if errors_in(problems) or validation.config is None or validation.inventory is None or playbooks is None:
        raise ConfigError(problems)
    return Loaded(validation.config, validation.inventory, playbooks.playbooks, problems)


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
        self.monitor: Any = None

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
        launcher = self._launcher_factory(self) if self._launcher_factory else _refuse_runs
        self.runs = RunManager(launcher, self._report_run)
        self.controller = Controller(state, self.config.policy, self.journal, self.runs, self.clock)
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
        api = await self._start_api()
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
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
            if self.monitor is not None:
                await self.monitor.stop()
            if api is not None:
                await api.close()
            await metrics_runner.cleanup()
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
                self.reload()
            self._tick()
            self.last_loop_at = self.clock()
            self.notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=TICK_S)

    def _tick(self) -> None:
        for office in list(self.controller.state.offices):
            self.apply(Ticked(office))
        self.notifier.status(self.summary())

    def apply(self, event: Any) -> None:
        """Feed one event to the controller; a journal failure is logged and counted, never fatal."""
        try:
            self.controller.apply(event)
        except JournalError as exc:
            # Not journaled means not acted on: the core's state did not change either.
            log.error("journal.write_failed", error=str(exc), trigger=type(event).__name__)

    def _report_run(self, event: RunFinished) -> None:
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

    def reload(self) -> bool:
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
            self.monitor.reconfigure(inventory, config.policy)
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

    async def _recover(self) -> None:
        """Finish what a previous process left: unfinished runs are rolled back or completed."""
        unfinished = self.journal.unfinished_runs()
        if not unfinished:
            return
        try:
            recovery: Any = importlib.import_module("baton.playbook.recovery")
        except ImportError:  # pragma: no cover - recovery ships with the runner
            log.error("recovery.unavailable", runs=[r.id for r in unfinished])
            return
        for record in unfinished:
            outcome = await recovery.recover_run(self, record)
            self.apply(RunFinished(record.office, record.id, record.kind, outcome.ok, outcome.detail))

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
        update = getattr(self.metrics, "update_state", None)
        if update is not None:
            update(self.controller.state, self.last_loop_at)

    async def _start_api(self) -> Any:
        try:
            api: Any = importlib.import_module("baton.api")
        except ImportError:  # pragma: no cover - the API ships with the daemon
            return None
        from baton.secrets import resolve

        app = api.create_app(self, tokens=(), allow_peercred=True)
        return await api.start_listeners(
            app, self.config.api, lambda ref: resolve(ref, base_dir=self.config.base_dir)
        )

    async def _start_monitor(self) -> None:
        try:
            monitor: Any = importlib.import_module("baton.monitor")
        except ImportError:  # pragma: no cover - the monitor ships with the daemon
            return
        self.monitor = monitor.Monitor.for_service(self)
        await self.monitor.start()

    # --- what the API reads ---------------------------------------------------------------------

    def device_views(self, office: str) -> list[dict[str, Any]]:
        if self.monitor is None:
            return []
        views: list[dict[str, Any]] = self.monitor.device_views(office)
        return views

    def status_extra(self) -> dict[str, Any]:
        return {
            "vantage": self.config.vantage.id,
            "vantage_office": self.config.vantage.office,
            "leader": self.controller.state.leader,
            "uptime_s": self.clock() - self.started_at,
            "last_loop_at": self.last_loop_at,
            "runs_in_progress": list(self.runs.running),
        }

    def offices_in(self, *phases: Phase) -> list[str]:
        return [o.office for o in self.controller.state.offices.values() if o.phase in phases]


async def _refuse_runs(action: StartRun) -> RunResult:
    return RunResult(False, "this daemon was started without a playbook runner")
