"""
The call sessions of the realtime dialect (S4): a call outlives its connection.

A call session (one ``callId``, one user) owns the voice channel and the response sink.  While a
connection serves it, what the sink writes goes out at once; when the connection drops, the turn
being answered goes on and what it writes is queued in the :class:`IOfflineStore` (bounded), and
the call is kept for ``resume_ttl`` seconds.  A ``session_start`` for the same call and user on a
new connection takes it over: the queue is handed over first, in order and once, then live
messages follow.  Messages for a user with no connection here (``sendToUser``) are queued under
``user:<id>``, and the other nodes are told (``ICallStore.queued``): one serving a call of that
user takes the queue and delivers them live; else they wait for the user's next ``session_start``.
``sendToCall`` for a call another node holds does the same under the call's address.

Which node holds a call is the :class:`~txvoice.session.calls.ICallStore`'s (``--redis``: Redis,
else this process).  A ``session_start`` for a call the table does not hold claims it there; when
another node held it, that node is asked to let it go (its connection is closed with 4005, its
turn in progress finishes into the shared offline queue) before the queue is taken here.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamSettings
from txvoice.server.channel import VoiceChannel
from txvoice.server.observer import IChannelObserver
from txvoice.session.appheartbeat import HeartbeatConfig, config_heartbeat
from txvoice.session.calls import CallInUse, CallRecord, ICallStore, MemoryCallStore, new_epoch
from txvoice.session.offline import IOfflineStore, MemoryOfflineStore

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.server.context import VoiceServer

log = Logger(namespace="txvoice.session.calls")


def envelope(msg_type: str, call_id: str | None, data: dict[str, Any]) -> bytes:
    """S4's envelope ``{type, callId, timestamp (ms), data}`` as JSON bytes."""
    return json.dumps({"type": msg_type, "callId": call_id or "", "timestamp": int(time.time() * 1000),
                       "data": data}, separators=(",", ":"), default=str).encode("utf-8")


def user_address(user_id: str) -> str:
    return "user:" + user_id


def call_address(call_id: str) -> str:
    return "call:" + call_id



class CallConnection(Protocol):
    """What a call session needs of the connection serving it (the realtime dialect's protocol)."""

    session: Any
    state: int
    STATE_OPEN: int

    def writeOut(self, payload: bytes, is_binary: bool) -> None: ...

    def sink_for(self, call: "CallSession") -> Any: ...

    def chunkFailed(self, failure: Failure) -> None: ...

    def takenOver(self, call: "CallSession") -> None: ...


#: How often a call being handed to another node checks whether its turn in progress is done.
HANDOFF_POLL = 0.05


def _nothing(_: object) -> None:
    """A worker item that only marks a place in a stream's order."""


