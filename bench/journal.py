"""The journal's size per day of a 1,000-device network, before and after the daily compaction.

    .venv/bin/python bench/journal.py                  # 100 offices x 10 devices, one simulated day
    .venv/bin/python bench/journal.py --hours 2        # quick look (figures scaled to a day)
    options: --offices 100 --devices-per-office 10 --seed 1 --workdir DIR

What it does. The real `Controller` (core decisions, one journal transaction per decision) and
the real `Journal` (SQLite, WAL, on disk) are driven with the event stream the daemon would feed
them over a simulated day, on a simulated clock (nothing sleeps):

* the network: N offices in regions of 10, each with a core router and an aggregation router
  (both critical; agg1 behind core1) and OLTs behind agg1; alternates: the next two offices of
  the region; policy: design.md's defaults (poll 10 s, DOWN after 3 failed polls, hold-down 30 s,
  flap window 21 verdicts, handback proposed after 600 s HEALTHY, operators hand back);
* every second a `Ticked` per office (the service's tick loop); every poll interval one
  `OfficeObserved` per office, its verdict and detail computed by the real `core.health`
  (`judge_devices`, `judge_office`) from device states: a device fails a poll while it is in
  an outage and is DOWN after `failures_to_down` failed polls in a row;
* the outages (Poisson, from `--seed`): every OLT about once a day for ~10 min (the office
  DEGRADED, its detail naming the device), every router about every other day for ~20 s (mostly
  shorter than detection; the longer ones make the office SUSPECT, a few close it and hand it
  over), 3 offices flapping for 15 min (agg1 down 35 s / up 25 s), 2 power failures of 1-3 h
  (every device of the office down: closed, handed over, HEALTHY again, handback proposed, an
  operator hands back 5-30 min later), and one closure declared by an operator in the morning
  ("sealed for disinfection") handed back 4 h later;
* every run the core starts is journaled as the runner journals one: the plan rendered from
  playbooks/handover.yaml or handback.yaml (real `plan_run`), an intent and a result per step and
  device (prepare, the playbook's steps, commit, confirm), the confirm deadline, the decision,
  the result 30 s after the start; its `RunFinished` goes back through the controller.

Decisions that change nothing are not journaled (controller.py). At the end of the day the
journal is measured (rows and bytes per table: SQLite's dbstat, indexes counted with their
table; the file), then compacted as service.py does once a day once the day is older than the
30 days it keeps (`Journal.compact`), and measured again: what a day costs for good. Everything
happens in a temporary directory (removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from baton import logs  # noqa: E402
from baton.controller import Controller, config_event, restore  # noqa: E402
from baton.core.actions import AbortRun, Alert, StartRun  # noqa: E402
from baton.core.events import Event, LeaseChanged, OfficeObserved, RunFinished, Ticked  # noqa: E402
from baton.core.health import DeviceHealth, ProbeHealth, judge_devices, judge_office  # noqa: E402
from baton.core.model import (  # noqa: E402
    Device,
    Inventory,
    NetconfSettings,
    Office,
    Phase,
    Policy,
    Protocol,
    RunKind,
    SnmpSettings,
)
from baton.journal import Journal, StepStatus  # noqa: E402
from baton.playbook.plan import RunPlan, plan_run  # noqa: E402
from baton.playbook.progress import Do  # noqa: E402
from baton.playbook.render import RunInfo  # noqa: E402
from baton.playbook.schema import Playbook, load_playbook  # noqa: E402

DAY_S = 86400.0
T0 = 1_796_083_200.0  # a midnight (UTC)
RUN_S = 30.0  # how long a simulated run takes
KEEP_S = 30 * DAY_S  # service.py: JOURNAL_KEEP_S
PLAYBOOKS = ROOT / "playbooks"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the network -----------------------------------------------------------------------------


def network(offices: int, per_office: int) -> Inventory:
    """N offices in regions of 10; core1 and agg1 critical routers, OLTs behind agg1."""
    office_ids = [f"co-{i:03d}" for i in range(offices)]
    known: dict[str, Office] = {}
    devices: dict[str, Device] = {}
    for i, office_id in enumerate(office_ids):
        region = i // 10
        members = [o for j, o in enumerate(office_ids) if j // 10 == region and o != office_id]
        start = (
            members.index(office_ids[i + 1])
            if i + 1 < len(office_ids) and office_ids[i + 1] in members
            else 0
        )
        alternates = tuple((members[start:] + members[:start])[:2])
        net = f"10.{i // 250}.{i % 250}"
        known[office_id] = Office(
            office_id,
            f"Central office {i}",
            f"region-{region}",
            alternates,
            MappingProxyType(
                {
                    "noc_prefixes": [f"{net}.0/24"],
                    "noc_address": f"{net}.1",
                    "aaa_servers": [f"{net}.21", f"{net}.22"],
                    "trap_collectors": [f"{net}.30"],
                    "syslog_collectors": [f"{net}.31"],
                    "contact": f"NOC {office_id} +82-2-0000-{i:04d}",
                }
            ),
        )
        snmp = SnmpSettings(critical_interfaces=(1,))
        netconf = NetconfSettings(enabled=True, username="baton")
        core, agg = f"{office_id}-core1", f"{office_id}-agg1"
        devices[core] = Device(
            core, office_id, "core-router", f"{net}.2", True, None, ("router",), None, snmp, netconf
        )
        devices[agg] = Device(
            agg, office_id, "agg-router", f"{net}.3", True, core, ("router",), None, snmp, netconf
        )
        for k in range(1, per_office - 1):
            olt = f"{office_id}-olt{k:02d}"
            devices[olt] = Device(
                olt, office_id, "olt", f"{net}.{10 + k}", False, agg, ("access",), None, SnmpSettings()
            )
    return Inventory(MappingProxyType(known), MappingProxyType(devices))


@dataclass
class Outages:
    """Per device, the (start, end) intervals during which it fails its polls."""

    by_device: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    story: list[str] = field(default_factory=list)

    def add(self, device: str, start: float, end: float) -> None:
        self.by_device.setdefault(device, []).append((start, end))

    def failing(self, device: str, at: float) -> bool:
        return any(start <= at < end for start, end in self.by_device.get(device, ()))


def outages(inventory: Inventory, rng: random.Random, span_s: float) -> Outages:
    found = Outages()

    def poisson(rate_per_day: float) -> list[float]:
        times, t = [], rng.expovariate(rate_per_day / DAY_S)
        while t < span_s:
            times.append(T0 + t)
            t += rng.expovariate(rate_per_day / DAY_S)
        return times

    for device in inventory.devices.values():
        if device.role == "olt":
            for start in poisson(1.0):
                found.add(device.id, start, start + max(10.0, rng.expovariate(1 / 600.0)))
        else:
            for start in poisson(0.5):
                found.add(device.id, start, start + max(1.0, rng.expovariate(1 / 20.0)))
    offices = sorted(inventory.offices)
    chosen = rng.sample(offices, 6)
    for office in chosen[:3]:  # flapping: agg1 down 35 s, up 25 s, for 15 min
        start = T0 + rng.uniform(0.05, 0.9) * span_s
        for k in range(15):
            found.add(f"{office}-agg1", start + 60 * k, start + 60 * k + 35)
        found.story.append(f"{office} flaps from {clock(start)} for 15 min")
    for office in chosen[3:5]:  # power failure: the whole office dark for 1-3 h
        start = T0 + rng.uniform(0.05, 0.8) * span_s
        end = start + rng.uniform(3600, 3 * 3600)
        for device in inventory.devices_of(office):
            found.add(device.id, start, end)
        found.story.append(f"{office} loses power {clock(start)}-{clock(end)}")
    return found


def clock(at: float) -> str:
    return time.strftime("%H:%M", time.gmtime(at))


# --- the simulation --------------------------------------------------------------------------


class Health:
    """Device health from the outages, poll by poll, judged by the real core.health."""

    def __init__(self, inventory: Inventory, policy: Policy, found: Outages) -> None:
        self.inventory, self.policy, self.found = inventory, policy, found
        self.failures: dict[str, int] = dict.fromkeys(inventory.devices, 0)
        self.cache: dict[str, tuple[Any, Any]] = {}
        self.offices_of = {o: [d.id for d in inventory.devices_of(o)] for o in inventory.offices}
        self.sub = {
            o: Inventory(
                MappingProxyType({o: inventory.offices[o]}),
                MappingProxyType({d: inventory.devices[d] for d in ids}),
            )
            for o, ids in self.offices_of.items()
        }

    def poll(self, at: float) -> dict[str, tuple[Any, str]]:
        """Every office's (verdict, detail) after a poll round at `at`."""
        judged = {}
        for office, ids in self.offices_of.items():
            for device in ids:
                self.failures[device] = self.failures[device] + 1 if self.found.failing(device, at) else 0
            key = tuple(min(self.failures[d], self.policy.failures_to_down) for d in ids)
            cached = self.cache.get(office)
            if cached is not None and cached[0] == key:
                judged[office] = cached[1]
                continue
            healths = {d: self._health(self.failures[d], at) for d in ids}
            devices = judge_devices(self.sub[office], healths, self.policy)
            result = judge_office(office, self.sub[office], devices, self.policy)
            judged[office] = (result.verdict, result.detail)
            self.cache[office] = (key, judged[office])
        return judged

    @staticmethod
    def _health(failures: int, at: float) -> DeviceHealth:
        probe = ProbeHealth(
            consecutive_failures=failures,
            consecutive_successes=0 if failures else 1,
            last_ok_at=at if not failures else None,
            last_at=at,
            last_reason="timeout" if failures else "",
            ever_ok=True,
        )
        return DeviceHealth(MappingProxyType({Protocol.SNMP: probe}))


