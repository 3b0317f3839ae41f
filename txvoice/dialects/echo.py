"""
A plain echo endpoint on the full txvoice stack (limits, compression, sessions, heartbeat).

It exists so the Autobahn testsuite, which expects every message echoed, exercises the same
protocol code the voice dialects run on.  Off unless ``--echo-path`` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from txvoice.server.base import VoiceServerProtocol
from txvoice.dialects.registry import websocket_endpoint

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer


class EchoProtocol(VoiceServerProtocol):
    """Echoes text and binary messages as they came."""

    dialect = "echo"

    def textReceived(self, payload: bytes) -> None:
        self.sendText(payload)

    def binaryReceived(self, payload: bytes) -> None:
        # Echo binary as received; compress like text would so deflate cases see compressed replies.
        if self.state == self.STATE_OPEN:
            session = self.session
            if session is not None:
                session.counters.binary_out += 1
                session.counters.binary_bytes_out += len(payload)
            self.sendMessage(payload, True, doNotCompress=len(payload) < self.server.config.compression_threshold)

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        self.closeSession(1009, f"message of {size} bytes exceeds {self.server.config.max_message_size}")


def endpoints(server: "VoiceServer") -> dict[str, IResource]:
    """The echo dialect at ``--echo-path``, off when that is empty (the dialect registry calls this)."""
    return websocket_endpoint(server.config.echo_path, server, EchoProtocol)
