"""
The txvoice.v1 client connection: one logical session kept alive over reconnects.

:class:`VoiceClient` drives :class:`~twisted.application.internet.ClientService` (which owns the
TCP connection and its retries) and adds what a voice client needs on top:

- **States** ``closed`` -> ``connecting`` -> ``open`` -> ``reconnecting`` -> ``open`` ... and
  ``failed`` after ``backoff.max_attempts`` reconnection attempts in a row fail, reported to
  state listeners (:meth:`VoiceClient.on`) and as Deferreds (:meth:`VoiceClient.whenConnected`,
  :meth:`VoiceClient.when`).  ``open`` means the greeting arrived (and, after a reconnect, the
  session was resumed or not): the WebSocket handshake alone is not enough.
- **Backoff** with jitter between attempts (:class:`~txvoice.client.backoff.Backoff`) and a
  **circuit breaker** around connecting (:class:`~txvoice.client.breaker.CircuitBreaker`): an
  attempt counts as a success only once the connection is ``open``.
- **Priority send queue** (:class:`~txvoice.client.queue.SendQueue`): ``send(message, priority,
  reliable)``.  Reliable JSON messages carry ``reliable: true`` and a ``message_id``; they are
  kept while disconnected and re-sent after a reconnect, with the same ``message_id``, until the
  server's ``ack``.  Best-effort messages (audio) are dropped while disconnected.
- **Heartbeat**: an application ``heartbeat`` every ``heartbeat_interval`` seconds; when its
  answer is ``heartbeat_timeout`` late the connection is dropped and re-made.
- **Resume**: after a reconnect the previous greeting's ``resume_token`` is presented in
  ``connect``, so the server re-attaches the user, the conversation and the ids of the reliable
  messages it already handled (a re-sent one is then answered ``ack {duplicate: true}`` and not
  handled twice).  When resuming fails (the server restarted: its resume state lives in its
  memory) the client starts its conversation again under the same id.

Delivery guarantee of reliable messages, stated honestly: a message acknowledged by the server is
never sent again; a message queued while disconnected is sent once after the reconnect.  A message
that was in flight when the connection broke is re-sent; if the *same* server process handled it,
resume turns the re-send into a duplicate ack (exactly once); if the server process died after
handling it, the new process cannot know, and handles it again (at least once).

The parts, one module each: the states, priorities and counters (:mod:`.states`), the errors
(:mod:`.errors`), the endpoint behind the breaker (:mod:`.endpoint`), the write side
(:mod:`.outbox`), the requests awaiting answers (:mod:`.requests`), the heartbeat
(:mod:`.heartbeat`) and the connection life with its resume (:mod:`.lifecycle`, the base of
:class:`VoiceClient`).  Their public names stay importable from here.
"""

from __future__ import annotations

import json
import weakref
from typing import Any, Callable, Iterable

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.client.backoff import Backoff
from txvoice.client.breaker import CircuitBreaker, CircuitOpenError
from txvoice.client.emitter import Emitter
from txvoice.client.endpoint import GuardedEndpoint, endpoint_for
from txvoice.client.errors import (
    RETRYABLE_ERRORS,
    ClientClosed,
    ClientError,
    ConnectionFailed,
    NotConnected,
    RequestTimeout,
    ServerError,
)
from txvoice.client.heartbeat import Heartbeat
from txvoice.client.lifecycle import ConnectionLife
from txvoice.client.outbox import Outbox
from txvoice.client.protocol import USER_AGENT, IClientHandler, IVoiceLink, VoiceClientFactory
from txvoice.client.requests import PendingRequests
from txvoice.client.states import (
    PRIORITY_AUDIO,
    PRIORITY_HIGH,
    PRIORITY_INTERNAL as PRIORITY_INTERNAL,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    ClientStats,
    ConnectionState,
)

__all__ = [
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "ConnectionFailed",
    "ConnectionState",
    "NotConnected",
    "PRIORITY_AUDIO",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "RequestTimeout",
    "ServerError",
    "VoiceClient",
]


