"""Office verdicts shared among vantages through etcd, combined by the core into one round.

Theory of operation. Each vantage keeps its latest verdict of every office (what its own monitor
said last) and writes them, as one JSON document, to `<prefix>verdicts/<vantage>` on its own
lease: a vantage that dies or is cut off stops voting when its lease ends, and a document older
than `stale_s` is not counted either (a vantage whose monitor is wedged while its lease lives).
Every vantage reads every document each round and applies one `RoundObserved` (votes, quorum)
to its core: the leader acts on it; followers keep the same view of which offices are closed,
so that whoever leads next knows. Deciding — DOWN only from a quorum, a minority's DOWN an
UNREACHABLE with a split-view alert, a vantage that sees most offices down abstaining — is the
core's (`baton.core`); this module only carries the votes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping

from baton.adapters.etcd import EtcdClient
from baton.core.events import OfficeObserved, RoundObserved
from baton.core.model import OfficeVerdict
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
