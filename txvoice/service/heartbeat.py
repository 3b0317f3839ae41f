"""
Heartbeat: one ``LoopingCall`` pings every session and drops peers that stop answering.

Autobahn's auto-ping keeps two timers per connection; this sweeps all sessions from one timer,
which is cheaper with many sessions and deterministic under a test ``Clock``.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txvoice.server.context import VoiceServer


class HeartbeatService(Service):
    """Sends a WebSocket ping every ``ping_interval``; drops a peer silent for ``ping_timeout`` after one."""

    name = "heartbeat"
    log = Logger(namespace="txvoice.network.heartbeat")

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

    def stopService(self) -> Deferred | None:
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
            protocol = session.attributes.get("subscriber")
            if protocol is None:
                continue
            sent = session.attributes.get("ping_sent")
            if sent is not None:
                if now - sent > config.ping_timeout:
                    server.stats.heartbeat_drops += 1
                    self.log.info("dropping {session_id}: no pong for {waited:.1f}s", session_id=session.id, waited=now - sent)
                    session.attributes.pop("ping_sent", None)
                    protocol.dropConnection(abort=True)
                continue
            if now - session.attributes.get("pong_at", session.last_activity) >= config.ping_interval:
                session.attributes["ping_sent"] = now
                protocol.sendPing(b"txvoice-hb")
