"""Loading everything the daemon runs on — config, inventory, playbooks — validated together.

`check_everything` is the one list of what must hold before Baton runs: what `baton validate`
reports, what the daemon refuses to start with and what a reload refuses (`load_all`). Beyond
each file on its own, it renders every office's handover and handback playbook against every
alternate of its chain (`baton.playbook.plan.plan_run`, pure), for every target device, exactly as
a run would. An undefined variable, XML that does not come out well-formed, a template over its
rendering budget or a missing playbook is found here, with the office, the alternate and the
playbook's file:line, instead of at 3 a.m. when the office closes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from baton.config import Config, check_all
from baton.core.model import Inventory, RunKind
from baton.playbook.choice import choose_playbook
from baton.playbook.plan import PlanProblem, RunInfo, plan_run
from baton.playbook.schema import Playbook, PlaybookSet, check_playbooks, step_line
from baton.yamlsource import ConfigError, Document, Problem, errors_in

# Pairs of office → alternate named in one rendering problem before "and N more".
_PAIRS_SHOWN = 3
_DEVICES_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Loaded:
    config: Config
    inventory: Inventory
    playbooks: dict[str, Playbook]
    warnings: list[Problem]


@dataclass(frozen=True, slots=True)
class Checked:
    """Everything checked, usable or not: what `baton validate` reports."""

    inventory_dir: Path
    config: Config | None
    inventory: Inventory | None
    playbooks: dict[str, Playbook] | None
    problems: list[Problem]

    @property
    def is_valid(self) -> bool:
        return not errors_in(self.problems)


def check_everything(
    config_path: Path, inventory_dir: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Checked:
    """Config, inventory and playbooks, each and together, and every handover/handback rendered."""
    validation = check_all(inventory_dir, config_path, environ=environ)
    problems = list(validation.problems)
    config, inventory = validation.config, validation.inventory
    found: PlaybookSet | None = None
    if config is not None:
        found = check_playbooks(config.playbooks)
        problems.extend(_point_at_config(found.problems, config, validation.config_document))
    if found is not None and config is not None and inventory is not None:
        problems.extend(_playbook_choice_problems(config, inventory, found.playbooks))
        problems.extend(render_problems(config, inventory, found))
    return Checked(validation.inventory_dir, config, inventory, found.playbooks if found else None, problems)


def load_all(config_path: Path) -> Loaded:
    """Config, inventory and playbooks, validated together; ConfigError with every problem if not."""
    checked = check_everything(config_path)
    if (
        not checked.is_valid
        or checked.config is None
        or checked.inventory is None
        or checked.playbooks is None
    ):
        raise ConfigError(checked.problems)
    return Loaded(checked.config, checked.inventory, checked.playbooks, checked.problems)


def _point_at_config(problems: list[Problem], config: Config, doc: Document | None) -> list[Problem]:
    """A missing playbook directory is a mistake in baton.yaml's `playbooks:`: say so, there."""
    missing = str(config.playbooks)
    result = []
    for problem in problems:
        if doc is not None and problem.file == missing and problem.line is None:
            problem = doc.problem(
                ("playbooks",),
                f"{problem.message}: {missing}",
                "point `playbooks:` at the directory with the handover and handback playbooks "
                "(relative paths start at this file's directory)",
            )
        result.append(problem)
    return result


def _playbook_choice_problems(
    config: Config, inventory: Inventory, playbooks: dict[str, Playbook]
) -> list[Problem]:
    problems = []
    for office in inventory.offices.values():
        for kind in RunKind:
            chosen = choose_playbook(kind, office.vars, config, playbooks)
            if isinstance(chosen, str):
                problems.append(Problem(str(config.playbooks), None, f"office {office.id}", chosen, ""))
    # One problem per distinct message: a missing default would otherwise repeat per office.
    unique: dict[str, Problem] = {}
    for problem in problems:
        unique.setdefault(problem.message, problem)
    return list(unique.values())


# --- rendering every run that could happen ---------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """One rendering problem and everywhere it happened: (kind, office, alternate) → devices."""

    problem: PlanProblem
    kind: RunKind
    pairs: dict[tuple[str, str], list[str]]


