"""`baton validate`: check offline everything the daemon checks at start, reporting every problem at once.

That is `baton.loading.check_everything`: the inventory, baton.yaml and the playbooks, each and
together, and every office's handover and handback rendered against every alternate it could get.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from baton.cli import EX_CONFIG, EX_OK
from baton.loading import Checked, check_everything
from baton.yamlsource import errors_in


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check the inventory, baton.yaml and playbooks as the daemon would",
        description="Check the inventory, the daemon configuration and the playbooks as the daemon "
        "does at start, and render every office's handover and handback for every alternate in "
        "its chain, reporting every problem with file:line. Exit 0 when valid, 78 when not.",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        metavar="DIR",
        help="inventory directory (default: the one baton.yaml names, else ./inventory)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("baton.yaml"),
        metavar="FILE",
        help="daemon configuration (default: baton.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report for scripts")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = check_everything(args.config, args.inventory)
    if args.json:
        print(json.dumps(report(result, args.config), indent=2, ensure_ascii=False))
    else:
        for problem in result.problems:
            print(problem)
        print(summary(result, args.config))
    return EX_OK if result.is_valid else EX_CONFIG


def summary(result: Checked, config_file: Path) -> str:
    errors = len(errors_in(result.problems))
    warnings = len(result.problems) - errors
    if errors:
        noun = "problem" if errors == 1 else "problems"
        extra = f" (and {warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
        return f"{errors} {noun} found{extra}"
    inventory = result.inventory
    assert inventory is not None  # no errors means it was built
    playbooks = result.playbooks or {}
    text = (
        f"{result.inventory_dir}/ valid: {len(inventory.offices)} offices, {len(inventory.devices)} devices; "
        f"{config_file} valid; {len(playbooks)} playbook{'s' if len(playbooks) != 1 else ''}, "
        "every handover and handback renders"
    )
    return f"{text} ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else text


def report(result: Checked, config_file: Path) -> dict[str, Any]:
    inventory = result.inventory
    return {
        "valid": result.is_valid,
        "inventory": str(result.inventory_dir),
        "config": str(config_file),
        "offices": len(inventory.offices) if inventory else None,
        "devices": len(inventory.devices) if inventory else None,
        "playbooks": sorted(result.playbooks) if result.playbooks is not None else None,
        "errors": len(errors_in(result.problems)),
        "warnings": len(result.problems) - len(errors_in(result.problems)),
        "problems": [problem.as_dict() for problem in result.problems],
    }