class Runs:
    """The actuator: a StartRun is journaled as the runner would, and finishes RUN_S later."""

    def __init__(
        self,
        journal: Journal,
        inventory: Inventory,
        schedule: Callable[[float, Event], None],
        now: Callable[[], float],
    ) -> None:
        self.journal, self.inventory, self.schedule, self.now = journal, inventory, schedule, now
        self.playbooks: dict[RunKind, Playbook] = {
            RunKind.HANDOVER: load_playbook(PLAYBOOKS / "handover.yaml"),
            RunKind.HANDBACK: load_playbook(PLAYBOOKS / "handback.yaml"),
        }
        self.started: Counter[str] = Counter()

    def start_run(self, action: StartRun) -> None:
        self.started[action.kind.value] += 1
        at = self.now()
        info = RunInfo(action.run_id, action.kind, action.reason, action.who)
        plan: RunPlan = plan_run(
            self.playbooks[action.kind], self.inventory, action.office, action.alternate, info
        )
        if action.devices is not None:
            plan = plan.only(action.devices)
        window_s = plan.playbook.window_for(300.0)
        self.journal.set_plan(action.run_id, plan.to_json(), window_s)
        self.journal.set_confirm(action.run_id, at + window_s, f"persist-{action.run_id}")
        names = [Do.PREPARE, *(s.name for s in plan.devices[0].steps), Do.COMMIT] if plan.devices else []
        for n, name in enumerate(names):
            for device in plan.devices:
                step = self.journal.step_intent(action.run_id, device.device.id, n, name, at + n)
                self.journal.step_result(step, StepStatus.DONE, f"{name}: ok", at + n + 0.5)
        self.journal.decide(action.run_id, "forward", "every device passed verify", at + len(names))
        for device in plan.devices:
            step = self.journal.step_intent(
                action.run_id, device.device.id, len(names), Do.CONFIRM, at + len(names), phase="confirm"
            )
            self.journal.step_result(step, StepStatus.DONE, "confirmed", at + len(names) + 0.5)
        done = frozenset(d.device.id for d in plan.devices)
        self.journal.finish_run(
            action.run_id, "ok", f"{len(done)} device(s) confirmed", at + RUN_S, done=done
        )
        self.schedule(at + RUN_S, RunFinished(action.office, action.run_id, action.kind, True, "", done=done))

    def abort_run(self, action: AbortRun) -> None:
        pass  # every run here ends on its own 30 s later


