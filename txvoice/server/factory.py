"""The Autobahn factory shared by every dialect: protocol options come from the server config."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

from txvoice.server.base import VoiceServerProtocol
from txvoice.server.context import VoiceServer


def _accept_deflate(offers: list[object]) -> PerMessageDeflateOfferAccept | None:
    """Accept the client's first permessage-deflate offer, as offered (no extra demands)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class VoiceServerFactory(WebSocketServerFactory):
    """Creates one dialect's protocols for one server."""

    def __init__(self, server: VoiceServer, protocol: type[VoiceServerProtocol], url: str | None = None) -> None:
        config = server.config
        super().__init__(url=url, server=f"{config.server_name}/{server.version}", reactor=server.clock)
        self.voice = server  # not `server`: Autobahn's factory uses that for the Server header
        self.protocol = protocol
        options: dict[str, Any] = {
            "maxMessagePayloadSize": config.max_message_hard_limit,
            "maxFramePayloadSize": config.max_message_hard_limit,
            "openHandshakeTimeout": config.open_handshake_timeout,
            "closeHandshakeTimeout": 2.0,
            # The heartbeat service pings every session from one LoopingCall; no per-connection timers.
            "autoPingInterval": 0,
            "failByDrop": False,
            # Let `Origin: null` through Autobahn's own check (which answers 400) so that txvoice's
            # origin policy decides: 403 unless allowed (doc/security.md).
            "allowNullOrigin": True,
        }
        if config.compression:
            options["perMessageCompressionAccept"] = _accept_deflate
        self.setProtocolOptions(**options)
