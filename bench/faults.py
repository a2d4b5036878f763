"""SIGKILL the daemon at random moments of a 200-device handover; after each kill, check the lab.

    .venv/bin/python bench/faults.py                 # 100 kills (about 40 min on 2 cores)
    .venv/bin/python bench/faults.py --runs 5        # quick look
    options: --devices 200 --no-cc-every 10 --concurrency 50 --seed S --workdir DIR --keep

What it does. One `baton lab run` process for the whole bench (`tests/e2e/harness.py`'s
LabProcess): the closed office `seoul-geumcheon` and its alternate `seoul-bangbae`, N devices
each. Every device of the closed office is a handover target (the lab's playbooks with their
targets widened to the whole office, concurrency 50, a 900 s confirmed-commit window so the run
fits its budget; the OLTs get NETCONF), and every `--no-cc-every`-th device has no
`:confirmed-commit` (its edits are undone by the playbook's compensating steps). The daemon is a
real `baton daemon` process on its own journal (the harness's Daemon).

First an uninterrupted handover gives the reference: what every device's running config is
after it, and how long the run takes from the command to its end (T). Then, `--runs` times:
every device is reset to the lab's initial config, a daemon starts on a fresh journal and waits
for its first poll round, `baton handover` is given, and after a delay drawn uniformly from
[0, 1.1 T] the daemon's process group gets SIGKILL. A daemon is started again on the same
journal and is left until it has settled (the API answers, no run unfinished in the journal or
in progress, the office in no running phase, twice in a row 0.25 s apart). Recovery time is from
that restart to settled. Then each device is read in the lab itself (`show`) and checked:

* consistent = every device's running config byte for byte (the fencing epoch leaf aside) as
  the reference handover left it,
  none with a confirmed commit pending, and the office HANDED_OVER; or every device byte for
  byte as before the run and the office not HANDED_OVER;
* and no run unfinished in the journal.

Every process started here (the lab, each daemon) is stopped at the end, also on Ctrl-C or
failure; everything is on 127.0.0.0/8. An inconsistent run keeps its journal and logs in the
work directory and says where.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import resource
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(1, str(ROOT))  # the e2e harness: how the lab and the daemon are run as processes

from tests.e2e.harness import PLAYBOOKS, Daemon, LabProcess, cli, free_port, wait_for  # noqa: E402

from baton.loading import load_all  # noqa: E402
from baton.yamlsource import ConfigError  # noqa: E402

OFFICE, ALTERNATE = "seoul-geumcheon", "seoul-bangbae"
RUNNING = ("HANDING_OVER", "HANDING_BACK")
_EPOCH = re.compile(r"<epoch>\d+</epoch>")
DEFAULT_WORKDIR = Path("/var/tmp/baton-bench/faults")
SETTLE_TIMEOUT_S = 300.0
START_TIMEOUT_S = 120.0
# The daemon's policy: operator-declared closures only (nothing here goes DOWN), a window the
# 200-device run fits in with its worst-case timeouts (the runner refuses one it cannot fit).
POLICY: dict[str, Any] = {
    "poll_interval_s": 10.0,
    "failures_to_down": 3,
    "hold_down_s": 30.0,
    "confirm_window_s": 900.0,
    "run_timeout_s": 600.0,
    "anti_flap_block_s": 3600.0,
    "handback_hold_s": 600.0,
}
WINDOW_S = 900.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the site --------------------------------------------------------------------------------


def widen_playbook(kind: str, concurrency: int) -> dict[str, Any]:
    """The lab's playbook of `kind` with every device of the office as a target."""
    playbook: dict[str, Any] = yaml.safe_load((PLAYBOOKS / f"{kind}.yaml").read_text())
    playbook["targets"] = {"office": "closed"}
    playbook["concurrency"] = concurrency
    playbook["confirm_window_s"] = WINDOW_S
    return playbook


