"""Planning a run, purely: which devices, and for each the rendered steps in order.

`plan_run` does no I/O. It selects the target devices, evaluates `when`, renders every template
(compensating steps too, so a broken undo is found before anything changes), and collects every
problem of every device at once. The runner executes a plan only when `plan.ok`; `baton plan`
shows it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import TypeAdapter

from baton.core.model import Device, Inventory, RunKind
from baton.playbook.render import (
    RenderError,
    RunInfo,
    context_for,
    evaluate_when,
    make_environment,
    render_step,
)
from baton.playbook.schema import Playbook, Step

__all__ = [
    "Budget",
    "DevicePlan",
    "PlanProblem",
    "PlannedStep",
    "RunInfo",
    "RunPlan",
    "plan_from_json",
    "plan_run",
    "select_targets",
]

_STEP = TypeAdapter[Step](Step)


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
    # where in the step's templates (a field path such as ("compensate", "config")), and the
    # line inside that template, when a rendering failed: validation turns them into file:line
    path: tuple[str | int, ...] = ()
    line: int | None = None

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
        return self.budget(1.0).total_s

    def needing(self, session: str) -> tuple[str, ...]:
        """The steps that use this kind of session, themselves or by their compensation (a wait:
        its `until`'s), by name."""

        def uses(ps: PlannedStep) -> bool:
            return any(s is not None and s.session == session for s in (ps.step, ps.step.compensate))

        return tuple(sorted({ps.name for d in self.devices for ps in d.steps if uses(ps)}))

    def refusal(
        self, window_s: float, concurrency: int | None = None, margin_s: float | None = None
    ) -> str | None:
        """Why the run may not start (a plan with problems, or a run its window cannot cover,
        with the numbers and the fix), or None."""
        if not self.ok:
            return "the plan has problems: " + "; ".join(str(p) for p in self.problems[:10])
        margin = confirm_margin(window_s) if margin_s is None else margin_s
        return self.budget(window_s, concurrency, margin).refusal()

    def budget(self, window_s: float, concurrency: int | None = None, margin_s: float = 0.0) -> Budget:
        """Worst-case time from the first commit to the last confirm, against the window."""
        pb = self.playbook
        workers = concurrency or pb.concurrency
        waves = math.ceil(len(self.devices) / workers) if self.devices else 0

        def longest(phases: Iterable[int] | None) -> float:
            wanted = None if phases is None else set(phases)
            return max(
                (
                    sum(s.step.worst_case_s for s in d.steps if wanted is None or s.phase in wanted)
                    for d in self.devices
                ),
                default=0.0,
            )

        edits = any(s.step.IN_CANDIDATE for d in self.devices for s in d.steps)
        commit_s = pb.commit_timeout_s if edits else 0.0
        confirm_s = waves * pb.confirm_timeout_s if edits else 0.0
        if pb.barriers:
            per_phase = [waves * longest([phase]) for phase in self.phases]
            # The first commit goes out after the first device's edits; the rest of the first
            # phase, every later phase (verify) and the commits all fall inside the window.
            first = longest([self.phases[0]]) if self.phases else 0.0
            total = sum(per_phase) + waves * commit_s
            in_window = total - first + confirm_s
        else:
            per_device = longest(None) + commit_s
            total = waves * per_device
            in_window = total + confirm_s
        return Budget(
            devices=len(self.devices),
            concurrency=workers,
            waves=waves,
            total_s=total + confirm_s,
            in_window_s=in_window if edits else 0.0,
            window_s=window_s,
            margin_s=margin_s,
        )

    def to_json(self) -> str:
        """The plan as journaled with its run: recovery undoes exactly what was rendered."""
        return json.dumps(
            {
                "playbook": self.playbook.model_dump(mode="json"),
                "office": self.office,
                "alternate": self.alternate,
                "run": {
                    "id": self.run.id,
                    "kind": self.run.kind.value,
                    "reason": self.run.reason,
                    "who": self.run.who,
                },
                "devices": [
                    {
                        "device": d.device.id,
                        "skipped": list(d.skipped),
                        "steps": [
                            {
                                "index": s.index,
                                "name": s.name,
                                "phase": s.phase,
                                "step": s.step.model_dump(mode="json"),
                            }
                            for s in d.steps
                        ],
                    }
                    for d in self.devices
                ],
            },
            sort_keys=True,
        )


def confirm_margin(window_s: float) -> float:
    """How much of the window must be left to go on: a fifth, at least 5 s (less for tiny windows)."""
    return min(max(5.0, window_s * 0.2), window_s / 2)


@dataclass(frozen=True, slots=True)
class Budget:
    """How long a run may take, worst case, and how much of it the confirm window must cover."""

    devices: int
    concurrency: int
    waves: int  # devices / concurrency, rounded up
    total_s: float  # the whole run
    in_window_s: float  # from the first commit to the last confirm
    window_s: float
    margin_s: float = 0.0  # what must be left of the window when the last confirm starts

    @property
    def usable_s(self) -> float:
        return self.window_s - self.margin_s

    @property
    def fits(self) -> bool:
        return self.in_window_s <= self.usable_s

    def refusal(self) -> str | None:
        """Why the run cannot fit in its window (with the numbers and the fix), or None."""
        if self.margin_s >= self.window_s:
            return f"confirm margin {self.margin_s:g} s is not shorter than the window {self.window_s:g} s"
        if self.fits:
            return None
        need = math.ceil(self.in_window_s + self.margin_s)
        per_wave = self.in_window_s / max(1, self.waves)
        fitting_waves = math.floor(self.usable_s / per_wave) if per_wave > 0 else 0
        if fitting_waves >= 1:
            faster = f"raise the concurrency to {math.ceil(self.devices / fitting_waves)}, "
        else:
            faster = ""  # one wave alone is too long: concurrency cannot help
        margin = f" ({self.usable_s:g} s usable after a {self.margin_s:g} s margin)" if self.margin_s else ""
        return (
            f"the confirmed-commit window of {self.window_s:g} s{margin} cannot cover this run: "
            f"{self.devices} device(s) at concurrency {self.concurrency} ({self.waves} wave(s)) may "
            f"need up to {math.ceil(self.in_window_s)} s from the first commit to the last confirm; "
            f"raise the window to at least {need} s, {faster}lower step timeouts and retries, "
            "or split the office"
        )


def plan_from_json(text: str, inventory: Inventory) -> RunPlan:
    """A journaled plan back, its devices looked up in `inventory` (a device the inventory no
    longer has keeps its id, with no address: calls to it fail with a clear cause)."""
    data = json.loads(text)
    playbook = Playbook.model_validate(data["playbook"])
    run = data["run"]
    info = RunInfo(id=run["id"], kind=RunKind(run["kind"]), reason=run["reason"], who=run["who"])
    devices = []
    for d in data["devices"]:
        device = inventory.devices.get(d["device"]) or Device(
            id=d["device"], office=data["office"], role="unknown", address=""
        )
        steps = tuple(
            PlannedStep(s["index"], s["name"], s["phase"], _STEP.validate_python(s["step"]))
            for s in d["steps"]
        )
        devices.append(DevicePlan(device, steps, tuple(d["skipped"])))
    return RunPlan(playbook, data["office"], data["alternate"], info, tuple(devices))


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
                problems.append(PlanProblem(device.id, step.name, exc.message, exc.path, exc.line))
                continue
            # checks on rendered values that templates made impossible at load time
            for s in (rendered, rendered.compensate):
                if s is not None:
                    problems.extend(PlanProblem(device.id, step.name, p) for p in s.rendered_problems())
            steps.append(
                PlannedStep(index, step.name, step.phase, rendered.model_copy(update={"when": None}))
            )
        plans.append(DevicePlan(device, tuple(steps), tuple(skipped)))
    return RunPlan(playbook, office_id, alternate_id, run_info, tuple(plans), tuple(problems))
