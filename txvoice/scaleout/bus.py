"""
The event bus over Redis pub/sub: S1's ``broadcast_event(type, data, conversation_id=,
user_id=)`` reaches the addressed sessions on every node.

A broadcast is delivered to this node's sessions at once (the local bus) and published on
``events:conversation:<id>``, ``events:user:<id>``, ``events:session:<id>`` or ``events:all``;
every node subscribes to ``events:*`` and delivers what other nodes publish to its own sessions.
A broadcast to a session of this node is not published (a session lives on one node).  While
Redis is down broadcasts reach this node's sessions only (the publish fails and is counted).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.events.bus import IEventBus, LocalEventBus
from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.writes import OutageNotice
from txvoice.session.registry import ISessionRegistry


def channel_for(conversation_id: str | None, user_id: str | None, session_id: str | None) -> str:
    if session_id is not None:
        return f"events:session:{session_id}"
    if conversation_id is not None:
        return f"events:conversation:{conversation_id}"
    if user_id is not None:
        return f"events:user:{user_id}"
    return "events:all"


@implementer(IEventBus)
class RedisEventBus:
    """Local delivery plus Redis pub/sub between nodes."""

    def __init__(self, registry: ISessionRegistry, redis: RedisConnection) -> None:
        self.local = LocalEventBus(registry)
        self.registry = registry
        self.redis = redis
        self.published = 0
        self.received = 0
        self.publish_failures = 0
        self._notice = OutageNotice("publishing broadcasts to the other nodes (they reach this node only)")
        redis.subscribe("events:*", self._received)

    def broadcast(
        self,
        event_type: str,
        data: dict[str, Any],
        conversation_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> int:
        reached = self.local.broadcast(event_type, data, conversation_id, user_id, session_id)
        if session_id is not None and self.registry.get(session_id) is not None:
            return reached
        message = json.dumps({"origin": self.redis.node_id, "event_type": event_type, "data": data,
                              "conversation_id": conversation_id, "user_id": user_id, "session_id": session_id},
                             separators=(",", ":"))
        self.published += 1
        self.redis.publish(channel_for(conversation_id, user_id, session_id), message).addCallbacks(
            self._notice.succeeded, self._failed)
        return reached

    def _failed(self, failure: Failure) -> None:
        self.publish_failures += 1
        self._notice.failed(failure)  # once per outage: a warning a broadcast would be a log storm

    def _received(self, channel: str, message: str) -> None:
        event = json.loads(message)
        if event.get("origin") == self.redis.node_id:
            return  # delivered here when it was broadcast
        self.received += 1
        self.local.broadcast(event["event_type"], event.get("data") or {}, event.get("conversation_id"),
                             event.get("user_id"), event.get("session_id"))
