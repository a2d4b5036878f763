"""A handover run in a child process, to be SIGKILLed by test_runner_crash at a marked moment.

    python -m tests.integration.runner_child SPEC.json

SPEC: {"journal": path, "run_id": str, "window_s": int, "stop_at": "committed" | "edited",
"devices": [{"id", "host", "port", "username", "private_key", "host_key"}]}. When the run reaches
`stop_at` (every device committed / the first edit done) the child prints "MARK <stop_at>" and
blocks, so the test can kill it exactly there.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from baton.journal import Journal, StepStatus
from baton.playbook.runner import COMMIT, StepOutcome, execute
from baton.playbook.steps import Connectors
from tests.integration.runner_helpers import PLAYBOOKS, device_for, inventory_of, make_plan, read_secret
from tests.peers.endpoints import SshEndpoint


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
        inventory_of(devices), PLAYBOOKS / "netconfd-handover.yaml", spec["run_id"], step_timeout_s=2.0
    )
    commits: set[str] = set()

    def progress(outcome: StepOutcome) -> None:
        if outcome.name == COMMIT and outcome.status is StepStatus.DONE:
            commits.add(outcome.device)
        reached = (spec["stop_at"] == "committed" and len(commits) == len(devices)) or (
            spec["stop_at"] == "edited" and outcome.phase == "apply" and outcome.name != "prepare-candidate"
        )
        if reached:
            print(f"MARK {spec['stop_at']}", flush=True)
            time.sleep(3600)  # blocks the loop: nothing more happens until the SIGKILL

    journal = Journal.open(spec["journal"])
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
