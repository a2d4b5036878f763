"""Planning a run, purely: which devices, and for each the rendered steps in order.

`plan_run` does no I/O. It selects the target devices, evaluates `when`, renders every template
(compensating steps too, so a broken undo is found before anything changes), and collects every
problem of every device at once. The runner executes a plan only when `plan.ok`; `baton plan`
shows it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from baton.core.model import Device, Inventory, RunKind
from baton.playbook.render import (
    RenderError,
    RunInfo,
    context_for,
    evaluate_when,
    make_environment,
    render_step,
)
from baton.playbook.schema import OID_PATTERN, Playbook, SnmpGet, SnmpSet, Step

__all__ = ["DevicePlan", "PlanProblem", "PlannedStep", "RunInfo", "RunPlan", "plan_run", "select_targets"]


@dataclass(frozen=True, slots=True)
class PlannedStep:
    index: int  # position in the playbook's steps (the journal's step index)
    name: str
    phase: int
    step: Step  # rendered: templates replaced by text, `when` already evaluated

    @property
    def compensate(self) -> Step | None:
        return self.step.compensate


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device: Device
    steps: tuple[PlannedStep, ...]
    skipped: tuple[str, ...] = ()  # step names whose `when` was false for this device

    def in_phase(self, phase: int) -> tuple[PlannedStep, ...]:
        return tuple(s for s in self.steps if s.phase == phase)


@dataclass(frozen=True, slots=True)
class PlanProblem:
    device: str | None
    step: str | None
    message: str

    def __str__(self) -> str:
        where = " ".join(
            part
            for part in (
                f"device {self.device}" if self.device else "",
                f"step '{self.step}'" if self.step else "",
            )
            if part
        )
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True, slots=True)
class RunPlan:
    playbook: Playbook
    office: str  # the office handed over (handover) or handed back (handback)
    alternate: str  # the office taking over (handover) or the one that had been operating it
    run: RunInfo
    devices: tuple[DevicePlan, ...]
    problems: tuple[PlanProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(sorted({s.phase for d in self.devices for s in d.steps}))

    def only(self, device_ids: Iterable[str]) -> RunPlan:
        """The same run limited to `device_ids` (a catch-up of devices a handover left pending)."""
        wanted = frozenset(device_ids)
        return replace(
            self,
            devices=tuple(d for d in self.devices if d.device.id in wanted),
            problems=tuple(p for p in self.problems if p.device is None or p.device in wanted),
        )

    @property
    def worst_case_s(self) -> float:
        """An upper bound of the run's duration given concurrency (and barriers), retries included."""
        if not self.devices:
            return 0.0
        pb = self.playbook
        waves = math.ceil(len(self.devices) / pb.concurrency)
        if not pb.barriers:
            return waves * max(sum(s.step.worst_case_s for s in d.steps) for d in self.devices)
        return sum(
            waves * max(sum(s.step.worst_case_s for s in d.in_phase(phase)) for d in self.devices)
            for phase in self.phases
        )


def select_targets(
    playbook: Playbook, inventory: Inventory, office_id: str, alternate_id: str
) -> tuple[Device, ...]:
    """The devices of the targeted side that pass every filter, in id order (stable plans)."""
    t = playbook.targets
    side = office_id if t.office == "closed" else alternate_id
    return tuple(
        d
        for d in sorted(inventory.devices_of(side), key=lambda d: d.id)
        if (not t.roles or d.role in t.roles)
        and (not t.tags or any(tag in t.tags for tag in d.tags))
        and (not t.devices or d.id in t.devices)
    )


def plan_run(
    playbook: Playbook,
    inventory: Inventory,
    office_id: str,
    alternate_id: str,
    run_info: RunInfo,
    variables: Mapping[str, Any] | None = None,
) -> RunPlan:
    """Plan one run of `playbook`; every problem of every device is in `problems`."""
    problems: list[PlanProblem] = []

    def refuse(message: str) -> RunPlan:
        return RunPlan(
            playbook, office_id, alternate_id, run_info, (), (*problems, PlanProblem(None, None, message))
        )

    for role, office in (("office", office_id), ("alternate", alternate_id)):
        if office not in inventory.offices:
            return refuse(f"{role} '{office}' is not in the inventory")
    if office_id == alternate_id:
        return refuse(f"office and alternate are both '{office_id}'")
    if RunKind(playbook.kind) != run_info.kind:
        return refuse(f"playbook '{playbook.name}' is a {playbook.kind} playbook, not {run_info.kind.value}")

    side = office_id if playbook.targets.office == "closed" else alternate_id
    for wanted in playbook.targets.devices:
        found = inventory.devices.get(wanted)
        if found is None:
            problems.append(PlanProblem(wanted, None, "listed in targets.devices but not in the inventory"))
        elif found.office != side:
            problems.append(
                PlanProblem(
                    wanted, None, f"listed in targets.devices but in office {found.office}, not {side}"
                )
            )
    targets = select_targets(playbook, inventory, office_id, alternate_id)
    if not targets:
        problems.append(PlanProblem(None, None, f"no device of office {side} matches the playbook's targets"))

    env = make_environment()
    plans: list[DevicePlan] = []
    for device in targets:
        context = context_for(inventory, office_id, alternate_id, device, run_info, variables)
        steps: list[PlannedStep] = []
        skipped: list[str] = []
        for index, step in enumerate(playbook.steps):
            try:
                if step.when is not None and not evaluate_when(step.when, context, step.name, device.id, env):
                    skipped.append(step.name)
                    continue
                rendered = render_step(step, context, device.id, env)
            except RenderError as exc:
                problems.append(PlanProblem(device.id, step.name, exc.message))
                continue
            problems.extend(_value_problems(rendered, device.id))
            steps.append(
                PlannedStep(index, step.name, step.phase, rendered.model_copy(update={"when": None}))
            )
        plans.append(DevicePlan(device, tuple(steps), tuple(skipped)))
    return RunPlan(playbook, office_id, alternate_id, run_info, tuple(plans), tuple(problems))


_INTEGER_TYPES = frozenset({"integer", "unsigned", "counter32", "gauge32", "timeticks"})


def _value_problems(step: Step, device: str) -> list[PlanProblem]:
    """Checks on rendered values that templates made impossible at load time."""
    problems = []
    for s in (step, step.compensate):
        if isinstance(s, SnmpSet | SnmpGet) and OID_PATTERN.match(s.oid.strip()) is None:
            problems.append(PlanProblem(device, step.name, f"rendered OID '{s.oid}' is not numeric"))
        if isinstance(s, SnmpSet) and s.type in _INTEGER_TYPES:
            try:
                int(s.value)
            except ValueError:
                problems.append(
                    PlanProblem(device, step.name, f"snmp.set value '{s.value}' is not an integer")
                )
    return problems
