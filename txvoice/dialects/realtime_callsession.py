"""
One call session of the realtime dialect (S4): its user, channel, audio settings, the connection
serving it, and what it queues while no connection does; handing it to another node.

The table of calls, who holds which across nodes and the messages for users and calls are in
:mod:`txvoice.dialects.realtime_calls`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamSettings
from txvoice.server.channel import VoiceChannel
from txvoice.server.observer import IChannelObserver
from txvoice.session.calls import ICallStore
from txvoice.session.offline import IOfflineStore

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


class CallHost(Protocol):
    """What a call session needs of its table (:class:`txvoice.dialects.realtime_calls.CallTable`)."""

    server: "VoiceServer"
    store: IOfflineStore
    call_store: ICallStore

    def remove(self, call: "CallSession") -> None: ...


#: How often a call being handed to another node checks whether its turn in progress is done.
HANDOFF_POLL = 0.05


def _nothing(_: object) -> None:
    """A worker item that only marks a place in a stream's order."""


@implementer(IChannelObserver)
class CallSession:
    """One call: its user, channel, audio settings and the connection serving it (None: offline)."""

    def __init__(self, table: CallHost, call_id: str, user_id: str, tenant: str | None) -> None:
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
        buffered, self._buffer = self._buffer, None
        for payload, is_binary in buffered or ():
            self.write(payload, is_binary)  # offline now: consecutive audio joins into one queued message
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
