"""
Session tokens (``POST /auth/websocket``) on Redis: issued on one node, redeemed on any, once.

``put`` is ``SET <digest> <record> PX <ttl>``; ``take`` is ``GETDEL``, atomic in Redis, so a token
is single-use across the cluster.  Keys are SHA-256 digests of the tokens (the issuer's), never
the tokens.  While Redis is down both fail with ``redis_unavailable`` (HTTP 503): a token this
node cannot record or check is refused rather than honoured on one node only.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txvoice.scaleout.connection import RedisConnection
from txvoice.security.interfaces import ISessionTokenStore
from txvoice.security.session_tokens import record_from_json, record_to_json


@implementer(ISessionTokenStore)
class RedisSessionTokenStore:
    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        self.size = 0  # issued by this node and not yet redeemed here (approximate, for metrics)

    def put(self, key: str, record: Any, expires_at: float) -> defer.Deferred[None]:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))
        d = self.redis.call("SET", self.redis.key("token", key), record_to_json(record), "PX", ttl_ms)

        def stored(_: object) -> None:
            self.size += 1

        return d.addCallback(stored)

    def take(self, key: str) -> defer.Deferred[Any]:
        d = self.redis.call("GETDEL", self.redis.key("token", key))

        def found(raw: str | None) -> Any:
            if raw is None:
                return None
            self.size = max(0, self.size - 1)
            return record_from_json(raw)

        return d.addCallback(found)
