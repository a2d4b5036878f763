"""`baton status` on a vantage: who leads, at which epoch, the lease time left, who is present."""

from __future__ import annotations

from typing import Any

from baton.commands.operator import _daemon_rows

VIEW: dict[str, Any] = {
    "me": "noc-gwacheon",
    "held": True,
    "epoch": 7,
    "leader": "noc-gwacheon",
    "leader_api": "10.0.1.21:8443",
    "lease_left_s": 2.04,
    "vantages": ["noc-bangbae", "noc-gwacheon", "noc-suwon"],
    "reason": "leader since epoch 7",
}


def test_the_leader_says_its_epoch_and_the_lease_time_left() -> None:
    """The leading vantage: itself, its epoch and lease; every vantage present; why."""
    assert [
        ("leader", "noc-gwacheon (this vantage), epoch 7; lease 2.0 s left"),
        ("vantages", "noc-bangbae, noc-gwacheon, noc-suwon"),
        ("leadership", "leader since epoch 7"),
    ] == _daemon_rows({"leadership": VIEW}, now=0.0)


def test_a_follower_names_the_leader_and_where_it_listens() -> None:
    """A follower: the leader and its API address; why it does not lead."""
    follower = {**VIEW, "me": "noc-suwon", "held": False, "epoch": 0, "reason": "following noc-gwacheon"}
    assert [
        ("leader", "noc-gwacheon at 10.0.1.21:8443"),
        ("vantages", "noc-bangbae, noc-gwacheon, noc-suwon"),
        ("leadership", "following noc-gwacheon"),
    ] == _daemon_rows({"leadership": follower}, now=0.0)


def test_no_leader_known_says_so_and_why() -> None:
    """Nobody leads (etcd unreachable): no leader known, nobody present, and the reason."""
    lost = {
        **VIEW,
        "held": False,
        "leader": None,
        "leader_api": None,
        "vantages": [],
        "reason": "etcd unreachable",
    }
    assert [("leader", "none known"), ("vantages", "-"), ("leadership", "etcd unreachable")] == _daemon_rows(
        {"leadership": lost}, now=0.0
    )
