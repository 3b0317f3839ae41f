"""
What every dialect's WebSocket protocol shares: the session, limits, counters and sending.

A dialect subclasses :class:`VoiceServerProtocol` and implements ``textReceived`` /
``binaryReceived`` (and may override ``sessionOpened`` / ``sessionClosing``).  Everything that is
not about the wire format lives in the session, the voice channel and the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from txvoice.session.session import Session, SessionState

if TYPE_CHECKING:
    from txvoice.server.context import VoiceServer

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_IDLE = 4001
CLOSE_EXPIRED = 4002


class VoiceServerProtocol(WebSocketServerProtocol):
    """Base of every txvoice dialect."""

    # `log` stays Autobahn's level-filtered txaio logger (its hot path logs at debug);
    # txvoice's own events go to `wslog`, in the domain namespace.
    wslog = Logger(namespace="txvoice.network.websocket")

    #: Subprotocols this dialect speaks, most preferred first; a client offering none is served anyway.
    subprotocols: tuple[str, ...] = ()
    dialect = "base"

    session: Session | None = None
    _oversize = False
    _message_length = 0

    @property
    def server(self) -> "VoiceServer":
        return self.factory.server

    # opening

    def onConnect(self, request: ConnectionRequest) -> str | None:
        server = self.server
        if server.shutting_down:
            server.stats.count(server.stats.connections_refused, "shutting_down")
            raise ConnectionDeny(503, "server shutting down")
        if len(server.registry) >= server.config.max_connections:
            server.stats.count(server.stats.connections_refused, "server_full")
            raise ConnectionDeny(503, "server full")
        self.session = Session(peer=request.peer, dialect=self.dialect)
        self.session.last_activity = server.clock.seconds()
        self._closed = Deferred()
        for proto in self.subprotocols:
            if proto in request.protocols:
                return proto
        return None

    def onOpen(self) -> None:
        session = self.session
        assert session is not None
        server = self.server
        session.close = self.closeSession
        session.attributes["subscriber"] = self
        session.attributes["opened_at"] = server.clock.seconds()
        server.registry.add(session)
        server.stats.connections_total += 1
        self.wslog.info(
            "session {session_id} opened from {peer} ({dialect})",
            session_id=session.id,
            peer=session.peer,
            dialect=self.dialect,
        )
        self.sessionOpened()

    # closing

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is None:
            return
        if session.state is not SessionState.CLOSED:
            try:
                self.sessionClosing()
            finally:
                session.state = SessionState.CLOSED
                self.server.registry.remove(session)
                self.wslog.info(
                    "session {session_id} closed (clean={clean}, code={code})",
                    session_id=session.id,
                    clean=wasClean,
                    code=code,
                )
        closed = getattr(self, "_closed", None)
        if closed is not None and not closed.called:
            closed.callback(code)

    def whenClosed(self) -> Deferred:
        """Fires (with the close code) once the connection has closed."""
        closed = getattr(self, "_closed", None)
        return succeed(None) if closed is None or closed.called else _chain(closed)

    def closeSession(self, code: int, reason: str) -> None:
        """End the session with a close handshake (services call this through ``session.close``)."""
        if self.state != self.STATE_OPEN:
            return
        if code == CLOSE_NORMAL or 3000 <= code <= 4999:
            self.sendClose(code, reason)
        else:
            # Autobahn's sendClose only takes 1000 and 3000-4999 from applications; a server may
            # also send the protocol codes (1001 going away, 1008 policy, 1009 too big).
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)

    def goingAway(self, reason: str = "server shutting down") -> None:
        """The server is stopping: tell the dialect, then close with 1001."""
        self.sessionGoingAway(reason)
        self.closeSession(CLOSE_GOING_AWAY, reason)

    def onPong(self, payload: bytes) -> None:
        session = self.session
        if session is not None:
            session.attributes.pop("ping_sent", None)
            session.attributes["pong_at"] = self.server.clock.seconds()

    # dialect hooks

    def sessionOpened(self) -> None:
        """The handshake is done and the session registered (send a greeting here)."""

    def sessionClosing(self) -> None:
        """The connection is gone: cancel streams, release resources."""

    def sessionGoingAway(self, reason: str) -> None:
        """Called just before a 1001 close when the server stops."""

    def textReceived(self, payload: bytes) -> None:
        raise NotImplementedError

    def binaryReceived(self, payload: bytes) -> None:
        raise NotImplementedError

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        """A message above ``max_message_size`` was received and discarded."""

    def deliverEvent(self, event_type: str, data: dict, conversation_id: str | None) -> None:
        """A broadcast event addressed to this session (IEventSubscriber)."""

    # receiving

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._oversize = False
        self._message_length = 0

    def onMessageFrame(self, payload: list[bytes]) -> None:
        # The soft size limit: above it the message is discarded (memory freed) and answered with
        # an error, and the connection stays up; Autobahn's hard limit (1009) stays in force above.
        if self._oversize:
            return
        for part in payload:
            self._message_length += len(part)
        if self._message_length > self.server.config.max_message_size:
            self._oversize = True
            self.message_data = []
            return
        self.message_data.extend(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        session.last_activity = self.server.clock.seconds()
        counters = session.counters
        counters.messages_in += 1
        if self._oversize:
            counters.bytes_in += self._message_length
            self._oversize = False
            self.messageTooLarge(self._message_length, isBinary)
            return
        counters.bytes_in += len(payload)
        if isBinary:
            self.binaryReceived(payload)
        else:
            self.textReceived(payload)

    # sending

    def sendText(self, payload: bytes) -> None:
        """Send a JSON/text message; compressed only when deflate is on and it is above the threshold."""
        if self.state != self.STATE_OPEN:
            return
        session = self.session
        if session is not None:
            session.counters.messages_out += 1
            session.counters.bytes_out += len(payload)
        self.sendMessage(
            payload, False, doNotCompress=len(payload) < self.server.config.compression_threshold
        )

    def sendBinary(self, payload: bytes) -> None:
        """Send a binary (audio) message, never compressed."""
        if self.state != self.STATE_OPEN:
            return
        session = self.session
        if session is not None:
            session.counters.messages_out += 1
            session.counters.bytes_out += len(payload)
        self.sendMessage(payload, True, doNotCompress=True)


def _chain(d: Deferred) -> Deferred:
    result: Deferred = Deferred()

    def fire(value: object) -> object:
        result.callback(value)
        return value

    d.addBoth(fire)
    return result
