"""EtcdClient against a real three-member etcd 3.4 cluster: leases, keys, txns, watches, endpoint
rotation past killed and paused members, all members down, and user/password authentication.

Times are measured and printed; the only timed assertions are the client's contract: a request
ends within `timeout_s` per endpoint tried (plus 1 s of slack for a loaded machine), and a lease
never ends before its TTL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from baton.adapters.etcd import EtcdClient, EtcdError, EtcdUnavailable, created, delete, get, put
from tests.peers.etcd import EtcdCluster, etcd_cluster_running
from tests.peers.util import require_binary, run

pytestmark = pytest.mark.peer("etcd")

TIMEOUT_S = 0.5
PREFIX = "/baton-test/"  # on a cluster of the test's own


def contract_s(client: EtcdClient) -> float:
    """The longest a request may take: every endpoint tried once, each within timeout_s."""
    return client.timeout_s * len(client.endpoints) + 1.0


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One cluster for the tests that leave it as they found it (each under its own prefix);
    a test that kills, pauses or reconfigures members takes its own `etcd_cluster`."""
    require_binary("etcd", "etcd-server")
    with etcd_cluster_running(tmp_path_factory.mktemp("etcd-shared")) as cluster:
        yield cluster


@pytest.fixture
async def client(shared_cluster: EtcdCluster) -> AsyncIterator[EtcdClient]:
    c = EtcdClient(shared_cluster.endpoints, timeout_s=TIMEOUT_S)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/baton-test/{request.node.name}/"


# -- leases -------------------------------------------------------------------------------------


async def test_grant_keepalive_revoke(client: EtcdClient) -> None:
    """A granted lease is kept alive with its full TTL; once revoked, keepalive reports <= 0."""
    lease, granted = await client.grant(5)
    assert lease > 0
    assert 5.0 == granted
    assert 5.0 == await client.keepalive(lease)
    await client.revoke(lease)
    assert await client.keepalive(lease) <= 0


async def test_revoking_a_gone_lease_is_an_etcd_error(client: EtcdClient) -> None:
    """etcd answers a revoke of an unknown lease: an EtcdError, not EtcdUnavailable."""
    lease, _ = await client.grant(5)
    await client.revoke(lease)
    with pytest.raises(EtcdError) as caught:
        await client.revoke(lease)
    assert not isinstance(caught.value, EtcdUnavailable)
    assert "lease not found" in str(caught.value)


async def test_a_key_on_a_lease_disappears_after_the_ttl(client: EtcdClient, prefix: str) -> None:
    """A key put on a 2 s lease is there until the TTL has passed, gone soon after, and a
    keepalive of the expired lease reports <= 0 instead of raising."""
    key = f"{prefix}leased"
    sent = time.monotonic()
    lease, granted = await client.grant(2)
    await client.put(key, "x", lease=lease)
    kv = await client.get(key)
    assert kv is not None
    assert lease == kv.lease
    while True:
        await asyncio.sleep(0.1)
        kv = await client.get(key)
        answered = time.monotonic() - sent
        if kv is None:
            break
        assert answered < granted + 3.0, "the key outlived its lease by more than 3 s"
    # A lease never ends early: the read that first missed the key was answered after the TTL.
    assert answered >= granted
    print(f"\nkey gone {answered:.2f} s after the grant was sent (TTL {granted:g} s)")
    assert await client.keepalive(lease) <= 0


# -- keys and transactions ----------------------------------------------------------------------


