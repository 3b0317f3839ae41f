"""
The life of the txvoice.v1 client's one logical session over its connections: the state machine
``closed`` -> ``connecting`` -> ``open`` -> ``reconnecting`` ... ``failed``, the greeting and the
resume after a reconnect, the loss of a connection, the retry policy handed to ``ClientService``,
giving up, finishing a close, and the heartbeat that detects a dead connection.

:class:`ConnectionLife` is the base of :class:`~txvoice.client.connection.VoiceClient`, which
sets the attributes declared here and adds the public API and the ``IClientHandler`` side.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txvoice.client.backoff import Backoff
from txvoice.client.breaker import CircuitBreaker, CircuitOpenError
from txvoice.client.emitter import Emitter
from txvoice.client.errors import ClientClosed, ConnectionFailed
from txvoice.client.heartbeat import Heartbeat
from txvoice.client.outbox import Outbox
from txvoice.client.protocol import IVoiceLink
from txvoice.client.queue import SendQueue
from txvoice.client.requests import PendingRequests
from txvoice.client.states import PRIORITY_INTERNAL, ClientStats, ConnectionState
from txvoice.logging import NamespaceLogger

__all__ = ["ConnectionLife"]

_FAR = 3600.0  # retry delay handed to ClientService while it is being stopped (never reached)


class ConnectionLife:
    """The connection life of :class:`~txvoice.client.connection.VoiceClient` (see the module docstring)."""

    log = NamespaceLogger(namespace="txvoice.client")

    # Settings and public state (set by VoiceClient.__init__).
    url: str
    clock: IReactorTime
    auto_reconnect: bool
    backoff: Backoff
    breaker: CircuitBreaker
    heartbeat_interval: float
    heartbeat_timeout: float
    ready_timeout: float
    client_name: str
    resume: bool
    reattach_conversation: bool
    no_reconnect_codes: frozenset[int]
    state: ConnectionState
    events: Emitter
    queue: SendQueue
    stats: ClientStats
    greeting: dict[str, Any] | None
    session_id: str | None
    resume_token: str | None
    resumed: bool | None  # outcome of the last resume attempt
    conversation_id: str | None
    # Parts and private state.
    _random: Callable[[], float]
    _service: ClientService
    _outbox: Outbox
    _heartbeat: Heartbeat
    _requests: PendingRequests
    _link: IVoiceLink | None
    _ready: bool
    _ever_ready: bool
    _retries: int  # reconnection attempts scheduled since the connection was last open
    _stopping: bool  # giving up or closing: ClientService is about to be stopped
    _closing: bool
    _abandoned: weakref.WeakSet[IVoiceLink]
    _waiters: list[Deferred[Any]]
    _state_waiters: list[tuple[frozenset[ConnectionState], Deferred[Any]]]
    _close_waiters: list[Deferred[Any]]
    _ready_timer: Any
    _close_timer: Any
    _resume_mid: str | None
    _reattach: str | None  # conversation to restart if resuming fails
    _last_failure: str

    def _setState(self, new: ConnectionState) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        self.log.info("client {old} -> {new}", old=old.value, new=new.value, url=self.url)
        self.events.emit("state", old, new)
        waiting, self._state_waiters = self._state_waiters, []
        for states, d in waiting:
            if new in states:
                d.callback(new)
            else:
                self._state_waiters.append((states, d))

    def _onGreeting(self, link: IVoiceLink, env: dict[str, Any]) -> None:
        data = env["data"]
        previous_token = self.resume_token
        self.greeting = data
        self.session_id = data.get("session_id")
        self.resume_token = data.get("resume_token") or None
        if self.resume and previous_token and self._ever_ready:
            self._resume_mid = self._outbox.new_id()
            self._outbox.write(link, {"type": "connect", "data": {"resume_token": previous_token, "client": self.client_name},
                               "message_id": self._resume_mid})
            return  # open once the server says whether it resumed
        self._becameReady(link)

    def _onResumeAnswer(self, link: IVoiceLink, data: dict[str, Any]) -> None:
        self._resume_mid = None
        self.resumed = bool(data.get("resumed"))
        if data.get("resume_token"):
            self.resume_token = data["resume_token"]
        if data.get("session_id"):
            self.session_id = data["session_id"]
        if self.resumed:
            self.stats.resumes += 1
            self.log.info("session resumed: {session_id} (was {previous})", session_id=self.session_id,
                          previous=data.get("previous_session_id"))
            self.events.emit("resumed", data)
        else:
            self.stats.resume_failures += 1
            self.log.warn("session not resumed ({error}); starting a new one", error=data.get("resume_error"))
            self.events.emit("resume_failed", data)
            if self.reattach_conversation and self._reattach:
                self._restartConversation(self._reattach)
        self._reattach = None
        self._becameReady(link)

    def _restartConversation(self, conversation_id: str) -> None:
        env = {"type": "conversation_start", "data": {"conversation_id": conversation_id}}
        d = self._outbox.send(env, PRIORITY_INTERNAL, reliable=True)
        d.addErrback(lambda f: self.log.warn("could not restart conversation {conversation_id}: {error}",
                                             conversation_id=conversation_id, error=f.getErrorMessage()))

    def _becameReady(self, link: IVoiceLink) -> None:
        self._cancel("_ready_timer")
        self._ready = True
        reopened = self._ever_ready
        self._ever_ready = True
        self._retries = 0
        self.breaker.record_success()
        self.stats.opens += 1
        self._setState(ConnectionState.OPEN)
        self._heartbeat.start(self.heartbeat_interval, self.heartbeat_timeout)
        if reopened:
            self.stats.resent += len([item for item in self.queue if item.reliable and item.writes])
        self._outbox.flush()
        waiting, self._waiters = self._waiters, []
        for d in waiting:
            d.callback(self)
        self.events.emit("open", self.greeting)

    def _readyTimedOut(self, link: IVoiceLink) -> None:
        self._ready_timer = None
        if link is self._link and not self._ready:
            self._abandon(f"no greeting within {self.ready_timeout}s")

    def _abandon(self, reason: str) -> None:
        """Give up on the current connection now: handle it as lost, then abort it."""
        link = self._link
        if link is None:
            return
        self._abandoned.add(link)
        self._lost(link, None, reason)
        link.abort()

    def _lost(self, link: IVoiceLink, code: int | None, reason: str | None) -> None:
        """The current connection is gone (closed by either side, dropped or abandoned)."""
        was_ready = self._ready
        self._link = None
        self._ready = False
        self._resume_mid = None
        self._cancel("_ready_timer")
        self._heartbeat.stop()
        self.queue.requeue_unacked()
        self.stats.dropped_disconnected += len(self.queue.drop_best_effort())
        self._requests.lost(reason)
        if self._closing:
            self._cancel("_close_timer")
            self.clock.callLater(0, self._finishClose)
            return
        if was_ready:
            self.stats.drops += 1
            self._reattach = self.conversation_id
            self.log.warn("connection lost: {code} {reason}", code=code, reason=reason)
        if code in self.no_reconnect_codes:
            self._last_failure = f"closed with {code}: {reason}"
            self._stopping = True
            self.clock.callLater(0, self._giveUp)
        elif was_ready:
            if self.auto_reconnect:
                self._setState(ConnectionState.RECONNECTING)
            else:
                self._stopping = True
                self.clock.callLater(0, self._finishClose)
        else:
            self._attemptFailed(reason or "closed before the greeting", code)
        if was_ready:
            self.events.emit("close", code, reason)

    def _connectFailed(self, failure: Failure) -> Failure:
        """Errback of each TCP/TLS connection attempt (passes the failure on to ClientService)."""
        if failure.check(CancelledError):
            self.breaker.release()
        elif not failure.check(CircuitOpenError) and not self._closing:
            self._attemptFailed(failure.getErrorMessage() or repr(failure.value), None)
        return failure

    def _attemptFailed(self, reason: str, code: int | None) -> None:
        self.stats.failed_attempts += 1
        self._last_failure = reason
        self.breaker.record_failure()
        self.log.info("connection attempt to {url} failed: {reason}", url=self.url, reason=reason)
        self.events.emit("attempt_failed", reason)

    def _retryDelay(self, _failed_in_a_row: int) -> float:
        """ClientService's retry policy: backoff, the breaker's wait, and the attempt limit."""
        if self._stopping or self._closing:
            return _FAR
        if not self.auto_reconnect or self.backoff.exhausted(self._retries):
            self._stopping = True
            self.clock.callLater(0, self._giveUp)
            return _FAR
        self._retries += 1
        delay = max(self.backoff.delay(self._retries, self._random), self.breaker.retry_after())
        if self._ever_ready:
            self._setState(ConnectionState.RECONNECTING)
        self.log.info("reconnection attempt {attempt} in {delay:.2f}s", attempt=self._retries, delay=delay)
        self.events.emit("reconnecting", self._retries, delay)
        return delay

    def _giveUp(self) -> None:
        if self.state is ConnectionState.FAILED or self._closing:
            return
        error = ConnectionFailed(self._last_failure, self.stats.failed_attempts)
        self.log.error("giving up on {url}: {error}", url=self.url, error=str(error))
        self._service.stopService()
        self._setState(ConnectionState.FAILED)
        self._failPending(error)
        self.events.emit("failed", error)

    def _closeTimedOut(self, link: IVoiceLink) -> None:
        self._close_timer = None
        if link is self._link:
            self._abandon("close handshake timed out")

    def _finishClose(self) -> None:
        def stopped(_: Any) -> None:
            self._closing = False
            self.breaker.release()  # an attempt cut short by the close has no outcome
            self._setState(ConnectionState.CLOSED)
            self._failPending(ClientClosed("the client was closed"))
            waiting, self._close_waiters = self._close_waiters, []
            for d in waiting:
                d.callback(None)
            self.events.emit("closed")

        d = self._service.stopService() if self._service.running else succeed(None)
        d.addBoth(stopped)

    def _failPending(self, error: Exception) -> None:
        waiting, self._waiters = self._waiters, []
        for d in waiting:
            d.errback(error)
        for item in self.queue.clear():
            if not item.deferred.called:
                if item.reliable:
                    item.deferred.errback(error)
                else:
                    item.deferred.callback(False)
        self._requests.fail_all(error)

    # ------------------------------------------------------------------ messages

    # ------------------------------------------------------------------ heartbeat

    def _sendHeartbeat(self) -> tuple[str, IVoiceLink] | None:
        link = self._link
        if link is None or not self._ready:
            return None
        mid = self._outbox.new_id()
        self._outbox.write(link, {"type": "heartbeat", "data": {}, "message_id": mid})
        self.stats.heartbeats += 1
        return mid, link

    def _onHeartbeat(self, data: dict[str, Any]) -> None:
        rtt = self._heartbeat.answered(data)
        if rtt is None:
            return
        self.stats.last_heartbeat_rtt = rtt
        self.events.emit("heartbeat", rtt)

    def _heartbeatMissed(self, link: IVoiceLink) -> None:
        if link is not self._link:
            return
        self.stats.heartbeat_timeouts += 1
        self.log.warn("heartbeat unanswered for {timeout}s: dropping the connection", timeout=self.heartbeat_timeout)
        self.events.emit("heartbeat_timeout")
        self._abandon("heartbeat timeout")

    def _cancel(self, attr: str) -> None:
        call = getattr(self, attr)
        if call is not None and call.active():
            call.cancel()
        setattr(self, attr, None)
