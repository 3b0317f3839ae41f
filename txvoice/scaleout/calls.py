"""
S4 call sessions on Redis: a call started on node A whose client comes back through the load
balancer to node B is resumed on B, with its offline queue, once.

- ``call:<callId>``: JSON :class:`~txvoice.session.calls.CallRecord` (user, tenant, owning node,
  the owner's epoch, started_at, session_start's audio settings, resumes) with a TTL of
  ``--resume-ttl`` plus ``--redis-session-ttl``, re-armed for this node's calls every third of
  ``--redis-session-ttl`` (one EVAL per hundred, a reactor turn apart): a killed node's calls age out.
- :meth:`RedisCallStore.claim` is one script: the previous record is read and replaced by this
  node's (keeping ``started_at``, counting the resume), unless it belongs to another user or
  tenant (``call_in_use``, nothing changed).
- :meth:`RedisCallStore.handoff`: the new owner publishes ``takeover`` on ``calls:node:<old>``; the
  old node closes the call's connection there with 4005 (if it still has one), lets the turn in
  progress finish into the offline queue and publishes ``released`` on ``calls:node:<new>``.
  ``PUBLISH`` answers how many subscribers got it: 0 means the old node is gone (killed), so
  nothing is waited for; otherwise the wait is bounded by ``handoff_timeout``.
- :meth:`RedisCallStore.forget` (the call ended) deletes the record only if it is still this
  claim's (compare the epoch, in a script).
- What this node sends for one record (claim, forget, the refresh) goes out in order
  (:meth:`~txvoice.scaleout.connection.RedisConnection.ordered`): a forget is not applied before
  the claim it ends.  A refresh that fails is logged once per outage (:class:`OutageNotice`).

- :meth:`RedisCallStore.queued`: a message for a user (S4's ``sendToUser``) that no call of this
  node could take live was queued under the user; ``queued`` on ``calls:queued`` tells the other
  nodes, and one serving a call of that user takes the queue (once: ``take`` is atomic) and
  delivers it live.  Nobody serving the user: the queue waits for their next ``session_start``.
  ``sendToCall`` for a call another node holds (:meth:`RedisCallStore.holder`) does the same
  under the call's address: delivered live by its node, or when it resumes.

Nothing here runs per audio frame: a claim per ``session_start`` of a call this node does not
hold, a forget per call end, the refresh timer.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.writes import OutageNotice, RefreshedStore, in_batches
from txvoice.session.calls import HANDOFF_TIMEOUT, CallInUse, CallRecord, ICallStore, TakeoverHandler

log = Logger(namespace="txvoice.redis")

#: Where a node says it queued messages for an address (a user) it serves nobody at.
QUEUED_CHANNEL = "calls:queued"


#: KEYS[1] the record; ARGV[1] the new record (JSON), ARGV[2] its owner ("who"), ARGV[3] ttl ms.
#: -> {1, previous or ""} when claimed, {0, previous} when another user holds it.
_CLAIM = """
local raw = redis.call('GET', KEYS[1])
local doc = cjson.decode(ARGV[1])
if raw then
  local old = cjson.decode(raw)
  if old.who ~= ARGV[2] then return {0, raw} end
  doc.started_at = old.started_at
  doc.resumes = (tonumber(old.resumes) or 0) + 1
end
redis.call('SET', KEYS[1], cjson.encode(doc), 'PX', ARGV[3])
return {1, raw or ''}
"""

#: KEYS[1] the record, ARGV[1] the epoch that may delete it.
_FORGET = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw).epoch == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

#: ARGV[1] ttl ms, then pairs (key, epoch): re-arm the records this node still owns.
_REFRESH = """
local n = 0
for i = 2, #ARGV, 2 do
  local raw = redis.call('GET', ARGV[i])
  if raw and cjson.decode(raw).epoch == ARGV[i + 1] then
    redis.call('PEXPIRE', ARGV[i], ARGV[1])
    n = n + 1
  end