def prepare(lab: LabProcess, base: Path, concurrency: int) -> dict[str, Any]:
    """Every device of the closed office managed over NETCONF; the widened playbooks; the
    daemon's baton.yaml (returned as a dict: each run writes it with its own journal)."""
    devices_file = lab.dir / "inventory" / "devices" / f"{OFFICE}.yaml"
    doc = yaml.safe_load(devices_file.read_text())
    for entry in doc["devices"]:
        entry["netconf"] = {"enabled": True}
    devices_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    playbooks = base / "playbooks"
    playbooks.mkdir(exist_ok=True)
    for kind in ("handover", "handback"):
        (playbooks / f"{kind}.yaml").write_text(
            yaml.safe_dump(widen_playbook(kind, concurrency), sort_keys=False)
        )
    config: dict[str, Any] = yaml.safe_load(lab.config_path.read_text())
    config["playbooks"] = str(playbooks)
    config["api"] = {"unix_socket": str(base / "baton.sock")}
    config["metrics_listen"] = f"127.0.0.1:{free_port()}"
    config["policy"] = dict(POLICY)
    return config


@dataclass
class Site:
    lab: LabProcess
    base: Path
    config: dict[str, Any]
    devices: list[str]
    original: dict[str, str]
    handed: dict[str, str] | None = None

    def config_for(self, journal: Path) -> Path:
        path = self.lab.dir / f"baton-{journal.stem}.yaml"  # relative paths start at the lab's dir
        path.write_text(yaml.safe_dump({**self.config, "journal_path": str(journal)}, sort_keys=False))
        return path

    def reset(self) -> None:
        for device in self.devices:
            self.lab("reset_config", device=device)

    def show_all(self) -> dict[str, dict[str, Any]]:
        """Every device as the lab shows it, without the fencing epoch leaf (an undo keeps it:
        a device's epoch never goes down; a cancelled confirmed commit drops it)."""
        shown = {d: self.lab("show", device=d) for d in self.devices}
        for s in shown.values():
            s["running"] = _EPOCH.sub("", s["running"])
        return shown


@contextlib.contextmanager
def running_lab(base: Path, devices: int) -> Iterator[LabProcess]:
    lab = LabProcess(base / "lab", f"{OFFICE},{ALTERNATE}", devices)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


# --- one daemon ------------------------------------------------------------------------------


def start_fresh(site: Site, journal: Path, log_dir: Path) -> Daemon:
    daemon = Daemon(site.config_for(journal), log_dir)
    daemon.start(
        offices_ready=lambda offices: any(o["id"] == OFFICE and o["phase"] == "OPEN" for o in offices)
    )
    return daemon


def handover(daemon: Daemon) -> str | None:
    """`baton handover`: the run id (None if the daemon died first or refused)."""
    result = cli(
        daemon.socket, "handover", OFFICE, "--reason", "fault bench", "--yes", "--no-follow", "--json"
    )
    if result.code != 0:
        return None
    run_id = result.json().get("run_id")
    return str(run_id) if run_id else None


def settled(daemon: Daemon) -> dict[str, Any]:
    """Wait until recovery is done and nothing runs, twice in a row; the office."""
    seen: list[str] = []

    def check() -> dict[str, Any] | None:
        if not daemon.running:
            code = daemon.process.popen.returncode if daemon.process and daemon.process.popen else None
            raise AssertionError(f"the daemon exited ({code}): {daemon.log}")
        status = cli(daemon.socket, "status", "--json")
        if status.code != 0:
            seen.clear()
            return None
        offices = cli(daemon.socket, "offices", "--json")
        if offices.code != 0:
            seen.clear()
            return None
        office = next(o for o in offices.json()["offices"] if o["id"] == OFFICE)
        in_progress = status.json().get("daemon", {}).get("runs_in_progress", [])
        unfinished = daemon.journal.rows("SELECT id FROM runs WHERE finished IS NULL")
        if office["phase"] in RUNNING or in_progress or unfinished:
            seen.clear()
            return None
        seen.append(office["phase"])
        return office if len(seen) >= 2 else None

    return wait_for(check, SETTLE_TIMEOUT_S, "the office settled", interval_s=0.25)


