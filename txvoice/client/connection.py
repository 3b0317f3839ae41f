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
"""

from __future__ import annotations

import enum
import json
import secrets
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.client.backoff import Backoff
from txvoice.client.breaker import CircuitBreaker, CircuitOpenError
from txvoice.client.emitter import Emitter
from txvoice.client.protocol import USER_AGENT, IClientHandler, IVoiceLink, VoiceClientFactory
from txvoice.client.queue import Outgoing, QueueFull, SendQueue
from txvoice.logging import NamespaceLogger

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

PRIORITY_INTERNAL = 0  # the client's own re-attach messages go before anything queued
PRIORITY_HIGH = 1
PRIORITY_AUDIO = 2
PRIORITY_NORMAL = 5
PRIORITY_LOW = 9

_FAR = 3600.0  # retry delay handed to ClientService while it is being stopped (never reached)
#: Errors that mean "dropped, not handled": a reliable message answered with one is sent again later.
RETRYABLE_ERRORS = frozenset({"rate_limited"})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class ConnectionState(str, enum.Enum):
    CLOSED = "closed"
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


class ClientError(Exception):
    """Base of the client's errors."""


class NotConnected(ClientError):
    """A best-effort message or request could not go out: the connection is not open."""


class ClientClosed(ClientError):
    """The client was closed (by :meth:`VoiceClient.close`) before this completed."""


class RequestTimeout(ClientError):
    """No answer to a request within its timeout."""


class ConnectionFailed(ClientError):
    """The client gave up: ``attempts`` attempts failed in a row (last ``reason``)."""

    def __init__(self, reason: str, attempts: int = 0) -> None:
        super().__init__(f"connection failed after {attempts} attempt(s): {reason}")
        self.reason = reason
        self.attempts = attempts


class ServerError(ClientError):
    """The server answered a message with ``error``; ``code`` and ``data`` are its fields."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.code = str(data.get("code", "unknown"))
        self.data = data
        super().__init__(f"{self.code}: {data.get('message', '')}")


@dataclass
class ClientStats:
    """Counters of one client over its whole life (all connections)."""

    attempts: int = 0  # connection attempts made
    failed_attempts: int = 0  # attempts that did not reach ``open``
    opens: int = 0  # times the connection became open
    drops: int = 0  # open connections lost
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    acks: int = 0
    duplicate_acks: int = 0
    resent: int = 0  # reliable messages written again after a reconnect
    dropped_disconnected: int = 0  # best-effort messages dropped because the connection was not open
    heartbeats: int = 0
    heartbeat_timeouts: int = 0
    resumes: int = 0
    resume_failures: int = 0
    rate_limited: int = 0  # reliable messages the server dropped for its rate limit (sent again)
    last_heartbeat_rtt: float | None = None


@implementer(IStreamClientEndpoint)
class _GuardedEndpoint:
    """The real endpoint behind the circuit breaker; reports TCP-level failures to the client."""

    def __init__(self, inner: IStreamClientEndpoint, client: "VoiceClient") -> None:
        self.inner = inner
        self.client = client

    def connect(self, factory: IProtocolFactory) -> Deferred:
        try:
            self.client.breaker.check()
        except CircuitOpenError as e:
            return fail(e)
        self.client.stats.attempts += 1
        d = self.inner.connect(factory)
        d.addErrback(self.client._connectFailed)
        return d


def endpoint_for(reactor: Any, url: str, timeout: float = 10.0) -> IStreamClientEndpoint:
    """A client endpoint for a ``ws://`` or ``wss://`` URL (TLS verified against the host name)."""
    is_secure, host, port, _resource, _path, _params = parse_url(url)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if is_secure:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


