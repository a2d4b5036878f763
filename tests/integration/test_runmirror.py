"""A run's records shared in a real etcd (`baton.runmirror`): written before the journal call
returns, only under the writer's term, and adopted by the next leader over what its own journal
holds, by the rules of the module's docstring."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from baton.adapters.etcd import EtcdClient, EtcdUnavailable, TxnResult, created, delete
from baton.core.model import RunKind
from baton.journal import Journal, RunRecord, StepStatus
from baton.playbook.runner import FenceLost
from baton.runmirror import KEEP_FINISHED_S, RunMirror, plan_parts, run_doc, run_from_doc, steps_doc
from baton.runs import NOT_STARTED
from tests.peers.etcd import EtcdProcess

pytestmark = pytest.mark.peer("etcd")

PREFIX = "/baton-mirror/"
TERM_KEY = f"{PREFIX}leader"


class Term:
    """A leader key of the test's own: held while its creation revision is the one we took."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.revision = 0
        self.held = True

    async def take(self) -> None:
        await self.client.put(TERM_KEY, "me")
        kv = await self.client.get(TERM_KEY)
        assert kv is not None
        self.revision = kv.create_revision

    async def lose(self) -> None:
        """Another vantage took over: the key deleted and created again (a new revision)."""
        await self.client.txn([], [delete(TERM_KEY)])
        await self.client.put(TERM_KEY, "another")

    def compare(self) -> list[dict[str, Any]]:
        return [created(TERM_KEY, self.revision)]


@pytest.fixture
async def client(etcd_server: EtcdProcess) -> AsyncIterator[EtcdClient]:
    etcd = EtcdClient([etcd_server.url], timeout_s=2.0)
    try:
        yield etcd
    finally:
        await etcd.close()


def _journal(path: Path, client: EtcdClient, term: Term, clock: float = 1000.0) -> tuple[Journal, RunMirror]:
    journal = Journal.open(path)
    mirror = RunMirror(client, PREFIX, journal, term.compare, lambda: term.held, clock=lambda: clock)
    journal.after_call = mirror.after
    return journal, mirror


