"""
Unused session tokens per principal counted across the cluster: ``--session-tokens-per-user``
holds for a user whatever node behind the load balancer issues their tokens.

``quota:tokens:<sha256([user, tenant])>`` is a sorted set of the principal's unused tokens (their
digests) scored by when each expires, in Redis's own time (``TIME`` in the script, so the nodes'
clocks do not matter).  :meth:`RedisTokenQuota.reserve` is one script: drop the expired, count,
add when under the limit (else answer the soonest expiry), keep the set as long as its newest
token.  A token redeemed on any node leaves the set there (``ZREM``).  A node killed with SIGKILL
leaves its tokens counted only until they expire.

While Redis cannot be reached the count falls back to this node's own (what it issued, which it
always keeps too): the limit then holds per node, and Redis is never waited for beyond the
command's timeout.  (Session tokens themselves are refused with 503 then: the token store is in
Redis too.)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.writes import OutageNotice
from txvoice.security.token_quota import ITokenQuota, LocalTokenQuota, Who


#: KEYS[1] the principal's set; ARGV digest, ttl ms, limit -> {1} counted, {0, ms until the soonest expires}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, 0}
"""


def principal_key(who: Who) -> str:
    return hashlib.sha256(json.dumps(list(who), separators=(",", ":")).encode("utf-8")).hexdigest()


@implementer(ITokenQuota)
class RedisTokenQuota:
    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis
        #: This node's own count: what it reserved, and the whole count while Redis is unreachable.
        self._here = LocalTokenQuota()
        self.local = self._here.local
        self.fallbacks = 0  # reserves counted by this node alone (Redis unreachable)
        self._notice = OutageNotice("counting session tokens per user in Redis (this node counts alone meanwhile)")

    def _key(self, who: Who) -> str:
        return self.redis.key("quota", "tokens", principal_key(who))

    def reserve(self, who: Who, digest: str, ttl: float, limit: int, now: float) -> defer.Deferred[float | None]:
        d = self.redis.eval(_RESERVE, [self._key(who)], [digest, max(1, int(ttl * 1000)), limit])

        def counted(result: list[Any]) -> float | None:
            self._notice.succeeded(None)
            if not int(result[0]):
                return max(0.0, int(result[1]) / 1000.0)
            self.local.add(who, digest, now + ttl)
            return None

        def fallback(failure: Failure) -> defer.Deferred[float | None]:
            self.fallbacks += 1
            self._notice.failed(failure)
            return self._here.reserve(who, digest, ttl, limit, now)

        return d.addCallbacks(counted, fallback)

    def release(self, who: Who, digest: str) -> None:
        self.local.remove(who, digest)
        self.redis.call("ZREM", self._key(who), digest).addErrback(lambda f: None)  # else it expires
