"""Where sessions are kept: in this process now, in Redis when the server scales out."""

from __future__ import annotations

from typing import Iterator

from zope.interface import Interface, implementer

from txvoice.session.session import Session


class ISessionRegistry(Interface):
    """The set of live sessions.  All methods are called on the reactor thread."""

    def add(session: Session) -> None:
        """Register a new session."""

    def remove(session: Session) -> None:
        """Forget a closed session (idempotent)."""

    def changed(session: Session) -> None:
        """
        A registered session's user, tenant or conversation became known or changed (in-protocol
        auth, a call's ``session_start``, a resume, joining a conversation): a registry shared by
        nodes re-writes its entry now rather than at its next refresh.  Never called per frame.
        :meth:`add` makes it the session's ``on_identity``, so :meth:`Session.identify` calls it.
        """

    def get(session_id: str) -> Session | None:
        """The live session with this id, or None."""

    def __len__() -> int:
        """How many sessions are live."""

    def __iter__() -> Iterator[Session]:
        """Iterate over a snapshot of the live sessions."""

    def by_conversation(conversation_id: str) -> list[Session]:
        """Sessions taking part in a conversation."""

    def by_user(user_id: str) -> list[Session]:
        """Sessions of one user."""


@implementer(ISessionRegistry)
class LocalSessionRegistry:
    """An in-process registry: a dict keyed by session id."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        session.on_identity = self.changed

    def remove(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
            session.on_identity = None

    def changed(self, session: Session) -> None:
        """Nothing to do: the session itself is what is kept."""

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def by_conversation(self, conversation_id: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.conversation_id == conversation_id]

    def by_user(self, user_id: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.user_id == user_id]
