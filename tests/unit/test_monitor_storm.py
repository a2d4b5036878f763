"""The monitor under a trap storm: judging only the offices a re-poll pass concerns gives what
a full judgement gives, and the device tree is walked once, not per trap."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from baton.core.health import Observation
from baton.core.model import Device, Inventory, NetconfSettings, Office, Policy, Protocol
from baton.metrics import Metrics
from baton.monitor import Monitor, children_of, descendants

POLICY = Policy(poll_interval_s=10.0, failures_to_down=2)


def build(parents: list[int | None], offices: list[int], critical: list[bool]) -> Inventory:
    devices = {}
    for n, (parent, office, crit) in enumerate(zip(parents, offices, critical, strict=True)):
        devices[f"d{n}"] = Device(
            f"d{n}",
            f"o{office}",
            "router",
            f"127.0.9.{n + 1}",
            critical=crit,
            parent=None if parent is None or parent >= n else f"d{parent}",  # no cycles
            netconf=NetconfSettings(enabled=True),
        )
    names = {d.office for d in devices.values()}
    return Inventory(MappingProxyType({o: Office(o, o, "r") for o in names}), MappingProxyType(devices))


def monitor(inventory: Inventory) -> Monitor:
    return Monitor(
        inventory,
        POLICY,
        resolve=lambda ref: "unused",
        metrics=Metrics(),
        on_observed=lambda event: None,
        netconf_probe=lambda device: None,  # type: ignore[arg-type,return-value]  (never started)
    )


networks = st.integers(1, 14).flatmap(
    lambda n: st.tuples(
        st.lists(st.one_of(st.none(), st.integers(0, 13)), min_size=n, max_size=n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.lists(st.booleans(), max_size=3), min_size=n, max_size=n),  # probe results
    )
)


@given(network=networks, office=st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_judging_one_office_matches_judging_everything(
    network: tuple[list[int | None], list[int], list[bool], list[list[bool]]], office: int
) -> None:
    """Property: after the same observations, judging only an office (what a re-poll pass does)
    gives its devices and the office the judgements a full round gives, parents in other offices
    (UNREACHABLE) included."""
    parents, offices, critical, results = network
    inventory = build(parents, offices, critical)
    scoped, full = monitor(inventory), monitor(inventory)
    for m in (scoped, full):
        for n, oks in enumerate(results):
            for k, ok in enumerate(oks):
                m._fold(Observation(f"d{n}", Protocol.NETCONF, ok, float(k), "" if ok else "timeout"))
    target = f"o{office}"
    scoped._judge([target])
    full._judge()
    if target not in inventory.offices:
        return
    ours = [d.id for d in inventory.devices.values() if d.office == target]
    assert {d: full._device_judgements[d] for d in ours} == {d: scoped._device_judgements[d] for d in ours}
    assert full.office_judgements()[target] == scoped.office_judgements()[target]


def test_descendants_with_the_tree_built_once_match_walking_the_inventory() -> None:
    """`children_of` once, then `descendants` per trap, equals walking the inventory each time."""
    inventory = build([None, 0, 1, 1, None, 4, 2], [0, 0, 1, 1, 2, 2, 3], [True] * 7)
    tree = children_of(inventory)
    for device in inventory.devices:
        assert descendants(device, inventory) == descendants(device, inventory, tree)
    assert ("d2", "d3", "d6") == descendants("d1", inventory, tree)
