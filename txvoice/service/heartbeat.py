"""
Heartbeat: one ``LoopingCall`` pings every session and drops peers that stop answering.

Autobahn's auto-ping keeps two timers per connection; this sweeps all sessions from one timer,
which is cheaper with many sessions and deterministic under a test ``Clock``.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from txvoice.logging import NamespaceLogger
from txvoice.server.context import VoiceServer


class HeartbeatService(Service):
    """
    Sends a WebSocket ping every ``ping_interval``.  A ping unanswered for ``ping_timeout`` is a
    miss, and another ping goes out; after ``heartbeat_max_missed`` misses in a row the peer is
    dropped (S4: interval, timeout, maxMissed).  A pong or an application ``heartbeat`` resets it.
    """

    name = "heartbeat"
    log = NamespaceLogger(namespace="txvoice.network.heartbeat")

    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self._loop: LoopingCall | None = None

    @property
    def tick(self) -> float:
        config = self.server.config
        return max(min(config.ping_interval, config.ping_timeout) / 2.0, 0.05)

    def startService(self) -> None:
        super().startService()
        if self.server.config.ping_interval > 0:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.server.clock
            self._loop.start(self.tick, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return None

    def sweep(self) -> None:
        server = self.server
        config = server.config
        now = server.clock.seconds()
        for session in server.registry:
            connection = session.connection
            if connection is None:
                continue
            beat = session.heartbeat
            sent = beat.ping_sent
            if sent is not None:
                if now - sent > config.ping_timeout:
                    beat.missed += 1
                    missed = beat.missed
                    if missed >= config.heartbeat_max_missed:
                        server.stats.heartbeat_drops += 1
                        server.metrics.heartbeat_drop()
                        self.log.info(
                            "dropping {session_id}: {missed} pings unanswered", session_id=session.id, missed=missed
                        )
                        beat.ping_sent = None
                        connection.dropConnection(abort=True)
                    else:
                        beat.ping_sent = now
                        connection.sendPing(b"txvoice-hb")
                continue
            # From the last proof of life (a pong, an application heartbeat), never from the last
            # message: a peer that keeps sending but reads nothing must still be pinged and dropped.
            since = beat.pong_at if beat.pong_at is not None else (
                session.opened_at if session.opened_at is not None else session.last_activity)
            if now - since >= config.ping_interval:
                beat.ping_sent = now
                connection.sendPing(b"txvoice-hb")
