"""
The state one txvoice server shares between its dialects, services and HTTP routes.

It is deliberately not a service: services (listening, heartbeat, reaper, audio workers) hold a
reference to it and manage lifecycles; the protocols read it through their factory.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from txvoice import __version__
from txvoice.audio.workers import AudioWorkers
from txvoice.config import VoiceConfig
from txvoice.events.bus import IEventBus, LocalEventBus
from txvoice.pipeline.interfaces import IVoicePipeline
from txvoice.session.registry import ISessionRegistry, LocalSessionRegistry
from txvoice.session.resume import IResumeStore, LocalResumeStore


@dataclass
class Conversation:
    """A conversation: turns that share context, possibly across sessions."""

    id: str
    started_at: float = field(default_factory=time.time)
    turns: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"conversation_id": self.id, "started_at": self.started_at, "turns": self.turns, "metadata": self.metadata}


@dataclass
class ServerStats:
    """Process-wide counters (Prometheus export reads these)."""

    connections_total: int = 0
    connections_refused: dict[str, int] = field(default_factory=dict)
    heartbeat_drops: int = 0
    resumes: int = 0
    reaped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class VoiceServer:
    """Configuration, registries, pipeline and audio workers of one server."""

    def __init__(
        self,
        config: VoiceConfig,
        pipeline: IVoicePipeline,
        workers: AudioWorkers,
        clock: IReactorTime,
        registry: ISessionRegistry | None = None,
        bus: IEventBus | None = None,
        resume_store: IResumeStore | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.workers = workers
        self.clock = clock
        self.registry = registry if registry is not None else LocalSessionRegistry()
        self.bus = bus if bus is not None else LocalEventBus(self.registry)
        self.resume_store = resume_store if resume_store is not None else LocalResumeStore(clock.seconds)
        self.conversations: dict[str, Conversation] = {}
        self.stats = ServerStats()
        self.started_at = time.time()
        self.version = __version__
        self.shutting_down = False

    def conversation(self, conversation_id: str | None) -> Conversation:
        """The conversation with this id, created when new (a fresh id when None)."""
        cid = conversation_id or "conv_" + uuid.uuid4().hex
        conv = self.conversations.get(cid)
        if conv is None:
            conv = self.conversations[cid] = Conversation(cid)
        return conv

    def authenticate(self, token: str, user_id: str | None) -> Deferred:
        """
        Check an in-protocol ``auth`` token; fire with ``(user_id, tenant)``.  Without an
        authenticator configured every token is accepted (development default).
        """
        return succeed((user_id or "anonymous", None))

    def health(self) -> dict[str, Any]:
        return {
            "status": "healthy" if not self.shutting_down else "unhealthy",
            "version": self.version,
            "active_sessions": len(self.registry),
            "audio_queue_depth": self.workers.queue_depth,
            "uptime_s": round(time.time() - self.started_at, 3),
        }