def render_problems(config: Config, inventory: Inventory, playbooks: PlaybookSet) -> list[Problem]:
    """Every problem of planning every office's handover and handback to every alternate in its
    chain, each once with the playbook's file:line and where it happens (office → alternate,
    devices). Pure: nothing is contacted."""
    seen: dict[tuple[str, int | None, str | None, str], _Seen] = {}
    where_of: dict[str, tuple[str, Document | None]] = {}
    for office in sorted(inventory.offices.values(), key=lambda o: o.id):
        for kind in RunKind:
            chosen = choose_playbook(kind, office.vars, config, playbooks.playbooks)
            if isinstance(chosen, str):
                continue  # reported by _playbook_choice_problems
            doc = playbooks.documents.get(chosen.name)
            file = doc.file if doc is not None else str(config.playbooks)
            where_of[file] = (chosen.name, doc)
            for alternate in office.alternates:
                if alternate not in inventory.offices or alternate == office.id:
                    continue  # the inventory reports these
                info = RunInfo(f"validate-{kind.value}", kind, "baton validate", "baton")
                plan = plan_run(chosen, inventory, office.id, alternate, info)
                window = chosen.window_for(config.policy.confirm_window_s)
                why = plan.refusal(window) if plan.ok else None
                if why is not None:  # the window the run would use, against the office's size
                    problem = PlanProblem(None, None, why)
                    budget_key: tuple[str, int | None, str | None, str] = (file, None, None, why)
                    entry = seen.setdefault(budget_key, _Seen(problem, kind, {}))
                    entry.pairs.setdefault((office.id, alternate), [])
                for problem in plan.problems:
                    line = _line(doc, chosen, problem)
                    key = (file, line, problem.step, problem.message)
                    entry = seen.setdefault(key, _Seen(problem, kind, {}))
                    devices = entry.pairs.setdefault((office.id, alternate), [])
                    if problem.device is not None:
                        devices.append(problem.device)
    return [_as_problem(file, line, entry) for (file, line, _, _), entry in seen.items()]


def _line(doc: Document | None, playbook: Playbook, problem: PlanProblem) -> int | None:
    if doc is None:
        return None
    index = next((i for i, s in enumerate(playbook.steps) if s.name == problem.step), None)
    if index is None:
        return doc.line_of(("targets",)) if "targets" in problem.message else None
    return step_line(doc, index, problem.path, problem.line)


def _as_problem(file: str, line: int | None, entry: _Seen) -> Problem:
    problem = entry.problem
    pairs = list(entry.pairs.items())
    (office, alternate), devices = pairs[0]
    where = f"{entry.kind.value} of {office} to {alternate}"
    if entry.kind is RunKind.HANDBACK:
        where = f"handback of {office} from {alternate}"
    if devices:
        shown = ", ".join(devices[:_DEVICES_SHOWN])
        more = f" and {len(devices) - _DEVICES_SHOWN} more" if len(devices) > _DEVICES_SHOWN else ""
        where += f" (device{'s' if len(devices) > 1 else ''} {shown}{more})"
    if problem.step:
        where += f", step '{problem.step}'"
    if len(pairs) > 1:
        others = ", ".join(f"{o} → {a}" for (o, a), _ in pairs[1 : 1 + _PAIRS_SHOWN])
        extra = len(pairs) - 1 - _PAIRS_SHOWN
        where += f"; also {others}" + (f" and {extra} more" if extra > 0 else "")
    return Problem(file, line, where, problem.message, _hint(problem, office, alternate))


_UNDEFINED = re.compile(r"'(office|alternate|device)\.vars\.([A-Za-z0-9_]+)")


def _hint(problem: PlanProblem, office: str, alternate: str) -> str:
    message = problem.message
    undefined = _UNDEFINED.search(message)
    if undefined is not None:
        side, name = undefined.groups()
        if side == "device":
            return (
                f"set vars.{name} on the devices (devices/*.yaml, a group or defaults), "
                f"or give it a default in the template: {{{{ device.vars.{name} | default(...) }}}}"
            )
        whose = office if side == "office" else alternate
        return (
            f"set vars.{name} for office {whose} in offices.yaml, or give it a "
            f"default in the template: {{{{ {side}.vars.{name} | default(...) }}}}"
        )
    if "undefined" in message:
        return "use only office, alternate, device, inventory and run variables (see README)"
    if "well-formed XML" in message:
        return "fix the template so that what it renders is XML: close every element, escape & and <"
    if "budget" in message:
        return "render less: loops, repetitions and widths in templates are bounded"
    if "sandbox" in message:
        return "use only the office, alternate, device, inventory and run variables"
    if "matches the playbook's targets" in message:
        return "give the office's devices a role or tag the playbook targets, or change its targets"
    return ""
