"""Logging: structlog, one JSON object per line on stdout (journald picks it up).

One event name per thing that happened (`handover.step_done`), context as key/values, office,
device and run bound where known. Secrets never reach a log line: keys that name a credential are
masked, whatever the value, as a last line of defence behind code that never logs them.

Libraries that log through the standard `logging` module (ncclient, asyncssh, aiohttp) go
through the same processors: one JSON object per record, an exception as one `exception` field.
They speak at WARNING and above only: what goes wrong with a device is the adapter's error,
reported as the probe's or the step's reason.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# A key *ending* in one of these words names a credential ("api_token", "community");
# "token_count" does not.
_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|community|auth_key|priv_key|private_key|passphrase)s?$", re.I
)
MASK = "***"
# Credentials Baton resolved (`remember_secret`): masked wherever they appear in a log line, in
# Baton's own fields and in what libraries log (aiohttp echoes a bad request's header lines).
_KNOWN: set[str] = set()
_KNOWN_LOCK = threading.Lock()
_KNOWN_SORTED: tuple[str, ...] = ()
MIN_MASKED_LEN = 4  # shorter values would mask ordinary words
# Credentials in the shape of HTTP authentication, whatever their value.
# An Authorization header line whatever its value; a bearer token elsewhere (16+ token characters:
# "no bearer credentials" is a sentence, not a token).
_AUTH_TEXT = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\s*:\s*(?:[a-z]+\s+)?)[^\s'\"\\]+"
    r"|(\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"
)
# Libraries whose own logging is noise next to what Baton reports of the same failure.
LIBRARY_LOGGERS = ("ncclient", "asyncssh")


def mask_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask the value of any key that names a credential."""
    for key in list(event):
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = MASK
    return event


def remember_secret(value: str) -> None:
    """`value` is a credential: no log line will carry it from now on."""
    global _KNOWN_SORTED
    if len(value) < MIN_MASKED_LEN:
        return
    with _KNOWN_LOCK:
        if value not in _KNOWN:
            _KNOWN.add(value)
            _KNOWN_SORTED = tuple(sorted(_KNOWN, key=len, reverse=True))


def mask_text(text: str) -> str:
    """`text` with every known credential and anything in the shape of one replaced by ***."""
    for secret in _KNOWN_SORTED:
        if secret in text:
            text = text.replace(secret, MASK)
    return _AUTH_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + MASK, text)


def mask_values(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask credentials inside every text value (tracebacks included)."""
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = mask_text(value)
    return event


def configure(*, json: bool = True, level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. `json=False` gives readable lines for people (CLI, demo).

    Libraries that log through the standard `logging` module (ncclient, asyncssh, aiohttp) are
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
                mask_values,
            ],
        )
    )
    threshold = logging.getLevelName(level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries speak up only when something is wrong
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_secrets,
            structlog.processors.format_exc_info,
            mask_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A lazy logger: it follows `configure()` even when created at import time."""
    return structlog.get_logger(**context)
