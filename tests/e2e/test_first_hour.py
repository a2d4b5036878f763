"""A new user's first hour: `baton lab run` without `--trap-target`, then the daemon on its baton.yaml.

The lab says it writes a ready `baton.yaml`; this runs the daemon with that file as written (only
the metrics port is moved off 9180, so parallel test runs cannot collide) and hands an office
over. Before, the daemon refused the file (its `playbooks:` named a directory that did not
exist), and with the playbooks pointed at the repo every handover failed to render
(`alternate.vars.trap_collectors` undefined in a lab that sends its traps nowhere).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from baton.cli import EX_OK
from baton.cli import main as baton_main
from tests.e2e.harness import Daemon, LabProcess, free_port
from tests.peers.util import PeerProcess

pytestmark = pytest.mark.slow

OFFICES = "seoul-geumcheon,seoul-bangbae"
RUN_TIMEOUT_S = 60.0


class LabWithoutTraps(LabProcess):
    """`baton lab run` as a new user types it: no --trap-target."""

    def _process(self) -> PeerProcess:
        process = super()._process()
        at = process.argv.index("--trap-target")
        del process.argv[at : at + 2]
        return process


def test_lab_config_runs_the_daemon_and_hands_over(tmp_path: Path) -> None:
    """The lab's baton.yaml validates, starts the daemon, and a declared handover succeeds."""
    lab = LabWithoutTraps(tmp_path / "lab", OFFICES, 2)
    daemon: Daemon | None = None
    try:
        lab.start()
        written = yaml.safe_load(lab.config_path.read_text())
        assert "playbooks" == written["playbooks"]
        assert {"lab-handover.yaml", "lab-handback.yaml"} <= {
            p.name for p in (lab.dir / "playbooks").iterdir()
        }
        assert EX_OK == baton_main(["validate", "--config", str(lab.config_path)])

        written["metrics_listen"] = f"127.0.0.1:{free_port()}"
        lab.config_path.write_text(yaml.safe_dump(written, sort_keys=False))
        daemon = Daemon(lab.config_path, tmp_path)
        daemon.start()
        result = daemon.cli("handover", "seoul-geumcheon", "--reason", "first hour", "--yes")
        assert EX_OK == result.code, result
        daemon.wait_phase("seoul-geumcheon", "HANDED_OVER", RUN_TIMEOUT_S)
        # the alternate's NOC really got in: its ACL entry is on the closed office's core router
        acl = {entry["name"]: entry["prefix"] for entry in lab.mgmt("seoul-geumcheon-core1")["acl"]}
        noc = yaml.safe_load((lab.dir / "inventory" / "offices.yaml").read_text())["offices"]
        bangbae = next(o for o in noc if o["id"] == "seoul-bangbae")
        assert bangbae["vars"]["noc_prefixes"][0] == acl.get("seoul-bangbae")
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            lab.stop()