def table_sizes(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """(rows per table, bytes per table with its indexes, bytes in use) of the journal."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        owner = {r[0]: r[1] for r in conn.execute("SELECT name, tbl_name FROM sqlite_master")}
        rows = {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608
        sizes: Counter[str] = Counter()
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            sizes[owner.get(name, name)] += size
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        in_use = (
            conn.execute("PRAGMA page_count").fetchone()[0]
            - conn.execute("PRAGMA freelist_count").fetchone()[0]
        ) * page
    finally:
        conn.close()
    return rows, dict(sizes), in_use


def simulate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    inventory = network(args.offices, args.devices_per_office)
    policy = Policy()
    rng = random.Random(args.seed)
    span_s = args.hours * 3600.0
    found = outages(inventory, rng, span_s)
    path = work / "journal.sqlite3"
    journal = Journal.open(path)
    now = [T0 - 600.0]
    queue: list[tuple[float, int, Event | Callable[[], object]]] = []
    counter = itertools.count()

    def schedule(at: float, what: Event | Callable[[], object]) -> None:
        heapq.heappush(queue, (at, next(counter), what))

    runs = Runs(journal, inventory, schedule, lambda: now[0])
    controller = Controller(restore(journal), policy, journal, runs, lambda: now[0])
    health = Health(inventory, policy, found)
    chains = {o.id: o.alternates for o in inventory.offices.values()}
    controller.apply(config_event(chains, False, policy))
    controller.apply(LeaseChanged(held=True))  # one vantage: it holds the lease
    # Warm up (before the measured day): ten minutes of polls, every office HEALTHY.
    while now[0] < T0:
        if int(now[0]) % int(policy.poll_interval_s) == 0:
            for office, (verdict, detail) in health.poll(now[0]).items():
                controller.apply(OfficeObserved(office, verdict, detail))
        now[0] += 1.0
    journal.compact(T0)  # the warm-up is not part of the day
    start_rows, start_sizes, start_in_use = table_sizes(path)

    # The operator's own closure: in the morning, handed back 4 h later.
    declared = rng.choice([o for o in sorted(inventory.offices) if not any(o in s for s in found.story)])
    declare_at = T0 + min(0.4 * span_s, 9 * 3600.0)
    schedule(
        declare_at,
        lambda: controller.declare_closure(declared, who="alice", reason="sealed for disinfection"),
    )
    schedule(
        declare_at + min(4 * 3600.0, 0.5 * span_s),
        lambda: controller.request_handback(declared, who="alice", reason="disinfection done"),
    )
    found.story.append(f"{declared} declared closed by an operator at {clock(declare_at)}")
    answered: set[str] = set()

    def hand_back(office: str) -> None:
        controller.request_handback(office, who="bob", reason="office back to normal")

    triggers: Counter[str] = Counter()
    began = time.perf_counter()
    end = T0 + span_s
    offices = sorted(inventory.offices)
    poll = int(policy.poll_interval_s)
    while now[0] < end:
        while queue and queue[0][0] <= now[0]:
            _, _, what = heapq.heappop(queue)
            if callable(what):
                what()
            else:
                controller.apply(what)
        if int(now[0] - T0) % poll == 0:
            for office, (verdict, detail) in health.poll(now[0]).items():
                controller.apply(OfficeObserved(office, verdict, detail))
        for office in offices:
            controller.apply(Ticked(office))
        # The NOC hands back an office 5-30 min after Baton proposes it.
        for office in offices:
            state = controller.state.offices[office]
            if Alert.HANDBACK_PROPOSED in state.alerts and office not in answered:
                answered.add(office)
                schedule(now[0] + rng.uniform(300, 1800), functools.partial(hand_back, office))
            elif state.phase is Phase.OPEN:
                answered.discard(office)
        now[0] += 1.0
        if int(now[0] - T0) % 3600 == 0:
            log(f"simulated {clock(now[0])} ({time.perf_counter() - began:.0f} s)")
    took = time.perf_counter() - began
    for decision in journal.decisions(since=T0):
        triggers[str(json.loads(decision.event).get("type", "?"))] += 1
    journal.close()
    day_rows, day_sizes, day_in_use = table_sizes(path)
    file_day = path.stat().st_size
    if args.keep:
        shutil.copy(path, work / "journal-before-compaction.sqlite3")
    # Once the day is older than the 30 days kept, the daily compaction folds it into a snapshot.
    journal = Journal.open(path)
    t = time.perf_counter()
    gone = journal.compact(end + 1.0)
    compact_s = time.perf_counter() - t
    journal.close()
    after_rows, after_sizes, after_in_use = table_sizes(path)
    vacuumed = work / "vacuumed.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"VACUUM INTO '{vacuumed}'")
    conn.close()
    return {
        "story": found.story,
        "runs": dict(runs.started),
        "took_s": took,
        "triggers": triggers,
        "start": (start_rows, start_sizes, start_in_use),
        "day": (day_rows, day_sizes, day_in_use),
        "after": (after_rows, after_sizes, after_in_use),
        "file_day": file_day,
        "file_after": path.stat().st_size,
        "vacuumed": vacuumed.stat().st_size,
        "gone": gone,
        "compact_s": compact_s,
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    scale = 24.0 / args.hours
    start_rows, start_sizes, start_in_use = result["start"]
    day_rows, day_sizes, day_in_use = result["day"]
    after_rows, after_sizes, after_in_use = result["after"]
    mb = 1e6
    print()
    print(
        f"{args.offices} offices x {args.devices_per_office} devices, poll 10 s, {args.hours:g} h simulated "
        f"in {result['took_s']:.0f} s (per-day figures x{scale:g}); seed {args.seed}"
    )
    for line in result["story"]:
        print(f"  {line}")
    print(f"  runs started: {result['runs']}; decisions by input: {dict(result['triggers'].most_common())}")
    print()
    print(f"{'table':14s} {'rows/day':>10s} {'MB/day':>8s} {'rows/day after':>15s} {'MB/day after':>13s}")
    for table in sorted(day_rows):
        rows = (day_rows[table] - start_rows.get(table, 0)) * scale
        size = (day_sizes.get(table, 0) - start_sizes.get(table, 0)) * scale / mb
        rows_after = (after_rows[table] - start_rows.get(table, 0)) * scale
        size_after = (after_sizes.get(table, 0) - start_sizes.get(table, 0)) * scale / mb
        if rows or rows_after or abs(size) > 0.0005:
            print(f"{table:14s} {rows:10.0f} {size:8.3f} {rows_after:15.0f} {size_after:13.3f}")
    total = sum(day_rows[t] - start_rows.get(t, 0) for t in day_rows) * scale
    total_after = sum(after_rows[t] - start_rows.get(t, 0) for t in after_rows) * scale
    grow = (day_in_use - start_in_use) * scale / mb
    grow_after = (after_in_use - start_in_use) * scale / mb
    print(f"{'all':14s} {total:10.0f} {grow:8.3f} {total_after:15.0f} {grow_after:13.3f}")
    decisions = (day_sizes.get("decisions", 0) - start_sizes.get("decisions", 0)) * scale / mb
    print()
    print(
        f"journal file after the day {result['file_day'] / mb:.2f} MB; compaction folded {result['gone']} "
        f"decisions into one row in {result['compact_s']:.2f} s (pages freed for reuse: file stays "
        f"{result['file_after'] / mb:.2f} MB, {result['vacuumed'] / mb:.2f} MB if vacuumed)"
    )
    print(
        f"steady state with 30 days kept: about 30 x {decisions:.2f} MB of decisions = "
        f"{30 * decisions:.1f} MB, "
        f"plus {grow_after:.3f} MB/day that compaction keeps (phase history, runs, steps, alerts, commands)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--offices", type=int, default=100)
    parser.add_argument("--devices-per-office", type=int, default=10)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.devices_per_office < 3:
        parser.error("--devices-per-office must be at least 3 (two routers and an OLT)")
    logs.configure(json=True, level="error")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="baton-journal-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for old in [*work.glob("journal*.sqlite3*"), *work.glob("vacuumed.sqlite3")]:
        old.unlink()  # a fresh journal every time
    try:
        result = simulate(args, work)
        report(result, args)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
