"""`baton plan OFFICE`: render a handover/handback and show each device's config diff, changing nothing.

Works offline (no daemon): reads the inventory, baton.yaml and the playbook, plans the run, and
(unless --no-device) asks each device for the diff its candidate would get (then discards it).
Exit 0 when the plan is valid (even if devices would change), 78 when the playbook or inventory
is invalid, 1 when some device could not be reached or diffed (the others are still shown).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from baton.cli import EX_CONFIG, EX_FAILURE, EX_OK
from baton.config import read_config
from baton.core.model import Inventory, Policy, RunKind, SecretRef
from baton.inventory.loader import read_inventory
from baton.logs import configure
from baton.playbook.dryrun import DryRun, as_dict, as_text, dry_run
from baton.playbook.plan import RunInfo, plan_run
from baton.playbook.schema import check_playbook
from baton.playbook.steps import Connectors
from baton.secrets import resolve
from baton.yamlsource import errors_in


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="dry-run a handover/handback: rendered steps and per-device config diff",
        description="Render every step of the playbook for every target device and show what "
        "each device's configuration would become (candidate vs running, then discarded). "
        "Changes nothing. Exit 0 valid, 78 invalid playbook/inventory, 1 device unreachable.",
    )
    parser.add_argument("office", metavar="OFFICE", help="the office handed over (or handed back)")
    parser.add_argument("--to", metavar="ALT", help="the alternate office (default: first in the chain)")
    parser.add_argument(
        "--playbook",
        default="handover",
        metavar="handover|handback|PATH",
        help="playbook name in the playbooks directory, or a file (default: handover)",
    )
    parser.add_argument("--inventory", type=Path, metavar="DIR", help="inventory directory")
    parser.add_argument("--config", type=Path, default=Path("baton.yaml"), metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON report for scripts")
    parser.add_argument("--no-device", action="store_true", help="render only; contact no device")
    parser.set_defaults(func=run)


def _fail(message: str, as_json: bool, code: int = EX_CONFIG) -> int:
    if as_json:
        print(json.dumps({"valid": False, "problems": [message]}, indent=2))
    else:
        print(f"baton plan: {message}", file=sys.stderr)
    return code


def _find_playbook(spec: str, directory: Path) -> Path:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return directory / f"{spec}.yaml"


def run(args: argparse.Namespace) -> int:
    # Adapter logs go to stderr, warnings only: stdout is the report (and --json must parse).
    configure(json=False, level="warning", stream=sys.stderr)
    config_file: Path = args.config
    inventory_dir: Path | None = args.inventory
    playbooks_dir = Path("playbooks")
    policy_window_s = Policy().confirm_window_s
    if config_file.exists():
        reading = read_config(config_file, check_credentials=False)
        if reading.config is None:
            return _fail("; ".join(str(p) for p in errors_in(reading.problems)), args.json)
        inventory_dir = inventory_dir or reading.config.inventory
        playbooks_dir = reading.config.playbooks
        policy_window_s = reading.config.policy.confirm_window_s
    inventory_dir = inventory_dir or Path("inventory")
    inv = read_inventory(inventory_dir, check_credentials=not args.no_device)
    if inv.inventory is None:
        return _fail("; ".join(str(p) for p in errors_in(inv.problems)), args.json)
    inventory: Inventory = inv.inventory

    playbook_path = _find_playbook(args.playbook, playbooks_dir)
    playbook, problems = check_playbook(playbook_path)
    if playbook is None:
        text = "; ".join(str(p) for p in errors_in(problems)) or f"cannot read {playbook_path}"
        return _fail(text, args.json)

    office = inventory.offices.get(args.office)
    if office is None:
        return _fail(f"unknown office '{args.office}'", args.json)
    notes: list[str] = []
    alternate = args.to
    if alternate is None:
        if not office.alternates:
            return _fail(f"office {office.id} has no alternates; name one with --to", args.json)
        alternate = office.alternates[0]
        notes.append(
            f"alternate {alternate} is the first of {office.id}'s chain: offline, office phases are "
            "unknown, so whether it is OPEN was not checked (use --to to choose)"
        )
    run_info = RunInfo(
        f"plan-{int(time.time())}", RunKind(playbook.kind), "dry run (baton plan)", getpass.getuser()
    )
    plan = plan_run(playbook, inventory, office.id, alternate, run_info)
    connectors = None if args.no_device else Connectors(_resolver(inventory_dir))
    result = asyncio.run(_dry_run(plan, connectors, notes, playbook.window_for(policy_window_s)))
    if args.json:
        print(json.dumps(as_dict(result), indent=2, ensure_ascii=False))
    else:
        print(as_text(result))
    if not plan.ok:
        return EX_CONFIG
    return EX_FAILURE if result.unreachable else EX_OK


def _resolver(inventory_dir: Path) -> Any:
    def resolve_ref(ref: SecretRef) -> str:
        return resolve(ref, base_dir=inventory_dir)  # file: references are relative to the inventory

    return resolve_ref


async def _dry_run(plan: Any, connectors: Connectors | None, notes: list[str], window_s: float) -> DryRun:
    result = await dry_run(plan, connectors if plan.ok else None)
    return DryRun(result.plan, result.devices, tuple(notes), window_s)
