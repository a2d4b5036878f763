"""systemd's notify protocol end to end: the daemon talks to a NOTIFY_SOCKET the test binds.

READY=1 (with STATUS=) only after the first poll round, WATCHDOG=1 at least every
WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 and exit 0 on SIGTERM;
EXTEND_TIMEOUT_USEC while recovery runs before READY=1 and while runs drain after STOPPING=1.
"""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E, office_lab
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 1_000_000
TIMEOUT_S = 60.0


@dataclass
class Message:
    fields: dict[str, str]
    at: float  # time.monotonic() at receipt
    log_size: int  # bytes in the daemon's log when it arrived


@dataclass
class NotifySocket:
    """An AF_UNIX datagram socket collecting the daemon's notifications in a thread."""

    path: Path
    log: Path
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            size = self.log.stat().st_size if self.log.exists() else 0
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(Message(fields, time.monotonic(), size))

    def having(self, key: str, value: str | None = None) -> list[Message]:
        return [
            m for m in list(self.messages) if key in m.fields and (value is None or m.fields[key] == value)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    with office_lab(
        tmp_path_factory.mktemp("systemd"),
        offices="busan-jung,busan-haeundae",
        devices_per_office=2,
        start=False,
    ) as running:
        yield running


def test_notify_ready_watchdog_reload_stop(e2e: E2E, tmp_path: Path) -> None:
    """READY after the first round, watchdog pings within WATCHDOG_USEC, reload and stop announced."""
    daemon = e2e.daemon
    notify = NotifySocket(tmp_path / "notify.sock", daemon.log_dir / "daemon-1.log")
    try:
        daemon.env.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        daemon.spawn()
        ready = wait_for(lambda: notify.having("READY", "1"), TIMEOUT_S, "READY=1")[0]
        assert ready.fields.get("STATUS", "").startswith("2 offices:"), ready.fields
        # The first poll round was logged before READY=1 was sent.
        first_round = [e for e in daemon.lines() if e.get("event") == "monitor.first_round_done"]
        assert first_round
        text = daemon.log.read_bytes()[: ready.log_size].decode(errors="replace")
        assert "monitor.first_round_done" in text

        pings = wait_for(
            lambda: (p := [m for m in notify.having("WATCHDOG", "1") if m.at > ready.at])[5:] and p,
            TIMEOUT_S,
            "six WATCHDOG=1 pings",
        )
        gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
        # systemd kills a service whose pings are further apart than WATCHDOG_USEC.
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps

        seen = len(notify.messages)
        daemon.reload()
        wait_for(lambda: daemon.events("reload.done"), TIMEOUT_S, "reload.done")

        def ready_again() -> list[dict[str, str]]:
            fresh = [m.fields for m in notify.messages[seen:]]
            return fresh if any(f.get("READY") == "1" for f in fresh) else []

        after = wait_for(ready_again, TIMEOUT_S, "READY=1 after the reload")
        reloading = next(i for i, f in enumerate(after) if f.get("RELOADING") == "1")
        assert any(f.get("READY") == "1" for f in after[reloading + 1 :]), after
        assert "MONOTONIC_USEC" in after[reloading]

        daemon.signal(signal.SIGTERM)
        assert daemon.process is not None
        assert daemon.process.popen is not None
        assert 0 == daemon.process.popen.wait(timeout=TIMEOUT_S)
        assert notify.having("STOPPING", "1")
    finally:
        daemon.stop()
        notify.close()


def test_recovery_before_ready_and_the_drain_extend_the_timeouts(e2e: E2E, tmp_path: Path) -> None:
    """With an unfinished run in the journal, EXTEND_TIMEOUT_USEC comes before recovery is done
    and before READY=1; a stop with a run in flight extends the stop timeout while it drains."""
    daemon, lab = e2e.daemon, e2e.lab
    office, slow = "busan-jung", "busan-jung-core1"
    daemon.env.pop("NOTIFY_SOCKET", None)
    daemon.env.pop("WATCHDOG_USEC", None)
    daemon.start()
    lab("slow", device=slow, seconds=2.0)  # every NETCONF answer takes 2 s
    try:
        answer = daemon.cli("handover", office, "--reason", "systemd drill", "--yes", "--no-follow", "--json")
        assert 0 == answer.code, answer
        run_id = answer.json()["run_id"]
        wait_for(
            lambda: [s for s in daemon.journal.steps(run_id) if s["device"] == slow],
            TIMEOUT_S,
            "the run's first step on the slow router",
        )
        daemon.kill()
        assert daemon.journal.runs(office)[-1]["result"] is None  # unfinished

        notify = NotifySocket(tmp_path / "notify.sock", daemon.log_dir / f"daemon-{daemon.starts + 1}.log")
        try:
            daemon.env["NOTIFY_SOCKET"] = str(notify.path)
            daemon.spawn()
            ready = wait_for(lambda: notify.having("READY", "1"), TIMEOUT_S, "READY=1")[0]
            extends = [m for m in notify.having("EXTEND_TIMEOUT_USEC") if m.at <= ready.at]
            assert extends, [m.fields for m in notify.messages]
            first = extends[0]
            # Sent before recovery finished the run (and so before it reached a device).
            before = daemon.log.read_bytes()[: first.log_size].decode(errors="replace")
            assert "recovery.done" not in before
            assert 0 < int(first.fields["EXTEND_TIMEOUT_USEC"]) <= 30_000_000, first.fields
            assert daemon.events("recovery.done", run_id=run_id)
            assert daemon.journal.runs(office)[-1]["result"] is not None

            # A run in flight when the stop comes: the stop timeout is extended while it drains.
            phase = wait_for(
                lambda: (p := daemon.office(office)["phase"]) not in ("HANDING_OVER", "HANDING_BACK") and p,
                TIMEOUT_S,
                "the office settled after recovery",
            )
            command = "handback" if phase == "HANDED_OVER" else "handover"
            if phase == "FAILED":
                assert 0 == daemon.cli("ack", office).code
                daemon.wait_phase(office, "OPEN", TIMEOUT_S)
            answer = daemon.cli(command, office, "--reason", "drain", "--yes", "--no-follow", "--json")
            assert 0 == answer.code, answer
            second = answer.json()["run_id"]
            wait_for(
                lambda: [s for s in daemon.journal.steps(second) if s["device"] == slow],
                TIMEOUT_S,
                "the second run's first step on the slow router",
            )
            seen = len(notify.messages)
            daemon.signal(signal.SIGTERM)
            assert daemon.process is not None
            assert daemon.process.popen is not None
            assert 0 == daemon.process.popen.wait(timeout=TIMEOUT_S)
            after = [m.fields for m in notify.messages[seen:]]
            stopping = next(i for i, f in enumerate(after) if f.get("STOPPING") == "1")
            assert any("EXTEND_TIMEOUT_USEC" in f for f in after[stopping + 1 :]), after
            assert daemon.events("runs.draining")
        finally:
            notify.close()
    finally:
        lab("slow", device=slow, seconds=0.0)
        daemon.stop()
