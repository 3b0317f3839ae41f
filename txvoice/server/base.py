"""
What every dialect's WebSocket protocol shares: the session, limits, counters and sending.

A dialect subclasses :class:`VoiceServerProtocol` and implements ``textReceived`` /
``binaryReceived`` (and may override ``sessionOpened`` / ``sessionClosing``).  Everything that is
not about the wire format lives in the session, the voice channel and the pipeline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeVar

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txvoice.errors import VoiceError
from txvoice.logging import NamespaceLogger
from txvoice.security.ratelimit import Decision, TokenBucket
from txvoice.server.admission import Admission
from txvoice.server.compression import apply_compression_level
from txvoice.server.backpressure import CLOSE_OUTPUT_OVERFLOW, CONGESTED, EXCEEDED, NORMAL, OutputBudget, install_budget
from txvoice.server.framing import FastFraming, PreparedText
from txvoice.server.writepath import install_write_through
from txvoice.session.session import ISessionConnection, Session, SessionState

if TYPE_CHECKING:
    from txvoice.server.context import VoiceServer

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_IDLE = 4001
CLOSE_EXPIRED = 4002
CLOSE_TOKEN_EXPIRED = 4003

ALLOW, CLOSE = Decision.ALLOW, Decision.CLOSE


@implementer(ISessionConnection)
class VoiceServerProtocol(FastFraming, WebSocketServerProtocol):  # type: ignore[misc]  # Autobahn's bases disagree on peer/_transport_details
    """Base of every txvoice dialect (whole binary frames take :mod:`txvoice.server.framing`'s fast lane)."""

    # `log` stays Autobahn's level-filtered txaio logger (its hot path logs at debug);
    # txvoice's own events go to `wslog`, in the domain namespace.
    wslog = NamespaceLogger(namespace="txvoice.network.websocket")

    #: Subprotocols this dialect speaks, most preferred first; a client offering none is served anyway.
    subprotocols: tuple[str, ...] = ()
    dialect = "base"
    #: True when the dialect can authenticate after the upgrade (an in-protocol ``auth`` message).
    in_protocol_auth = False

    session: Session | None = None
    admission: Admission | None = None
    _oversize = False
    _message_length = 0
    _lost_early = False
    _expiry_call = None
    budget: OutputBudget | None = None

    @property
    def server(self) -> "VoiceServer":
        voice: VoiceServer = self.factory.voice  # Autobahn's protocol.factory is not typed
        return voice

    # opening

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn's queue of chopped or synced sends, nearly always empty: 0.7 KB as a deque.
        self.send_queue = SendQueue()  # type: ignore[assignment]  # Autobahn declares a deque
        # Above the soft limit a message takes Autobahn's path, where onMessageFrame discards it.
        self.fastFrameLimit = self.factory.voice.config.max_message_size
        config = self.factory.voice.config
        if config.write_through:
            install_write_through(self.transport)
        if config.max_output_buffer > 0 or config.output_buffer_soft_limit > 0:
            budget = OutputBudget(
                self.transport, config.output_buffer_soft_limit, config.max_output_buffer, self._outputStateChanged
            )
            if install_budget(self.transport, budget):
                self.budget = budget

    # output backpressure (txvoice.server.backpressure)

    def outputCongested(self) -> bool:
        """True while droppable output (response audio, metrics pushes) is to be dropped."""
        budget = self.budget
        if budget is None or not budget.watching():
            return False
        return budget.check() is not NORMAL

    def dropOutput(self, kind: str) -> None:
        """Count a droppable message not sent to a congested client."""
        self.server.metrics.output_drop(kind)

    def _outputStateChanged(self, state: str, queued: int) -> None:
        # Called from inside a transport write (pauseProducing): act on the next turn, so no
        # frame is written in the middle of another.
        self.server.clock.callLater(0, self._outputStateActed, state, queued)

    def _outputStateActed(self, state: str, queued: int) -> None:
        budget = self.budget
        session_id = self.session.id if self.session is not None else None
        if state == EXCEEDED:
            self.server.metrics.output_overflow_closes.inc()
            self.wslog.info(
                "closing {session_id}: {queued} bytes waiting for it, over max_output_buffer {limit}",
                session_id=session_id, queued=queued, limit=budget.hard_limit if budget else None,
            )
            self.outputExceeded()
            self.closeSession(CLOSE_OUTPUT_OVERFLOW, "output buffer limit exceeded")
            return
        if self.state != self.STATE_OPEN:
            return
        if state == CONGESTED:
            self.server.metrics.output_congested.inc()
            self.wslog.info(
                "{session_id} is congested: {queued} bytes waiting; dropping response audio", session_id=session_id,
                queued=queued,
            )
        self.outputStateChanged(state, queued)

    def outputStateChanged(self, state: str, queued: int) -> None:
        """Tell the client its output is ``congested`` or back to ``normal`` (dialects override)."""

    def outputExceeded(self) -> None:
        """Over the hard mark, just before the 4006 close: free what is queued (dialects override)."""

    def onConnect(self, request: ConnectionRequest) -> Deferred[str | None]:  # type: ignore[override]  # Autobahn takes a Deferred too
        server = self.server
        if server.shutting_down:
            server.record_refused("shutting_down")
            raise ConnectionDeny(503, "server shutting down")
        self._closed: Deferred[int | None] = Deferred()
        assert self.transport is not None
        peer = self.transport.getPeer()
        d = server.admission.admit(request, getattr(peer, "host", ""), self.in_protocol_auth)
        return d.addCallback(self._admitted, request)

    def _admitted(self, admission: Admission, request: ConnectionRequest) -> str | None:
        if self._lost_early:
            # The client went away while its credentials were being checked.
            admission.lease.release()
            raise ConnectionDeny(400, "connection lost")
        self.admission = admission
        principal = admission.principal
        session = self.session = Session(peer=request.peer, dialect=self.dialect)
        session.ip = admission.ip
        session.last_activity = self.server.clock.seconds()
        if principal is not None:
            session.user_id, session.tenant = principal.user_id, principal.tenant
            session.transition(SessionState.AUTHENTICATED)
        for proto in self.subprotocols:
            if proto in request.protocols:
                return proto
        return None

    def onOpen(self) -> None:
        self._releaseHandshake()
        session = self.session
        assert session is not None
        server = self.server
        session.close = self.closeSession
        session.connection = self
        now = session.opened_at = server.clock.seconds()
        self._message_limiter = server.admission.rate_policy.new_limiter(now)
        rate = server.config.max_audio_bytes_per_second
        self._audio_bucket = TokenBucket(rate, 2 * rate, now) if rate > 0 else _UNLIMITED
        apply_compression_level(self._perMessageCompress, server.config.compression_level)
        server.registry.add(session)
        server.connection_opened(session)
        if self.admission is not None and self.admission.principal is not None:
            self.watchExpiry(self.admission.principal.expires_at)
        self.wslog.info(
            "session {session_id} opened from {peer} ({dialect})",
            session_id=session.id,
            peer=session.peer,
            dialect=self.dialect,
        )
        self.sessionOpened()

    #: What Autobahn keeps of the opening handshake for the connection's life (the request's raw
    #: bytes, headers, query, the response text: ~2 KB a session); txvoice reads the handshake
    #: only in onConnect (the ConnectionRequest), so they are let go once the connection is open.
    HANDSHAKE_ATTRIBUTES = ("http_request_data", "http_status_line", "http_headers", "http_request_uri",
                            "http_request_path", "http_request_params", "http_request_host",
                            "http_response_data", "websocket_origin", "_wskey")

    def _releaseHandshake(self) -> None:
        for name in self.HANDSHAKE_ATTRIBUTES:
            setattr(self, name, None)

    # closing

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self._sessionEnded(wasClean, code)
        finally:
            # Even when a dialect's teardown raised: a graceful shutdown waits for this.
            closed = getattr(self, "_closed", None)
            if closed is not None and not closed.called:
                closed.callback(code)

    def _sessionEnded(self, wasClean: bool, code: int | None) -> None:
        session = self.session
        if session is None:
            self._lost_early = True
            return
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        if self.admission is not None:
            self.admission.lease.release()
        if session.state is not SessionState.CLOSED:
            registered = self.server.registry.get(session.id) is session
            try:
                self.sessionClosing()
            finally:
                session.state = SessionState.CLOSED
                if registered:
                    self.server.registry.remove(session)
                    self.server.connection_closed(session)
                self.wslog.info(
                    "session {session_id} closed (clean={clean}, code={code})",
                    session_id=session.id,
                    clean=wasClean,
                    code=code,
                )

    def whenClosed(self) -> Deferred[int | None]:
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
            session.heartbeat.alive(self.server.clock.seconds())

    def watchExpiry(self, expires_at: float | None) -> None:
        """Tell and close the session when its credentials expire (``token_expired``, 4003)."""
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if expires_at is None:
            return
        delay = max(expires_at - time.time(), 0.0)
        self._expiry_call = self.server.clock.callLater(delay, self._credentialsExpired)

    def _credentialsExpired(self) -> None:
        self._expiry_call = None
        self.reportError(VoiceError("the session's token has expired", code="token_expired"))
        self.closeSession(CLOSE_TOKEN_EXPIRED, "token expired")

    def reportError(self, error: VoiceError) -> None:
        """Tell the client about an error it did not cause by one message (dialects override)."""

    def rateLimited(self, is_binary: bool) -> None:
        """A message was dropped by the rate limit."""
        self.server.record_error("rate_limited")
        self.reportError(VoiceError("rate limit exceeded: message dropped", code="rate_limited"))

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

    def deliverEvent(self, event_type: str, data: dict[str, Any], conversation_id: str | None) -> None:
        """A broadcast event addressed to this session (ISessionConnection); dialects say it their way."""

    def pushMetrics(self) -> None:
        """The session subscribed to metrics: send them (ISessionConnection); dialects say it their way."""

    # receiving

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._oversize = False
        self._message_length = 0

    def onMessageFrame(self, payload: list[bytes]) -> None:  # type: ignore[override]  # Autobahn passes the frame's parts
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

    def fastMessage(self, payload: bytes) -> None:
        self._oversize = False
        self.onMessage(payload, True)

    def onMessageEnd(self) -> None:
        # Autobahn's version also fires the "message" observer event (a Deferred and callbacks,
        # ~2.7 us a message here) even when nobody listens; skip that when nobody does.
        listeners = self._listeners
        if listeners and listeners.get("message"):
            super().onMessageEnd()
            return
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(payload, self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]  # as Autobahn's own onMessageEnd does

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        server = self.server
        now = session.last_activity = server.clock.seconds()
        counters = session.counters
        if self._oversize:
            self._oversize = False
            if isBinary:
                counters.binary_in += 1
                counters.binary_bytes_in += self._message_length
            else:
                counters.text_in += 1
                counters.text_bytes_in += self._message_length
            self.messageTooLarge(self._message_length, isBinary)
            return
        size = len(payload)
        if isBinary:
            counters.binary_in += 1
            counters.binary_bytes_in += size
            if not self._audio_bucket.allow(now, size):
                self.rateLimited(True)
                return
            try:
                self.binaryReceived(payload)
            except Exception:
                self.handlerFailed("binary")
        else:
            counters.text_in += 1
            counters.text_bytes_in += size
            decision = self._message_limiter.check(now)
            if decision is not ALLOW:
                if decision is CLOSE:
                    server.stats.count(server.stats.rate_limit_closes, self.dialect)
                    self.closeSession(CLOSE_POLICY, "rate limit exceeded")
                else:
                    self.rateLimited(False)
                return
            try:
                self.textReceived(payload)
            except Exception:
                self.handlerFailed("text")

    def handlerFailed(self, kind: str) -> None:
        """
        A dialect's handler raised: log it with its traceback, answer one ``internal_error``, keep
        the connection (an exception escaping into Autobahn would drop it without a close frame).
        """
        self.wslog.failure(
            "handling a {kind} message of {session_id} failed",
            kind=kind,
            session_id=self.session.id if self.session is not None else None,
        )
        try:
            self.reportError(VoiceError("internal error handling the message", code="internal_error"))
        except Exception:
            self.wslog.failure("reporting an internal error failed")

    # sending

    def sendText(self, payload: bytes) -> None:
        """Send a JSON/text message; compressed only when deflate is on and it is above the threshold."""
        if self.state != self.STATE_OPEN:
            return
        budget = self.budget
        if budget is not None and budget.watching() and budget.check() is EXCEEDED:
            return  # being closed with 4006: nothing more is queued
        session = self.session
        if session is not None:
            session.counters.text_out += 1
            session.counters.text_bytes_out += len(payload)
        self.sendMessage(
            payload, False, doNotCompress=len(payload) < self.server.config.compression_threshold
        )

    def _admitPrepared(self, prepared: PreparedText) -> bool:
        """
        Whether a message framed in advance may go out now (open, not over the output bound's
        hard mark), counting it when it may: what both ways of sending one check.
        """
        if self.state != self.STATE_OPEN:
            return False
        budget = self.budget
        if budget is not None and budget.watching() and budget.check() is EXCEEDED:
            return False  # being closed with 4006: nothing more is queued
        session = self.session
        if session is not None:
            session.counters.text_out += 1
            session.counters.text_bytes_out += prepared.size
        return True

    def sendPreparedText(self, prepared: PreparedText) -> None:
        """Send a text message framed in advance (see :class:`PreparedText`)."""
        if self._admitPrepared(prepared):
            self.sendPreparedMessage(prepared.message)

    def sendPreparedTextSoon(self, prepared: PreparedText) -> None:
        """
        Send a text message framed in advance with the others of the audio batch being delivered:
        held (:meth:`~txvoice.server.framing.FastFraming.holdFrame`) until the batch's results have
        all been delivered (:meth:`~txvoice.audio.workers.AudioWorkers.afterBatch`), then written
        in one go; anything this connection writes meanwhile goes out after it.  Outside a batch
        it is written at once.  The checks and counters are those of :meth:`sendPreparedText`.
        """
        if self._admitPrepared(prepared) and self.holdFrame(prepared.message.payloadHybi):
            self.factory.voice.workers.afterBatch(self.writeHeld)

    def sendBinary(self, payload: bytes) -> None:
        """Send a binary (response audio) message, never compressed; dropped while congested."""
        if self.state != self.STATE_OPEN:
            return
        if self.budget is not None and self.outputCongested():
            self.dropOutput("audio")
            return
        session = self.session
        if session is not None:
            session.counters.binary_out += 1
            session.counters.binary_bytes_out += len(payload)
        self.sendMessage(payload, True, doNotCompress=True)


class SendQueue(list):  # type: ignore[type-arg]  # Autobahn's items: (bytes, sync) pairs
    """Autobahn's ``send_queue`` as a list (it only appends, pops the left end and asks the length)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class _Unlimited:
    """A bucket that always allows (audio rate limit turned off)."""

    def allow(self, now: float, cost: float = 1.0) -> bool:
        return True


_UNLIMITED = _Unlimited()


_T = TypeVar("_T")


def _chain(d: Deferred[_T]) -> Deferred[_T]:
    result: Deferred[_T] = Deferred()

    def fire(value: _T) -> _T:
        result.callback(value)
        return value

    d.addBoth(fire)
    return result
