"""The session reaper: closes sessions that are idle too long or older than their maximum age."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from txvoice.logging import NamespaceLogger
from txvoice.server.base import CLOSE_EXPIRED, CLOSE_IDLE
from txvoice.server.context import VoiceServer
from txvoice.session.session import Session


class ReaperService(Service):
    name = "reaper"
    log = NamespaceLogger(namespace="txvoice.session")

    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        config = self.server.config
        if config.idle_timeout > 0 or config.max_session_age > 0:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.server.clock
            self._loop.start(config.reaper_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sweep(self) -> None:
        server = self.server
        config = server.config
        now = server.clock.seconds()
        for session in server.registry:
            if session.opened_at is None:
                session.opened_at = now
            opened = session.opened_at
            if config.idle_timeout > 0 and now - session.last_activity > config.idle_timeout:
                self._reap(session, CLOSE_IDLE, "idle timeout", "idle")
            elif config.max_session_age > 0 and now - opened > config.max_session_age:
                self._reap(session, CLOSE_EXPIRED, "session expired", "expired")

    def _reap(self, session: Session, code: int, reason: str, kind: str) -> None:
        self.server.stats.count(self.server.stats.reaped, kind)
        self.log.info("closing {session_id}: {reason}", session_id=session.id, reason=reason)
        if session.close is not None:
            session.close(code, reason)
