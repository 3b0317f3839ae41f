"""
The session registry on Redis: this node's live sessions stay in a local registry (they are
sockets), and each is mirrored to Redis -- a hash ``session:<id>`` (node, user, tenant,
conversation, dialect, transports, opened_at) with a TTL and its id in the ``sessions`` sorted set
scored by expiry -- so that ``/monitoring/cluster`` lists the cluster.  A timer re-writes every
local session each third of ``--redis-session-ttl`` (one EVAL per 100 sessions, one batch a reactor
turn: :mod:`txvoice.scaleout.writes`): a node killed with SIGKILL stops refreshing and its entries
expire.  A session whose user, tenant or conversation becomes known or changes (in-protocol auth,
a call's ``session_start``, a resume) is re-written then (:meth:`RedisSessionRegistry.changed`:
``/monitoring/cluster`` shows it at once, not up to a third of the TTL later).  A closed session
is removed at once, after what was written for it has been answered
(:meth:`~txvoice.scaleout.connection.RedisConnection.ordered`: no ghost entry).  While Redis is
down the writes fail (logged once per outage) and the refresh when it is back re-writes everything.  Nothing here runs per audio
frame.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

from twisted.internet import defer
from zope.interface import implementer

from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.writes import RefreshedStore, in_batches
from txvoice.session.registry import ISessionRegistry, LocalSessionRegistry
from txvoice.session.session import Session

#: KEYS[1] the sorted set of live session ids; ARGV: ttl ms, now ms, then JSON session documents.
_WRITE = """
local ttl = tonumber(ARGV[1])
local expires = tonumber(ARGV[2]) + ttl
for i = 3, #ARGV do
  local doc = cjson.decode(ARGV[i])
  local key = KEYS[2] .. doc.session_id
  redis.call('HSET', key, 'doc', ARGV[i], 'node', doc.node)
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', KEYS[1], expires, doc.session_id)
end
return #ARGV - 2
"""

#: KEYS[1] sorted set, KEYS[2] hash prefix; ARGV[1] now ms: the live documents.
_LIST = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local doc = redis.call('HGET', KEYS[2] .. id, 'doc')
  if doc then table.insert(out, doc) end
end
return out
"""


def session_document(session: Session, node_id: str) -> dict[str, Any]:
    return {
        "session_id": session.id,
        "node": node_id,
        "user_id": session.user_id,
        "tenant": session.tenant,
        "conversation_id": session.conversation_id,
        "dialect": session.dialect,
        "transports": session.attributes.get("transports"),
        "state": session.state.value,
        "ip": session.ip,
        "created_at": session.created_at,
    }


def _identity(session: Session) -> tuple[str | None, str | None, str | None]:
    return session.user_id, session.tenant, session.conversation_id


@implementer(ISessionRegistry)
class RedisSessionRegistry(RefreshedStore):
    """Local sessions, mirrored to Redis (see the module docstring); also the refresh timer."""

    def __init__(self, redis: RedisConnection) -> None:
        super().__init__(redis, "writing the session registry to Redis")
        self.local = LocalSessionRegistry()
        #: session id -> (user, tenant, conversation) as last written (:meth:`changed` writes on a change only).
        self._identity: dict[str, tuple[str | None, str | None, str | None]] = {}

    # ISessionRegistry: the local sessions

    def add(self, session: Session) -> None:
        self.local.add(session)
        session.on_identity = self.changed
        self._write([session])

    def remove(self, session: Session) -> None:
        if self.local.get(session.id) is not session:
            return
        self.local.remove(session)
        self._identity.pop(session.id, None)
        redis = self.redis
        key = redis.key("session", session.id)
        # After the session's write (and a refresh round's batch holding it) has been answered: sent
        # on another pool connection, the DEL could be applied first and leave a ghost entry.
        d = redis.ordered(key, lambda: defer.gatherResults(
            [redis.call("DEL", key), redis.call("ZREM", redis.key("sessions"), session.id)], consumeErrors=True))
        d.addErrback(self._notice.failed)

    def changed(self, session: Session) -> None:
        """Re-write the entry if its user, tenant or conversation differ from what was last written."""
        if self.local.get(session.id) is session and self._identity.get(session.id) != _identity(session):
            self._write([session])

    def get(self, session_id: str) -> Session | None:
        return self.local.get(session_id)

    def __len__(self) -> int:
        return len(self.local)

    def __iter__(self) -> Iterator[Session]:
        return iter(self.local)

    def by_conversation(self, conversation_id: str) -> list[Session]:
        return self.local.by_conversation(conversation_id)

    def by_user(self, user_id: str) -> list[Session]:
        return self.local.by_user(user_id)

    # Redis

    @property
    def ttl(self) -> float:
        return self.redis.settings.session_ttl

    def _send(self, sessions: list[Session]) -> defer.Deferred[Any]:
        redis = self.redis

        def send() -> defer.Deferred[Any]:
            # Encoded when sent: those closed meanwhile (since a refresh round began, or while an
            # earlier write of theirs was answered) are left out -- their entry is gone, not back.
            live = [s for s in sessions if self.local.get(s.id) is s]
            for s in live:
                self._identity[s.id] = _identity(s)
            docs = [json.dumps(session_document(s, redis.node_id), separators=(",", ":")) for s in live]
            if not docs:
                return defer.succeed(0)
            return redis.eval(_WRITE, [redis.key("sessions"), redis.key("session", "")],
                              [int(self.ttl * 1000), int(time.time() * 1000), *docs])

        d = redis.ordered([redis.key("session", s.id) for s in sessions], send)
        return d.addCallbacks(self._notice.succeeded, self._notice.passed)

    def _write(self, sessions: list[Session]) -> defer.Deferred[Any]:
        return self._send(sessions).addErrback(lambda _: None)

    def refresh(self) -> defer.Deferred[Any]:
        """Re-write every local session (TTL, and fields that changed: user, conversation), in batches."""
        return in_batches(self.redis.clock, list(self.local), self._send).addErrback(lambda _: None)

    def cluster(self) -> defer.Deferred[list[dict[str, Any]]]:
        """Every live session of the cluster, as documents (node, user, conversation ...)."""
        redis = self.redis
        d = redis.eval(_LIST, [redis.key("sessions"), redis.key("session", "")], [int(time.time() * 1000)])
        d.addCallback(lambda docs: [json.loads(doc) for doc in docs or []])
        return d

