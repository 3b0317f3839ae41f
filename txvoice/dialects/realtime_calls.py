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

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txvoice.session.appheartbeat import HeartbeatConfig, config_heartbeat
from txvoice.session.calls import CallInUse, CallRecord, ICallStore, MemoryCallStore, new_epoch
from txvoice.session.offline import IOfflineStore, MemoryOfflineStore
from txvoice.dialects.realtime_callsession import CallConnection, CallSession, call_address, envelope, user_address

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.server.context import VoiceServer

log = Logger(namespace="txvoice.session.calls")


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
        timeout = self.call_store.handoff_timeout * 0.8  # finished before the new owner stops waiting
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
