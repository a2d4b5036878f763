"""Logging: structlog, one JSON object per line on stdout (journald picks it up).

One event name per thing that happened (`handover.step_done`), context as key/values, office,
device and run bound where known. Secrets never reach a log line: keys that name a credential are
masked, whatever the value, as a last line of defence behind code that never logs them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# A key *ending* in one of these words names a credential ("api_token", "community");
# "token_count" does not.
_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|community|auth_key|priv_key|private_key|passphrase)s?$", re.I
)
MASK = "***"


def mask_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask the value of any key that names a credential."""
    for key in list(event):
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = MASK
    return event


def configure(*, json: bool = True, level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. `json=False` gives readable lines for people (CLI, demo).

    Libraries that log through the standard `logging` module (paramiko, asyncssh, aiohttp) are
    rendered by the same processors, so the daemon's output stays one JSON object per line.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                mask_secrets,
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries speak up only when something is wrong
    # paramiko logs every failed SSH negotiation (a powered-off device) as an ERROR with a
    # traceback; the adapters already report those as probe failures.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A lazy logger: it follows `configure()` even when created at import time."""
    return structlog.get_logger(**context)
