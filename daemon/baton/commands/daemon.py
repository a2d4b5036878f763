"""`baton daemon`: what systemd starts."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from baton import logs


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "daemon",
        help="run the Baton service (what systemd starts)",
        description="Watch every office, decide closures, run handovers and handbacks, serve the API.",
    )
    parser.add_argument(
        "--config", type=Path, default=Path("/etc/baton/baton.yaml"), help="baton.yaml to run with"
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="json for journald (default), console for people",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from baton.service import Service

    logs.configure(json=args.log_format == "json", level=args.log_level)
    return asyncio.run(Service(args.config).run())
