"""Wallboard sessions (pure: the time is an argument): one-time tickets, expiry, bounds."""

from __future__ import annotations

import itertools

from baton.wallboard import TICKET_TTL_S, Sessions


def counter_tokens() -> Sessions:
    numbers = itertools.count(1)
    return Sessions(max_tickets=3, max_sessions=2, token=lambda: f"tok-{next(numbers)}")


def test_a_ticket_opens_one_session_once() -> None:
    """Redeeming a ticket gives a cookie for a session of the asked length; a second try gets nothing."""
    sessions = counter_tokens()
    ticket, expires = sessions.issue_ticket("alice", 600.0, now=1000.0)
    assert 1000.0 + TICKET_TTL_S == expires
    opened = sessions.redeem(ticket, now=1010.0)
    assert opened is not None
    cookie, session = opened
    assert ("alice", 1010.0, 1610.0) == (session.who, session.created, session.expires)
    assert cookie != ticket
    assert cookie not in session.key  # only its digest is kept
    assert sessions.redeem(ticket, now=1011.0) is None
    assert session == sessions.find(cookie, now=1609.9)


def test_an_expired_ticket_is_refused_and_spent() -> None:
    """A ticket past TICKET_TTL_S opens nothing, and is gone."""
    sessions = counter_tokens()
    ticket, expires = sessions.issue_ticket("alice", 600.0, now=1000.0)
    assert sessions.redeem(ticket, now=expires) is None
    assert sessions.redeem(ticket, now=1001.0) is None


def test_a_session_ends_at_its_expiry_and_is_forgotten() -> None:
    """At `expires` the session is refused, and stays refused even if the clock steps back."""
    sessions = counter_tokens()
    ticket, _ = sessions.issue_ticket("alice", 60.0, now=0.0)
    opened = sessions.redeem(ticket, now=0.0)
    assert opened is not None
    cookie, _ = opened
    assert sessions.find(cookie, now=59.0) is not None
    assert sessions.find(cookie, now=60.0) is None
    assert sessions.find(cookie, now=30.0) is None
    assert 0 == sessions.count


def test_revoke_ends_a_session() -> None:
    """Revoked by its key, a session's cookie opens nothing."""
    sessions = counter_tokens()
    opened = sessions.redeem(sessions.issue_ticket("alice", 60.0, now=0.0)[0], now=0.0)
    assert opened is not None
    cookie, session = opened
    assert sessions.revoke(session.key)
    assert sessions.find(cookie, now=1.0) is None
    assert not sessions.revoke(session.key)


def test_tickets_and_sessions_are_bounded_oldest_first() -> None:
    """Beyond the bounds the oldest ticket / session is dropped, so memory cannot grow without end."""
    sessions = counter_tokens()
    tickets = [sessions.issue_ticket("alice", 600.0, now=float(i))[0] for i in range(4)]
    assert sessions.redeem(tickets[0], now=5.0) is None  # dropped: only 3 tickets are kept
    cookies = []
    for ticket in tickets[1:]:
        opened = sessions.redeem(ticket, now=5.0)
        assert opened is not None
        cookies.append(opened[0])
    assert sessions.find(cookies[0], now=6.0) is None  # dropped: only 2 sessions are kept
    assert [True, True] == [sessions.find(c, now=6.0) is not None for c in cookies[1:]]
