"""Finishing the runs a previous Baton left unfinished (it crashed, was killed, lost power).

At daemon start, before any new run, every run of `journal.unfinished_runs()` is resumed by
`runner.resume`: the run's journaled step records are folded into each device's progress and
the same loop that runs a handover finishes it, by the rules of `baton.playbook.progress` —
forward when the run had decided so (every device had passed verify), else back. Recovery's
own calls are journaled like the runner's, so a crash during recovery is recovered in turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from baton.core.model import Inventory
from baton.journal import Journal
from baton.playbook.runner import PlanFor, RunOutcome, resume
from baton.playbook.steps import Connectors


async def recover(
    journal: Journal,
    *,
    connectors: Connectors,
    inventory: Inventory,
    plan_for: PlanFor | None = None,
    concurrency: int = 8,
    clock: Callable[[], float] = time.time,
) -> list[RunOutcome]:
    """Finish every unfinished run, oldest first; returns each run's outcome."""
    outcomes = []
    for record in await journal.call(journal.unfinished_runs):
        outcomes.append(
            await resume(
                record,
                journal=journal,
                connectors=connectors,
                inventory=inventory,
                plan_for=plan_for,
                concurrency=concurrency,
                clock=clock,
            )
        )
    return outcomes
