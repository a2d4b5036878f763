"""The crash-point campaign: a handover and a handback killed at every journal write in turn.

The office mixes what makes recovery hard: a router with :confirmed-commit (1.1), a router
without it (its edits are undone by compensating steps), a router that is powered off (skipped,
pending), and a step outside the candidate that must never run twice (an `announce` on each
router's CLI, undone by `retract`). A first, uninterrupted run counts the journal writes the run
makes (K). Then for k = 1 … K the daemon is started with a hook that SIGKILLs it right after
write k (and, for the writes that close a call to a device, right before it: the call happened,
its result was not journaled), the command is given, the daemon dies, a normal daemon starts on
the same journal, and once it has settled the devices themselves are checked:

* every device forward — running byte for byte as the uninterrupted run leaves it, nothing
  pending — and the office HANDED_OVER (after a handback: OPEN); or every device byte for byte
  as before the run and the office not handed over (after a handback: still handed over);
* no run left unfinished in the journal;
* no `announce` of a run ran twice, and every announce of a run that was rolled back was
  retracted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import PLAYBOOKS, REPO, Daemon, LabProcess, cli, wait_for
from tests.peers.util import PeerProcess, skip_or_fail

pytestmark = pytest.mark.slow

OFFICE = "seoul-geumcheon"
ALTERNATE = "seoul-bangbae"
CORE = f"{OFFICE}-core1"  # :confirmed-commit 1.1
NOCC = f"{OFFICE}-agg1"  # no :confirmed-commit: compensating steps
DARK = f"{OFFICE}-agg2"  # powered off: skipped, pending
ROUTERS = (CORE, NOCC, DARK)
SETTLE_TIMEOUT_S = 90.0
RUNNING = ("HANDING_OVER", "HANDING_BACK")
_EPOCH = re.compile(r"<epoch>\d+</epoch>")


def _with_announce(name: str, kind: str) -> dict[str, Any]:
    playbook: dict[str, Any] = yaml.safe_load((PLAYBOOKS / f"{kind}.yaml").read_text())
    playbook["steps"].insert(
        1,
        {
            "name": "announce",
            "kind": "ssh.command",
            "phase": 0,
            "timeout_s": 10,
            "command": f"announce {kind} {{{{ run.id }}}}",
            "expect": ["announced"],
            "compensate": {"kind": "ssh.command", "command": f"retract {kind} {{{{ run.id }}}}"},
        },
    )
    playbook["name"] = name
    return playbook


class CrashingDaemon(Daemon):
    """The daemon under `tests.e2e.crashing_daemon`: dies at the chosen journal write."""

    def spawn(self) -> None:
        self.starts += 1
        log = self.log_dir / f"daemon-{self.starts}.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{REPO}:{REPO / 'daemon'}", **self.env}
        argv = [sys.executable, "-m", "tests.e2e.crashing_daemon", str(self.config_path)]
        self.process = PeerProcess("crashing baton daemon", argv, log, env=env)
        self.process.spawn()

    def exited(self) -> bool:
        return self.process is not None and not self.process.is_running()


@dataclass
class Site:
    lab: LabProcess
    base: Path
    config: dict[str, Any]
    original: dict[str, str]  # device -> running config before any run
    handed: dict[str, str] | None = None  # device -> running config after an uninterrupted handover
    handed_journal: Path | None = None  # a journal of that handover, for the handback campaign
    back: dict[str, str] | None = None  # device -> running config after an uninterrupted handback

    def show(self, device: str) -> dict[str, Any]:
        """What the device holds, without the fencing epoch: an undo keeps the leaf (a device's
        epoch never goes down) while a cancelled confirmed commit drops it with the run's edits;
        either way the office's configuration is what it was (tests/integration/test_fencing.py
        asserts on the epoch itself)."""
        shown: dict[str, Any] = self.lab("show", device=device)
        shown["running"] = _EPOCH.sub("", shown["running"])
        return shown

    def reset(self, state: str) -> None:
        """Every router as before any run ("original") or as handed over ("handed")."""
        for device in ROUTERS:
            if state == "handed" and self.handed is not None and device != DARK:
                self.lab("load_config", device=device, running=self.handed[device])
            else:
                self.lab("reset_config", device=device)
        self.lab("set_confirmed_commit", device=NOCC, on=False)

    def config_for(self, journal: Path) -> Path:
        path = self.lab.dir / f"baton-{journal.stem}.yaml"  # relative paths start at the lab's
        path.write_text(yaml.safe_dump({**self.config, "journal_path": str(journal)}, sort_keys=False))
        return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("campaign")
    lab = LabProcess(base / "lab", f"{OFFICE},{ALTERNATE}", 6)
    lab.start()
    try:
        lab.configure()  # (one router dark of three critical ones: DEGRADED, never closed on its own)
        config = yaml.safe_load(lab.config_path.read_text())
        playbooks = base / "playbooks"
        playbooks.mkdir()
        for kind in ("handover", "handback"):
            name = f"lab-{kind}"
            (playbooks / f"{kind}.yaml").write_text(
                yaml.safe_dump(_with_announce(name, kind), sort_keys=False)
            )
        config["playbooks"] = str(playbooks)
        config["handover_playbook"], config["handback_playbook"] = "lab-handover", "lab-handback"
        lab("device_down", device=DARK)
        lab("set_confirmed_commit", device=NOCC, on=False)
        original = {d: lab("show", device=d)["running"] for d in ROUTERS}
        yield Site(lab, base, config, original)
    finally:
        lab.stop()


def _settle(daemon: Daemon, journal: Path) -> dict[str, Any]:
    """Until recovery is done and the office is not in a running phase, twice in a row."""
    seen: list[str] = []

    def settled() -> dict[str, Any] | None:
        status = cli(daemon.socket, "status", "--json")
        if status.code != 0:
            return None
        office = daemon.office(OFFICE)
        runs = status.json().get("daemon", {}).get("runs_in_progress", [])
        unfinished = daemon.journal.rows("SELECT id FROM runs WHERE finished IS NULL")
        if office["phase"] in RUNNING or runs or unfinished:
            seen.clear()
            return None
        seen.append(office["phase"])
        return office if len(seen) >= 2 else None

    return wait_for(settled, SETTLE_TIMEOUT_S, "the office settled", interval_s=0.25)


def _check(site: Site, kind: str, office: dict[str, Any], daemon: Daemon) -> str:
    """The invariant on the devices themselves; returns which way the office went."""
    shown = {d: site.show(d) for d in ROUTERS}
    assert site.handed is not None
    assert not any(s["confirm_pending"] for s in shown.values()), "a confirmed commit left pending"
    assert shown[DARK]["running"] == site.original[DARK], "the powered-off router was touched"
    live = (CORE, NOCC)
    # Forward is what the uninterrupted run leaves; back is exactly what was there before it.
    before, after = (site.original, site.handed) if kind == "handover" else (site.handed, site.back)
    assert after is not None
    handed = all(shown[d]["running"] == after[d] for d in live)
    original = all(shown[d]["running"] == before[d] for d in live)
    assert handed or original, f"mixed: {[(d, shown[d]['running']) for d in live]}"
    done = "HANDED_OVER" if kind == "handover" else "OPEN"
    assert (done == office["phase"]) == handed, (office["phase"], office["reason"])
    for device in live:
        history = shown[device]["history"]
        for line, n in Counter(h for h in history if h.startswith("announce")).items():
            assert n == 1, f"{device} ran '{line}' {n} times: {history}"
    unfinished = daemon.journal.rows("SELECT id FROM runs WHERE finished IS NULL")
    assert [] == unfinished
    went = "handed" if handed else "original"
    # A run that did not leave its change in place retracted every announce it made (a retract
    # may also come for an announce a crash caught at intent: compensations are safe to repeat).
    for run in daemon.journal.rows("SELECT id, result FROM runs WHERE result != 'ok'"):
        for device in live:
            history = shown[device]["history"]
            announced = [h for h in history if h.startswith("announce") and h.endswith(run["id"])]
            retracted = [h for h in history if h.startswith("retract") and h.endswith(run["id"])]
            assert len(announced) <= len(retracted), (run, device, history)
    return went


def _command(daemon: Daemon, kind: str) -> None:
    args = (
        ("handover", OFFICE, "--reason", "campaign")
        if kind == "handover"
        else ("handback", OFFICE, "--reason", "campaign")
    )
    cli(daemon.socket, *args, "--yes", "--no-follow")  # may find the daemon already dead


def _start(daemon: Daemon, phase: str) -> None:
    daemon.start(
        offices_ready=lambda offices: any(o["id"] == OFFICE and o["phase"] == phase for o in offices)
    )


def _count(site: Site, kind: str) -> list[str]:
    """An uninterrupted run under the counting hook: the labels of its journal writes."""
    journal = site.base / f"count-{kind}.sqlite3"
    if kind == "handback":
        assert site.handed_journal is not None
        shutil.copy(site.handed_journal, journal)
        site.reset("handed")
    else:
        site.reset("original")
    writes = site.base / f"writes-{kind}.log"
    daemon = CrashingDaemon(site.config_for(journal), site.base, env={"BATON_WRITES_LOG": str(writes)})
    try:
        _start(daemon, "OPEN" if kind == "handover" else "HANDED_OVER")
        daemon.signal(signal.SIGUSR1)
        _command(daemon, kind)
        office = _settle(daemon, journal)
        assert office["phase"] == ("HANDED_OVER" if kind == "handover" else "OPEN"), office
    finally:
        daemon.stop()
    if kind == "handover":
        site.handed = {d: site.show(d)["running"] for d in ROUTERS}
        site.handed_journal = journal
    else:
        site.back = {d: site.show(d)["running"] for d in ROUTERS}
    labels = [line.split()[1] for line in writes.read_text().splitlines()]
    # The run's writes end with its result and the decision that takes it in; what follows
    # (the stop) is not the run's.
    end = max(i for i, label in enumerate(labels) if label == "finish_run") + 1
    if end < len(labels) and labels[end] == "record_decision":
        end += 1
    return labels[:end]


def _points(labels: list[str]) -> list[str]:
    """Every write's "after", and "before" where a device call lies between intent and result."""
    points = [f"after:{n}" for n in range(1, len(labels) + 1)]
    points += [f"before:{n}" for n, label in enumerate(labels, 1) if label == "step_result"]
    return points


