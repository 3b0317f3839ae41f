"""
Putting Redis into a server: :func:`scale_out` makes the Redis implementations of the stores
before the :class:`~txvoice.server.context.VoiceServer` exists (it is built around its registry,
bus, resume store and reliable-message log), :meth:`ScaleOut.attach` plugs the rest in once it
does (session tokens, /health, the node id), and :meth:`ScaleOut.services` are the children the
service tree stops after the sessions (the connection, the refresh timers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime

from txvoice.config import VoiceConfig
from txvoice.scaleout.bus import RedisEventBus
from txvoice.scaleout.calls import RedisCallStore
from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.conversations import RedisConversationStore
from txvoice.scaleout.offline import RedisOfflineStore
from txvoice.scaleout.quota import RedisTokenQuota
from txvoice.scaleout.registry import RedisSessionRegistry
from txvoice.scaleout.resume import RedisReliableLog, RedisResumeStore
from txvoice.scaleout.settings import parse_redis_settings
from txvoice.scaleout.tokens import RedisSessionTokenStore
from txvoice.security.session_tokens import SessionTokenIssuer


@dataclass
class ScaleOut:
    """What ``--redis`` adds to one node."""

    config: VoiceConfig
    connection: RedisConnection
    registry: RedisSessionRegistry = field(init=False)
    bus: RedisEventBus = field(init=False)
    resume_store: RedisResumeStore = field(init=False)
    reliable_log: RedisReliableLog = field(init=False)
    call_store: RedisCallStore = field(init=False)

    def __post_init__(self) -> None:
        redis = self.connection
        self.registry = RedisSessionRegistry(redis)
        self.bus = RedisEventBus(self.registry, redis)
        self.resume_store = RedisResumeStore(redis, self.config.resume_ttl)
        self.reliable_log = RedisReliableLog(redis, self.config.resume_ttl)
        self.call_store = RedisCallStore(redis, self.config.resume_ttl)

    def server_stores(self) -> dict[str, Any]:
        """Keyword arguments for VoiceServer: the stores it is built around."""
        return {"registry": self.registry, "bus": self.bus, "resume_store": self.resume_store,
                "reliable_log": self.reliable_log}

    def attach(self, server: Any) -> None:
        """Plug Redis into a VoiceServer: session tokens (and their count per user), its health, its node id."""
        server.node_id = self.connection.node_id
        server.health_checks.append(self.connection.health_reason)
        server.scaleout = self
        server.conversation_store = RedisConversationStore(self.connection, self.config.redis_conversation_ttl)
        server.offline_store = RedisOfflineStore(
            self.connection, max_messages=self.config.offline_queue_max_messages,
            max_bytes=self.config.offline_queue_max_bytes, max_age=self.config.offline_queue_max_age)
        server.call_store = self.call_store
        config = self.config
        server.admission.issuer = SessionTokenIssuer(
            store=RedisSessionTokenStore(self.connection), clock=self.connection.clock,
            ttl=config.session_token_ttl, max_per_principal=config.session_tokens_per_user,
            quota=RedisTokenQuota(self.connection),
        )

    def services(self) -> list[IService]:
        """Started after the listener, stopped after the sessions (which write their state)."""
        return [self.connection, self.registry, self.resume_store, self.call_store]


def scale_out(config: VoiceConfig, clock: IReactorTime, worker: int | None = None) -> ScaleOut | None:
    """
    None without ``--redis``; ValueError for settings that do not make sense.  Process ``i`` of
    ``--processes N`` (0 the parent) is node ``<node-id>.<i>`` (each process is a node of its own:
    it has its own sessions and subscription).
    """
    if not config.redis:
        return None
    settings = parse_redis_settings(config)
    node_id = config.node_id
    if node_id and worker is not None:
        node_id = f"{node_id}.{worker}"
    return ScaleOut(config, RedisConnection(settings, clock, node_id))
