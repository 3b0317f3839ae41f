"""
Drive a txvoice server protocol in memory: a WebSocket client written by hand over a
``StringTransport`` with a ``MemoryReactorClock``, so timing tests are deterministic.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from txvoice.audio.workers import AudioWorkers
from txvoice.config import VoiceConfig
from txvoice.dialects.native import NativeVoiceProtocol
from txvoice.pipeline.echo import EchoPipeline
from txvoice.server.base import VoiceServerProtocol
from txvoice.server.context import VoiceServer
from txvoice.server.factory import VoiceServerFactory

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


class MemoryTransport(StringTransport):
    """A StringTransport that, like a real one, lets a protocol unregister a producer it never registered."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def memory_server(**config: Any) -> VoiceServer:
    """A server with inline audio work and a fake clock (no timers of Autobahn's own)."""
    clock = MemoryReactorClock()
    cfg = VoiceConfig(open_handshake_timeout=0, **config)
    server = VoiceServer(cfg, EchoPipeline(), AudioWorkers(clock, threads=0), clock)
    server.pacer.startService()
    return server


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class MemoryClient:
    """A connected in-memory client of one server protocol."""

    def __init__(self, server: VoiceServer, protocol: type[VoiceServerProtocol] = NativeVoiceProtocol,
                 subprotocol: str | None = "txvoice.v1", port: int = 40000) -> None:
        self.server = server
        self.factory = VoiceServerFactory(server, protocol)
        addr = IPv4Address("TCP", "127.0.0.1", port)
        self.protocol = self.factory.buildProtocol(addr)
        self.transport = MemoryTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8765))
        self.protocol.makeConnection(self.transport)
        request = HANDSHAKE + (f"Sec-WebSocket-Protocol: {subprotocol}\r\n".encode() if subprotocol else b"") + b"\r\n"
        self.protocol.dataReceived(request)
        raw = self.transport.value()
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.handshake = head.decode()
        self.transport.clear()
        self._buffer = rest
        self.closes: list[tuple[int | None, str]] = []

    @property
    def session(self):
        return self.protocol.session

    def send_text(self, text: str | bytes) -> None:
        self.protocol.dataReceived(client_frame(0x1, text.encode() if isinstance(text, str) else text))

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def send_binary(self, data: bytes) -> None:
        self.protocol.dataReceived(client_frame(0x2, data))

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame the server wrote since the last call: (opcode, payload)."""
        data = self._buffer + self.transport.value()
        self.transport.clear()
        out = []
        while len(data) >= 2:
            opcode = data[0] & 0x0F
            n = data[1] & 0x7F
            pos = 2
            if n == 126:
                n = struct.unpack("!H", data[2:4])[0]
                pos = 4
            elif n == 127:
                n = struct.unpack("!Q", data[2:10])[0]
                pos = 10
            if len(data) < pos + n:
                break
            payload = data[pos:pos + n]
            data = data[pos + n:]
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closes.append((code, payload[2:].decode(errors="replace")))
            out.append((opcode, payload))
        self._buffer = data
        return out

    def messages(self) -> list[dict[str, Any]]:
        """The JSON messages the server sent since the last call."""
        return [json.loads(p) for op, p in self.frames() if op == 0x1]
