"""`baton daemon`: the wiring — signals, tasks, and the parts that observe, decide and act.

Theory of operation. The service decides nothing; it connects the parts so that one event at a
time flows one way:

    monitor (polls, traps) ─┐
    ticker (every second) ──┤
    API (operator commands) ┼─▶ Controller.apply: core.step → journal (one transaction) → act
    runs (RunFinished) ─────┤                                             │
    leadership (lease) ─────┘                                             ▼
                                         RunManager: StartRun → playbook run → RunFinished

The read model (`readmodel.ReadModel`) is what the API, the wallboard and the metrics read.

Start: the configuration is loaded and validated; the state is restored from the journal and
the configuration handed to the core (`ConfigLoaded`); the lease is reported; runs the journal
shows unfinished are recovered (systemd's start timeout is extended while they are:
EXTEND_TIMEOUT_USEC, re-sent every EXTEND_EVERY_S) and every run the core still waits on is
reconciled; then the monitor, API and metrics start, and READY=1 follows the first poll round.

Signals: SIGHUP reloads after validating everything — a broken file is refused, its problems
logged, and the running configuration stays. SIGTERM/SIGINT stop: the core is told first
(`Stopping`: it starts nothing it could not finish), runs in flight get the drain period to
end (`policy.drain_s`, which validation fits inside the unit's TimeoutStopSec; the stop timeout
is extended while they drain), the monitor and API stop, the journal closes last. A journal
that cannot record a decision stops the daemon loudly (exit 74): nothing is acted on that is
not on disk.

Leadership (`baton.leadership`): one vantage alone always holds the lease (`LocalLeadership`);
with `etcd:` the vantages elect a leader on an etcd lease (`EtcdLeadership`). Only the leader
acts: every run carries its epoch to the devices and asks the fence before every change, and
shares each of its records in etcd before it goes on (`baton.runmirror`); a vantage that gains
the lease adopts the runs etcd holds — whoever left them — finishes those left unfinished, and
acts on the offices it already judged closed. Every vantage
publishes its office verdicts in etcd and applies everyone's as one round (`baton.vantages`):
an office is DOWN only when a quorum of vantages sees it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from baton import api
from baton.adapters.etcd import EtcdClient, EtcdError
from baton.adapters.snmp_access import PysnmpAccess
from baton.adapters.traps import TrapReceiverError
from baton.config import STOP_MARGIN_S, Config, EtcdSettings
from baton.controller import Controller, JournalFailed, config_event, restore
from baton.core.events import Event, LeaseChanged, OfficeObserved, RunFinished, Stopping, Ticked
from baton.core.machine import Transition
from baton.core.model import DeviceVerdict, Inventory, OfficeState, RunKind
from baton.journal import Journal, JournalError, WriteHook
from baton.leadership import EtcdLeadership, LeaderView, LocalLeadership, OnChange
from baton.loading import Loaded, load_all
from baton.logs import get_logger
from baton.metrics import Metrics
from baton.monitor import Monitor, trap_receiver_config
from baton.playbook.choice import choose_playbook
from baton.playbook.runner import FenceLost
from baton.playbook.schema import Playbook
from baton.playbook.steps import Connectors
from baton.readmodel import ReadModel
from baton.runmirror import RunMirror
from baton.runs import RunManager, RunSettings, chains_of
from baton.sdnotify import Notifier
from baton.secrets import resolve
from baton.vantages import VerdictBoard
from baton.yamlsource import ConfigError

log = get_logger()

TICK_S = 1.0
# While recovery (before READY=1) or the drain (after STOPPING=1) runs, systemd is told every
# EXTEND_EVERY_S to wait EXTEND_BY_S more (EXTEND_TIMEOUT_USEC), up to a budget: a long recovery
# or drain is not killed by TimeoutStartSec/TimeoutStopSec, a wedged one still is.
EXTEND_EVERY_S = 10.0
EXTEND_BY_S = 30.0
# The journal keeps the inputs of the last 30 days' decisions (`baton replay`); older ones are
# compacted into one snapshot row at start and once a day.
JOURNAL_KEEP_S = 30 * 86400.0
COMPACT_EVERY_S = 86400.0
EX_IOERR = 74


class Leadership(Protocol):
    """Who may act (`baton.leadership`): `held` at start, `fence` before every change a run makes,
    `view` for status and metrics; `run` keeps (or seeks) the lease and reports changes."""

    view: LeaderView

    @property
    def held(self) -> bool: ...

    def fence(self, epoch: int) -> bool: ...

    async def run(self, on_change: OnChange) -> None: ...


def run_settings(loaded: Loaded) -> RunSettings:
    config, inventory, playbooks = loaded.config, loaded.inventory, loaded.playbooks

    def choose(kind: RunKind, office: str) -> Playbook | str:
        known = inventory.offices.get(office)
        if known is None:
            return f"office {office} is not in the inventory"
        return choose_playbook(kind, known.vars, config, playbooks)

    return RunSettings(inventory, choose, config.policy.confirm_window_s, config.policy.run_timeout_s)


class Service:
    """The daemon. `run()` returns the process exit code."""

    def __init__(
        self,
        config_path: Path,
        *,
        leadership: Leadership | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        journal_hook: WriteHook | None = None,
    ) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self._given_leadership = leadership
        self.leadership: Leadership
        self.board: VerdictBoard | None = None  # several vantages: verdicts go through etcd
        self.mirror: RunMirror | None = None  # several vantages: run records go through etcd too
        self._etcd: EtcdClient | None = None
        self._takeover: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None  # the leader's state, out after a decision
        self._state_dirty = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.clock = clock
        self.metrics = Metrics()
        self._journal_hook = journal_hook
        self._stopping = asyncio.Event()
        self._reload_requested = False
        self._exit_code = 0
        self._compacted_at = 0.0
        # Set in run():
        self.config: Config
        self.inventory: Inventory
        self.journal: Journal
        self.controller: Controller
        self.runs: RunManager
        self.read: ReadModel
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
        self.config, self.inventory = loaded.config, loaded.inventory
        for problem in loaded.warnings:
            log.warning("config.problem", problem=str(problem))
        try:
            self.journal = Journal.open(self.config.journal_path, write_hook=self._journal_hook)
        except JournalError as exc:
            log.error("daemon.refused", why=str(exc))
            return 73  # EX_CANTCREAT
        try:
            return await self._serve(loaded)
        except JournalFailed as exc:
            log.critical("daemon.stopped_journal_failed", why=str(exc))
            return EX_IOERR
        finally:
            self.journal.close()

    async def _serve(self, loaded: Loaded) -> int:
        snmp_access = PysnmpAccess(self.resolve, source_address=self.config.vantage.source_address)
        # Probes and runs leave from the vantage's own address when it has one (management ACLs).
        connectors = Connectors(
            resolve=self.resolve,
            source_address=self.config.vantage.source_address,
            snmp=snmp_access,
        )
        settings = run_settings(loaded)
        self.leadership = self._given_leadership or self._make_leadership()
        leadership = self.leadership
        if self._etcd is not None and self.config.etcd is not None and isinstance(leadership, EtcdLeadership):
            # Every run record goes to etcd before the run goes on: another vantage can finish it.
            self.mirror = RunMirror(
                self._etcd,
                self.config.etcd.prefix,
                self.journal,
                leadership.term,
                lambda: leadership.held,
                step_down=self._step_down,
                count_error=self.metrics.etcd_errors_total.inc,
            )
            self.journal.after_call = self.mirror.after
        self.runs = RunManager(
            self.journal,
            connectors,
            settings,
            self._report_run,
            clock=self.clock,
            fatal=self._journal_failed,
            fence=self.leadership.fence,
            fenced=self._fenced,
        )
        self.controller = Controller(
            restore(self.journal),
            self.config.policy,
            self.journal,
            self.runs,
            self.clock,
            on_transition=self._transitioned,
        )
        # Recovery before the lease is known runs with the last epoch journaled; under etcd the
        # fence stops it at once unless this vantage leads (its runs wait for it to lead).
        self.runs.epoch = self.controller.state.epoch
        self.read = ReadModel(
            config=self.config,
            inventory=self.inventory,
            settings=settings,
            controller=self.controller,
            journal=self.journal,
            runs=self.runs,
            connectors=connectors,
            clock=self.clock,
        )
        self.read.leadership = self.leadership.view
        self.read.state_out = self._state_out
        self.apply(config_event(chains_of(self.inventory), self.config.shadow, self.config.policy))
        self.apply(LeaseChanged(held=self.leadership.held))
        await self._recover()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._request_stop, "SIGINT")

        metrics_runner = await self._serve_metrics()
        listeners = await self._start_api()
        await self._start_monitor()
        lease_task = loop.create_task(self.leadership.run(self._lease_changed), name="leadership")
        share_task = loop.create_task(self._share_loop(), name="verdicts") if self.board is not None else None
        log.info(
            "daemon.started",
            offices=len(self.inventory.offices),
            devices=len(self.inventory.devices),
            vantage=self.config.vantage.id,
        )
        try:
            await self._first_round()
            self.notifier.ready(self.read.summary())
            await self._tick_loop()
        finally:
            self.notifier.stopping("stopping: runs in progress reach a safe point")
            if self._exit_code != EX_IOERR:
                with contextlib.suppress(JournalFailed):
                    self.controller.apply(Stopping())
            if self.monitor is not None:
                await self.monitor.stop()
            drain_s = self.config.policy.drain_s
            async with self._extending(drain_s + STOP_MARGIN_S):
                await self.runs.shutdown(drain_s)
            for task in (share_task, self._takeover, self._publisher, lease_task, *self._tasks):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self._etcd is not None:
                await self._etcd.close()
            await listeners.close()
            await metrics_runner.cleanup()
            snmp_access.close()
            log.info("daemon.stopped")
        return self._exit_code

    async def _recover(self) -> None:
        """Finish what a previous process left: unfinished runs, and results not yet applied."""
        recovered = []
        if self.mirror is None:  # with etcd, the leader recovers, from etcd's records (_take_over)
            unfinished = self.journal.unfinished_runs()
            # Recovery talks to devices before READY=1: systemd is asked to wait, each run at
            # most its confirm window (what recovery works within) plus a margin.
            window_s = self.config.policy.confirm_window_s
            budget_s = sum((run.window_s or window_s) + STOP_MARGIN_S for run in unfinished)
            if unfinished:
                self.notifier.status(f"recovering {len(unfinished)} unfinished run(s)")
            async with self._extending(budget_s):
                recovered = await self.runs.recover()
        for event in recovered:
            self.apply(event)
        for event in self.runs.reconcile(self.controller.state):
            log.warning("run.reconciled", run_id=event.run_id, office=event.office, ok=event.ok)
            self.apply(event)

    @contextlib.asynccontextmanager
    async def _extending(self, budget_s: float) -> AsyncIterator[None]:
        """While the body runs, for at most `budget_s`: EXTEND_TIMEOUT_USEC now and every
        EXTEND_EVERY_S. Past the budget nothing more is sent, and systemd's timeout applies."""
        if budget_s <= 0 or not self.notifier.enabled:
            yield
            return
        deadline = time.monotonic() + budget_s

        def extend() -> float:
            left = deadline - time.monotonic()
            if left > 0:
                self.notifier.extend_timeout(min(EXTEND_BY_S, left))
            return left

        async def keep_extending(left: float) -> None:
            while left > 0:
                await asyncio.sleep(min(EXTEND_EVERY_S, left))
                left = extend()

        # The first one before the body's first await: systemd knows before anything long starts.
        first = extend()
        task = asyncio.get_running_loop().create_task(keep_extending(first), name="systemd-extend-timeout")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _first_round(self) -> None:
        if self.monitor is None:
            return
        # READY=1 waits for the first poll round, bounded so a dead network cannot wedge start-up.
        deadline = max(30.0, 3 * self.config.policy.poll_interval_s)
        # A stop asked for meanwhile is not kept waiting for the round.
        waits = [
            asyncio.ensure_future(self.monitor.first_round_done.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _tick_loop(self) -> None:
        while not self._stopping.is_set():
            if self._reload_requested:
                self._reload_requested = False
                await self.reload()
            self._follow_leader()
            for office in list(self.controller.state.offices):
                self.apply(Ticked(office))
            if self.clock() - self._compacted_at >= COMPACT_EVERY_S:
                self._compacted_at = self.clock()
                gone = await self.journal.call(self.journal.compact, self._compacted_at - JOURNAL_KEEP_S)
                if gone:
                    log.info("journal.compacted", decisions=gone, kept_days=JOURNAL_KEEP_S / 86400)
            self.notifier.status(self.read.summary())
            self.read.last_loop_at = self.clock()
            self.notifier.watchdog()
            # systemd wants a ping within WATCHDOG_USEC: tick at least every half of it.
            tick_s = min(TICK_S, self.notifier.watchdog_interval_s or TICK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=tick_s)

    def apply(self, event: Event) -> None:
        """Feed one event to the controller. A journal that keeps failing stops the daemon."""
        if isinstance(event, OfficeObserved):
            event = self._with_answering(event)
        try:
            self.controller.apply(event)
        except JournalFailed:
            self.metrics.journal_errors_total.inc()
            self._exit_code = EX_IOERR
            self._stopping.set()
            raise

    def _transitioned(self, transition: Transition) -> None:
        """Leading: a decision that changed the state is published for the followers at once,
        not at the next round — a pause, a closure or a run started a moment before the leader
        dies is what the next leader starts from (the key outlives the leader by its lease)."""
        if self.board is not None and self.leadership.held:
            self._publish()

    def _publish(self) -> asyncio.Task[None]:
        """The state out to etcd: by the one publisher task, started if none runs (it publishes
        again if the state changed while it was writing)."""
        self._state_dirty = True
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.get_running_loop().create_task(self._publish_state(), name="publish")
        return self._publisher

    async def _state_out(self) -> None:
        """Until the state the last decision changed is published (the API answers after it),
        at most a request's deadline on every endpoint."""
        task = self._publisher
        etcd = self.config.etcd
        if task is None or task.done() or etcd is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), etcd.request_timeout_s * (len(etcd.endpoints) + 1))

    async def _publish_state(self) -> None:
        board, lease = self.board, getattr(self.leadership, "lease", 0)
        term = getattr(self.leadership, "term", None)
        while self._state_dirty and board is not None and lease and term is not None:
            self._state_dirty = False
            if not self.leadership.held:
                return
            try:
                await board.publish_state(lease, self.controller.state, term())
            except EtcdError as exc:
                self.metrics.etcd_errors_total.inc()
                log.warning("vantages.state_not_published", error=str(exc))
                return

    def _with_answering(self, event: OfficeObserved) -> OfficeObserved:
        """The fact the core needs for catch-ups: which of its pending devices answer now."""
        office = self.controller.state.offices.get(event.office)
        if office is None or not office.pending or self.monitor is None:
            return event
        return replace(event, answering=self._answering_of(office))

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
        with contextlib.suppress(JournalFailed):  # the stop is already under way
            self.apply(event)

    def _lease_changed(self, held: bool, epoch: int = 0, leader: str | None = None) -> None:
        log.warning("lease.changed", held=held, epoch=epoch, leader=leader)
        was = self.controller.state.leader
        if held:
            self.runs.epoch = epoch
        with contextlib.suppress(JournalFailed):
            self.apply(LeaseChanged(held=held, epoch=epoch, leader=leader))
        if held and not was:
            # A new term: finish what this vantage's journal shows unfinished, under the new epoch.
            self._takeover = asyncio.get_running_loop().create_task(self._take_over(), name="takeover")

    def _follow_leader(self) -> None:
        """Following: tell the core who leads when that changed (its refusals name the leader)."""
        view, state = self.leadership.view, self.controller.state
        elsewhere = view.leader if view.leader != view.me else None
        if not state.leader and not view.held and elsewhere != state.leader_elsewhere:
            self.apply(LeaseChanged(held=False, epoch=view.epoch, leader=elsewhere))

    async def _take_over(self) -> None:
        await self.runs.settle()  # runs of an earlier term end at their next action (fenced)
        while self.mirror is not None:
            # The runs another vantage left unfinished (or this one, in an earlier term), as etcd
            # holds them, before anything is recovered: never from this journal alone.
            try:
                await self.mirror.adopt()
                break
            except EtcdError as exc:
                log.warning("takeover.adopt_failed", error=str(exc))
            except FenceLost as exc:
                log.warning("takeover.fenced", why=str(exc))
                return
            await asyncio.sleep(0.5)
            if not self.leadership.held:
                return
        recovered = await self.runs.recover()
        with contextlib.suppress(JournalFailed):
            for event in recovered:
                self.apply(event)
            for event in self.runs.reconcile(self.controller.state):
                self.apply(event)

    def _fenced(self, why: str, seen_epoch: int) -> None:
        """A device holds a newer leader's epoch than ours: another vantage leads; step down."""
        log.critical("leadership.fenced", why=why, seen_epoch=seen_epoch)
        self._step_down(why)

    def _step_down(self, why: str) -> None:
        step_down = getattr(self.leadership, "step_down", None)
        if step_down is not None:
            task = asyncio.get_running_loop().create_task(step_down(why), name="step down")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _make_leadership(self) -> Leadership:
        me = self.config.vantage.id

        def floor() -> int:
            return self.controller.state.epoch

        etcd = self.config.etcd
        if etcd is None:
            return LocalLeadership(me, floor=floor)
        self._etcd = self._etcd_client(etcd)
        self.board = VerdictBoard(
            self._etcd,
            prefix=etcd.prefix,
            me=me,
            quorum=etcd.quorum_of(me),
            voters=etcd.vantages,
            # A vantage that has not voted for three rounds is not counted (its lease may live on).
            stale_s=3 * self.config.policy.poll_interval_s + etcd.lease_ttl_s,
            clock=self.clock,
        )
        return EtcdLeadership(
            self._etcd,
            prefix=etcd.prefix,
            me=me,
            ttl_s=etcd.lease_ttl_s,
            request_timeout_s=etcd.request_timeout_s,
            api_address=self.config.api.advertise or self.config.api.tcp_listen,
            floor=floor,
        )

    def _etcd_client(self, etcd: EtcdSettings) -> EtcdClient:
        context = None
        if etcd.ca is not None or etcd.cert is not None:
            context = ssl.create_default_context(cadata=None if etcd.ca is None else self.resolve(etcd.ca))
            if etcd.cert is not None and etcd.key is not None:
                # A certificate and key are files (ssl loads nothing else); validation says so.
                context.load_cert_chain(etcd.cert.name, etcd.key.name)
        password = None if etcd.password is None else self.resolve(etcd.password)
        return EtcdClient(
            etcd.endpoints,
            timeout_s=etcd.request_timeout_s,
            ssl_context=context,
            user=etcd.user,
            password=password,
        )

    async def _share_loop(self) -> None:
        """Every poll interval: this vantage's verdicts out; the leader decides from everyone's
        (one round) and publishes its state, a follower adopts that state (`baton.vantages`)."""
        board = self.board
        assert board is not None
        while True:
            await asyncio.sleep(self.config.policy.poll_interval_s)
            lease = getattr(self.leadership, "lease", 0)
            event: Event | None
            try:
                if lease and board.mine:
                    await board.publish(lease)
                if self.leadership.held:
                    board.forget_adopted()
                    event = await board.collect(self._answering())
                else:
                    event = await board.leader_report(self.leadership.view.leader)
            except EtcdError as exc:
                self.metrics.etcd_errors_total.inc()
                log.warning("vantages.exchange_failed", error=str(exc))
                continue
            if event is not None:
                with contextlib.suppress(JournalFailed):
                    self.apply(event)
            if self.leadership.held:
                await self._publish()

    def _answering(self) -> dict[str, frozenset[str]]:
        """Of each office's pending devices, those that answer this vantage now."""
        if self.monitor is None:
            return {}
        return {o.office: self._answering_of(o) for o in self.controller.state.offices.values() if o.pending}

    def _answering_of(self, office: OfficeState) -> frozenset[str]:
        monitor = self.monitor
        assert monitor is not None
        views = monitor.device_views(office.office)
        return frozenset(
            office.pending & {str(v["id"]) for v in views if v["verdict"] == DeviceVerdict.UP.value}
        )

    def _journal_failed(self, why: str) -> None:
        log.critical("daemon.stopping_journal_failed", why=why)
        self.metrics.journal_errors_total.inc()
        self._exit_code = EX_IOERR
        self._stopping.set()

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
            self.notifier.ready(self.read.summary())
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
        self.config, self.inventory = config, inventory
        settings = run_settings(loaded)
        self.runs.settings = settings
        self.read.config, self.read.inventory, self.read.settings = config, inventory, settings
        self.apply(config_event(chains_of(inventory), config.shadow, config.policy))
        if self.monitor is not None:
            await self.monitor.reconfigure(inventory, config.policy)
        log.info("reload.done", offices=len(inventory.offices), devices=len(inventory.devices))
        self.notifier.ready(self.read.summary())
        return True

    # --- parts started by run() ---------------------------------------------------------------

    def resolve(self, ref: Any) -> str:
        """Inventory credentials: `file:` references start at the inventory directory."""
        return resolve(ref, base_dir=self.config.inventory)

    async def _serve_metrics(self) -> web.AppRunner:
        async def metrics_handler(_request: web.Request) -> web.Response:
            self.metrics.update_state(self.controller.state, self.read.last_loop_at)
            self.metrics.runs_in_progress.set(len(self.runs.running))
            view = self.leadership.view
            self.metrics.leader_epoch.set(view.epoch)
            self.metrics.lease_remaining.set(view.lease_left_s or 0.0 if view.held else 0.0)
            self.metrics.vantages_present.set(len(view.vantages) or 1)
            return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", metrics_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = self.config.metrics_listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        return runner

    async def _start_api(self) -> api.Listeners:
        app = api.create_app(self.read, tokens=(), allow_peercred=True)
        # Config references are absolute already; tokens are loaded from them here, once.
        return await api.start_listeners(app, self.config.api, self.resolve)

    async def _start_monitor(self) -> None:
        def deliver(event: OfficeObserved) -> None:
            if self.board is not None:
                self.board.note(event)  # decided from every vantage's votes, each round
                return
            with contextlib.suppress(JournalFailed):  # the stop is already under way
                self.apply(event)

        def make(with_traps: bool) -> Monitor:
            return Monitor(
                self.inventory,
                self.config.policy,
                resolve=self.resolve,
                metrics=self.metrics,
                on_observed=deliver,
                traps=trap_receiver_config(self.config.traps) if with_traps else None,
                source_address=self.config.vantage.source_address,
            )

        self.monitor = make(with_traps=True)
        try:
            await self.monitor.start()
        except TrapReceiverError as exc:
            # Traps only speed detection up; polling decides. Run without them, loudly.
            log.error("traps.unavailable", error=str(exc), port=self.config.traps.port)
            self.monitor = make(with_traps=False)
            await self.monitor.start()
        self.read.monitor = self.monitor
