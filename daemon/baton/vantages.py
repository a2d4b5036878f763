"""Office verdicts shared among vantages through etcd, combined by the core into one round.

Theory of operation. Each vantage keeps its latest verdict of every office (what its own monitor
said last) and writes them, as one JSON document, to `<prefix>verdicts/<vantage>` on its own
lease: a vantage that dies or is cut off stops voting when its lease ends, and a document older
than `stale_s` is not counted either (a vantage whose monitor is wedged while its lease lives).
The leader reads every document each round and applies one `RoundObserved` (votes, quorum) to
its core, and publishes its state (`<prefix>state`, on its lease: every office's phase, closure,
alternate, pending devices, and the pause, shadow and storm flags). Followers do not decide:
they adopt what the leader published (`LeaderReported`, only what changed), so that whoever
leads next knows every office's story — a run under way there becomes FAILED if this vantage
comes to lead before it ends (its journal is on the other vantage). Deciding — DOWN only from a
quorum, a minority's DOWN an UNREACHABLE with a split-view alert, a vantage that sees most
offices down abstaining — is the core's (`baton.core`); this module only carries the votes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from baton.adapters.etcd import EtcdClient, put
from baton.codec import dumps, office_from_dict, office_to_dict
from baton.core.events import LeaderReported, OfficeObserved, RoundObserved
from baton.core.model import OfficeVerdict, State
from baton.logs import get_logger

log = get_logger(component="vantages")

Votes = dict[str, dict[str, tuple[OfficeVerdict, str]]]


class VerdictBoard:
    """This vantage's verdicts out, every vantage's in (see the module docstring)."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str,
        me: str,
        quorum: int,
        voters: Collection[str] = (),
        stale_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.me = me
        self.quorum = quorum
        self.voters = frozenset(voters)  # empty: whoever publishes
        self.stale_s = stale_s
        self._clock = clock
        self.mine: dict[str, tuple[OfficeVerdict, str]] = {}
        self.seen: dict[str, float] = {}  # vantage -> when its counted document was written
        self._adopted: dict[str, str] = {}  # office -> the leader's JSON of it last adopted
        self._adopted_flags = ""

    @property
    def key(self) -> str:
        return f"{self.prefix}verdicts/{self.me}"

    def note(self, event: OfficeObserved) -> None:
        self.mine[event.office] = (event.verdict, event.detail)

    async def publish(self, lease: int) -> None:
        doc = {
            "vantage": self.me,
            "at": self._clock(),
            "offices": {o: [v.value, d] for o, (v, d) in sorted(self.mine.items())},
        }
        await self.client.put(self.key, json.dumps(doc), lease=lease)

    async def collect(self, answering: Mapping[str, frozenset[str]]) -> RoundObserved:
        """Every counted vantage's votes, as the core's input for this round."""
        kvs = await self.client.get_prefix(f"{self.prefix}verdicts/")
        now = self._clock()
        docs: dict[str, Mapping[str, object]] = {}
        for kv in kvs:
            vantage = kv.key.removeprefix(f"{self.prefix}verdicts/")
            try:
                doc = kv.json()
                at = float(doc["at"])
                offices = doc["offices"]
                if not isinstance(offices, dict):
                    raise TypeError("offices is not a mapping")
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("vantages.bad_document", vantage=vantage, error=str(exc))
                continue
            if self.voters and vantage not in self.voters:
                continue
            if now - at > self.stale_s:
                continue
            docs[vantage] = offices
            self.seen[vantage] = at
        return RoundObserved(votes=_votes(docs), quorum=self.quorum, answering=dict(answering))

    async def publish_state(self, lease: int, state: State, term: Sequence[Mapping[str, Any]]) -> bool:
        """The leader's state, for the followers (flap history left out: it changes every round),
        written only while `term` (the leader's compare) holds. False: it did not, nothing written."""
        doc = {
            "vantage": self.me,
            "epoch": state.epoch,
            "at": self._clock(),
            "flags": _flags(state),
            "offices": {o: office_to_dict(replace(s, history=())) for o, s in sorted(state.offices.items())},
        }
        written = await self.client.txn(term, [put(f"{self.prefix}state", dumps(doc), lease)])
        if not written.succeeded:
            log.warning("vantages.state_not_written", why="this vantage's term has ended")
        return written.succeeded

    async def leader_report(self, leader: str | None) -> LeaderReported | None:
        """What the leading vantage published that this follower has not adopted yet (None: nothing)."""
        if leader is None:
            return None
        kv = await self.client.get(f"{self.prefix}state")
        if kv is None:
            return None
        try:
            doc = kv.json()
            if doc.get("vantage") != leader:
                return None  # written by a leader that is gone: its lease has not ended yet
            flags = doc["flags"]
            changed = {
                office: text
                for office, data in doc["offices"].items()
                if self._adopted.get(office) != (text := dumps(data))
            }
            offices = {office: office_from_dict(doc["offices"][office]) for office in changed}
            report = LeaderReported(
                leader=leader,
                epoch=int(doc["epoch"]),
                offices=offices,
                paused=bool(flags["paused"]),
                shadow=bool(flags["shadow"]),
                storm=bool(flags["storm"]),
                recent_down=tuple((float(at), str(o)) for at, o in flags["recent_down"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("vantages.bad_state", leader=leader, error=str(exc))
            return None
        if not changed and dumps(flags) == self._adopted_flags:
            return None
        self._adopted.update(changed)
        self._adopted_flags = dumps(flags)
        return report

    def forget_adopted(self) -> None:
        """Leading now: the next time it follows, it adopts everything again."""
        self._adopted.clear()
        self._adopted_flags = ""


def _flags(state: State) -> dict[str, Any]:
    return {
        "paused": state.paused,
        "shadow": state.shadow,
        "storm": state.storm,
        "recent_down": [list(entry) for entry in state.recent_down],
    }


def _votes(docs: Mapping[str, Mapping[str, object]]) -> Votes:
    votes: Votes = {}
    for vantage, offices in docs.items():
        for office, said in offices.items():
            if not (isinstance(said, list) and len(said) == 2):
                log.warning("vantages.bad_vote", vantage=vantage, office=office)
                continue
            try:
                votes.setdefault(office, {})[vantage] = (OfficeVerdict(said[0]), str(said[1]))
            except ValueError:
                log.warning("vantages.bad_vote", vantage=vantage, office=office)
    return votes
