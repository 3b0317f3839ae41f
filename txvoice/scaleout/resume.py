"""
Resume state and the reliable-message log on Redis: a client resumes on **any** node, a reliable
message acknowledged by one node is answered ``duplicate: true`` by every other, and a node killed
with SIGKILL loses nothing it acknowledged.

- ``resume:<sha256(token)>``: JSON ``{session_id, user_id, tenant, conversation_id, log_id}``.
  Written when a session opens (not only when its connection drops: a killed process never sees
  that) and re-written for every live session of this node each third of ``--redis-session-ttl``
  (one EVAL per 100 sessions, one batch a reactor turn), each time with a TTL of ``--resume-ttl`` plus ``--redis-session-ttl``.  ``take`` is
  ``GETDEL``: a token resumes once, cluster-wide.  What this node sends for one resume key goes out
  in order (:meth:`~txvoice.scaleout.connection.RedisConnection.ordered`): a session's ``keep``
  is not overtaken by its write at open, nor a ``take`` here by the ``keep`` before it.
- ``log:<log_id>``: a sorted set of the reliable message ids the session and the sessions that
  resumed it handled (the last 1024, by time).  A message is recorded *before* it is applied
  (:meth:`RedisReliableLog.record`, ``ZADD`` only when absent, atomic in a script): whichever node
  records it applies it, every later copy is a duplicate.  Handling that fails un-records it.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.writes import OutageNotice, RefreshedStore, in_batches
from txvoice.session.resume import IReliableLog, IResumeStore, ResumeState
from txvoice.session.session import Session

#: Reliable message ids kept per log (as the in-process AckedIds).
LOG_LIMIT = 1024

_RECORD = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: ARGV[1] ttl ms, then pairs (resume key, JSON); the log of each (JSON.log_key) is kept as long.
_REFRESH = """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ttl)
  redis.call('PEXPIRE', cjson.decode(ARGV[i + 1]).log_key, ttl)
end
return (#ARGV - 1) / 2
"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@implementer(IResumeStore)
class RedisResumeStore(RefreshedStore):
    def __init__(self, redis: RedisConnection, resume_ttl: float) -> None:
        super().__init__(redis, "writing resume state to Redis")
        self.resume_ttl = resume_ttl
        #: session id -> (session, log id): this node's live sessions that can be resumed.
        self._live: dict[str, tuple[Session, str]] = {}

    @property
    def _ttl_ms(self) -> int:
        return int((self.resume_ttl + self.redis.settings.session_ttl) * 1000)

    def _pair(self, token: str, doc: dict[str, Any]) -> list[str]:
        redis = self.redis
        doc = {**doc, "log_key": redis.key("log", doc["log_id"])}
        return [redis.key("resume", _digest(token)), json.dumps(doc, separators=(",", ":"))]

    @staticmethod
    def _doc(session: Session, log_id: str) -> dict[str, Any]:
        return {"session_id": session.id, "user_id": session.user_id, "tenant": session.tenant,
                "conversation_id": session.conversation_id, "log_id": log_id}

    def _send(self, pairs: list[str], ttl_ms: int) -> defer.Deferred[Any]:
        if not pairs:
            return defer.succeed(0)
        # In order per resume key (a session's write at open, its keep, a take on this node).
        d = self.redis.ordered(pairs[0::2], lambda: self.redis.eval(_REFRESH, [], [ttl_ms, *pairs]))
        return d.addCallbacks(self._notice.succeeded, self._notice.passed)

    def _write(self, pairs: list[str], ttl_ms: int) -> defer.Deferred[Any]:
        return self._send(pairs, ttl_ms).addErrback(lambda _: None)

    # IResumeStore

    def opened(self, session: Session, log_id: str) -> None:
        if not session.resume_token:
            return
        self._live[session.id] = (session, log_id)
        self._write(self._pair(session.resume_token, self._doc(session, log_id)), self._ttl_ms)

    def keep(self, state: ResumeState, ttl: float) -> None:
        self._live.pop(state.session_id, None)
        doc = {"session_id": state.session_id, "user_id": state.user_id, "tenant": state.tenant,
               "conversation_id": state.conversation_id, "log_id": state.log_id or state.session_id}
        self._write(self._pair(state.token, doc), int(ttl * 1000))

    def closed(self, session: Session) -> None:
        self._live.pop(session.id, None)

    def take(self, token: str) -> defer.Deferred[ResumeState | None]:
        key = self.redis.key("resume", _digest(token))
        d = self.redis.ordered(key, lambda: self.redis.call("GETDEL", key))

        def found(raw: str | None) -> ResumeState | None:
            if raw is None:
                return None
            doc = json.loads(raw)
            return ResumeState(token, doc["session_id"], doc.get("user_id"), doc.get("tenant"),
                               doc.get("conversation_id"), log_id=doc.get("log_id") or doc["session_id"])

        return d.addCallback(found)

    def _send_live(self, batch: list[tuple[Session, str]]) -> defer.Deferred[Any]:
        pairs: list[str] = []
        for session, log_id in batch:
            # Those closed or kept (their connection dropped: keep wrote their state) since the round began are left out.
            if session.resume_token and self._live.get(session.id, (None,))[0] is session:
                pairs += self._pair(session.resume_token, self._doc(session, log_id))
        return self._send(pairs, self._ttl_ms)

    def refresh(self) -> defer.Deferred[Any]:
        """Re-write the resume state of every live session of this node, in batches."""
        return in_batches(self.redis.clock, list(self._live.values()), self._send_live).addErrback(lambda _: None)



@implementer(IReliableLog)
class RedisReliableLog:
    def __init__(self, redis: RedisConnection, resume_ttl: float) -> None:
        self.redis = redis
        self.resume_ttl = resume_ttl
        self._notice = OutageNotice("recording reliable messages in the shared log (each is applied by this node alone)")

    def record(self, log_id: str, message_id: str) -> defer.Deferred[bool]:
        ttl_ms = int((self.resume_ttl + self.redis.settings.session_ttl) * 1000)
        d = self.redis.eval(_RECORD, [self.redis.key("log", log_id)],
                            [message_id, int(time.time() * 1000), ttl_ms, LOG_LIMIT])
        # While Redis is down every reliable message fails here: logged once, not once a message.
        return d.addCallbacks(self._notice.succeeded, self._notice.passed).addCallback(lambda added: bool(added))

    def forget(self, log_id: str, message_id: str) -> defer.Deferred[None]:
        d = self.redis.call("ZREM", self.redis.key("log", log_id), message_id)
        return d.addCallback(lambda _: None)
