"""
In-memory fakes for testing what you build on txvoice without a socket, as ``treq.testing`` does
for HTTP: deterministic, single-threaded, on a fake clock.

* :func:`memory_server` and :class:`MemoryClient` run a dialect (a ``VoiceServerProtocol``) over a
  ``StringTransport``, with a WebSocket client written by hand: send JSON, text or binary frames,
  read back what the server wrote (:meth:`MemoryClient.messages`, :meth:`MemoryClient.frames`).
* :class:`RecordingSink` and :func:`run_turn` drive one turn of a pipeline (an
  :class:`~txvoice.pipeline.interfaces.IVoicePipeline`) as the server would: ``startTurn`` on the
  "reactor", ``feed`` frame by frame (what it returns is delivered), then ``finish``.

See ``doc/testing.md`` for an example test.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import batch_preparer
from txvoice.audio.workers import AudioWorkers
from txvoice.config import VoiceConfig
from txvoice.dialects.native import NativeVoiceProtocol
from txvoice.pipeline.echo import EchoPipeline
from txvoice.pipeline.interfaces import IResponseSink, ITurn, IVoicePipeline, TurnContext
from txvoice.server.base import VoiceServerProtocol
from txvoice.server.context import VoiceServer
from txvoice.server.factory import VoiceServerFactory

__all__ = ["MemoryClient", "MemoryTransport", "RecordingSink", "client_frame", "memory_server", "run_turn"]

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


class MemoryTransport(StringTransport):
    """A StringTransport that, like a real one, lets a protocol unregister a producer it never registered."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def memory_server(pipeline: IVoicePipeline | None = None, **config: Any) -> VoiceServer:
    """
    A server with inline audio work (no threads) and a fake clock (``server.clock``, a
    ``MemoryReactorClock``: advance it to run timers), answering with ``pipeline`` (echo by default).
    """
    clock = MemoryReactorClock()
    cfg = VoiceConfig(open_handshake_timeout=0, **config)
    server = VoiceServer(cfg, pipeline or EchoPipeline(), AudioWorkers(clock, threads=0, prepare=batch_preparer()), clock)
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
                 subprotocol: str | None = "txvoice.v1", port: int = 40000, path: str = "/",
                 factory: VoiceServerFactory | None = None) -> None:
        self.server = server
        # A client of its own factory unless given one (several clients of one server, as its listener has).
        self.factory = factory if factory is not None else VoiceServerFactory(server, protocol)
        addr = IPv4Address("TCP", "127.0.0.1", port)
        built = self.factory.buildProtocol(addr)
        assert isinstance(built, VoiceServerProtocol)
        self.protocol: Any = built
        self.transport = MemoryTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8765))
        self.protocol.makeConnection(self.transport)
        request = HANDSHAKE.replace(b"GET / ", f"GET {path} ".encode(), 1) + (f"Sec-WebSocket-Protocol: {subprotocol}\r\n".encode() if subprotocol else b"") + b"\r\n"
        self.protocol.dataReceived(request)
        raw = self.transport.value()
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.handshake = head.decode()
        self.transport.clear()
        self._buffer = rest
        self.closes: list[tuple[int | None, str]] = []

    @property
    def session(self) -> Any:
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


@implementer(IResponseSink)
class RecordingSink:
    """An :class:`IResponseSink` that keeps what a turn sent, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.responses: list[dict[str, Any]] = []  # {"text", "format", "metadata", "audio": [...], "summary"}

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, dict(data)))

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        self.responses.append({"text": text_content, "format": audio_format, "metadata": dict(metadata),
                               "audio": [], "summary": None})

    def audio(self, chunk: bytes | np.ndarray) -> None:
        self.responses[-1]["audio"].append(chunk)

    def endResponse(self, summary: dict[str, Any]) -> None:
        self.responses[-1]["summary"] = dict(summary)

    def names(self) -> list[str]:
        """The event types, in order."""
        return [name for name, _ in self.events]


def run_turn(
    pipeline: IVoicePipeline,
    frames: Iterable[np.ndarray | bytes],
    *,
    input_format: AudioFormat = AudioFormat("pcm_s16le", 16000, 1, 20),
    options: dict[str, Any] | None = None,
    sink: RecordingSink | None = None,
) -> tuple[ITurn, RecordingSink, Deferred[Any]]:
    """
    One turn of ``pipeline``, driven as the server drives it: ``startTurn``, then each frame fed
    (PCM arrays as decoded frames, ``bytes`` as raw chunks) with whatever ``feed`` returns called at
    once (the server calls it on the reactor), then ``finish``.  Returns the turn, the sink and
    ``finish``'s Deferred.  A pipeline that uses threads or timers needs them to run (a
    ``MemoryReactorClock`` to advance, or a real reactor) before the Deferred fires.
    """
    sink = sink if sink is not None else RecordingSink()
    context = TurnContext("sess_test", "strm_test", input_format, options=dict(options or {}))
    turn = pipeline.startTurn(context, sink)
    for frame in frames:
        deliver = turn.feed(frame, None) if isinstance(frame, bytes) else turn.feed(None, frame)
        if deliver is not None:
            deliver()
    return turn, sink, turn.finish()