async def test_put_get_and_get_prefix(client: EtcdClient, prefix: str) -> None:
    """Values, revisions and leases read back as written; a prefix read returns only its keys."""
    lease, _ = await client.grant(10)
    first = await client.put(f"{prefix}kv/a", "alpha")
    second = await client.put(f"{prefix}kv/b", b"\x00beta", lease=lease)
    await client.put(f"{prefix}kw", "outside")
    assert second > first > 0

    a = await client.get(f"{prefix}kv/a")
    assert a is not None
    assert ("alpha", first, first, 0) == (a.text, a.create_revision, a.mod_revision, a.lease)
    assert await client.get(f"{prefix}kv/missing") is None

    again = await client.put(f"{prefix}kv/a", '{"n": 1}')
    a = await client.get(f"{prefix}kv/a")
    assert a is not None
    assert (first, again, {"n": 1}) == (a.create_revision, a.mod_revision, a.json())

    listed = await client.get_prefix(f"{prefix}kv/")
    assert [f"{prefix}kv/a", f"{prefix}kv/b"] == [kv.key for kv in listed]
    assert (b"\x00beta", lease) == (listed[1].value, listed[1].lease)
    assert [] == await client.get_prefix(f"{prefix}nothing/")


async def test_txn_created_compare_success_and_failure(client: EtcdClient, prefix: str) -> None:
    """created(key, 0) succeeds once; the failure branch returns the winner's key; a compare on
    the right create_revision succeeds, on a wrong one fails."""
    key = f"{prefix}leader"
    lease, _ = await client.grant(10)
    won = await client.txn([created(key, 0)], [put(key, "me", lease)], [get(key)])
    assert won.succeeded
    assert () == won.ranges

    lost = await client.txn([created(key, 0)], [put(key, "other")], [get(key)])
    assert not lost.succeeded
    assert won.revision == lost.revision  # nothing was written
    ((owner,),) = lost.ranges
    assert (key, "me", won.revision, lease) == (owner.key, owner.text, owner.create_revision, owner.lease)

    guarded = await client.txn([created(key, won.revision)], [put(f"{prefix}epoch", "7")])
    assert guarded.succeeded
    stale = await client.txn([created(key, won.revision - 1)], [put(f"{prefix}epoch", "8")], [get(key)])
    assert not stale.succeeded
    epoch = await client.get(f"{prefix}epoch")
    assert epoch is not None
    assert "7" == epoch.text

    gone = await client.txn([created(key, won.revision)], [delete(key)])
    assert gone.succeeded
    assert await client.get(key) is None


async def test_wait_change_sees_a_delete_and_times_out_otherwise(client: EtcdClient, prefix: str) -> None:
    """wait_change returns True soon after the key is deleted, False when nothing happens."""
    key = f"{prefix}watched"
    revision = await client.put(key, "x")
    started = time.monotonic()
    assert not await client.wait_change(key, revision, 0.3)
    assert time.monotonic() - started >= 0.3

    async def delete_later() -> None:
        await asyncio.sleep(0.2)
        await client.txn([], [delete(key)])

    deleting = asyncio.create_task(delete_later())
    started = time.monotonic()
    assert await client.wait_change(key, revision, 5.0)
    took = time.monotonic() - started
    await deleting
    print(f"\nwatch saw the delete {took:.3f} s after it started (delete sent at 0.2 s)")
    assert took < 5.0
    # A change that happened before the watch started is still seen (start_revision).
    assert await client.wait_change(key, revision, 5.0)


# -- endpoints failing --------------------------------------------------------------------------


async def test_first_endpoint_killed_requests_go_to_the_others(etcd_cluster: EtcdCluster) -> None:
    """With the first endpoint's member killed (a raft follower: the cluster keeps serving),
    reads and writes still succeed within the contract, and later requests go straight to a
    member that answers."""
    victim = etcd_cluster.raft_followers()[0]
    endpoints = [victim.url, *(url for url in etcd_cluster.endpoints if url != victim.url)]
    client = EtcdClient(endpoints, timeout_s=TIMEOUT_S)
    try:
        await client.put(f"{PREFIX}k", "before")
        victim.kill()
        took = []
        for n in range(3):
            started = time.monotonic()
            await client.put(f"{PREFIX}k", f"after {n}")
            kv = await client.get(f"{PREFIX}k")
            took.append(time.monotonic() - started)
            assert kv is not None
            assert f"after {n}" == kv.text
        print(f"\nput+get with the first member dead: {', '.join(f'{t:.3f}' for t in took)} s")
        assert max(took) < 2 * contract_s(client)
        assert victim.url != client.endpoints[client._current]
    finally:
        await client.close()


