"""What the API, the wallboard and the metrics read: one view of the daemon, deciding nothing.

The read model holds references to the parts the service wires together (the controller's
state, the journal, the monitor's device views, the runs in progress) and the configuration in
force (swapped on reload). Everything here is a read; a dry run (`plan`) asks the core which
alternate it would choose and the playbook choice which playbook, and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from baton.config import Config
from baton.controller import Controller
from baton.core.machine import choose_alternate
from baton.core.model import Inventory, Phase, RunKind
from baton.journal import Journal
from baton.leadership import LeaderView
from baton.monitor import Monitor
from baton.playbook import dryrun
from baton.playbook.plan import RunInfo, plan_run
from baton.playbook.steps import Connectors
from baton.runs import RunManager, RunSettings


class ReadModel:
    """Implements `api.ApiBackend`."""

    def __init__(
        self,
        *,
        config: Config,
        inventory: Inventory,
        settings: RunSettings,
        controller: Controller,
        journal: Journal,
        runs: RunManager,
        connectors: Connectors,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.settings = settings
        self.controller = controller
        self.journal = journal
        self.runs = runs
        self.connectors = connectors
        self.monitor: Monitor | None = None
        self.leadership: LeaderView | None = None  # the service's leadership's live view
        self.state_out: Callable[[], Awaitable[None]] | None = None  # the leader's state published
        self.clock = clock
        self.started_at = clock()
        self.last_loop_at: float | None = None

    # --- api.ApiBackend ---------------------------------------------------------------------

    def device_views(self, office: str) -> list[dict[str, Any]]:
        views = [] if self.monitor is None else self.monitor.device_views(office)
        state = self.controller.state.offices.get(office)
        pending = state.pending if state is not None else frozenset()
        # pending: left unreachable by the last run; handed over (or back) when it answers.
        return [{**view, "pending": view["id"] in pending} for view in views]

    def run_progress(self, run_id: str) -> dict[str, Any] | None:
        return self.runs.progress(run_id)

    async def plan(self, office: str, to: str | None) -> dict[str, Any]:
        """Dry run of what a handover (or, for a handed-over office, a handback) would change."""
        state = self.controller.state.offices.get(office)
        if state is None:
            raise KeyError(office)
        if state.phase in (Phase.HANDED_OVER, Phase.HANDING_BACK, Phase.FAILED) and state.alternate:
            kind, alternate = RunKind.HANDBACK, state.alternate
        else:
            kind = RunKind.HANDOVER
            chosen, why = choose_alternate(self.controller.state, office, to)
            if chosen is None:
                return {"office": office, "kind": kind.value, "error": f"no handover now: {why}"}
            alternate = chosen
        playbook = self.settings.choose(kind, office)
        if isinstance(playbook, str):
            return {"office": office, "kind": kind.value, "error": playbook}
        info = RunInfo(id=f"plan-{office}", kind=kind, reason="dry run", who="baton")
        plan = plan_run(playbook, self.inventory, office, alternate, info)
        result = await dryrun.dry_run(plan, self.connectors)
        window = playbook.window_for(self.settings.policy_window_s)
        return dryrun.as_dict(replace(result, window_s=window))

    async def shared(self) -> None:
        if self.state_out is not None:
            await self.state_out()

    def status_extra(self) -> dict[str, Any]:
        state = self.controller.state
        return {
            "vantage": self.config.vantage.id,
            "vantage_office": self.config.vantage.office,
            "leader": state.leader,
            "leadership": self.leadership_view(),
            "uptime_s": self.clock() - self.started_at,
            "last_loop_at": self.last_loop_at,
            "runs_in_progress": list(self.runs.running),
            "catchups_in_progress": [o.catchup_id for o in state.offices.values() if o.catchup_id],
            "pending_devices": {o.office: sorted(o.pending) for o in state.offices.values() if o.pending},
        }

    def leadership_view(self) -> dict[str, Any] | None:
        view = self.leadership
        if view is None:
            return None
        return {
            "me": view.me,
            "held": view.held,
            "epoch": view.epoch,
            "leader": view.leader,
            "leader_api": view.leader_api,
            "lease_left_s": view.lease_left_s,
            "vantages": sorted(view.vantages),
            "reason": view.reason,
        }

    # --- for the service ----------------------------------------------------------------------

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
            leader = self.leadership.leader if self.leadership is not None else None
            flags.append(f"NOT LEADER (leader: {leader or 'none known'})")
        running = len(self.runs.running)
        text = f"{len(state.offices)} offices: {phases}"
        if running:
            text += f"; {running} run(s) in progress"
        return text + (f" [{' '.join(flags)}]" if flags else "")
