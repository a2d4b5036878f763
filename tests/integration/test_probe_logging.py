"""A failed NETCONF probe of a dark router is one log event with the reason, not a traceback in pieces.

A listener on 127.0.0.1 accepts the TCP connection and resets it before any SSH banner, as a
lab device does when its office loses power. (With paramiko, its transport thread logged the
failed negotiation and its traceback one line per record: ~10 JSON lines at ERROR for every
probe.) The daemon's log (JSON, level info) has one line for it, `netconf.probe_failed` with the
reason; at level debug no library record is spread over lines, and the probe's own event carries
the traceback as one field.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import structlog

from baton import logs
from baton.adapters.netconf import NetconfProbe
from baton.core.model import Device, NetconfSettings, SecretRef

LIBRARIES = ("paramiko", "ncclient", "asyncssh")


class ResettingListener:
    """Accepts every connection, reads the client's banner and resets it (SO_LINGER 0: an RST)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)  # accept() wakes up to see close()
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="resetting-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(256)  # the client's SSH banner: it now waits for ours
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def dark_router(tmp_path: Path) -> Iterator[Device]:
    key = tmp_path / "id_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(key)
    key.chmod(0o600)
    pinned = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
    listener = ResettingListener()
    try:
        yield Device(
            id="gc-core-1",
            office="gc",
            role="core-router",
            address="127.0.0.1",
            host_key=" ".join(pinned[:2]),
            netconf=NetconfSettings(
                enabled=True,
                port=listener.port,
                username="baton",
                private_key=SecretRef("file", str(key)),
                timeout_s=3.0,
            ),
        )
    finally:
        listener.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() changes the process's logging: put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARIES}
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, library_level in libraries.items():
            logging.getLogger(name).setLevel(library_level)
        structlog.configure(**config)


async def probe_logged(device: Device, level: str) -> tuple[Any, list[dict[str, Any]]]:
    stream = io.StringIO()
    logs.configure(json=True, level=level, stream=stream)
    probe = NetconfProbe(device, resolve=lambda ref: Path(ref.name).read_text())
    observation = await probe.probe()
    logging.getLogger().handlers[0].flush()
    lines = stream.getvalue().splitlines()
    return observation, [json.loads(line) for line in lines]  # every line is one JSON object


@pytest.mark.usefixtures("restore_logging")
async def test_dark_router_probe_is_one_event_with_the_reason(dark_router: Device) -> None:
    """At level info: exactly one line, the probe's event, with the reason; no library lines."""
    observation, events = await probe_logged(dark_router, "info")
    assert not observation.ok
    assert ["netconf.probe_failed"] == [e["event"] for e in events], events
    assert "gc-core-1" == events[0]["device"]
    assert "connection reset by peer before the server's SSH banner" in events[0]["reason"]
    assert "exception" not in events[0]


@pytest.mark.usefixtures("restore_logging")
async def test_at_debug_the_traceback_is_one_field(dark_router: Device) -> None:
    """At level debug: no library record at ERROR, none spread over lines, and the probe's event
    carries its own traceback as one field."""
    _, events = await probe_logged(dark_router, "debug")
    library = [e for e in events if str(e.get("logger", "")).startswith(LIBRARIES)]
    assert [] == [e for e in library if e["level"] in ("error", "critical")]
    assert not any(e["event"].startswith(("Traceback", "  File")) for e in library)
    probe = [e for e in events if e["event"] == "netconf.probe_failed"]
    assert 1 == len(probe)
    assert "Traceback (most recent call last)" in probe[0]["exception"]