@implementer(IChannelObserver)
class CallSession:
    """One call: its user, channel, audio settings and the connection serving it (None: offline)."""

    def __init__(self, table: "CallTable", call_id: str, user_id: str, tenant: str | None) -> None:
        self.table = table
        self.call_id = call_id
        self.user_id = user_id
        self.tenant = tenant
        self.protocol: "CallConnection | None" = None
        self.channel: VoiceChannel | None = None
        self.fallback_format = AudioFormat()
        self.settings = StreamSettings()
        self.options: dict[str, Any] = {}
        self.max_chunk_size = 0
        self.detected: str | None = None  # the container found in the first bytes
        self.started_at = time.time()
        self._buffer: list[tuple[bytes, bool]] | None = None  # live messages held while the queue drains
        self._expiry: Any = None
        self._offline_audio: list[bytes] = []  # response audio while offline: queued as one message
        self.ended = False
        #: This node's claim of the call in the call store (empty: not claimed).
        self.epoch = ""
        #: Being handed to another node: this table no longer serves it.
        self.leaving = False
        self._closing: Any = None  # the stream ended at the last detach
        self._closed_at_worker = True  # ... and its end has been dispatched back from its worker
        self._inflight: set[Deferred[Any]] = set()  # offline puts not yet answered by the store

    @property
    def address(self) -> str:
        return call_address(self.call_id)

    # output: live, buffered (draining) or queued (offline)

    def send(self, msg_type: str, data: dict[str, Any]) -> None:
        self.write(envelope(msg_type, self.call_id, data), False)

    def write(self, payload: bytes, is_binary: bool) -> None:
        protocol = self.protocol
        if protocol is not None and self._buffer is None and protocol.state != protocol.STATE_OPEN:
            # The connection is closing (its close handshake is under way): what it cannot carry
            # any more is kept for the resumed call, not written into a dying socket.
            protocol = None
        if protocol is not None and self._buffer is None:
            protocol.writeOut(payload, is_binary)
        elif self._buffer is not None:
            self._buffer.append((payload, is_binary))
        elif not self.ended:
            if is_binary:
                self._offline_audio.append(payload)
            else:
                self._flushAudio()
                self._put(payload, False)

    def _flushAudio(self) -> None:
        """Consecutive audio packets queued offline go in as one binary message (one count, in order)."""
        if self._offline_audio:
            audio, self._offline_audio = b"".join(self._offline_audio), []
            self._put(audio, True)

    def _put(self, payload: bytes, is_binary: bool) -> None:
        d = self.table.store.put(self.address, payload, is_binary)
        if not isinstance(d, Deferred) or d.called:
            return
        self._inflight.add(d)

        def done(result: object) -> None:
            self._inflight.discard(d)
            if isinstance(result, Failure):
                log.warn("call {call_id}: a message could not be queued: {error}", call_id=self.call_id,
                         error=result.getErrorMessage())

        d.addBoth(done)

    # connections

    def attach(self, protocol: "CallConnection", announce: Callable[[int], None] | None = None) -> "Deferred[int]":
        """
        Serve the call from ``protocol``: fires with the queued messages' count once they have been
        written to it (live messages produced meanwhile follow them).  ``announce(count)`` is
        called just before they are written (session_started, with the exact count).
        """
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._flushAudio()
        self.protocol = protocol
        if self.channel is None:
            self.channel = VoiceChannel(self.table.server, protocol.session, protocol.sink_for(self), self)
        else:
            self.channel.session = protocol.session
        self._buffer = []
        return self.table.store.take(self.address).addCallback(self._drained, protocol, announce)

    def _drained(self, queued: list[Any], protocol: "CallConnection", announce: Callable[[int], None] | None) -> int:
        buffered, self._buffer = self._buffer or [], None
        if self.protocol is not protocol:
            # Taken over (or dropped) while the store answered: requeue, in order.
            for message in queued:
                self.write(message.payload, message.is_binary)
            for payload, is_binary in buffered:
                self.write(payload, is_binary)
            return 0
        if announce is not None:
            announce(len(queued))
        for message in queued:
            protocol.writeOut(message.payload, message.is_binary)
        for payload, is_binary in buffered:
            protocol.writeOut(payload, is_binary)
        return len(queued)

    # IChannelObserver: the call's channel outlives its connections; what it reports goes to the
    # connection serving the call now (a reconnect's, not the one that started the stream).

    def chunkProcessed(self, events: list[Any] | None) -> None:
        """S4 acknowledges no audio chunk."""

    def chunkFailed(self, failure: Failure) -> None:
        protocol = self.protocol
        if protocol is not None:
            protocol.chunkFailed(failure)
        else:
            log.failure("call {call_id}: audio failed while offline", failure, call_id=self.call_id)

    def detach(self, protocol: "CallConnection") -> None:
        """The connection dropped: finish the turn in progress offline, keep the call ``resume_ttl``."""
        if self.protocol is not protocol:
            return
        self.protocol = None
        if self._buffer is not None:
            for payload, is_binary in self._buffer:
                self._put(payload, is_binary)
            self._buffer = None
        channel = self.channel
        if channel is not None and channel.stream is not None:
            try:
                stream = self._closing = channel.end()  # the last turn is answered (into the queue)
                self._closed_at_worker = False
                # After the stream's end in its worker's order: its last turn has been found by then.
                self.table.server.workers.submit(stream.key, _nothing, None, self._streamClosed, self._streamClosed)
            except Exception:
                log.failure("ending the stream of call {call_id} failed", call_id=self.call_id)
        self.park()

    def park(self) -> None:
        """No connection serves the call: keep it ``resume_ttl``, then end it."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        ttl = self.table.server.config.resume_ttl
        if ttl > 0:
            self._expiry = self.table.server.clock.callLater(ttl, self.end)
        else:
            self.end()

    def _streamClosed(self, _: object) -> None:
        self._closed_at_worker = True

    def idle(self) -> bool:
        """No stream, no turn being found or answered, no reply playing or waiting to (nothing more to queue)."""
        channel = self.channel
        if channel is None:
            return True
        closing = self._closing
        if closing is not None and (not self._closed_at_worker or closing.handles):
            return False
        return (channel.stream is None and channel.playing is None and not channel.responses
                and not channel.open_turns)

    def _hurry(self) -> None:
        """Replies being made for the queue go out as fast as they are encoded, not at real time."""
        channel = self.channel
        if channel is not None:
            for response in [channel.playing, *channel.responses, *channel.open_turns]:
                if response is not None:
                    response.hurry()

    def handOff(self, timeout: float) -> "Deferred[None]":
        """
        Another node took the call over: let the turn in progress finish into the offline queue
        (at most ``timeout`` s; its reply is sent into the queue as fast as it is encoded, since
        nobody listens live), then forget the call here without discarding its queue; fires once
        what it queued has been stored (the other node takes the queue then).
        """
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.leaving = True
        done: Deferred[None] = Deferred()
        clock = self.table.server.clock
        deadline = clock.seconds() + timeout

        def check() -> None:
            if self.ended or self.idle() or clock.seconds() >= deadline:
                finish()
            else:
                self._hurry()
                clock.callLater(HANDOFF_POLL, check)

        def finish() -> None:
            self._flushAudio()
            busy = not self.idle()
            self.ended = True  # nothing more is queued from here
            self.table.remove(self)
            if busy and self.channel is not None:
                log.warn("call {call_id}: handed over with its turn unfinished after {timeout} s",
                         call_id=self.call_id, timeout=timeout)
                self.channel.cancel()
            pending = list(self._inflight)
            defer.gatherResults(pending, consumeErrors=True).addBoth(lambda _: done.callback(None))

        check()
        return done

    def end(self) -> None:
        """The call is over (``session_end``, or not resumed in time): stop it and forget its queue."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if self.ended:
            return
        self.ended = True
        self.table.remove(self)
        self._offline_audio = []
        if self.protocol is None and self.channel is not None:
            self.channel.cancel()
        self.table.store.discard(self.address)
        if self.epoch:
            self.table.call_store.forget(self.call_id, self.epoch).addErrback(
                lambda f: log.warn("call {call_id}: its record could not be dropped: {error}", call_id=self.call_id,
                                   error=f.getErrorMessage()))
        sweep = getattr(self.table.store, "sweep", None)
        if sweep is not None:
            sweep()  # expired messages of users who never came back


