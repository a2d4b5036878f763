"""The lab's one-shot NETCONF reply faults, against Baton's real NETCONF adapter (`NetconfClient`).

For every fault: the error class the adapter raises, whether it says the outcome is unknown (a
write may have been applied), and, for commits, whether the lab's datastore really applied it.
One lab (2 offices x 3 devices) serves the module; each test that commits uses its own device,
and every fault is disarmed after each test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.adapters.connecting import Connecting
from baton.adapters.errors import (
    NetconfReplyError,
    NetconfRpcError,
    NetconfSessionError,
    NetconfTimeoutError,
)
from baton.adapters.netconf import MAX_REPLY_BYTES, NetconfClient
from baton.cli import EX_FAILURE, EX_OK, main
from baton.core.model import Inventory, SecretRef
from baton.inventory.loader import load_inventory
from baton.lab.control import ControlError, request
from baton.lab.inventory_writer import write_inventory
from baton.lab.network import Lab
from baton.secrets import resolve
from tests.lab_fixtures import RunningLab

LAB_NS = "urn:baton:lab:mgmt:1.0"
ACL_FILTER = f'<management xmlns="{LAB_NS}"><acl/></management>'
ONE_SHOT = ("drop-mid-rpc", "drop-after-commit", "no-reply", "endless-reply", "garbage-reply")


class Site:
    def __init__(self, running: RunningLab, inv_dir: Path) -> None:
        self.running = running
        self.lab: Lab = running.lab
        self.inv_dir = inv_dir
        self.inventory: Inventory = load_inventory(inv_dir)

    def resolve(self, ref: SecretRef) -> str:
        return resolve(ref, base_dir=self.inv_dir)

    def connect(self, device_id: str, *, max_reply_bytes: int = MAX_REPLY_BYTES) -> Connecting[NetconfClient]:
        return NetconfClient.connect(
            self.inventory.devices[device_id],
            resolve=self.resolve,
            timeout_s=10,
            max_reply_bytes=max_reply_bytes,
        )

    def netconf_sessions(self, device_id: str) -> int:
        """How many NETCONF sessions the lab device has open (read on the lab's loop)."""

        async def count(lab: Lab) -> int:
            server = lab._rt.servers[device_id]  # the lab has no public view of its sessions
            return sum(1 for s in server.sessions.values() if s.kind == "netconf")

        return self.running.call(count)

    def netconf_sessions_after_close(self, device_id: str, limit_s: float = 10.0) -> int:
        """The device's NETCONF sessions once it noticed a client's close (a bounded wait; the
        lab's own thread does the work, so blocking here holds nothing up)."""
        deadline = time.monotonic() + limit_s
        while (open_sessions := self.netconf_sessions(device_id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return open_sessions

    def faults(self, device_id: str) -> list[str]:
        """The device's faults as the lab's status shows them."""
        status = self.running.call(lambda lab: _status(lab))
        return next(d["faults"] for d in status["devices"] if d["id"] == device_id)

    def acl(self, device_id: str) -> tuple[str, ...]:
        """The ACL entry names in the device's running datastore."""
        return tuple(self.lab.device(device_id).mgmt.acl_offices)


async def _status(lab: Lab) -> dict[str, object]:
    return lab.status()


def acl_entry(name: str, prefix: str = "127.10.77.0/24") -> str:
    return (
        f'<config><management xmlns="{LAB_NS}"><acl><entry><name>{name}</name>'
        f"<prefix>{prefix}</prefix></entry></acl></management></config>"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    running = RunningLab(tmp_path_factory.mktemp("lab"), "seoul-geumcheon,busan-jung", 3, netconf=True)
    try:
        yield Site(running, write_inventory(running.lab))
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def disarmed(site: Site) -> Iterator[None]:
    yield
    for device in site.lab.devices.values():
        f = device.faults
        f.drop_mid_rpc = f.drop_after_commit = f.refuse_commits = False
        f.no_reply = f.endless_reply = f.garbage_reply = None


async def test_drop_after_commit_applies_the_commit_and_drops_the_session(site: Site) -> None:
    """drop-after-commit: the commit is in running, the client sees a dropped session (outcome unknown)."""
    dev = "seoul-geumcheon-core1"
    async with site.connect(dev) as nc:
        await nc.edit_config("candidate", acl_entry("drop-after-commit"))
        site.running.call(lambda lab: lab.drop_after_commit(dev))
        assert ["drop-after-commit"] == site.faults(dev)
        with pytest.raises(NetconfSessionError) as caught:
            await nc.commit()
        assert not nc.is_connected
    assert ("commit", True) == (caught.value.operation, caught.value.outcome_unknown)
    assert "drop-after-commit" in site.acl(dev)
    assert [] == site.faults(dev)  # one-shot
    async with site.connect(dev) as nc:  # the device itself is fine
        assert "drop-after-commit" in await nc.get_config("running", ACL_FILTER)


async def test_drop_after_commit_waits_for_a_commit(site: Site) -> None:
    """drop-after-commit lets other RPCs through and fires on the commit."""
    dev = "seoul-geumcheon-agg1"
    site.running.call(lambda lab: lab.drop_after_commit(dev))
    async with site.connect(dev) as nc:
        await nc.get_config("running", ACL_FILTER)
        await nc.edit_config("candidate", acl_entry("after-get"))
        assert ["drop-after-commit"] == site.faults(dev)
        with pytest.raises(NetconfSessionError):
            await nc.commit()
    assert "after-get" in site.acl(dev)


async def test_garbage_reply_to_a_commit_is_a_reply_error_and_the_commit_applied(site: Site) -> None:
    """garbage-reply: NetconfReplyError (outcome unknown), the commit applied, the session still usable."""
    dev = "seoul-geumcheon-olt01"
    async with site.connect(dev) as nc:
        await nc.edit_config("candidate", acl_entry("garbage-reply"))
        site.running.call(lambda lab: lab.garbage_reply(dev))
        assert ["garbage-reply"] == site.faults(dev)
        with pytest.raises(NetconfReplyError) as caught:
            await nc.commit()
        after = await nc.get_config("running", ACL_FILTER)
    assert caught.value.outcome_unknown
    assert caught.value.cause.startswith("reply is not well-formed XML")
    assert "garbage-reply" in site.acl(dev)
    assert "<name>garbage-reply</name>" in after
    assert [] == site.faults(dev)


async def test_garbage_reply_to_a_get_is_a_reply_error(site: Site) -> None:
    """A read answered with garbage fails that call with NetconfReplyError, nothing else."""
    dev = "busan-jung-olt01"
    async with site.connect(dev) as nc:
        site.running.call(lambda lab: lab.garbage_reply(dev))
        with pytest.raises(NetconfReplyError) as caught:
            await nc.get()
        assert nc.is_connected
        await nc.get()
    assert ("get", True) == (caught.value.operation, caught.value.outcome_unknown)


async def test_a_reply_fault_may_wait_for_one_operation(site: Site) -> None:
    """With rpc="commit", a reply fault lets other RPCs (a monitor's probes, say) through."""
    dev = "seoul-geumcheon-olt01"
    site.running.call(lambda lab: lab.garbage_reply(dev, rpc="commit"))
    assert ["garbage-reply <commit>"] == site.faults(dev)
    async with site.connect(dev) as nc:
        await nc.get()
        await nc.edit_config("candidate", acl_entry("garbage-on-commit"))
        assert ["garbage-reply <commit>"] == site.faults(dev)
        with pytest.raises(NetconfReplyError):
            await nc.commit()
    assert "garbage-on-commit" in site.acl(dev)
    assert [] == site.faults(dev)


async def test_endless_reply_is_refused_at_the_size_bound_and_the_commit_applied(site: Site) -> None:
    """endless-reply: refused once past max_reply_bytes, the session closed, the commit applied."""
    dev = "busan-jung-core1"
    async with site.connect(dev, max_reply_bytes=256 * 1024) as nc:
        await nc.edit_config("candidate", acl_entry("endless-reply"))
        site.running.call(lambda lab: lab.endless_reply(dev))
        assert ["endless-reply"] == site.faults(dev)
        with pytest.raises(NetconfReplyError) as caught:
            await nc.commit(rpc_timeout_s=30)
        assert not nc.is_connected
    assert (
        "reply larger than 262144 bytes (the device's netconf.max_reply_bytes); session closed"
        == caught.value.cause
    )
    assert caught.value.outcome_unknown
    assert "endless-reply" in site.acl(dev)
    assert [] == site.faults(dev)


async def test_endless_reply_with_the_default_bound_ends_in_an_error(site: Site) -> None:
    """With the default 16 MiB bound an endless reply still ends: refused when that large, or a timeout."""
    dev = "busan-jung-olt01"
    async with site.connect(dev) as nc:
        site.running.call(lambda lab: lab.endless_reply(dev))
        with pytest.raises((NetconfReplyError, NetconfTimeoutError)) as caught:
            await nc.get(rpc_timeout_s=30)
    assert caught.value.outcome_unknown
    assert 0 == site.netconf_sessions_after_close(dev)  # the lab stopped streaming


async def test_no_reply_times_out_with_the_commit_applied_and_the_session_closed(site: Site) -> None:
    """no-reply: NetconfTimeoutError (outcome unknown), the commit applied. The session is closed
    (its state is unknown: a late reply must not be taken for the next request's), later calls
    on it fail at once, and a new session answers."""
    dev = "busan-jung-agg1"
    async with site.connect(dev) as nc:
        await nc.edit_config("candidate", acl_entry("no-reply"))
        site.running.call(lambda lab: lab.no_reply(dev))
        assert ["no-reply"] == site.faults(dev)
        with pytest.raises(NetconfTimeoutError) as caught:
            await nc.commit(rpc_timeout_s=1)
        assert not nc.is_connected
        with pytest.raises(NetconfSessionError, match="no reply within 1 s"):
            await nc.get_config("running", ACL_FILTER)
    async with site.connect(dev) as nc:
        after = await nc.get_config("running", ACL_FILTER)
    assert ("commit", 1, True) == (
        caught.value.operation,
        caught.value.timeout_s,
        caught.value.outcome_unknown,
    )
    assert "no-reply" in site.acl(dev)
    assert "<name>no-reply</name>" in after
    assert [] == site.faults(dev)


async def test_drop_mid_rpc_is_one_shot_and_not_carried_out(site: Site) -> None:
    """drop-mid-rpc: the commit is NOT applied, the session is gone, the fault fired once."""
    dev = "seoul-geumcheon-core1"
    async with site.connect(dev) as nc:
        await nc.edit_config("candidate", acl_entry("drop-mid-rpc"))
        site.running.call(lambda lab: lab.drop_mid_rpc(dev))
        with pytest.raises(NetconfSessionError) as caught:
            await nc.commit()
    assert caught.value.outcome_unknown  # from where Baton stands, it may have been
    assert "drop-mid-rpc" not in site.acl(dev)
    assert [] == site.faults(dev)
    async with site.connect(dev) as nc:
        await nc.get_config("running", ACL_FILTER)


async def test_rpc_error_is_an_outcome_known_failure(site: Site) -> None:
    """An <rpc-error> (refuse-commits) is NetconfRpcError: the outcome is known, nothing applied."""
    dev = "seoul-geumcheon-agg1"
    async with site.connect(dev) as nc:
        await nc.edit_config("candidate", acl_entry("refused"))
        site.running.call(lambda lab: lab.refuse_commits(dev, True))
        with pytest.raises(NetconfRpcError) as caught:
            await nc.commit()
        await nc.discard_changes()
    assert ("operation-failed", False) == (caught.value.tag, caught.value.outcome_unknown)
    assert "refused" not in site.acl(dev)


def test_faults_are_armed_and_disarmed_over_the_control_socket(site: Site) -> None:
    """Each fault is a control-socket command taking a device and an optional on (default true)."""
    dev = "busan-jung-olt01"
    for cmd in ("drop_after_commit", "no_reply", "endless_reply", "garbage_reply", "drop_mid_rpc"):
        request(site.running.dir, cmd, device=dev)
    assert sorted(ONE_SHOT) == sorted(site.faults(dev))
    for cmd in ("drop_after_commit", "no_reply", "endless_reply", "garbage_reply", "drop_mid_rpc"):
        request(site.running.dir, cmd, device=dev, on=False)
    assert [] == site.faults(dev)
    with pytest.raises(ControlError, match="argument 'on' must be bool"):
        request(site.running.dir, "no_reply", device=dev, on="yes")
    with pytest.raises(ControlError, match="no device 'nope'"):
        request(site.running.dir, "garbage_reply", device="nope")


def test_faults_are_lab_cli_commands(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """`baton lab --dir D <fault> DEVICE [on|off]` arms (default on) and disarms each fault."""
    dev = "busan-jung-olt01"

    def cli(*args: str) -> int:
        return main(["lab", "--dir", str(site.running.dir), *args])

    for name in ("drop-after-commit", "no-reply", "endless-reply", "garbage-reply"):
        assert EX_OK == cli(name, dev)
    out = capsys.readouterr().out
    assert f"device {dev} will apply its next commit, then drop the session unanswered" in out
    assert ["drop-after-commit", "no-reply", "endless-reply", "garbage-reply"] == site.faults(dev)
    assert EX_OK == cli("garbage-reply", dev, "off")
    assert EX_OK == cli("no-reply", dev, "off")
    assert ["drop-after-commit", "endless-reply"] == site.faults(dev)
    assert f"device {dev}: no-reply disarmed" in capsys.readouterr().out
    assert EX_OK == cli("no-reply", dev, "--rpc", "edit-config")
    assert ["drop-after-commit", "no-reply <edit-config>", "endless-reply"] == site.faults(dev)
    assert EX_FAILURE == cli("no-reply", "nope")
    assert EX_FAILURE == cli("garbage-reply", dev, "--rpc", "Not An Operation")
    with pytest.raises(SystemExit):
        cli("no-reply", dev, "maybe")
