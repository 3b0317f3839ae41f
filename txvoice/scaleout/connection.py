"""
The connection to Redis: a service in the tree, on txredisapi (Twisted-native: no second event
loop, measured in ``bench/bench_redis_client.py``).

It keeps ``--redis-pool-size`` connections for commands and one for the pub/sub subscription,
each reconnected by txredisapi's ``ClientService`` with exponential backoff and jitter (0.2 s up
to ``--redis-reconnect-max-delay``).  A command while no connection is up fails at once with
:class:`RedisUnavailable` instead of waiting for one (txredisapi would queue it until Redis
returns): callers degrade to what this node knows.  So does a command while Redis has left the
commands in flight unanswered for :data:`STALLED` seconds (a Redis that hangs keeps its
connections open): otherwise every command of the ``--redis-timeout`` until the first times out
piles up (~200 at 100 reliable messages a second) and each waits that long before the node handles
it alone; txredisapi then fails them all in one reactor turn.  A stall is only concluded after the
reactor has polled its sockets once more (a node whose own reactor was held past STALLED has its
answers waiting there, unread: that is not Redis hanging), and a watchdog check that runs late
(the reactor was held) restarts the wait: what was sent meanwhile may still sit in the write
buffer.  A ``PING`` every second tells whether Redis answers; :meth:`RedisConnection.health_reason` is what ``/health`` shows as ``degraded`` while it
does not.  :meth:`RedisConnection.ordered` sends commands for one key one after another
(:mod:`txvoice.scaleout.ordering`: the pool would otherwise apply them in any order).  Callbacks registered with :meth:`RedisConnection.on_up` run each time Redis is back (a
registry re-writes its sessions then).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterable, TypeVar

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IReactorTime
from twisted.internet import task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txvoice.errors import VoiceError
from txvoice.scaleout.ordering import KeyOrder
from txvoice.scaleout.settings import RedisSettings

log = Logger(namespace="txvoice.redis")

T = TypeVar("T")

#: Seconds between PINGs (the health of the link).
PING_INTERVAL = 1.0
#: Longest a stop waits for commands in flight (what closing sessions wrote) before disconnecting.
STOP_WAIT = 1.0
#: Seconds without an answer, commands in flight, after which new commands fail at once (a healthy
#: Redis answers in well under a millisecond; this leaves room for a slow script).
STALLED = 0.25
#: Seconds between checks for a stall.
STALL_CHECK = 0.1
#: First reconnection delay (s); txredisapi multiplies it by e per failed attempt up to the max.
INITIAL_DELAY = 0.2


class RedisUnavailable(VoiceError):
    """Redis cannot be reached now; the node serves from what it holds locally."""

    code = "redis_unavailable"
    http_status = 503


class RedisNotAnswering(RedisUnavailable):
    """Connected, but Redis has not answered the commands in flight for :data:`STALLED` seconds."""


def node_name(configured: str) -> str:
    """This node's id in the cluster."""
    return configured or f"{socket.gethostname()}-{os.getpid()}"


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """The pub/sub connection: (re)subscribes to its owner's patterns whenever it connects."""

    owner: "RedisConnection"

    def connectionMade(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = super().connectionMade()

        def ready(_: object) -> None:
            if self.connected and self.owner.patterns:
                self.psubscribe(list(self.owner.patterns)).addErrback(
                    lambda f: log.warn("psubscribe failed: {error}", error=f.getErrorMessage()))
            self.owner._subscriberChanged(True)

        d.addCallback(ready)
        return d

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.owner._subscriberChanged(False)

    def messageReceived(self, pattern: str | None, channel: str, message: str) -> None:
        self.owner._message(channel, message)


class _KeepTrying:
    """
    txredisapi stops reconnecting for good when a new connection's AUTH or SELECT fails -- also when
    it only timed out (a Redis that hangs, SIGSTOP) or answered ``LOADING`` (a Redis restarting with
    its data): the node would stay ``redis_down`` until it is restarted.  It keeps trying instead,
    with the backoff; :meth:`RedisConnection.stopService` stops it with ``disconnect()``.
    """

    def stopTrying(self) -> defer.Deferred[None]:
        log.warn("a new connection to Redis failed its AUTH or SELECT: trying again")
        return defer.succeed(None)


class _CommandFactory(_KeepTrying, txredisapi.RedisFactory):  # type: ignore[misc]
    pass


class _SubscriberFactory(_KeepTrying, txredisapi.SubscriberFactory):  # type: ignore[misc]
    pass


class RedisConnection(Service):
    """Commands (:meth:`call`), pub/sub (:meth:`subscribe`, :meth:`publish`), health."""

    def __init__(self, settings: RedisSettings, clock: IReactorTime, node_id: str = "") -> None:
        self.settings = settings
        self.clock = clock
        self.node_id = node_name(node_id)
        self.prefix = settings.prefix
        #: pattern -> handler(channel, message)
        self.patterns: dict[str, Callable[[str, str], None]] = {}
        self.commands = 0  # commands sent by this node (the benchmark's count)
        self.up = False
        self.reason: str | None = "redis_connecting"
        self._up_callbacks: list[Callable[[], object]] = []
        self._factory: Any = None
        self._subscriber_factory: Any = None
        self._subscribed = False
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = clock
        self._pinging = False
        self._inflight = 0
        #: Since when commands have been in flight with no answer (None: none in flight).
        self._waiting_since: float | None = None
        self._stalled = False
        #: withCount: how many STALL_CHECK intervals passed since the last check (more than 2: a late one).
        self._stall_check = LoopingCall.withCount(self._checkStall)
        self._stall_check.clock = clock
        #: Units of commands per key, in order (:meth:`ordered`).
        self.order = KeyOrder()

    # service

    def _endpoint(self) -> Any:
        settings = self.settings
        context = None
        if settings.tls:
            trust: Any = None
            if settings.ca_file:
                with open(settings.ca_file, "rb") as pem:
                    trust = ssl.Certificate.loadPEM(pem.read())
            context = ssl.optionsForClientTLS(settings.host, trustRoot=trust)
        return txredisapi._makeEndpoint(settings.host, settings.port, settings.timeout, context)

    def _configure(self, factory: Any) -> None:
        factory.initialDelay = INITIAL_DELAY
        factory.maxDelay = max(INITIAL_DELAY, self.settings.reconnect_max_delay)
        factory.reconnect = True

    def startService(self) -> None:
        super().startService()
        s = self.settings
        factory = self._factory = _CommandFactory(
            s.address, s.db, s.pool_size, isLazy=True, password=s.password, replyTimeout=s.timeout,
            username=s.username,
        )
        self._configure(factory)
        factory.startConnecting(self._endpoint())
        sub = self._subscriber_factory = _SubscriberFactory(isLazy=True)
        sub.protocol = type("Subscriber", (_Subscriber,), {"owner": self})
        sub.password, sub.username, sub.replyTimeout = s.password, s.username, None
        self._configure(sub)
        sub.startConnecting(self._endpoint())
        log.info("connecting to Redis at {address} as node {node_id}", address=s.address, node_id=self.node_id)
        self._pinger.start(PING_INTERVAL, now=False)
        self._stall_check.start(STALL_CHECK, now=False)
        self.clock.callLater(0.05, self._ping)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._pinger.running:
            self._pinger.stop()
        if self._stall_check.running:
            self._stall_check.stop()
        # What the closing sessions wrote (resume state, registry removals) goes out first: bounded.
        deadline = self.clock.seconds() + STOP_WAIT
        while self._inflight and self.clock.seconds() < deadline:
            yield task.deferLater(self.clock, 0.01, lambda: None)
        stops = [f.disconnect() for f in (self._factory, self._subscriber_factory) if f is not None]
        yield defer.gatherResults(stops, consumeErrors=True).addErrback(lambda f: None)

    # health

    def _ping(self) -> None:
        if self._pinging or not self.running:
            return
        self._pinging = True

        def answered(_: object) -> None:
            self._setUp(None if self._subscribed else "redis_subscription_down")

        def failed(f: Failure) -> None:
            reason = "redis_down" if f.check(RedisUnavailable) and not f.check(RedisNotAnswering) else "redis_not_answering"
            self._setUp(reason, f.getErrorMessage())

        def done(_: object) -> None:
            self._pinging = False

        self.call("PING").addCallbacks(answered, failed).addBoth(done)

    def _setUp(self, reason: str | None, detail: str = "") -> None:
        was_up = self.up
        self.reason = reason
        self.up = reason is None
        if self.up and not was_up:
            log.info("Redis at {address} is up", address=self.settings.address)
            for callback in list(self._up_callbacks):
                try:
                    callback()
                except Exception:
                    log.failure("a Redis reconnection callback failed")
        elif was_up and not self.up:
            log.warn("Redis at {address} is down: {reason} {detail}", address=self.settings.address,
                     reason=reason, detail=detail)

    def _subscriberChanged(self, connected: bool) -> None:
        self._subscribed = connected
        if not connected and self.up:
            self._setUp("redis_subscription_down")

    def health_reason(self) -> str | None:
        """None while Redis answers; else why /health is degraded (``redis_down``, ...)."""
        return self.reason

    def on_up(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` every time Redis becomes reachable again (and the first time)."""
        self._up_callbacks.append(callback)

    # commands

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def call(self, *args: Any) -> defer.Deferred[Any]:
        """One Redis command; fails at once with RedisUnavailable while no connection is up."""
        factory = self._factory
        if factory is None or factory.size == 0:
            return defer.fail(RedisUnavailable(f"Redis at {self.settings.address} is not connected"))
        now = self.clock.seconds()
        if self._stalled and self._waiting_since is not None:
            return defer.fail(RedisNotAnswering(
                f"Redis at {self.settings.address} has not answered for {now - self._waiting_since:.1f} s"))
        self.commands += 1
        try:
            d: defer.Deferred[Any] = factory.handler.execute_command(*args)
        except txredisapi.ConnectionError as e:
            return defer.fail(RedisUnavailable(str(e)))
        self._inflight += 1
        if self._waiting_since is None:
            self._waiting_since = now

        def done(result: object) -> object:
            self._inflight -= 1
            # An answer (or a failure: the connection is gone): what is still in flight waits from now.
            self._waiting_since = self.clock.seconds() if self._inflight else None
            self._stalled = False
            return result

        return d.addBoth(done)

    def ordered(self, keys: str | Iterable[str], send: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """
        ``send()`` (commands for ``keys``) once every earlier unit for any of ``keys`` has been
        answered: what one node writes to a key is applied in the order it was written, although
        the pool sends each command on any of its connections.
        """
        return self.order.run(keys, send)

    def _checkStall(self, intervals: int = 1) -> None:
        now = self.clock.seconds()
        if intervals > 2 and self._waiting_since is not None:
            # This check is late: our own reactor was held, and what went "in flight" meanwhile
            # may not even have been written to the socket.  That time is not Redis's.
            self._waiting_since = now
            return
        since = self._waiting_since
        if not self._stalled and since is not None and now - since > STALLED:
            # Concluded a turn later: after the reactor has read what its sockets hold.
            self.clock.callLater(0, self._confirmStall, since)

    def _confirmStall(self, since: float) -> None:
        if self._waiting_since == since:
            self._stalled = True

    def eval(self, script: str, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        """Run a Lua script atomically (EVAL: one round trip)."""
        return self.call("EVAL", script, len(keys), *keys, *args)

    # pub/sub

    def subscribe(self, pattern: str, handler: Callable[[str, str], None]) -> None:
        """Deliver messages on channels matching ``pattern`` (prefixed here) to ``handler``."""
        full = self.prefix + pattern
        self.patterns[full] = handler
        factory = self._subscriber_factory
        if factory is not None and factory.pool:
            factory.pool[0].psubscribe([full])

    def publish(self, channel: str, message: str) -> defer.Deferred[Any]:
        return self.call("PUBLISH", self.prefix + channel, message)

    def _message(self, channel: str, message: str) -> None:
        for pattern, handler in self.patterns.items():
            if _matches(pattern, channel):
                try:
                    handler(channel[len(self.prefix):], message)
                except Exception:
                    log.failure("handling a message on {channel} failed", channel=channel)


def _matches(pattern: str, channel: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(channel, pattern)