class CallTable:
    """The calls of one server's realtime endpoint, by ``callId``; also its offline store and heartbeat settings."""

    def __init__(self, server: "VoiceServer", store: IOfflineStore | None = None) -> None:
        self.server = server
        config = server.config
        self.heartbeat = replace(config_heartbeat(config), enabled=config.realtime_heartbeat)
        self.on_heartbeat_config: list[Callable[[HeartbeatConfig], None]] = []
        self.dropped_counter: Any = None
        if store is None and server.offline_store is not None:
            shared: Any = server.offline_store  # --redis: bounded Redis lists with a TTL
            shared.on_drop = self._dropped
            store = shared
        if store is None:
            store = MemoryOfflineStore(
                server.clock.seconds, max_messages=config.offline_queue_max_messages,
                max_bytes=config.offline_queue_max_bytes, max_age=config.offline_queue_max_age,
                on_drop=self._dropped,
            )
        self.store = store
        self.call_store: ICallStore = server.call_store if server.call_store is not None else MemoryCallStore()
        self.call_store.serve(self._takenOver)
        self.call_store.on_queued(self._queuedElsewhere)
        self.calls: dict[str, CallSession] = {}
        self.handed_over = 0  # calls this node let go to another
        self.resumed_from_other_nodes = 0
        self.resumes = 0
        self.queued_delivered = 0

    def _dropped(self, reason: str, count: int) -> None:
        if self.dropped_counter is not None:
            self.dropped_counter.labels(reason).inc(count)

    def get(self, call_id: str) -> CallSession | None:
        call = self.calls.get(call_id)
        return None if call is None or call.leaving else call

    def open(self, call_id: str, user_id: str, tenant: str | None) -> CallSession:
        call = self.calls[call_id] = CallSession(self, call_id, user_id, tenant)
        return call

    def claim(self, call_id: str, user_id: str, tenant: str | None,
              options: dict[str, Any]) -> "Deferred[tuple[CallSession, bool]]":
        """
        A ``session_start`` for a call this table does not hold: claim it in the call store.
        Fires with (the call, resumed): a call another node held is handed over first (its queue
        complete), one this node knows again (a race of two starts) is this table's; fails with
        ``call_in_use`` for another user's call.  While the store cannot answer (Redis down) the
        call is new, here only.
        """
        epoch = new_epoch()
        store = self.call_store
        record = CallRecord(call_id, user_id, tenant, store.node_id, epoch, time.time(), options)

        def claimed(previous: CallRecord | None) -> Any:
            if previous is None or previous.node == store.node_id:
                return resumed_here(previous)
            d = store.handoff(previous, epoch)
            return d.addCallback(lambda released: resumed_here(previous))

        def resumed_here(previous: CallRecord | None) -> tuple[CallSession, bool]:
            existing = self.get(call_id)
            if existing is not None:
                existing.epoch = epoch  # the latest claim is this table's call
                return existing, True
            call = self.open(call_id, user_id, tenant)
            call.epoch = epoch
            if previous is not None:
                call.started_at = previous.started_at or call.started_at
                if previous.node != store.node_id:
                    self.resumed_from_other_nodes += 1
            return call, previous is not None

        def unclaimed(failure: Failure) -> tuple[CallSession, bool]:
            failure.trap(Exception)
            if failure.check(CallInUse):
                failure.raiseException()
            log.warn("call {call_id} could not be claimed in the call store; serving it here only: {error}",
                     call_id=call_id, error=failure.getErrorMessage())
            existing = self.get(call_id)
            if existing is not None:
                return existing, True
            return self.open(call_id, user_id, tenant), False

        return store.claim(record).addCallbacks(claimed, unclaimed)

    def _takenOver(self, call_id: str, node: str) -> "Deferred[None]":
        """Another node claimed a call: close its connection here with 4005 and let it go, queue complete."""
        call = self.calls.get(call_id)
        if call is None or call.ended or call.leaving:
            return defer.succeed(None)
        self.handed_over += 1
        protocol = call.protocol
        if protocol is not None:
            protocol.takenOver(call)
        log.info("call {call_id} taken over by node {node}", call_id=call_id, node=node)
        timeout = float(getattr(self.call_store, "handoff_timeout", 10.0)) * 0.8
        return call.handOff(timeout)

    def remove(self, call: CallSession) -> None:
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]

    def __iter__(self) -> Iterator[CallSession]:
        return iter(list(self.calls.values()))

    def __len__(self) -> int:
        return len(self.calls)

    def updateHeartbeatConfig(self, **s4: Any) -> HeartbeatConfig:
        """S4's ``server.updateHeartbeatConfig({interval, timeout, maxMissed, enabled})`` (ms): every connection, now."""
        self.heartbeat = self.heartbeat.updated(s4)
        for listener in list(self.on_heartbeat_config):
            listener(self.heartbeat)
        return self.heartbeat

    def sendToUser(self, user_id: str, msg_type: str, data: dict[str, Any]) -> int:
        """
        Send a message to every connected call of ``user_id``; queue it under the user when none is
        connected (delivered at the user's next ``session_start``).  Returns the calls reached.
        """
        reached = 0
        for call in self:
            if call.user_id == user_id and call.protocol is not None:
                call.send(msg_type, data)
                reached += 1
        if not reached:
            # Queued, then (once stored) the other nodes are told: one serving the user delivers it now.
            address = user_address(user_id)
            self.store.put(address, envelope(msg_type, None, data), False).addCallbacks(
                lambda _: self.call_store.queued(address),
                lambda f: log.warn("a message for user {user_id} could not be queued: {error}", user_id=user_id,
                                   error=f.getErrorMessage()))
        return reached

    def _queuedElsewhere(self, address: str) -> None:
        """Another node queued messages for a user or call: delivered live if this node serves it."""
        if address.startswith("call:"):
            call = self.calls.get(address[len("call:"):])
            if call is not None and call.protocol is not None and not call.ended:
                def write(queued: list[Any], call: CallSession = call) -> None:
                    for message in queued:  # as the call's own output: live, buffered, or requeued
                        call.write(message.payload, message.is_binary)

                self.store.take(address).addCallback(write).addErrback(
                    lambda f: log.warn("messages for call {call_id} queued by another node could not be taken: "
                                       "{error}", call_id=address, error=f.getErrorMessage()))
            return  # offline here: the queue is handed over when the call resumes
        if not address.startswith("user:"):
            return
        user_id = address[len("user:"):]
        if not self._live(user_id):
            return

        def deliver(queued: list[Any]) -> None:
            live = self._live(user_id)
            if not live:  # gone meanwhile: back in the queue for their next session_start
                for message in queued:
                    self.store.put(address, message.payload, message.is_binary)
                return
            for message in queued:
                for protocol in live:
                    protocol.writeOut(message.payload, message.is_binary)
            self.queued_delivered += len(queued)

        self.store.take(address).addCallback(deliver).addErrback(
            lambda f: log.warn("messages for user {user_id} queued by another node could not be taken: {error}",
                               user_id=user_id, error=f.getErrorMessage()))

    def _live(self, user_id: str) -> list["CallConnection"]:
        return [call.protocol for call in self if call.user_id == user_id and call.protocol is not None]

    def sendToCall(self, call_id: str, msg_type: str, data: dict[str, Any]) -> bool:
        """
        Send to a call of this node, live or queued while it is offline: True.  False when this
        node holds no such call; then, if another node holds it (a shared call store), the
        message is queued under the call and that node told: delivered live there, or when the
        call resumes.
        """
        call = self.calls.get(call_id)
        if call is not None:
            call.send(msg_type, data)
            return True
        address = call_address(call_id)

        def held(node: str | None) -> Any:
            if node is None or node == self.call_store.node_id:
                return None  # no such call anywhere (or it is ending here)
            return self.store.put(address, envelope(msg_type, call_id, data), False).addCallback(
                lambda _: self.call_store.queued(address))

        self.call_store.holder(call_id).addCallback(held).addErrback(
            lambda f: log.warn("a message for call {call_id} could not be forwarded: {error}", call_id=call_id,
                               error=f.getErrorMessage()))
        return False