def _campaign(site: Site, kind: str, record_property: Callable[[str, object], None]) -> None:
    labels = _count(site, kind)
    points = _points(labels)
    print(f"\n{kind} campaign: K = {len(labels)} journal writes, {len(points)} crash points")
    outcomes: Counter[str] = Counter()
    for point in points:
        journal = site.base / f"{kind}-{point.replace(':', '-')}.sqlite3"
        if kind == "handback":
            assert site.handed_journal is not None
            shutil.copy(site.handed_journal, journal)
            site.reset("handed")
        else:
            site.reset("original")
        config = site.config_for(journal)
        crashing = CrashingDaemon(config, site.base, env={"BATON_CRASH_AT": point})
        with contextlib.ExitStack() as stack:
            stack.callback(crashing.stop)
            _start(crashing, "OPEN" if kind == "handover" else "HANDED_OVER")
            crashing.signal(signal.SIGUSR1)
            _command(crashing, kind)
            wait_for(crashing.exited, SETTLE_TIMEOUT_S, f"the daemon to die at {point}")
        daemon = Daemon(config, site.base)
        try:
            daemon.start(offices_ready=lambda offices: bool(offices))
            office = _settle(daemon, journal)
            outcomes[f"{_check(site, kind, office, daemon)} {office['phase']}"] += 1
        except AssertionError as exc:
            raise AssertionError(f"{kind} killed at {point}: {exc}") from exc
        finally:
            daemon.stop()
    print(f"{kind} campaign outcomes: {dict(outcomes)}")
    record_property(
        "figure",
        f"{kind} crash campaign: K = {len(labels)} journal writes, {len(points)} crash points, "
        f"outcomes {dict(sorted(outcomes.items()))}",
    )