end
return n
"""


def _who(user_id: str, tenant: str | None) -> str:
    return json.dumps([user_id, tenant], separators=(",", ":"))


@implementer(ICallStore)
class RedisCallStore(RefreshedStore):
    """The cluster's calls (see the module docstring); also its refresh timer."""

    def __init__(self, redis: RedisConnection, resume_ttl: float, handoff_timeout: float = HANDOFF_TIMEOUT) -> None:
        super().__init__(redis, "refreshing call records in Redis")
        self.node_id = redis.node_id
        self.resume_ttl = resume_ttl
        self.handoff_timeout = handoff_timeout
        #: call id -> epoch: the calls this node owns (re-armed by the refresh timer).
        self.owned: dict[str, str] = {}
        self._handler: TakeoverHandler | None = None
        #: (call id, epoch) -> the handoff waiting for the old node's ``released``.
        self._waiting: dict[tuple[str, str], defer.Deferred[bool]] = {}
        self.handoffs = 0
        self.handoff_timeouts = 0
        self._queued_notice = OutageNotice("telling the other nodes of messages queued for their users")
        self._queued_handler: Callable[[str], None] | None = None
        redis.subscribe(self._channel(self.node_id), self._received)
        redis.subscribe(QUEUED_CHANNEL, self._queuedElsewhere)

    @property
    def ttl_ms(self) -> int:
        return int((self.resume_ttl + self.redis.settings.session_ttl) * 1000)

    def _key(self, call_id: str) -> str:
        return self.redis.key("call", call_id)

    @staticmethod
    def _channel(node: str) -> str:
        return f"calls:node:{node}"

    # ICallStore

    def claim(self, record: CallRecord) -> defer.Deferred[CallRecord | None]:
        doc = {**record.as_dict(), "who": _who(record.user_id, record.tenant)}
        key = self._key(record.call_id)
        d = self.redis.ordered(key, lambda: self.redis.eval(
            _CLAIM, [key], [json.dumps(doc, separators=(",", ":")), doc["who"], self.ttl_ms]))

        def claimed(result: list[Any]) -> CallRecord | None:
            ok, raw = int(result[0]), result[1]
            if not ok:
                raise CallInUse("this call belongs to another user")
            self.owned[record.call_id] = record.epoch
            return CallRecord.from_dict(json.loads(raw)) if raw else None

        return d.addCallback(claimed)

    def handoff(self, previous: CallRecord, epoch: str) -> defer.Deferred[bool]:
        if previous.node == self.node_id:
            return defer.succeed(False)  # this node's own record, of a call it no longer holds
        self.handoffs += 1
        key = (previous.call_id, epoch)
        waiting: defer.Deferred[bool] = defer.Deferred()
        self._waiting[key] = waiting
        message = json.dumps({"op": "takeover", "call_id": previous.call_id, "epoch": epoch, "node": self.node_id},
                             separators=(",", ":"))

        def published(receivers: Any) -> None:
            if not int(receivers or 0):
                self._settle(key, False)  # nobody listens there: that node is gone

        def failed(failure: Failure) -> None:
            log.warn("could not ask node {node} to hand call {call_id} over: {error}", node=previous.node,
                     call_id=previous.call_id, error=failure.getErrorMessage())
            self._settle(key, False)

        self.redis.publish(self._channel(previous.node), message).addCallbacks(published, failed)
        timer = self.redis.clock.callLater(self.handoff_timeout, self._timedOut, key, previous.node)

        def done(result: bool) -> bool:
            if timer.active():
                timer.cancel()
            return result

        return waiting.addCallback(done)

    def _timedOut(self, key: tuple[str, str], node: str) -> None:
        if key in self._waiting:
            self.handoff_timeouts += 1
            log.warn("node {node} did not hand call {call_id} over within {timeout} s; resuming without waiting",
                     node=node, call_id=key[0], timeout=self.handoff_timeout)
            self._settle(key, False)

    def _settle(self, key: tuple[str, str], released: bool) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting.callback(released)

    def forget(self, call_id: str, epoch: str) -> defer.Deferred[bool]:
        if self.owned.get(call_id) == epoch:
            del self.owned[call_id]
        key = self._key(call_id)
        d = self.redis.ordered(key, lambda: self.redis.eval(_FORGET, [key], [epoch]))
        return d.addCallback(lambda n: bool(int(n)))

    def serve(self, handler: TakeoverHandler) -> None:
        self._handler = handler

    def queued(self, address: str) -> None:
        message = json.dumps({"address": address, "node": self.node_id}, separators=(",", ":"))
        self._queued_notice.watch(self.redis.publish(QUEUED_CHANNEL, message))

    def on_queued(self, handler: Callable[[str], None]) -> None:
        self._queued_handler = handler

    def holder(self, call_id: str) -> defer.Deferred[str | None]:
        d = self.redis.call("GET", self._key(call_id))
        return d.addCallback(lambda raw: str(json.loads(raw)["node"]) if raw else None)

    def _queuedElsewhere(self, channel: str, message: str) -> None:
        doc = json.loads(message)
        if doc.get("node") != self.node_id and self._queued_handler is not None:
            self._queued_handler(str(doc["address"]))

    # pub/sub

    def _received(self, channel: str, message: str) -> None:
        doc = json.loads(message)
        call_id, epoch = str(doc["call_id"]), str(doc["epoch"])
        if doc.get("op") == "released":
            self._settle((call_id, epoch), True)
        elif doc.get("op") == "takeover":
            self.owned.pop(call_id, None)
            handler = self._handler
            d: defer.Deferred[None] = defer.succeed(None) if handler is None else defer.maybeDeferred(
                handler, call_id, str(doc["node"]))

            def release(_: object) -> None:
                reply = json.dumps({"op": "released", "call_id": call_id, "epoch": epoch}, separators=(",", ":"))
                self.redis.publish(self._channel(str(doc["node"])), reply).addErrback(
                    lambda f: log.warn("could not tell node {node} call {call_id} is released: {error}",
                                       node=doc["node"], call_id=call_id, error=f.getErrorMessage()))

            def failed(failure: Failure) -> None:
                log.failure("letting call {call_id} go to node {node} failed", failure, call_id=call_id, node=doc["node"])

            d.addErrback(failed).addCallback(release)

    # refresh

    def refresh(self) -> defer.Deferred[Any]:
        """
        Re-arm the TTL of every call this node owns, :data:`~txvoice.scaleout.writes.BATCH` records
        per EVAL and one EVAL per reactor turn (as the registry's and resume store's refreshes):
        one script over thousands of records would hold Redis, and encoding them the reactor.
        Fires with the number of records re-armed (with None when Redis failed: logged once per outage).
        """
        rearmed = [0]

        def send(batch: list[tuple[str, str]]) -> defer.Deferred[Any]:
            # Encoded when sent: a call that ended or moved since the round began is left out.
            pairs: list[str] = []
            for call_id, epoch in batch:
                if self.owned.get(call_id) == epoch:
                    pairs += [self._key(call_id), epoch]
            if not pairs:
                return defer.succeed(0)
            d = self.redis.ordered(pairs[0::2], lambda: self.redis.eval(_REFRESH, [], [self.ttl_ms, *pairs]))
            return d.addCallback(lambda n: rearmed.__setitem__(0, rearmed[0] + int(n)))

        if not self.owned:
            return defer.succeed(0)
        d = in_batches(self.redis.clock, list(self.owned.items()), send)
        return self._notice.watch(d.addCallback(lambda _: rearmed[0]))