@implementer(IClientHandler)
class VoiceClient(ConnectionLife):
    """
    A txvoice.v1 client that reconnects, resumes and re-sends (see the module docstring).

    :param url: ``ws://host:port/path`` of the server's native endpoint.
    :param reactor: for the network (default: the global reactor).
    :param clock: for every timer: retries, heartbeat, timeouts (default: ``reactor``).
    :param endpoint: connect through this instead of the one made from ``url`` (tests).
    :param auto_reconnect: reconnect after a drop (S0 ``autoReconnect``).
    :param backoff: delays and attempt limit (S0 ``reconnectDelay``, ``maxReconnectAttempts``).
    :param breaker: the circuit breaker (default: 5 failures, 30 s).
    :param heartbeat_interval: seconds between application heartbeats (0: none).
    :param heartbeat_timeout: seconds an unanswered heartbeat may wait before the connection is dropped.
    :param ready_timeout: seconds from the WebSocket handshake to the greeting (and resume answer).
    :param max_queue_bytes: bound of the send queue (queued + unacknowledged bytes).
    :param token: sent as ``Authorization: Bearer`` on the upgrade.
    :param no_reconnect_codes: close codes after which the client gives up at once (policy
        violation, expired token: reconnecting would not help).
    :param rate_limit_pause: seconds the queue holds back after the server answers ``rate_limited``
        (a reliable message it dropped is then sent again).
    :param random: ``random()`` in [0, 1) for the jitter (tests pin it).
    :param protocol: the protocol class the factory builds (tests use a fake link).
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        auto_reconnect: bool = True,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 10.0,
        ready_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_queue_bytes: int = 4 * 1024 * 1024,
        max_message_size: int = 16 * 1024 * 1024,
        client_name: str = USER_AGENT,
        compression: bool = False,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        resume: bool = True,
        reattach_conversation: bool = True,
        no_reconnect_codes: Iterable[int] = (1008, 4003),
        rate_limit_pause: float = 1.0,
        random: Callable[[], float] | None = None,
        protocol: type | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.url = url
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.auto_reconnect = auto_reconnect
        self.backoff = backoff or Backoff()
        self.breaker = breaker or CircuitBreaker(self.clock)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.ready_timeout = ready_timeout
        self.client_name = client_name
        self.resume = resume
        self.reattach_conversation = reattach_conversation
        self.no_reconnect_codes = frozenset(no_reconnect_codes)
        self.rate_limit_pause = rate_limit_pause
        if random is None:
            import random as _random

            random = _random.random
        self._random = random

        self.state = ConnectionState.CLOSED
        self.events = Emitter()
        self.stats = ClientStats()
        self._outbox = Outbox(self.clock, self.stats, max_queue_bytes, self._writableLink)
        self.queue = self._outbox.queue
        self.greeting = None
        self.session_id = None
        self.resume_token = None
        self.resumed = None
        self.conversation_id = None

        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self.factory = VoiceClientFactory(
            url, self, compression=compression, max_message_size=max_message_size,
            open_handshake_timeout=ready_timeout, headers=all_headers, useragent=client_name,
            reactor=reactor, protocol=protocol,
        )
        inner = endpoint if endpoint is not None else endpoint_for(reactor, url, connect_timeout)
        guarded = GuardedEndpoint(inner, self.breaker, self.stats, self._connectFailed)
        self._service = ClientService(guarded, self.factory, retryPolicy=self._retryDelay, clock=self.clock)

        self._link = None
        self._ready = False
        self._ever_ready = False
        self._retries = 0
        self._stopping = False
        self._closing = False
        self._abandoned = weakref.WeakSet()
        self._waiters = []
        self._state_waiters = []
        self._close_waiters = []
        self._requests = PendingRequests(self.clock)
        self._ready_timer = None
        self._close_timer = None
        self._resume_mid = None
        self._reattach = None
        self._heartbeat = Heartbeat(self.clock, self._sendHeartbeat, self._heartbeatMissed)
        self._last_failure = "no attempt yet"

    def __repr__(self) -> str:
        return f"<VoiceClient {self.url} {self.state.value}>"

    # ------------------------------------------------------------------ public API

    def on(self, event: str, listener: Callable[..., Any]) -> Callable[[], None]:
        """
        Subscribe to an event; returns the unsubscribe callable.  Events:
        ``state(old, new)``, ``connecting()``, ``open(greeting)``, ``reconnecting(attempt, delay)``,
        ``close(code, reason)`` (an open connection was lost), ``closed()``, ``failed(error)``,
        ``resumed(data)``, ``resume_failed(data)``, ``heartbeat(rtt)``, ``heartbeat_timeout()``,
        ``message(envelope)``, ``message:TYPE(envelope)``, ``event(data)``, ``event:EVENT_TYPE(data)``
        (server ``status`` events), ``audio(bytes)`` (binary messages), ``error(data)``.
        """
        return self.events.on(event, listener)

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.OPEN

    def connect(self) -> Deferred[VoiceClient]:
        """Start connecting; the Deferred fires with this client once it is ``open``."""
        if self.state is ConnectionState.OPEN:
            return succeed(self)
        if self.state in (ConnectionState.CONNECTING, ConnectionState.RECONNECTING):
            return self.whenConnected()
        if self._closing or self._service.running:
            return fail(ClientClosed("the client is still closing"))
        wait = self.breaker.retry_after()
        if wait > 0:
            return fail(CircuitOpenError(wait))
        self._stopping = False
        self._retries = 0
        self._setState(ConnectionState.CONNECTING)
        self.events.emit("connecting")
        d = self.whenConnected()
        self._service.startService()
        return d

    def whenConnected(self) -> Deferred[VoiceClient]:
        """Fires with this client when it is next ``open`` (now, if it is); fails if it gives up or closes."""
        if self.state is ConnectionState.OPEN:
            return succeed(self)
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED) and not self._service.running:
            return fail(NotConnected(f"the client is {self.state.value}"))
        d: Deferred[Any] = Deferred()
        self._waiters.append(d)
        return d

    def when(self, *states: ConnectionState) -> Deferred[ConnectionState]:
        """Fires with the state when the client is next in one of ``states`` (now, if it is)."""
        if self.state in states:
            return succeed(self.state)
        d: Deferred[Any] = Deferred()
        self._state_waiters.append((frozenset(states), d))
        return d

    def send(self, message: dict[str, Any] | str | bytes, priority: int = PRIORITY_NORMAL,
             reliable: bool = False) -> Deferred[Any]:
        """
        Queue a message: a JSON envelope (``dict`` or its text) or ``bytes`` (binary audio).

        Lower ``priority`` numbers go first.  A ``reliable`` message gets ``reliable: true`` and a
        ``message_id`` (its own, if it has one); the Deferred fires with the server's ``ack`` data
        (``{"message_id", "duplicate"}``) or fails with :class:`ServerError` when the server
        answers it with ``error``.  A best-effort message's Deferred fires True once written,
        False if it was dropped (not connected, or evicted by the queue's bound).
        """
        return self._outbox.send(message, priority, reliable)

    def request(self, msg_type: str, data: dict[str, Any] | None = None, *, priority: int = PRIORITY_NORMAL,
                reliable: bool = False, timeout: float | None = 30.0, **fields: Any) -> Deferred[Any]:
        """
        Send a message and fire with the server's answer (the envelope whose ``reply_to`` is its
        ``message_id``).  Fails with :class:`ServerError`, :class:`NotConnected` (best-effort and
        not connected), :class:`RequestTimeout`.  A reliable request that turns out to be a
        duplicate (handled before a reconnect, its answer lost) fires with None.
        """
        mid = self._outbox.new_id()
        env = {"type": msg_type, "data": dict(data or {}), "message_id": mid, **fields}
        result = self._requests.add(mid, reliable, timeout, f"{msg_type} {mid}")

        def on_sent(outcome: Any) -> None:
            if outcome is False and self._requests.pop(mid) is not None and not result.called:
                result.errback(NotConnected(f"{msg_type} not sent: the connection is {self.state.value}"))
            elif isinstance(outcome, dict) and outcome.get("duplicate") and not result.called:
                self._requests.pop(mid)
                result.callback(None)

        def on_failed(failure: Failure) -> None:
            self._requests.pop(mid)
            if not result.called:
                result.errback(failure)

        self.send(env, priority, reliable).addCallbacks(on_sent, on_failed)
        return result

    def ping(self, data: dict[str, Any] | None = None, **kw: Any) -> Deferred[Any]:
        """Application round trip; fires with the ``pong`` envelope."""
        return self.request("ping", data, **kw)

    def start_conversation(self, conversation_id: str | None = None,
                           metadata: dict[str, Any] | None = None) -> Deferred[Any]:
        """Start a conversation (reliable); fires with its id."""
        data: dict[str, Any] = {}
        if conversation_id is not None:
            data["conversation_id"] = conversation_id
        if metadata is not None:
            data["metadata"] = metadata
        d = self.request("conversation_start", data, priority=PRIORITY_HIGH, reliable=True)
        return d.addCallback(lambda env: (env or {}).get("data", {}).get("conversation_id", self.conversation_id))

    def end_conversation(self) -> Deferred[Any]:
        """End the current conversation (reliable); fires with the answer's data."""
        d = self.request("conversation_end", {"conversation_id": self.conversation_id}, priority=PRIORITY_HIGH,
                         reliable=True)
        return d.addCallback(lambda env: (env or {}).get("data"))

    def reconnect(self, reason: str = "reconnect requested") -> None:
        """Drop the current connection now (no closing handshake) and let the client reconnect."""
        self._abandon(reason)

    def close(self, reason: str = "client closing", timeout: float = 3.0) -> Deferred[None]:
        """
        Say ``disconnect``, close, stop reconnecting.  Fires when ``closed``.  Reliable messages
        still unacknowledged fail with :class:`ClientClosed`.
        """
        if self.state is ConnectionState.CLOSED and not self._service.running:
            return succeed(None)
        d: Deferred[Any] = Deferred()
        self._close_waiters.append(d)
        if self._closing:
            return d
        self._closing = True
        self._stopping = True
        link = self._link
        if link is not None:
            if self._ready:
                self._outbox.write(link, {"type": "disconnect", "data": {"reason": reason}, "message_id": self._outbox.new_id()})
            link.close(1000, reason)
            self._close_timer = self.clock.callLater(timeout, self._closeTimedOut, link)
        else:
            self.clock.callLater(0, self._finishClose)
        return d

    # ------------------------------------------------------------------ IClientHandler

    def linkOpened(self, link: IVoiceLink) -> None:
        if self._closing:
            self._abandoned.add(link)
            link.abort()
            return
        if self._link is not None:  # cannot happen with one ClientService connection; be safe
            self._abandon("a new connection replaced it")
        self._link = link
        self._ready = False
        self.log.info("websocket open to {url} (subprotocol {subprotocol})", url=self.url,
                      subprotocol=getattr(link, "subprotocol", None))
        self._ready_timer = self.clock.callLater(self.ready_timeout, self._readyTimedOut, link)

    def linkMessage(self, link: IVoiceLink, payload: bytes, is_binary: bool) -> None:
        if link is not self._link:
            return  # a connection we already gave up on
        self.stats.messages_received += 1
        if is_binary:
            self.events.emit("audio", payload)
            return
        try:
            env = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.log.warn("ignoring a text message that is not JSON ({size} bytes)", size=len(payload))
            return
        if not isinstance(env, dict) or not isinstance(env.get("type"), str):
            self.log.warn("ignoring a message without a type")
            return
        data = env.get("data")
        if not isinstance(data, dict):
            data = env["data"] = {}
        if "conversation_id" in env:
            self.conversation_id = env["conversation_id"]
        msg_type = env["type"]
        reply_to = data.get("reply_to")

        if msg_type == "connect":
            if reply_to is None:
                self._onGreeting(link, env)
            elif reply_to == self._resume_mid:
                self._onResumeAnswer(link, data)
        elif msg_type == "ack":
            self._outbox.ack(data)
        elif msg_type == "error":
            self._onError(data)
        elif msg_type == "heartbeat":
            self._onHeartbeat(data)

        if reply_to is not None:
            self._requests.answer(reply_to, env)

        self.events.emit("message", env)
        self.events.emit(f"message:{msg_type}", env)
        if msg_type == "status" and isinstance(data.get("event_type"), str):
            self.events.emit("event", data)
            self.events.emit(f"event:{data['event_type']}", data)
        elif msg_type == "error":
            self.events.emit("error", data)

    def linkWritable(self, link: IVoiceLink, writable: bool) -> None:
        if writable and link is self._link:
            self._outbox.flush()

    def linkClosed(self, link: IVoiceLink, was_clean: bool, code: int | None, reason: str | None) -> None:
        if link in self._abandoned:
            self._abandoned.discard(link)
            return
        if link is self._link:
            self._lost(link, code, reason)
        elif not self._closing:
            # The WebSocket never opened (refused upgrade, handshake timeout ...).
            self._attemptFailed(f"websocket closed before opening ({code}: {reason})", code)

    def _writableLink(self) -> IVoiceLink | None:
        """The connection messages may be written on now: open and greeted."""
        return self._link if self._ready else None

    def _onError(self, data: dict[str, Any]) -> None:
        mid = data.get("message_id")
        if not isinstance(mid, str):
            self.log.warn("server error {code}: {message}", code=data.get("code"), message=data.get("message"))
            return
        if mid == self._resume_mid and self._link is not None:
            self._onResumeAnswer(self._link, {"resumed": False, "resume_error": data.get("code")})
            return
        if data.get("code") in RETRYABLE_ERRORS and self.queue.requeue(mid) is not None:
            # Dropped, not handled: keep it, and hold the queue back for a moment.
            self.stats.rate_limited += 1
            self._outbox.hold(self.rate_limit_pause)
            return
        error = ServerError(data)
        self._requests.fail(mid, error)
        item = self.queue.discard(mid)
        if item is not None and not item.deferred.called:
            item.deferred.errback(error)