async def test_raft_leader_killed_requests_fail_fast_then_succeed(etcd_cluster: EtcdCluster) -> None:
    """While the two others elect a new raft leader (up to 2 × election timeout), a request
    either succeeds or is EtcdUnavailable within the contract, never slower; then all succeed."""
    victim = etcd_cluster.raft_leader()
    endpoints = [victim.url, *(url for url in etcd_cluster.endpoints if url != victim.url)]
    client = EtcdClient(endpoints, timeout_s=TIMEOUT_S)
    try:
        await client.put(f"{PREFIX}k", "before")
        killed = time.monotonic()
        victim.kill()
        failures, slowest = 0, 0.0
        while True:
            started = time.monotonic()
            try:
                await client.put(f"{PREFIX}k", "after")
            except EtcdUnavailable:
                failures += 1
            else:
                break
            finally:
                slowest = max(slowest, time.monotonic() - started)
            assert time.monotonic() - killed < 15, "no new raft leader within 15 s"
        print(
            f"\nraft leader killed: writes back after {time.monotonic() - killed:.2f} s, "
            f"{failures} EtcdUnavailable meanwhile, slowest request {slowest:.3f} s"
        )
        assert slowest < contract_s(client)
    finally:
        await client.close()


async def test_a_paused_member_does_not_stall_a_request(etcd_cluster: EtcdCluster) -> None:
    """A SIGSTOPped member (a raft follower) accepts connections but never answers: the request
    moves on to another endpoint within its deadline."""
    victim = etcd_cluster.raft_followers()[0]
    endpoints = [victim.url, *(url for url in etcd_cluster.endpoints if url != victim.url)]
    client = EtcdClient(endpoints, timeout_s=TIMEOUT_S)
    try:
        await client.put(f"{PREFIX}k", "before")  # the client now talks to the first endpoint
        victim.pause()
        started = time.monotonic()
        kv = await client.get(f"{PREFIX}k")
        took = time.monotonic() - started
        print(f"\nget with the first member paused: {took:.3f} s (timeout_s {client.timeout_s:g})")
        assert kv is not None
        assert "before" == kv.text
        assert took < contract_s(client)
    finally:
        await client.close()


@pytest.mark.parametrize("how", ["killed", "paused"])
async def test_all_members_down_is_etcd_unavailable_within_the_deadline(
    etcd_cluster: EtcdCluster, how: str
) -> None:
    """Every member killed (connection refused) or paused (no answer): EtcdUnavailable, within
    timeout_s per endpoint."""
    client = EtcdClient(etcd_cluster.endpoints, timeout_s=TIMEOUT_S)
    try:
        await client.put(f"{PREFIX}k", "before")
        for member in etcd_cluster.members:
            member.kill() if how == "killed" else member.pause()
        calls = [client.get(f"{PREFIX}k"), client.keepalive(1), client.put(f"{PREFIX}k", "x")]
        if how == "paused":  # each takes the whole contract: one is enough
            for call in calls[1:]:
                call.close()
            calls = calls[:1]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await call
            took = time.monotonic() - started
            print(
                f"\nall members {how}: EtcdUnavailable after {took:.3f} s (contract {contract_s(client):g} s)"
            )
            assert took < contract_s(client)
    finally:
        await client.close()


