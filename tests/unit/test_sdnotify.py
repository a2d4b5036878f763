"""The notify protocol, read back from a real AF_UNIX datagram socket as systemd would."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_ready_sends_ready_and_status(notify_socket: tuple[socket.socket, str]) -> None:
    """READY=1 and STATUS= travel in one datagram."""
    sock, path = notify_socket
    assert Notifier({"NOTIFY_SOCKET": path}).ready("watching 8 offices")
    assert b"READY=1\nSTATUS=watching 8 offices" == sock.recv(4096)


def test_watchdog_interval_is_half_the_timeout(notify_socket: tuple[socket.socket, str]) -> None:
    """WATCHDOG_USEC of 1 s means a ping every 0.5 s, and the ping is WATCHDOG=1."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert 0.5 == notifier.watchdog_interval_s
    assert notifier.watchdog()
    assert b"WATCHDOG=1" == sock.recv(4096)


def test_watchdog_for_another_pid_is_not_ours() -> None:
    """A WATCHDOG_PID naming another process disables the watchdog for this one."""
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval_s is None


def test_without_notify_socket_everything_is_a_no_op() -> None:
    """Outside systemd the notifier reports that nothing was sent."""
    notifier = Notifier({})
    assert (False, False, None) == (notifier.enabled, notifier.ready("x"), notifier.watchdog_interval_s)


def test_stopping_and_reloading(notify_socket: tuple[socket.socket, str]) -> None:
    """STOPPING=1 and RELOADING=1 (with MONOTONIC_USEC) are sent as systemd expects."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.stopping("SIGTERM received")
    assert b"STOPPING=1\nSTATUS=SIGTERM received" == sock.recv(4096)
    notifier.reloading()
    assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
