"""Playbooks: the YAML format (`schema`), template rendering (`render`) and pure run planning (`plan`)."""

from baton.playbook.plan import DevicePlan, PlannedStep, PlanProblem, RunPlan, plan_run, select_targets
from baton.playbook.render import RenderError, RunInfo
from baton.playbook.schema import (
    Playbook,
    Step,
    check_playbook,
    check_playbooks,
    load_playbook,
    load_playbooks,
)

__all__ = [
    "DevicePlan",
    "PlanProblem",
    "PlannedStep",
    "Playbook",
    "RenderError",
    "RunInfo",
    "RunPlan",
    "Step",
    "check_playbook",
    "check_playbooks",
    "load_playbook",
    "load_playbooks",
    "plan_run",
    "select_targets",
]