def check(site: Site, office: dict[str, Any], daemon: Daemon) -> tuple[bool, str]:
    """(consistent, which way or what is wrong), read on the devices themselves."""
    assert site.handed is not None
    shown = site.show_all()
    pending = [d for d, s in shown.items() if s["confirm_pending"]]
    forward = [d for d, s in shown.items() if s["running"] == site.handed[d]]
    back = [d for d, s in shown.items() if s["running"] == site.original[d]]
    unfinished = daemon.journal.rows("SELECT id FROM runs WHERE finished IS NULL")
    n = len(site.devices)
    if pending:
        return False, f"{len(pending)} device(s) with a confirmed commit pending, e.g. {pending[0]}"
    if unfinished:
        return False, f"run(s) left unfinished: {[r['id'] for r in unfinished]}"
    if len(forward) == n:
        if office["phase"] != "HANDED_OVER":
            return False, f"every device handed over but the office is {office['phase']}"
        return True, "handed over"
    if len(back) == n:
        if office["phase"] == "HANDED_OVER":
            return False, "every device as before but the office is HANDED_OVER"
        return True, f"as before ({office['phase']})"
    return (
        False,
        f"mixed: {len(forward)} handed over, {len(back)} as before, {n - len(forward) - len(back)} other",
    )


def kill_point(daemon: Daemon, run_id: str | None) -> str:
    """Where the kill landed, from the journal: how far the run had got."""
    if run_id is None:
        return "before the decision"
    runs = daemon.journal.rows("SELECT * FROM runs WHERE id = ?", run_id)
    if not runs:
        return "before the decision"
    run = runs[0]
    if run["finished"] is not None:
        return "after the run finished"
    steps = daemon.journal.rows("SELECT step_name, status FROM steps WHERE run_id = ?", run_id)
    if not steps:
        return "decided, no step yet"
    if run["decision"] == "forward":
        return "decided forward (confirming)"
    if run["decision"] == "back":
        return "rolling back"
    if any(s["step_name"] == "commit" for s in steps):
        return "committing / verifying"
    return "editing candidates"


# --- the bench -------------------------------------------------------------------------------


@dataclass
class Outcome:
    n: int
    delay_s: float
    point: str
    consistent: bool
    what: str
    recovery_s: float
    run_result: str | None


def reference(site: Site, work: Path) -> float:
    """An uninterrupted handover: the devices' configs after it, and its duration (T)."""
    site.reset()
    journal = work / "reference.sqlite3"
    daemon = start_fresh(site, journal, work)
    try:
        started = time.monotonic()
        run_id = handover(daemon)
        assert run_id is not None, "the reference handover was refused"
        office = settled(daemon)
        took = time.monotonic() - started
        run = daemon.journal.rows("SELECT result, started, finished FROM runs WHERE id = ?", run_id)[0]
        assert run["result"] == "ok", run
        assert office["phase"] == "HANDED_OVER", office
        shown = site.show_all()
        assert not any(s["confirm_pending"] for s in shown.values())
        site.handed = {d: s["running"] for d, s in shown.items()}
        changed = sum(1 for d in site.devices if site.handed[d] != site.original[d])
        assert changed == len(site.devices), f"only {changed} devices changed by the reference run"
        log(
            f"reference handover: {len(site.devices)} devices, run {run['finished'] - run['started']:.2f} s "
            f"(command to settled {took:.2f} s)"
        )
        return float(run["finished"] - run["started"])
    finally:
        daemon.stop()


def one(site: Site, work: Path, n: int, delay_s: float, keep: bool = False) -> Outcome:
    site.reset()
    journal = work / f"run-{n:03d}.sqlite3"
    logs = work / f"run-{n:03d}"
    logs.mkdir(exist_ok=True)
    daemon = start_fresh(site, journal, logs)
    try:
        commanded = time.monotonic()
        run_id = handover(daemon)
        time.sleep(max(0.0, commanded + delay_s - time.monotonic()))
        daemon.kill()
        point = kill_point(daemon, run_id)
        restarted = time.monotonic()
        daemon.spawn()
        try:
            office = settled(daemon)
        except AssertionError as exc:
            office = None
            consistent, what = False, f"did not settle: {exc}"
        recovery_s = time.monotonic() - restarted
        if office is not None:
            consistent, what = check(site, office, daemon)
        result = None
        if run_id is not None:
            rows = daemon.journal.rows("SELECT result FROM runs WHERE id = ?", run_id)
            result = rows[0]["result"] if rows else None
    finally:
        daemon.stop()
    if consistent and not keep:
        shutil.rmtree(logs, ignore_errors=True)
        for path in work.glob(f"run-{n:03d}.sqlite3*"):
            path.unlink() if path.is_file() else shutil.rmtree(path, ignore_errors=True)
    elif not consistent:
        log(f"run {n}: INCONSISTENT ({what}); journal {journal}, logs {logs}")
    return Outcome(n, delay_s, point, consistent, what, recovery_s, result)


