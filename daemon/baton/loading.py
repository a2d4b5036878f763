"""Loading everything the daemon runs on — config, inventory, playbooks — validated together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from baton.config import Config, check_all
from baton.core.model import Inventory, RunKind
from baton.playbook.choice import choose_playbook
from baton.playbook.schema import Playbook, check_playbooks
from baton.yamlsource import ConfigError, Problem, errors_in


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
    if playbooks is not None and validation.config is not None and validation.inventory is not None:
        problems.extend(
            _playbook_choice_problems(validation.config, validation.inventory, playbooks.playbooks)
        )
    if errors_in(problems) or validation.config is None or validation.inventory is None or playbooks is None:
        raise ConfigError(problems)
    return Loaded(validation.config, validation.inventory, playbooks.playbooks, problems)


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
