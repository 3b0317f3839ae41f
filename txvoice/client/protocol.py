"""
The client's WebSocket stack: an Autobahn ``WebSocketClientProtocol`` that hands every event to a
handler, and the factory that configures it.

The protocol knows nothing about txvoice.v1: it reports open, messages, writability and close to
an :class:`IClientHandler` and offers itself to it as an :class:`IVoiceLink`.  The voice client
(:mod:`txvoice.client.connection`) is one handler; the Autobahn testsuite's echo testee
(:mod:`txvoice.client.testee`) is another, so the testsuite exercises this very stack.
"""

from __future__ import annotations

from typing import Any, Iterable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet.interfaces import IPushProducer
from zope.interface import Attribute, Interface, implementer

import txvoice

__all__ = [
    "IClientHandler",
    "IVoiceLink",
    "SUBPROTOCOL",
    "VoiceClientFactory",
    "VoiceClientProtocol",
    "deflate_offers",
]

SUBPROTOCOL = "txvoice.v1"
USER_AGENT = f"txvoice-client/{txvoice.__version__}"


class IVoiceLink(Interface):
    """One open WebSocket connection, as a handler sees it."""

    peer = Attribute("The peer's address as a string.")
    subprotocol = Attribute("The subprotocol the server selected (None if none).")
    writable = Attribute("True when the WebSocket is open and the transport's write buffer is not full.")

    def sendText(text: str | bytes) -> bool:
        """Send one text message (UTF-8); False (nothing sent) when the WebSocket is no longer open."""

    def sendBinary(data: bytes) -> bool:
        """Send one binary message; False (nothing sent) when the WebSocket is no longer open."""

    def close(code: int = 1000, reason: str | None = None) -> None:
        """Start the WebSocket closing handshake."""

    def abort() -> None:
        """Drop the connection now, without a closing handshake."""


class IClientHandler(Interface):
    """What a :class:`VoiceClientProtocol` reports to; every call happens on the reactor thread."""

    def linkOpened(link: IVoiceLink) -> None:
        """The WebSocket opening handshake completed."""

    def linkMessage(link: IVoiceLink, payload: bytes, is_binary: bool) -> None:
        """One complete message arrived."""

    def linkWritable(link: IVoiceLink, writable: bool) -> None:
        """The transport's write buffer filled up (False) or drained (True)."""

    def linkClosed(link: IVoiceLink, was_clean: bool, code: int | None, reason: str | None) -> None:
        """The connection ended (also when it never opened); called once per link."""


def deflate_offers() -> list[PerMessageDeflateOffer]:
    """permessage-deflate offers: accept whatever window/no-context-takeover the server asks for."""
    return [PerMessageDeflateOffer(accept_max_window_bits=True, accept_no_context_takeover=True,
                                   request_max_window_bits=0, request_no_context_takeover=False)]


def _accept_deflate(response: Any) -> PerMessageDeflateResponseAccept | None:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


@implementer(IPushProducer)
class _WriteGate:
    """Registered on the transport so its buffer's high/low water marks reach the handler."""

    def __init__(self, proto: "VoiceClientProtocol") -> None:
        self.proto = proto

    def pauseProducing(self) -> None:
        self.proto._setWritable(False)

    def resumeProducing(self) -> None:
        self.proto._setWritable(True)

    def stopProducing(self) -> None:
        pass


@implementer(IVoiceLink)
class VoiceClientProtocol(WebSocketClientProtocol):
    """Autobahn client protocol that forwards everything to ``factory.handler``."""

    subprotocol: str | None = None
    _buffer_ok = True
    _reported_close = False

    @property
    def writable(self) -> bool:
        return self._buffer_ok and self.state == WebSocketClientProtocol.STATE_OPEN

    # lifecycle

    def connectionMade(self) -> None:
        super().connectionMade()
        try:
            self.transport.registerProducer(_WriteGate(self), True)  # type: ignore[union-attr]  # set in connectionMade
        except (AttributeError, RuntimeError):
            pass  # a transport without producer support (or with one already): no back-pressure

    def onConnect(self, response: Any) -> None:
        self.subprotocol = response.protocol or None

    def onOpen(self) -> None:
        self.factory.handler.linkOpened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.handler.linkMessage(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._reported_close:
            return
        self._reported_close = True
        self.factory.handler.linkClosed(self, wasClean, code, reason)

    def _setWritable(self, writable: bool) -> None:
        if writable != self._buffer_ok:
            self._buffer_ok = writable
            if not self._reported_close and self.state == WebSocketClientProtocol.STATE_OPEN:
                self.factory.handler.linkWritable(self, writable)

    # IVoiceLink

    def sendText(self, text: str | bytes) -> bool:
        # Between the peer's close frame and the end of the TCP connection Autobahn refuses to
        # send (it raises); the handler learns about the close a moment later.
        if self.state != WebSocketClientProtocol.STATE_OPEN:
            return False
        self.sendMessage(text.encode("utf-8") if isinstance(text, str) else text, isBinary=False)
        return True

    def sendBinary(self, data: bytes) -> bool:
        if self.state != WebSocketClientProtocol.STATE_OPEN:
            return False
        self.sendMessage(data, isBinary=True)
        return True

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.sendClose(code, reason)

    def abort(self) -> None:
        self.dropConnection(abort=True)


class VoiceClientFactory(WebSocketClientFactory):
    """
    Builds :class:`VoiceClientProtocol` instances reporting to ``handler``.

    :param subprotocols: offered in ``Sec-WebSocket-Protocol`` (txvoice.v1 by default).
    :param compression: offer permessage-deflate.
    :param max_message_size: largest incoming message in bytes (0: no limit).
    """

    protocol = VoiceClientProtocol

    def __init__(
        self,
        url: str,
        handler: Any,
        *,
        subprotocols: Iterable[str] = (SUBPROTOCOL,),
        compression: bool = False,
        max_message_size: int = 16 * 1024 * 1024,
        open_handshake_timeout: float = 10.0,
        close_handshake_timeout: float = 3.0,
        headers: dict[str, str] | None = None,
        useragent: str = USER_AGENT,
        reactor: Any = None,
        protocol: "type[VoiceClientProtocol] | None" = None,
    ) -> None:
        if not IClientHandler.providedBy(handler):
            raise TypeError(f"{handler!r} does not provide IClientHandler")
        super().__init__(url, protocols=list(subprotocols), useragent=useragent, headers=headers or {},
                         reactor=reactor)
        self.handler = handler
        if protocol is not None:
            self.protocol = protocol
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            openHandshakeTimeout=open_handshake_timeout,
            closeHandshakeTimeout=close_handshake_timeout,
            failByDrop=False,
        )
        if compression:
            self.setProtocolOptions(perMessageCompressionOffers=deflate_offers(),
                                    perMessageCompressionAccept=_accept_deflate)