def test_a_handover_killed_at_every_journal_write(
    site: Site, record_property: Callable[[str, object], None]
) -> None:
    _campaign(site, "handover", record_property)


def test_a_handback_killed_at_every_journal_write(
    site: Site, record_property: Callable[[str, object], None]
) -> None:
    if site.handed_journal is None:
        _count(site, "handover")
    _campaign(site, "handback", record_property)


# --- faults that are not crashes ---------------------------------------------------------------


def _run_with(
    site: Site,
    tag: str,
    inject: Any,
    *,
    expect_exit: bool = False,
    where: Path | None = None,
    before_restart: Callable[[Daemon], None] | None = None,
) -> dict[str, Any]:
    """A handover with a fault injected; the office settled (after a restart if the daemon
    stopped itself); the invariant checked. Returns the office."""
    journal = (where or site.base) / f"fault-{tag}.sqlite3"
    site.reset("original")
    config = site.config_for(journal)
    daemon = Daemon(config, site.base)
    try:
        _start(daemon, "OPEN")
        inject(daemon, journal)
        _command(daemon, "handover")
        if expect_exit:
            wait_for(lambda: not daemon.running, SETTLE_TIMEOUT_S, "the daemon to stop itself")
            assert 74 == daemon.process.popen.returncode  # type: ignore[union-attr]
            if before_restart is not None:
                before_restart(daemon)
            daemon.start(offices_ready=lambda offices: bool(offices))
        office = _settle(daemon, journal)
        _check(site, "handover", office, daemon)
        return office
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    "fault",
    [
        "drop_after_commit",  # the commit is applied, the session closes without a reply
        "garbage_reply",  # the commit is applied, its reply is not XML
        "endless_reply",  # the commit is applied, its reply never ends
        "no_reply",  # the commit is applied, no reply ever comes
    ],
)
def test_a_lost_commit_reply_is_treated_as_applied(site: Site, fault: str) -> None:
    """The outcome of the commit is unknown to Baton: the devices end all forward or all back."""
    if site.handed is None:
        _count(site, "handover")

    def inject(_daemon: Daemon, _journal: Path) -> None:
        args: dict[str, Any] = (
            {"device": CORE} if fault == "drop_after_commit" else {"device": CORE, "rpc": "commit"}
        )
        site.lab(fault, **args)

    office = _run_with(site, fault, inject)
    assert office["phase"] in ("HANDED_OVER", "FAILED")