def raise_fd_limit() -> None:
    """The daemon holds one NETCONF session per device for the run (the unit sets 65,536)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument(
        "--no-cc-every", type=int, default=10, help="every k-th device lacks :confirmed-commit (0: none)"
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory, every run's journal and logs too"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    raise_fd_limit()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    interrupted = finished = False

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    outcomes: list[Outcome] = []
    began = time.monotonic()
    try:
        with running_lab(work, args.devices) as lab:
            config = prepare(lab, work, args.concurrency)
            status = lab("status")
            devices = sorted(d["id"] for d in status["devices"] if d["office"] == OFFICE)
            for i, device in enumerate(devices):
                lab(
                    "set_confirmed_commit",
                    device=device,
                    on=not (args.no_cc_every and i % args.no_cc_every == 0),
                )
            site = Site(lab, work, config, devices, {})
            try:
                load_all(site.config_for(work / "check.sqlite3"))
            except ConfigError as exc:
                for problem in exc.problems:
                    log(f"config problem: {problem}")
                return 78
            site.reset()
            site.original = {d: s["running"] for d, s in site.show_all().items()}
            no_cc = sum(1 for i in range(len(devices)) if args.no_cc_every and i % args.no_cc_every == 0)
            log(f"lab up: {len(devices)} target devices ({no_cc} without :confirmed-commit); seed {seed}")
            run_s = reference(site, work)
            span_s = 1.1 * run_s
            for n in range(1, args.runs + 1):
                outcome = one(site, work, n, rng.uniform(0.0, span_s), args.keep)
                outcomes.append(outcome)
                log(
                    f"run {n}/{args.runs}: killed at {outcome.delay_s:.2f} s ({outcome.point}); "
                    f"{'consistent' if outcome.consistent else 'INCONSISTENT'}: {outcome.what}; "
                    f"run result {outcome.run_result}; recovered in {outcome.recovery_s:.2f} s"
                )
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping")
    finally:
        if finished and not args.keep and all(o.consistent for o in outcomes):
            shutil.rmtree(work, ignore_errors=True)
    report(outcomes, seed, time.monotonic() - began, args)
    return 0 if outcomes and all(o.consistent for o in outcomes) and not interrupted else 1


def report(outcomes: list[Outcome], seed: int, took_s: float, args: argparse.Namespace) -> None:
    if not outcomes:
        print("no run completed")
        return
    good = sum(1 for o in outcomes if o.consistent)
    recovery = sorted(o.recovery_s for o in outcomes)
    print()
    print(
        f"devices {args.devices} (every {args.no_cc_every}th without :confirmed-commit), seed {seed}, "
        f"{took_s / 60:.1f} min"
    )
    print(f"consistent: {good}/{len(outcomes)}")
    print(
        f"recovery (restart to settled): median {statistics.median(recovery):.2f} s, "
        f"p90 {recovery[int(0.9 * (len(recovery) - 1))]:.2f} s, max {recovery[-1]:.2f} s"
    )
    print("where the kills landed -> how the office ended:")
    table: Counter[tuple[str, str]] = Counter((o.point, o.what) for o in outcomes)
    for (point, what), count in sorted(table.items()):
        print(f"  {count:3d}  {point:32s} -> {what}")
    for o in outcomes:
        if not o.consistent:
            print(f"  INCONSISTENT run {o.n}: killed at {o.delay_s:.2f} s ({o.point}): {o.what}")


if __name__ == "__main__":
    sys.exit(main())
