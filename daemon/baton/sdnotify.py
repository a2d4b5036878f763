"""systemd notify protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING) without libsystemd.

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op that returns False, so the daemon runs
the same in a terminal, in tests and under systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@'.
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval_s = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, **fields: str | int) -> bool:
        if not self._addr:
            return False
        msg = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._addr)
                sock.sendall(msg.encode())
        except OSError:
            return False  # systemd went away; nothing useful to do about it here
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready=1, status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1; older ones ignore it.
        return self.notify(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)

    def stopping(self, status: str = "stopping") -> bool:
        # The stop timeout must cover the drain: EXTEND_TIMEOUT_USEC only extends start/stop
        # timeouts while it is being sent, so a long drain re-sends it (`extend_timeout`).
        return self.notify(stopping=1, status=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for `seconds` more before the start (or stop) times out (systemd ≥ 236)."""
        return self.notify(extend_timeout_usec=int(seconds * 1_000_000))
