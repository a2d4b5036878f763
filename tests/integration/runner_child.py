"""A handover run in a child process, to be SIGKILLed by test_runner_crash at a marked moment.

    python -m tests.integration.runner_child SPEC.json

SPEC: {"journal": path, "run_id": str, "window_s": int, "stop_at": "committed" | "edited",
"devices": [{"id", "host", "port", "username", "private_key", "host_key"}]}. When the run reaches
`stop_at` (every device committed / the first edit done) the child prints "MARK <stop_at>" and
blocks, so the test can kill it exactly there.

Optional, for the crash-point campaign (the journal write hook of tests/e2e/crashing_daemon.py,
counting from the journal's first write): "crash_at": "after:N" | "before:N" SIGKILLs the child
right after (right before) the N-th journal write; "writes_log": a file that gets one line
"N label" per write (how the test learns K); "step_timeout_s": null keeps the playbook's own
timeouts (default 2 s each, no retries).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from baton.journal import Journal, StepRecord, StepStatus, WriteHook
from baton.playbook.progress import Do
from baton.playbook.runner import execute
from baton.playbook.steps import Connectors
from tests.integration.runner_helpers import PLAYBOOKS, device_for, inventory_of, make_plan, read_secret
from tests.peers.endpoints import SshEndpoint


def crash_hook(crash_at: str | None, writes_log: str | None) -> WriteHook:
    """SIGKILL at the chosen journal write ("after:N" / "before:N"), logging every write."""
    when_crash, _, n = (crash_at or ":").partition(":")
    target = int(n) if n.isdigit() else None

    def hook(when: str, count: int, label: str) -> None:
        if when == "before" and writes_log:
            with Path(writes_log).open("a") as f:
                f.write(f"{count} {label}\n")
        if when == when_crash and count == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    devices = [
        device_for(
            d["id"],
            SshEndpoint(
                d["host"], d["port"], d["username"], Path(d["private_key"]), Path("/dev/null"), d["host_key"]
            ),
        )
        for d in spec["devices"]
    ]
    plan = make_plan(
        inventory_of(devices),
        PLAYBOOKS / "netconfd-handover.yaml",
        spec["run_id"],
        step_timeout_s=spec.get("step_timeout_s", 2.0),
    )
    commits: set[str] = set()
    stop_at = spec.get("stop_at")

    def progress(outcome: StepRecord) -> None:
        if outcome.name == Do.COMMIT and outcome.status is StepStatus.DONE:
            commits.add(outcome.device)
        reached = (stop_at == "committed" and len(commits) == len(devices)) or (
            stop_at == "edited" and outcome.phase == "apply" and outcome.name != "prepare-candidate"
        )
        if reached:
            print(f"MARK {stop_at}", flush=True)
            time.sleep(3600)  # blocks the loop: nothing more happens until the SIGKILL

    journal = Journal.open(spec["journal"], crash_hook(spec.get("crash_at"), spec.get("writes_log")))
    asyncio.run(
        execute(
            plan,
            journal=journal,
            connectors=Connectors(read_secret),
            confirm_window_s=spec["window_s"],
            progress=progress,
        )
    )
    print("MARK finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