async def _shared(client: EtcdClient, run_id: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    run = await client.get(f"{PREFIX}runs/{run_id}/run")
    devices = {
        kv.key.rsplit("/", 1)[1]: kv.text for kv in await client.get_prefix(f"{PREFIX}runs/{run_id}/dev/")
    }
    return (None if run is None else run.json()), devices


async def _a_run_under_way(journal: Journal, run_id: str = "r-1") -> int:
    """A run with a plan, one device's commit done and its confirm journaled at intent."""
    await journal.call(journal.start_run, run_id, "a", RunKind.HANDOVER, "b", "closed", "core", 1.0)
    await journal.call(journal.set_plan, run_id, '{"plan": "of the run"}', 60.0)
    await journal.call(journal.set_confirm, run_id, 61.0, f"baton-{run_id}")
    commit = await journal.call(journal.step_intent, run_id, "a-core1", 2, "commit", 2.0)
    await journal.call(journal.step_result, commit, StepStatus.DONE, "committed", 2.5, {"cc": True})
    await journal.call(journal.decide, run_id, "forward", "every device passed verify", 3.0)
    return int(await journal.call(journal.step_intent, run_id, "a-core1", 3, "confirm", 3.5))


async def test_every_run_write_is_in_etcd_when_the_journal_call_returns(
    tmp_path: Path, client: EtcdClient
) -> None:
    term = Term(client)
    await term.take()
    journal, _ = _journal(tmp_path / "a.sqlite3", client, term)
    with journal:
        confirm = await _a_run_under_way(journal)
        doc, devices = await _shared(client, "r-1")
        local = journal.run("r-1")
        assert local is not None
        assert doc is not None
        # The run as etcd holds it is the journal's, step for step.
        parts = {
            int(kv.key.rsplit("/", 1)[1]): kv.text
            for kv in await client.get_prefix(f"{PREFIX}runs/r-1/plan/")
        }
        assert local == run_from_doc(doc, local.steps, parts)
        assert {"a-core1": steps_doc(journal.device_steps("r-1", "a-core1"))} == devices
        assert ("forward", "baton-r-1") == (doc["decision"], doc["persist_id"])
        assert ["done", "intent"] == [s["status"] for s in json.loads(devices["a-core1"])]
        await journal.call(journal.step_result, confirm, StepStatus.DONE, "confirmed", 4.0)
        await journal.call(journal.finish_run, "r-1", "ok", "handed over", 5.0, done=frozenset({"a-core1"}))
        doc, devices = await _shared(client, "r-1")
        assert doc is not None
        # Finished: how it ended stays (a new leader learns it), the step records go.
        assert ("ok", 5.0, ["a-core1"], 0) == (doc["result"], doc["finished"], doc["done"], doc["plan_parts"])
        assert {} == devices
        assert [] == await client.get_prefix(f"{PREFIX}runs/r-1/plan/")
        # The row goes by itself after KEEP_FINISHED_S: a lease of its own, kept alive by nobody.
        row = await client.get(f"{PREFIX}runs/r-1/run")
        assert row is not None
        assert KEEP_FINISHED_S - 60 < await client.keepalive(row.lease) <= KEEP_FINISHED_S


async def test_a_vantage_whose_term_ended_shares_nothing_and_stops(
    tmp_path: Path, client: EtcdClient
) -> None:
    term = Term(client)
    await term.take()
    journal, _ = _journal(tmp_path / "a.sqlite3", client, term)
    with journal:
        await journal.call(journal.start_run, "r-2", "a", RunKind.HANDOVER, "b", "closed", "core", 1.0)
        await journal.call(journal.set_plan, "r-2", "{}", 60.0)
        await term.lose()
        with pytest.raises(FenceLost, match="another vantage leads"):
            await journal.call(journal.step_intent, "r-2", "a-core1", 0, "commit", 2.0)
        assert {} == (await _shared(client, "r-2"))[1]  # the intent is not shared: the runner stops
        term.held = False
        with pytest.raises(FenceLost, match="term ended"):
            await journal.call(journal.decide, "r-2", "back", "stop", 3.0)
        doc = (await _shared(client, "r-2"))[0]
        assert doc is not None
        assert doc["decision"] is None


async def test_the_next_leader_adopts_what_etcd_holds_over_its_own_journal(
    tmp_path: Path, client: EtcdClient
) -> None:
    term = Term(client)
    await term.take()
    old, _ = _journal(tmp_path / "old.sqlite3", client, term)
    new_journal = Journal.open(tmp_path / "new.sqlite3")
    with old, new_journal:
        await _a_run_under_way(old, "r-3")
        # The new leader's own journal: r-3 from an earlier term of its own, one step behind and
        # wrongly finished by a recovery that ran while it did not lead; r-4 it decided and never
        # shared (it died before the plan was); r-5 finished on both; r-6 finished long ago.
        new_journal.start_run("r-3", "a", RunKind.HANDOVER, "b", "closed", "core", 1.0)
        new_journal.finish_run("r-3", "failed", "recovered while following", 2.0)
        new_journal.start_run("r-4", "c", RunKind.HANDOVER, "d", "closed", "core", 1.0)
        for run_id, finished in (("r-5", 900.0), ("r-6", 1000.0 - KEEP_FINISHED_S - 1)):
            await old.call(old.start_run, run_id, "e", RunKind.HANDBACK, "f", "open", "core", 1.0)
            await old.call(old.finish_run, run_id, "ok", "handed back", finished)
            new_journal.start_run(run_id, "e", RunKind.HANDBACK, "f", "open", "core", 1.0)
            new_journal.finish_run(run_id, "ok", "handed back here too", finished)
        await client.put(f"{PREFIX}runs/r-bad/run", "{not json")
        # r-10: a device's records unreadable: the run is not adopted at all (read without that
        # device, it would look never touched, and nothing would undo it).
        await old.call(old.start_run, "r-10", "g", RunKind.HANDOVER, "h", "closed", "core", 1.0)
        await old.call(old.set_plan, "r-10", "{}", 60.0)
        await old.call(old.step_intent, "r-10", "g-core1", 0, "commit", 2.0)
        await client.put(f"{PREFIX}runs/r-10/dev/g-agg1", "[{garbage")
        # r-11: parts of a plan without the row (its leader died in between): removed.
        await client.put(f"{PREFIX}runs/r-11/plan/0", "eJwDAAAAAAE=")

        mirror = RunMirror(client, PREFIX, new_journal, term.compare, lambda: term.held, clock=lambda: 1000.0)
        new_journal.after_call = mirror.after
        assert ["r-3"] == await mirror.adopt()

        theirs, mine = old.run("r-3"), new_journal.run("r-3")
        assert theirs is not None
        assert mine is not None
        assert mine.finished is None  # reopened: etcd's story of the run, to be recovered
        assert [(s.device, s.name, s.status) for s in theirs.steps] == [
            (s.device, s.name, s.status) for s in mine.steps
        ]
        assert (theirs.plan, theirs.decision, theirs.persist_id) == (
            mine.plan,
            mine.decision,
            mine.persist_id,
        )
        never_shared = new_journal.run("r-4")
        assert never_shared is not None
        assert NOT_STARTED == never_shared.result
        assert "handed back here too" == (new_journal.run("r-5") or never_shared).detail  # left alone
        assert await client.get(f"{PREFIX}runs/r-6/run") is None  # finished long ago: removed
        assert await client.get(f"{PREFIX}runs/r-5/run") is not None
        assert new_journal.run("r-10") is None
        assert [] == await client.get_prefix(f"{PREFIX}runs/r-11/")
        assert ["r-3"] == [r.id for r in new_journal.unfinished_runs()]


async def test_a_plan_above_etcds_request_limit_is_shared_in_parts(
    tmp_path: Path, client: EtcdClient
) -> None:
    """A rendered plan that compresses to more than one etcd request (~1.5 MiB) still reaches
    the next leader whole; a part missing makes the run unreadable, never a wrong plan."""
    term = Term(client)
    await term.take()
    plan = json.dumps({"devices": [os.urandom(300).hex() for _ in range(8000)]})  # ~4.8 MB, incompressible
    journal, _ = _journal(tmp_path / "a.sqlite3", client, term)
    new_journal = Journal.open(tmp_path / "b.sqlite3")
    with journal, new_journal:
        await journal.call(journal.start_run, "r-8", "a", RunKind.HANDOVER, "b", "closed", "core", 1.0)
        await journal.call(journal.set_plan, "r-8", plan, 60.0)
        parts = await client.get_prefix(f"{PREFIX}runs/r-8/plan/")
        assert len(parts) >= 3
        mirror = RunMirror(client, PREFIX, new_journal, term.compare, lambda: term.held)
        assert ["r-8"] == await mirror.adopt()
        adopted = new_journal.run("r-8")
        assert adopted is not None
        assert plan == adopted.plan
        doc = json.loads((await client.get(f"{PREFIX}runs/r-8/run") or parts[0]).text)
        with pytest.raises(ValueError, match="part"):
            run_from_doc(doc, (), {0: parts[0].text})


@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")  # aiohttp, on the 2 MiB row
async def test_a_write_etcd_refuses_stops_the_run_and_steps_down(tmp_path: Path, client: EtcdClient) -> None:
    term = Term(client)
    await term.take()
    stepped_down: list[str] = []
    journal = Journal.open(tmp_path / "a.sqlite3")
    mirror = RunMirror(
        client, PREFIX, journal, term.compare, lambda: term.held, step_down=stepped_down.append
    )
    journal.after_call = mirror.after
    with journal:
        # A run row above etcd's request limit (an absurd reason): etcd answers, and refuses it.
        with pytest.raises(FenceLost, match="etcd refused"):
            await journal.call(
                journal.start_run, "r-9", "a", RunKind.HANDOVER, "b", "x" * (2 * 1024 * 1024), "core", 1.0
            )
        assert 1 == len(stepped_down)
        assert "cannot act" in stepped_down[0]


class LosesReplies(EtcdClient):
    """Real etcd, and the replies of the next `lose` transactions lost: the write is done in etcd,
    the caller hears that no member answered. `then` runs as a reply is lost (a term ending)."""

    lose = 0
    then: Any = None

    async def txn(
        self,
        compare: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
    ) -> TxnResult:
        result = await super().txn(compare, success, failure)
        if self.lose > 0:
            self.lose -= 1
            if self.then is not None:
                self.then()
            raise EtcdUnavailable("the reply was lost")
        return result


async def test_a_lost_reply_is_written_again_and_a_second_adoption_changes_nothing(
    tmp_path: Path, etcd_server: EtcdProcess
) -> None:
    """Every write's reply lost once (twice for the plan and its row): each is retried, etcd holds
    the journal's story exactly once, and the next leader adopting it twice (a takeover, lost,
    won again) ends with the same run either time."""
    client = LosesReplies([etcd_server.url], timeout_s=2.0)
    try:
        term = Term(client)
        await term.take()
        errors: list[int] = []
        old = Journal.open(tmp_path / "old.sqlite3")
        mirror = RunMirror(
            client, PREFIX, old, term.compare, lambda: term.held, count_error=lambda: errors.append(1)
        )
        old.after_call = mirror.after
        new_journal = Journal.open(tmp_path / "new.sqlite3")
        with old, new_journal:
            client.lose = 1
            await old.call(old.start_run, "r-12", "a", RunKind.HANDOVER, "b", "closed", "core", 1.0)
            client.lose = 2  # the plan's part, then the row naming it
            await old.call(old.set_plan, "r-12", '{"plan": "of the run"}', 60.0)
            for call, args in (
                (old.set_confirm, ("r-12", 61.0, "baton-r-12")),
                (old.step_intent, ("r-12", "a-core1", 2, "commit", 2.0)),
            ):
                client.lose = 1
                await old.call(call, *args)
            [commit] = old.device_steps("r-12", "a-core1")
            client.lose = 1
            await old.call(old.step_result, commit.id, StepStatus.DONE, "committed", 2.5, {"cc": True})
            assert 6 == len(errors)  # each lost reply counted (baton_etcd_errors_total)
            doc, devices = await _shared(client, "r-12")
            local = old.run("r-12")
            assert local is not None
            assert doc is not None
            assert {"a-core1": steps_doc(old.device_steps("r-12", "a-core1"))} == devices
            assert [1] == [len(json.loads(text)) for text in devices.values()]  # the step once
            parts = {
                int(kv.key.rsplit("/", 1)[1]): kv.text
                for kv in await client.get_prefix(f"{PREFIX}runs/r-12/plan/")
            }
            assert local == run_from_doc(doc, local.steps, parts)

            adopter = RunMirror(client, PREFIX, new_journal, term.compare, lambda: term.held)
            assert ["r-12"] == await adopter.adopt()
            first = new_journal.run("r-12")
            assert ["r-12"] == await adopter.adopt()
            second = new_journal.run("r-12")
            assert first is not None
            assert second is not None
            strip = lambda r: [(s.device, s.name, s.status, s.facts) for s in r.steps]  # noqa: E731
            assert (
                strip(first)
                == strip(second)
                == strip(local)
                == [("a-core1", "commit", StepStatus.DONE, {"cc": True})]
            )
            assert (first.plan, first.persist_id, first.window_s) == (
                local.plan,
                local.persist_id,
                local.window_s,
            )
            assert replace(first, steps=()) == replace(second, steps=())

            # A reply lost as the term ends: the intent is in etcd, the runner stops before
            # acting on it (FenceLost), and the next leader reads the step as possibly done.
            client.lose, client.then = 1, lambda: setattr(term, "held", False)
            with pytest.raises(FenceLost, match="term ended"):
                await old.call(old.step_intent, "r-12", "a-core1", 3, "confirm", 3.0)
            _, devices = await _shared(client, "r-12")
            assert ["done", "intent"] == [s["status"] for s in json.loads(devices["a-core1"])]
    finally:
        await client.close()


def test_a_run_document_round_trips() -> None:
    record = RunRecord(
        "r-7", "a", RunKind.HANDOVER, "b", "why", "who", 1.0, None, None, "", 61.0, "p-7",
        decision="forward", decision_reason="verified", plan='{"x": "' + "y" * 5000 + '"}', window_s=60.0,
    )  # fmt: skip
    text = run_doc(record, 1)
    [part] = plan_parts(record.plan)
    assert len(part) < 1000  # the plan travels compressed
    assert record == run_from_doc(json.loads(text), (), {0: part})