@implementer(IClientHandler)
class VoiceClient:
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

    log = NamespaceLogger(namespace="txvoice.client")

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
        self.clock: IReactorTime = clock if clock is not None else reactor
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
        self.queue = SendQueue(max_queue_bytes)
        self.stats = ClientStats()
        self.greeting: dict[str, Any] | None = None
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.resumed: bool | None = None  # outcome of the last resume attempt
        self.conversation_id: str | None = None

        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self.factory = VoiceClientFactory(
            url, self, compression=compression, max_message_size=max_message_size,
            open_handshake_timeout=ready_timeout, headers=all_headers, useragent=client_name,
            reactor=reactor, protocol=protocol,
        )
        inner = endpoint if endpoint is not None else endpoint_for(reactor, url, connect_timeout)
        self._service = ClientService(_GuardedEndpoint(inner, self), self.factory,
                                      retryPolicy=self._retryDelay, clock=self.clock)

        self._id_prefix = f"c{secrets.token_hex(3)}"
        self._ids = 0
        self._link: IVoiceLink | None = None
        self._ready = False
        self._ever_ready = False
        self._retries = 0  # reconnection attempts scheduled since the connection was last open
        self._stopping = False  # giving up or closing: ClientService is about to be stopped
        self._closing = False
        self._abandoned: weakref.WeakSet = weakref.WeakSet()
        self._waiters: list[Deferred] = []
        self._state_waiters: list[tuple[frozenset[ConnectionState], Deferred]] = []
        self._close_waiters: list[Deferred] = []
        self._requests: dict[str, tuple[Deferred, bool]] = {}
        self._ready_timer: Any = None
        self._close_timer: Any = None
        self._resume_mid: str | None = None
        self._reattach: str | None = None  # conversation to restart if resuming fails
        self._hb_loop: LoopingCall | None = None
        self._hb_pending: tuple[str, float] | None = None
        self._hb_timer: Any = None
        self._hold_until = 0.0  # no writes before this time (after rate_limited)
        self._hold_call: Any = None
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

    def connect(self) -> Deferred:
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

    def whenConnected(self) -> Deferred:
        """Fires with this client when it is next ``open`` (now, if it is); fails if it gives up or closes."""
        if self.state is ConnectionState.OPEN:
            return succeed(self)
        if self.state in (ConnectionState.CLOSED, ConnectionState.FAILED) and not self._service.running:
            return fail(NotConnected(f"the client is {self.state.value}"))
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def when(self, *states: ConnectionState) -> Deferred:
        """Fires with the state when the client is next in one of ``states`` (now, if it is)."""
        if self.state in states:
            return succeed(self.state)
        d: Deferred = Deferred()
        self._state_waiters.append((frozenset(states), d))
        return d

    def send(self, message: dict[str, Any] | str | bytes, priority: int = PRIORITY_NORMAL,
             reliable: bool = False) -> Deferred:
        """
        Queue a message: a JSON envelope (``dict`` or its text) or ``bytes`` (binary audio).

        Lower ``priority`` numbers go first.  A ``reliable`` message gets ``reliable: true`` and a
        ``message_id`` (its own, if it has one); the Deferred fires with the server's ``ack`` data
        (``{"message_id", "duplicate"}``) or fails with :class:`ServerError` when the server
        answers it with ``error``.  A best-effort message's Deferred fires True once written,
        False if it was dropped (not connected, or evicted by the queue's bound).
        """
        if isinstance(message, (bytes, bytearray, memoryview)):
            if reliable:
                raise ValueError("binary messages cannot be reliable: txvoice.v1 acknowledges JSON messages only")
            item = Outgoing(bytes(message), True, priority)
        else:
            env = self._envelope(message, reliable)
            item = Outgoing(_dumps(env).encode("utf-8"), False, priority, reliable, env["message_id"])
        if not reliable and not self._ready:
            self.stats.dropped_disconnected += 1
            return succeed(False)
        try:
            accepted = self.queue.push(item)
        except QueueFull as e:
            return fail(e)
        if not accepted:
            return succeed(False)
        self._flush()
        return item.deferred

    def request(self, msg_type: str, data: dict[str, Any] | None = None, *, priority: int = PRIORITY_NORMAL,
                reliable: bool = False, timeout: float | None = 30.0, **fields: Any) -> Deferred:
        """
        Send a message and fire with the server's answer (the envelope whose ``reply_to`` is its
        ``message_id``).  Fails with :class:`ServerError`, :class:`NotConnected` (best-effort and
        not connected), :class:`RequestTimeout`.  A reliable request that turns out to be a
        duplicate (handled before a reconnect, its answer lost) fires with None.
        """
        mid = self._newId()
        env = {"type": msg_type, "data": dict(data or {}), "message_id": mid, **fields}
        result: Deferred = Deferred()
        self._requests[mid] = (result, reliable)
        timer = None
        if timeout is not None:
            def expire() -> None:
                if self._requests.pop(mid, None) is not None and not result.called:
                    result.errback(RequestTimeout(f"no answer to {msg_type} {mid} within {timeout}s"))
            timer = self.clock.callLater(timeout, expire)

        def settled(value: Any) -> Any:
            if timer is not None and timer.active():
                timer.cancel()
            return value

        result.addBoth(settled)

        def on_sent(outcome: Any) -> None:
            if outcome is False and self._requests.pop(mid, None) is not None and not result.called:
                result.errback(NotConnected(f"{msg_type} not sent: the connection is {self.state.value}"))
            elif isinstance(outcome, dict) and outcome.get("duplicate") and not result.called:
                self._requests.pop(mid, None)
                result.callback(None)

        def on_failed(failure: Failure) -> None:
            self._requests.pop(mid, None)
            if not result.called:
                result.errback(failure)

        self.send(env, priority, reliable).addCallbacks(on_sent, on_failed)
        return result

    def ping(self, data: dict[str, Any] | None = None, **kw: Any) -> Deferred:
        """Application round trip; fires with the ``pong`` envelope."""
        return self.request("ping", data, **kw)

    def start_conversation(self, conversation_id: str | None = None, metadata: dict | None = None) -> Deferred:
        """Start a conversation (reliable); fires with its id."""
        data: dict[str, Any] = {}
        if conversation_id is not None:
            data["conversation_id"] = conversation_id
        if metadata is not None:
            data["metadata"] = metadata
        d = self.request("conversation_start", data, priority=PRIORITY_HIGH, reliable=True)
        return d.addCallback(lambda env: (env or {}).get("data", {}).get("conversation_id", self.conversation_id))

    def end_conversation(self) -> Deferred:
        """End the current conversation (reliable); fires with the answer's data."""
        d = self.request("conversation_end", {"conversation_id": self.conversation_id}, priority=PRIORITY_HIGH,
                         reliable=True)
        return d.addCallback(lambda env: (env or {}).get("data"))

    def reconnect(self, reason: str = "reconnect requested") -> None:
        """Drop the current connection now (no closing handshake) and let the client reconnect."""
        self._abandon(reason)

    def close(self, reason: str = "client closing", timeout: float = 3.0) -> Deferred:
        """
        Say ``disconnect``, close, stop reconnecting.  Fires when ``closed``.  Reliable messages
        still unacknowledged fail with :class:`ClientClosed`.
        """
        if self.state is ConnectionState.CLOSED and not self._service.running:
            return succeed(None)
        d: Deferred = Deferred()
        self._close_waiters.append(d)
        if self._closing:
            return d
        self._closing = True
        self._stopping = True
        link = self._link
        if link is not None:
            if self._ready:
                self._write(link, {"type": "disconnect", "data": {"reason": reason}, "message_id": self._newId()})
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
            self._onAck(data)
        elif msg_type == "error":
            self._onError(data)
        elif msg_type == "heartbeat":
            self._onHeartbeat(data)

        if reply_to is not None:
            entry = self._requests.pop(reply_to, None)
            if entry is not None and not entry[0].called:
                entry[0].callback(env)

        self.events.emit("message", env)
        self.events.emit(f"message:{msg_type}", env)
        if msg_type == "status" and isinstance(data.get("event_type"), str):
            self.events.emit("event", data)
            self.events.emit(f"event:{data['event_type']}", data)
        elif msg_type == "error":
            self.events.emit("error", data)

    def linkWritable(self, link: IVoiceLink, writable: bool) -> None:
        if writable and link is self._link:
            self._flush()

    def linkClosed(self, link: IVoiceLink, was_clean: bool, code: int | None, reason: str | None) -> None:
        if link in self._abandoned:
            self._abandoned.discard(link)
            return
        if link is self._link:
            self._lost(link, code, reason)
        elif not self._closing:
            # The WebSocket never opened (refused upgrade, handshake timeout ...).
            self._attemptFailed(f"websocket closed before opening ({code}: {reason})", code)

    # ------------------------------------------------------------------ connection life

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
            self._resume_mid = self._newId()
            self._write(link, {"type": "connect", "data": {"resume_token": previous_token, "client": self.client_name},
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
        d = self.send(env, PRIORITY_INTERNAL, reliable=True)
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
        self._startHeartbeat()
        if reopened:
            self.stats.resent += len([item for item in self.queue if item.reliable and item.writes])
        self._flush()
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
        self._stopHeartbeat()
        self.queue.requeue_unacked()
        self.stats.dropped_disconnected += len(self.queue.drop_best_effort())
        for mid, (d, reliable) in list(self._requests.items()):
            if not reliable:
                del self._requests[mid]
                if not d.called:
                    d.errback(NotConnected(f"connection lost before the answer ({reason})"))
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
        requests, self._requests = self._requests, {}
        for d, _ in requests.values():
            if not d.called:
                d.errback(error)

    # ------------------------------------------------------------------ messages

    def _newId(self) -> str:
        self._ids += 1
        return f"{self._id_prefix}-{self._ids}"

    def _envelope(self, message: dict[str, Any] | str, reliable: bool) -> dict[str, Any]:
        if isinstance(message, str):
            message = json.loads(message)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ValueError("a message is a JSON object with a string 'type'")
        env = dict(message)
        env.setdefault("data", {})
        if not env.get("message_id"):
            env["message_id"] = self._newId()
        env.setdefault("timestamp", self.clock.seconds())
        if reliable:
            env["reliable"] = True
        return env

    def _write(self, link: IVoiceLink, env: dict[str, Any]) -> None:
        """Write a message straight to ``link`` (link-bound messages that must not be queued)."""
        env.setdefault("timestamp", self.clock.seconds())
        payload = _dumps(env).encode("utf-8")
        link.sendText(payload)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(payload)

    def _flush(self) -> None:
        link = self._link
        if link is None or not self._ready or self.clock.seconds() < self._hold_until:
            return
        while self._link is link and link.writable:
            item = self.queue.pop()
            if item is None:
                break
            if item.is_binary:
                link.sendBinary(item.payload)
            else:
                link.sendText(item.payload)
            self.stats.messages_sent += 1
            self.stats.bytes_sent += item.size
            self.queue.written(item)
            if not item.reliable and not item.deferred.called:
                item.deferred.callback(True)

    def _onAck(self, data: dict[str, Any]) -> None:
        mid = data.get("message_id")
        if not isinstance(mid, str):
            return
        item = self.queue.ack(mid)
        if item is None:
            return
        self.stats.acks += 1
        if data.get("duplicate"):
            self.stats.duplicate_acks += 1
        if not item.deferred.called:
            item.deferred.callback(data)

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
            self._holdWrites(self.rate_limit_pause)
            return
        error = ServerError(data)
        entry = self._requests.pop(mid, None)
        if entry is not None and not entry[0].called:
            entry[0].errback(error)
        item = self.queue.discard(mid)
        if item is not None and not item.deferred.called:
            item.deferred.errback(error)

    def _holdWrites(self, seconds: float) -> None:
        self._hold_until = max(self._hold_until, self.clock.seconds() + seconds)
        if self._hold_call is None or not self._hold_call.active():
            self._hold_call = self.clock.callLater(self._hold_until - self.clock.seconds(), self._endHold)

    def _endHold(self) -> None:
        self._hold_call = None
        if self.clock.seconds() < self._hold_until:
            self._holdWrites(0)
        else:
            self._flush()

    # ------------------------------------------------------------------ heartbeat

    def _startHeartbeat(self) -> None:
        if self.heartbeat_interval > 0:
            self._hb_loop = LoopingCall(self._sendHeartbeat)
            self._hb_loop.clock = self.clock
            self._hb_loop.start(self.heartbeat_interval, now=False)

    def _stopHeartbeat(self) -> None:
        if self._hb_loop is not None and self._hb_loop.running:
            self._hb_loop.stop()
        self._hb_loop = None
        self._hb_pending = None
        self._cancel("_hb_timer")

    def _sendHeartbeat(self) -> None:
        link = self._link
        if link is None or not self._ready or self._hb_pending is not None:
            return
        mid = self._newId()
        self._hb_pending = (mid, self.clock.seconds())
        self._write(link, {"type": "heartbeat", "data": {}, "message_id": mid})
        self.stats.heartbeats += 1
        self._hb_timer = self.clock.callLater(self.heartbeat_timeout, self._heartbeatMissed, link)

    def _onHeartbeat(self, data: dict[str, Any]) -> None:
        pending = self._hb_pending
        if pending is None or data.get("reply_to") != pending[0]:
            return
        self._hb_pending = None
        self._cancel("_hb_timer")
        rtt = self.clock.seconds() - pending[1]
        self.stats.last_heartbeat_rtt = rtt
        self.events.emit("heartbeat", rtt)

    def _heartbeatMissed(self, link: IVoiceLink) -> None:
        self._hb_timer = None
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
