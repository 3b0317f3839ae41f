"""
Putting Redis into a server: :func:`scale_out` makes the Redis implementations of the stores
before the :class:`~txvoice.server.context.VoiceServer` exists (it is built around its registry,
bus and resume store), :meth:`ScaleOut.attach` plugs the rest into the server once it does
(session tokens, conversations, /health), and the connection is a child of the service tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from txvoice.config import VoiceConfig
from txvoice.scaleout.connection import RedisConnection
from txvoice.scaleout.settings import parse_redis_settings


@dataclass
class ScaleOut:
    """What ``--redis`` adds to one node."""

    connection: RedisConnection

    def server_stores(self) -> dict[str, Any]:
        """Keyword arguments for VoiceServer: the stores it is built around."""
        return {}

    def attach(self, server: Any) -> None:
        """Plug the connection into a VoiceServer (its health, its node id)."""
        server.node_id = self.connection.node_id
        server.health_checks.append(self.connection.health_reason)


def scale_out(config: VoiceConfig, clock: IReactorTime) -> ScaleOut | None:
    """None without ``--redis``; ValueError for settings that do not make sense."""
    if not config.redis:
        return None
    settings = parse_redis_settings(config)
    return ScaleOut(RedisConnection(settings, clock, config.node_id))
