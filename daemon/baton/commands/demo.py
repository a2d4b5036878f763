"""`baton demo`: Baton's main job on the built-in lab, in about a minute (see `baton.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from baton.cli import EX_USAGE


def _offices(text: str) -> int:
    from baton.demo import MAX_OFFICES, MIN_OFFICES

    if not text.isdigit() or not MIN_OFFICES <= int(text) <= MAX_OFFICES:
        raise argparse.ArgumentTypeError(f"expected a number of offices from {MIN_OFFICES} to {MAX_OFFICES}")
    return int(text)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run Baton's main job on a simulated network, explained (about a minute)",
        description="Start a lab of simulated offices and the Baton daemon watching them; power an office "
        "off and watch it detected and handed over to its alternate; declare another closed and hand it "
        "back. Everything runs on loopback and is stopped at the end (unless --keep).",
    )
    parser.add_argument(
        "--dir", type=Path, help="where the lab, journal and logs go (default: a new temporary directory)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the lab and the daemon running at the end, to explore"
    )
    parser.add_argument(
        "--offices", type=_offices, default=4, metavar="N", help="offices in the lab, 4 to 8 (default 4)"
    )
    parser.add_argument("--fast", action="store_true", help="no pauses for reading; a shorter hold-down")
    parser.add_argument(
        "--playbooks", type=Path, help="directory with the lab playbooks (default: the source tree's)"
    )
    parser.add_argument(
        "--vantages",
        type=int,
        choices=(1, 3),
        default=1,
        help="3: the scene with three Baton vantages over a local etcd cluster (needs etcd-server): the "
        "leader dies mid-handover and another finishes it; an uplink cut seen by one vantage closes "
        "nothing (default 1: the main demo)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from baton.demo import DemoOptions, run_demo

    if args.dir is not None and args.dir.exists() and not args.dir.is_dir():
        print(f"baton demo: --dir {args.dir} is not a directory", flush=True)
        return EX_USAGE
    options = DemoOptions(
        dir=args.dir,
        keep=args.keep,
        offices=args.offices,
        fast=args.fast,
        playbooks=args.playbooks,
        vantages=args.vantages,
    )
    if options.vantages == 3:
        from baton.demo_vantages import run_vantages_demo

        return run_vantages_demo(options)
    return run_demo(options)
