"""`baton demo --vantages 3` as a newcomer runs it: a subprocess that must tell the whole scene —
three vantages over a real etcd, an uplink cut seen by one closing nothing, the leader killed in
the middle of a handover and another finishing that run — and exit 0, leaving nothing running.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from baton.demo_vantages import EtcdMissing, etcd_binary
from tests.e2e.test_demo import DEMO_TIMEOUT_S, assert_in_order, run_demo
from tests.peers.util import require_binary

# What the newcomer must see, in this order.
STORY = (
    "[1/7] Setting up: etcd, a lab of simulated offices, and three Baton vantages",
    "etcd: 3 members",
    "[2/7] Three vantages, one leader",
    '$ baton status --socket "$DEMO/noc-gwacheon.sock"',
    "leader                noc-gwacheon (this vantage), epoch ",
    "==> noc-gwacheon leads at epoch ",
    "[3/7] An uplink cut seen by one vantage: noc-suwon loses its path to seoul-geumcheon",
    '$ baton lab --dir "$DEMO" cut seoul-geumcheon --from 127.0.0.13',
    "phase OPEN         verdict UNREACHABLE DOWN from noc-suwon only (quorum 2); "
    "HEALTHY from noc-bangbae, HEALTHY from noc-gwacheon",
    "split_view  seoul-geumcheon",
    "==> seoul-geumcheon still OPEN after more than the hold-down: split_view raised, nothing closed",
    "==> seoul-geumcheon HEALTHY from every vantage again; the split_view alert cleared",
    "[4/7] Mains power fails at seoul-geumcheon, and the leader dies mid-handover",
    "phase SUSPECT",
    "/3 vantages: ",  # a quorum: 2/3 or 3/3, as the vantages' rounds fall
    "phase HANDING_OVER",
    "$ kill -KILL ",
    'decision "forward", finished: not yet',
    "==> noc-gwacheon killed in the middle of run handover-seoul-geumcheon-",
    "[5/7] Another vantage takes over and finishes the same run",
    "phase HANDED_OVER",
    "==> seoul-geumcheon HANDED_OVER to seoul-bangbae by run handover-seoul-geumcheon-",
    "[6/7] Power returns; the new leader's epoch on the devices",
    "forwarded to leader ",
    "==> seoul-geumcheon OPEN again; its routers carry ",
    "[7/7] What happened",
    "==> stopped in ",
)


@pytest.mark.slow
def test_the_vantages_scene_tells_the_whole_story(tmp_path: Path) -> None:
    """The whole scene, checked by the demo itself as it goes: exit 0, every step in order, the
    run the dead leader started finished by the new leader (the same id), at a greater epoch, and
    every process it started stopped."""
    require_binary("etcd", "etcd-server")
    result = run_demo(tmp_path, "--vantages", "3", "--fast")
    out = result.stdout

    assert 0 == result.returncode, out
    assert "DEMO FAILED" not in out
    assert_in_order(out, STORY)
    killed = re.search(r"==> noc-gwacheon killed in the middle of run (\S+)", out)
    finished = re.search(
        r"==> seoul-geumcheon HANDED_OVER to seoul-bangbae by run (\S+), finished by (\S+)", out
    )
    assert killed is not None, out
    assert finished is not None, out
    assert killed.group(1) == finished.group(1)  # the same run, finished by another vantage
    assert finished.group(2) in ("noc-bangbae", "noc-suwon")
    leads = re.search(r"==> noc-gwacheon leads at epoch (\d+)", out)
    takes = re.search(r"leads [\d.]+ s after the kill, at epoch (\d+)", out)
    assert leads is not None, out
    assert takes is not None, out
    assert int(takes.group(1)) > int(leads.group(1))
    stopped = re.search(r"==> stopped in [\d.]+ s: (.*); the lab; etcd", out)
    assert stopped is not None, out
    assert {"exit 0"} == {part.split(" ", 1)[1] for part in stopped.group(1).split(", ")}
    demo = tmp_path / "demo"
    for name in ("noc-gwacheon.log", "noc-bangbae.sqlite3", "noc-suwon.yaml", "lab.log", "etcd/etcd1.log"):
        assert (demo / name).exists(), name
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(demo) in cmdline:
                left.append(f"{proc.name}: {cmdline}")
    assert [] == left


def test_without_etcd_the_scene_says_how_to_install_it(tmp_path: Path) -> None:
    """No etcd binary: exit 69 before anything starts, naming the Debian package."""
    with pytest.raises(EtcdMissing, match="apt-get install etcd-server"):
        etcd_binary(search_path=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "baton.cli", "demo", "--vantages", "3", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env={**os.environ, "PATH": str(tmp_path)},
        check=False,
    )
    assert 69 == result.returncode, result.stdout + result.stderr
    assert "apt-get install etcd-server" in result.stdout
    assert not (tmp_path / "demo" / "etcd").exists()