def test_a_journal_that_cannot_be_written_stops_the_daemon_and_nothing_is_lost(site: Site) -> None:
    """The journal is locked by another process for longer than the write timeout: the daemon
    retries, then stops (exit 74); restarted, it recovers and the devices are consistent."""
    if site.handed is None:
        _count(site, "handover")
    import sqlite3
    import threading

    release = threading.Event()
    released = threading.Event()

    def inject(daemon: Daemon, journal: Path) -> None:
        process = daemon.process
        assert process is not None

        def hold() -> None:
            conn = sqlite3.connect(journal, timeout=30)
            try:
                wait_for(
                    lambda: daemon.journal.rows("SELECT id FROM steps LIMIT 1"), SETTLE_TIMEOUT_S, "a step"
                )
                conn.execute("BEGIN EXCLUSIVE")
                # Held until *this* process has given up and stopped (not the restarted one), or
                # the test ends.
                deadline = time.monotonic() + 90
                while process.is_running() and not release.is_set() and time.monotonic() < deadline:
                    time.sleep(0.1)
                conn.rollback()
            finally:
                conn.close()
                released.set()

        threading.Thread(target=hold, daemon=True).start()

    def restarted_after_the_lock(daemon: Daemon) -> None:
        assert released.wait(SETTLE_TIMEOUT_S), "the lock was never released"

    try:
        _run_with(site, "journal-locked", inject, expect_exit=True, before_restart=restarted_after_the_lock)
    finally:
        release.set()


def test_a_journal_on_a_full_disk_stops_the_daemon_and_nothing_is_lost(site: Site) -> None:
    """The journal's filesystem (a 4 MiB tmpfs) fills up during the handover: writes fail with
    SQLITE_FULL, the daemon retries, then stops (exit 74); with space again it restarts, recovers
    and the devices are consistent."""
    if site.handed is None:
        _count(site, "handover")
    disk = site.base / "small-disk"
    disk.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs for the full-disk test (needs root): {mounted.stderr.strip()}")
    filler = disk / "filler"
    freed = threading.Event()

    def inject(daemon: Daemon, journal: Path) -> None:
        process = daemon.process
        assert process is not None

        def fill() -> None:
            try:
                wait_for(
                    lambda: daemon.journal.rows("SELECT id FROM steps LIMIT 1"), SETTLE_TIMEOUT_S, "a step"
                )
                with contextlib.suppress(OSError), filler.open("wb") as out:
                    while True:  # until ENOSPC
                        out.write(b"\0" * 65536)
                        out.flush()
                # Space again once *this* process has given up (not the restarted one: the
                # restart waits for the space), or after 90 s.
                deadline = time.monotonic() + 90
                while process.is_running() and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                filler.unlink(missing_ok=True)
                freed.set()

        threading.Thread(target=fill, daemon=True).start()

    def restarted_with_space_again(daemon: Daemon) -> None:
        assert freed.wait(SETTLE_TIMEOUT_S), "the disk was never freed"

    try:
        _run_with(
            site, "disk-full", inject, expect_exit=True, where=disk, before_restart=restarted_with_space_again
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
