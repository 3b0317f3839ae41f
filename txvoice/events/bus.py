"""
Broadcasting events to sessions (S1 ``broadcast_event(type, data, conversation_id=, user_id=)``).

The local bus delivers through the session registry of this process; a Redis bus (scale-out)
implements the same interface by publishing and delivering what other nodes publish.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface, implementer

from txvoice.logging import NamespaceLogger
from txvoice.session.registry import ISessionRegistry
from txvoice.session.session import Session


class IEventSubscriber(Interface):
    """A session endpoint that can receive server events (the protocol provides it)."""

    def deliverEvent(event_type: str, data: dict[str, Any], conversation_id: str | None) -> None:
        """Send one event to this subscriber's client."""


class IEventBus(Interface):
    def broadcast(
        event_type: str,
        data: dict[str, Any],
        conversation_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> int:
        """Deliver an event to the addressed sessions (all when no address); return how many were reached here."""


@implementer(IEventBus)
class LocalEventBus:
    """Delivers to the sessions of this process."""

    log = NamespaceLogger(namespace="txvoice.events")

    def __init__(self, registry: ISessionRegistry) -> None:
        self.registry = registry

    def _targets(self, conversation_id: str | None, user_id: str | None, session_id: str | None) -> list[Session]:
        if session_id is not None:
            session = self.registry.get(session_id)
            return [session] if session is not None else []
        if conversation_id is not None:
            targets = self.registry.by_conversation(conversation_id)
            return [s for s in targets if user_id is None or s.user_id == user_id]
        if user_id is not None:
            return self.registry.by_user(user_id)
        return list(self.registry)

    def broadcast(
        self,
        event_type: str,
        data: dict[str, Any],
        conversation_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> int:
        reached = 0
        for session in self._targets(conversation_id, user_id, session_id):
            subscriber = session.connection
            if subscriber is None:
                continue
            try:
                subscriber.deliverEvent(event_type, data, conversation_id)
                reached += 1
            except Exception:
                self.log.failure("delivering {event_type} to {session_id} failed", event_type=event_type, session_id=session.id)
        return reached
