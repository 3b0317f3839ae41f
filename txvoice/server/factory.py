"""The Autobahn factory shared by every dialect: protocol options come from the server config."""

from __future__ import annotations

from types import FunctionType
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


def configured_protocol(protocol: type[Any], factory: WebSocketServerFactory) -> type[Any]:
    """
    ``protocol`` with ``factory``'s Autobahn options (``CONFIG_ATTRS``: 34 of them) as class attributes.

    Autobahn copies every option onto each protocol instance unless the instance already has it
    (``hasattr``), which takes a server protocol's ``__dict__`` from 85 attributes and 1.6 KB to
    98 and 3.3 KB; found on the class, the options are shared and every value read is the same
    (issue 26).
    """
    namespace: dict[str, Any] = {}
    for name in protocol.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A function on a class would be bound to the instance (perMessageCompressionAccept is one).
        namespace[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    namespace["__module__"] = protocol.__module__
    namespace["__qualname__"] = protocol.__qualname__
    return type(protocol.__name__, (protocol,), namespace)


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

    #: (protocol class, its configured subclass), made by the first buildProtocol after the options were set.
    _configured: tuple[type[Any], type[Any]] | None = None

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._configured = None

    def buildProtocol(self, addr: Any) -> VoiceServerProtocol:
        """A protocol whose options live on its class (:func:`configured_protocol`), not in its ``__dict__``."""
        configured = self._configured
        if configured is None or configured[0] is not self.protocol:
            configured = self._configured = (self.protocol, configured_protocol(self.protocol, self))
        protocol: VoiceServerProtocol = configured[1]()
        protocol.factory = self
        return protocol
