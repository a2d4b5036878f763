"""Secrets never reach a log line: Baton's own fields, libraries' messages and tracebacks alike."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from baton.logs import configure, get_logger, mask_text, remember_secret

TOKEN = "tok-" + "ab12" * 6


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure(json=True, stream=out)
    remember_secret(TOKEN)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []


def test_a_library_echoing_a_request_is_masked(stream: io.StringIO) -> None:
    """What aiohttp logged for a bad request: the header line with the token."""
    logging.getLogger("aiohttp.server").error("Error handling request: b'Authorization : Bearer %s'", TOKEN)
    assert TOKEN not in stream.getvalue()
    assert "Bearer ***" in stream.getvalue()


def test_a_traceback_carrying_a_secret_is_masked(stream: io.StringIO) -> None:
    try:
        raise ValueError(f"bad header {TOKEN}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
        get_logger().exception("api.internal_error")
    assert TOKEN not in stream.getvalue()
    assert 2 == stream.getvalue().count("ValueError: bad header ***")


def test_baton_s_own_fields_are_masked_by_value_too(stream: io.StringIO) -> None:
    get_logger().warning("api.unauthorized", cause=f"token {TOKEN} rejected", path=f"/v1/{TOKEN}")
    assert TOKEN not in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("no bearer credentials", "no bearer credentials"),
        ("Authorization: Basic Zm9vOmJhcg==", "Authorization: Basic ***"),
        ("proxy-authorization: abc", "proxy-authorization: ***"),
        (f"Bearer {'x' * 20}", "Bearer ***"),
        (f"the value {TOKEN} here", "the value *** here"),
    ],
)
def test_mask_text(text: str, masked: str) -> None:
    remember_secret(TOKEN)
    assert masked == mask_text(text)