async def test_a_member_without_quorum_says_so_at_once(etcd_cluster: EtcdCluster) -> None:
    """Two of three members killed: the one left has no raft leader and, asked to require one,
    answers "no leader" at once — EtcdUnavailable (try elsewhere), not an EtcdError, and well
    before a timeout (etcd itself would hold the request for 7 s)."""
    survivor, *others = etcd_cluster.members
    client = EtcdClient([survivor.url], timeout_s=3.0)
    try:
        await client.put(f"{PREFIX}k", "before")
        lease, _ = await client.grant(30)
        for member in others:
            member.kill()
        started = time.monotonic()
        while (survivor.status() or {}).get("leader"):
            assert time.monotonic() - started < 10, "the survivor still has a raft leader"
            await asyncio.sleep(0.05)
        print(f"\nsurvivor without a raft leader {time.monotonic() - started:.2f} s after the kills")
        for call in (client.get(f"{PREFIX}k"), client.keepalive(lease), client.grant(5)):
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="no leader"):
                await call
            print(f"EtcdUnavailable (no leader) after {time.monotonic() - started:.3f} s")
        # A watch that cannot be set up waits out its time and says "no change seen".
        assert not await client.wait_change(f"{PREFIX}k", 1, 0.2)
    finally:
        await client.close()


async def test_a_member_restarted_serves_again(etcd_cluster: EtcdCluster) -> None:
    """A killed member started again (same data, same ports) serves the data written meanwhile."""
    victim = etcd_cluster.raft_followers()[0]
    only_first = EtcdClient([victim.url], timeout_s=TIMEOUT_S)
    others = EtcdClient([u for u in etcd_cluster.endpoints if u != victim.url], timeout_s=TIMEOUT_S)
    try:
        victim.kill()
        await others.put(f"{PREFIX}k", "written while m1 was down")
        with pytest.raises(EtcdUnavailable):
            await only_first.get(f"{PREFIX}k")
        took = victim.start()
        print(f"\nmember restarted and healthy after {took:.2f} s")
        kv = await only_first.get(f"{PREFIX}k")
        assert kv is not None
        assert "written while m1 was down" == kv.text
    finally:
        await only_first.close()
        await others.close()


# -- authentication -----------------------------------------------------------------------------


def etcdctl(cluster: EtcdCluster, *args: str, user: str | None = None) -> str:
    binary = require_binary("etcdctl", "etcd-client")
    argv = [binary, f"--endpoints={cluster.etcdctl_endpoints}", "--command-timeout=5s"]
    if user:
        argv.append(f"--user={user}")
    result = run([*argv, *args], 15, env={**os.environ, "ETCDCTL_API": "3"})
    assert 0 == result.returncode, f"etcdctl {' '.join(args)}: {result.stderr}"
    return result.stdout


async def test_user_and_password(etcd_cluster: EtcdCluster) -> None:
    """With auth enabled: the right credentials work on every endpoint, a token made invalid
    (auth disabled and enabled again) is renewed, wrong or missing credentials are an
    EtcdError (etcd answered), not EtcdUnavailable."""
    etcdctl(etcd_cluster, "user", "add", "root:s3cret")
    etcdctl(etcd_cluster, "auth", "enable")
    right = EtcdClient(etcd_cluster.endpoints, timeout_s=TIMEOUT_S, user="root", password="s3cret")
    wrong = EtcdClient(etcd_cluster.endpoints, timeout_s=TIMEOUT_S, user="root", password="nope")
    anonymous = EtcdClient(etcd_cluster.endpoints, timeout_s=TIMEOUT_S)
    try:
        lease, _ = await right.grant(10)
        await right.put(f"{PREFIX}secret", "x", lease=lease)
        assert 10.0 == await right.keepalive(lease)
        token = right._token
        assert token is not None

        etcdctl(etcd_cluster, "auth", "disable", user="root:s3cret")
        etcdctl(etcd_cluster, "auth", "enable")
        kv = await right.get(f"{PREFIX}secret")  # the old token is refused; a new one is fetched
        assert kv is not None
        assert "x" == kv.text
        assert token != right._token

        etcd_cluster.raft_followers()[0].kill()  # the token is valid on the other members too
        assert await right.get(f"{PREFIX}secret") is not None

        for client, what in ((wrong, "refused the credentials"), (anonymous, "user name is empty")):
            with pytest.raises(EtcdError) as caught:
                await client.get(f"{PREFIX}secret")
            assert not isinstance(caught.value, EtcdUnavailable)
            assert what in str(caught.value)
    finally:
        for client in (right, wrong, anonymous):
            await client.close()
