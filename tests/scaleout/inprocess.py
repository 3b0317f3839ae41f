"""A RedisConnection in the test's own process (its reactor) to a test's redis-server."""

from __future__ import annotations

from twisted.internet import defer, reactor, task

from txvoice.config import VoiceConfig
from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.settings import parse_redis_settings


@defer.inlineCallbacks
def connected(url: str, prefix: str, name: str = "t", **config):
    """A started RedisConnection to ``url`` with key prefix ``prefix`` (node ``name``; ``config``: more
    VoiceConfig fields), once it is up (5 s at most)."""
    settings = parse_redis_settings(VoiceConfig(redis=url, redis_prefix=prefix, **config))
    conn = RedisConnection(settings, reactor, name)
    conn.startService()
    for _ in range(100):
        if conn.up:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    assert conn.up, conn.reason
    return conn
