"""
Conversations on Redis: a conversation started on one node is continued on another with the same
state (when it started, its metadata, how many turns it has had).

``conv:<id>`` is a hash (``started_at``, ``turns``, ``metadata`` as JSON) that lives
``--redis-conversation-ttl`` seconds after its last change.  A node reads it when a session joins
the conversation or asks for its state, writes it when the metadata changes, and counts each
finished turn with ``HINCRBY`` (once per turn, never per audio frame).  Metadata is last writer
wins per conversation_start (the writer merges what it read first).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from txvoice.scaleout.connection import RedisConnection

_SAVE = """
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('HSETNX', KEYS[1], 'turns', 0)
redis.call('HSET', KEYS[1], 'metadata', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], 'started_at')
"""

_TURN = """
local n = redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""


class RedisConversationStore:
    def __init__(self, redis: RedisConnection, ttl: float) -> None:
        self.redis = redis
        self.ttl = max(1, int(ttl))

    def load(self, conversation_id: str) -> defer.Deferred[dict[str, Any] | None]:
        d = self.redis.call("HGETALL", self.redis.key("conv", conversation_id))

        def found(fields: Any) -> dict[str, Any] | None:
            if not fields:
                return None
            if isinstance(fields, list):  # RESP2 flat list
                fields = dict(zip(fields[::2], fields[1::2]))
            return {"started_at": float(fields.get("started_at", 0)), "turns": int(fields.get("turns", 0)),
                    "metadata": json.loads(fields.get("metadata") or "{}")}

        return d.addCallback(found)

    def save(self, conversation_id: str, started_at: float, metadata: dict[str, Any]) -> defer.Deferred[float]:
        d = self.redis.eval(_SAVE, [self.redis.key("conv", conversation_id)],
                            [repr(started_at), json.dumps(metadata, separators=(",", ":")), self.ttl])
        return d.addCallback(float)

    def count_turn(self, conversation_id: str) -> defer.Deferred[int]:
        return self.redis.eval(_TURN, [self.redis.key("conv", conversation_id)], [self.ttl])
