"""Which playbook runs a handover or a handback of an office: the one place that decides it."""

from __future__ import annotations

from typing import Any

from baton.config import Config
from baton.core.model import RunKind
from baton.playbook.schema import Playbook


def choose_playbook(
    kind: RunKind, office_vars: Any, config: Config, playbooks: dict[str, Playbook]
) -> Playbook | str:
    """The playbook for a run of `kind` for an office, or why there is none."""
    key = f"{kind.value}_playbook"
    named = office_vars.get(key) if hasattr(office_vars, "get") else None
    named = named or getattr(config, key)
    if named is not None:
        chosen = playbooks.get(str(named))
        if chosen is None:
            known = ", ".join(sorted(playbooks))
            return f"{key} '{named}' is not a playbook in {config.playbooks} (known: {known})"
        if chosen.kind != kind.value:
            return f"{key} '{named}' is a {chosen.kind} playbook, not a {kind.value} one"
        return chosen
    of_kind = [p for p in playbooks.values() if p.kind == kind.value]
    if len(of_kind) == 1:
        return of_kind[0]
    names = ", ".join(sorted(p.name for p in of_kind)) or "none"
    return f"no single {kind.value} playbook in {config.playbooks} (found: {names}); set {key} in baton.yaml"
