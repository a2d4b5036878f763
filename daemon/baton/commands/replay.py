"""`baton replay`: re-derive every journaled decision offline and say where any differs.

Reads the journal (from `--journal`, or the `journal_path` of `--config`), steps each journaled
input through the core with the policy in force then, and prints each decision with its reason
(`--office`, `--since` narrow what is printed; the replay itself always starts at the first
row). Exit 0 when every decision is reproduced, 1 when one differs, 78 when the journal cannot
be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from baton.cli import EX_CONFIG, EX_FAILURE, EX_OK
from baton.journal import Journal, JournalError
from baton.tables import safe_text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="re-derive every journaled decision offline; flag any that differs",
        description="Step every input the journal kept through the decision core again and "
        "compare each decision with what was journaled. Changes nothing.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--journal", type=Path, metavar="FILE", help="the journal (SQLite) to replay")
    where.add_argument("--config", type=Path, metavar="FILE", help="baton.yaml whose journal_path to replay")
    parser.add_argument("--office", metavar="OFFICE", help="print only the decisions about this office")
    parser.add_argument("--since", metavar="TIME", help="print only decisions from TIME (ISO 8601 or epoch)")
    parser.add_argument("--json", action="store_true", help="one JSON object per decision")
    parser.set_defaults(func=run)


def _journal_path(args: argparse.Namespace) -> Path:
    if args.journal is not None:
        return Path(args.journal)
    import yaml  # only for --config

    config = Path(args.config or "baton.yaml")
    data = yaml.safe_load(config.read_text())
    path = Path(str(data.get("journal_path", "/var/lib/baton/journal.sqlite3")))
    return path if path.is_absolute() else config.parent / path


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()


def run(args: argparse.Namespace) -> int:
    from baton.replay import replay  # the core only when asked

    try:
        path = _journal_path(args)
        since = _since(args.since)
    except (OSError, ValueError) as exc:
        print(f"baton replay: {exc}")
        return EX_CONFIG
    if not path.exists():
        print(f"baton replay: journal {path} does not exist")
        return EX_CONFIG
    try:
        journal = Journal.open(path)
    except JournalError as exc:
        print(f"baton replay: {exc}")
        return EX_CONFIG
    total = differing = 0
    with journal:
        for item in replay(journal):
            total += 1
            differing += bool(item.differences)
            if args.office is not None and args.office not in item.offices:
                continue
            if since is not None and item.record.at < since:
                continue
            when = dt.datetime.fromtimestamp(item.record.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            if args.json:
                print(
                    json.dumps(
                        {
                            "at": item.record.at,
                            "trigger": item.trigger,
                            "offices": list(item.offices),
                            "reason": item.reason,
                            "differences": list(item.differences),
                        }
                    )
                )
                continue
            offices = ",".join(item.offices) or "-"
            print(f"{when}Z  {item.trigger:<17} {offices:<20} {safe_text(item.reason)}")
            for difference in item.differences:
                print(f"    DIFFERS: {safe_text(difference)}")
    summary = f"{total} decision(s) replayed, {differing} differ"
    if not args.json:
        print(summary)
    return EX_FAILURE if differing else EX_OK
