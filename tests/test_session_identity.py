"""
A session reports a change of who it is (user, tenant, conversation) to the registry holding it:
``Session.identify`` is the one way dialects change it, so a registry shared by nodes re-writes the
entry at once without each dialect having to call ``registry.changed`` by hand.
"""

from __future__ import annotations

import pytest

from txvoice.session.registry import LocalSessionRegistry
from txvoice.session.session import Session


def test_identify_sets_what_it_is_given_and_reports_a_change_once() -> None:
    session = Session("127.0.0.1:1", user_id="u1")
    told: list[tuple] = []
    session.on_identity = lambda s: told.append((s.user_id, s.tenant, s.conversation_id))
    session.identify(tenant="t", conversation_id="c")
    assert told == [("u1", "t", "c")]
    session.identify(user_id="u1", tenant="t")  # nothing changed: nothing to re-write
    assert len(told) == 1
    session.identify(conversation_id=None)
    assert told[-1] == ("u1", "t", None)
    with pytest.raises(TypeError):
        session.identify(state="closed")
    assert len(told) == 2


def test_a_session_not_in_a_registry_just_changes() -> None:
    session = Session("127.0.0.1:1")
    session.identify(user_id="u2")
    assert session.user_id == "u2" and session.on_identity is None


def test_the_registry_that_holds_a_session_is_told_until_it_lets_it_go() -> None:
    told: list[Session] = []

    class Watching(LocalSessionRegistry):
        def changed(self, session: Session) -> None:
            told.append(session)

    registry = Watching()
    session = Session("127.0.0.1:1")
    registry.add(session)
    session.identify(user_id="u3")
    assert told == [session]
    registry.remove(session)
    session.identify(user_id="u4")
    assert told == [session] and session.on_identity is None
    assert registry.by_user("u4") == []
