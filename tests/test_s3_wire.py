"""
S3's ``/voice-ws`` on the wire, read byte by byte from a raw socket (no WebSocket library between):
permessage-deflate as S3 configures it (messages under 1024 bytes uncompressed, larger ones at zlib
level 1), and the heartbeat's ping payload, which the pong must echo.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
import zlib

import pytest

from daemons import start_daemon
from test_s3_dialect import SECRET, token
from txvoice.config import VoiceConfig


@pytest.fixture(scope="module")
def wire_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("s3wire"), "--ping-interval", "0.5", "--ping-timeout", "0.5",
                     env={"TXVOICE_JWT_SECRET": SECRET})
    yield d
    d.stop()


class RawSocket:
    def __init__(self, port: int, extensions: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET /voice-ws?token={token()} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if extensions:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.response = head.decode()
        assert self.response.startswith("HTTP/1.1 101"), self.response

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bool, bytes]:
        """(opcode, rsv1, payload) of the next frame (the server's frames are not masked)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        assert b0 & 0x80, "fragmented message"
        return b0 & 0x0F, bool(b0 & 0x40), self._read(n)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close(self) -> None:
        self.sock.close()


def test_deflate_threshold_and_level_on_the_wire(wire_daemon) -> None:
    config = VoiceConfig()
    assert (config.compression_threshold, config.compression_level) == (1024, 1)
    ws = RawSocket(wire_daemon.port, "permessage-deflate; server_no_context_takeover")
    try:
        assert "permessage-deflate" in ws.response and "server_no_context_takeover" in ws.response
        opcode, rsv1, payload = ws.frame()
        assert opcode == 1 and not rsv1 and len(payload) < 1024  # `ready`: under the threshold, sent plain
        assert json.loads(payload)["type"] == "ready"
        # An error message over 1024 bytes (it repeats the unknown type): compressed, at level 1.
        words = random.Random(21).choices(["voice", "frame", "socket", "pricing", "turn", "audio", "ready"], k=400)
        ws.send(1, json.dumps({"type": " ".join(words)}).encode())
        while True:
            opcode, rsv1, payload = ws.frame()
            if opcode == 1:
                break
        assert rsv1, "a message over the threshold went out uncompressed"
        text = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        message = json.loads(text)
        assert message["type"] == "error" and message["metadata"]["code"] == "unknown_type" and len(text) > 1024

        def deflated(level: int) -> bytes:
            c = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
            return (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

        assert deflated(1) != deflated(6)  # the two levels are told apart by this text
        assert payload == deflated(1)
    finally:
        ws.close()


def test_heartbeat_ping_payload_must_be_echoed(wire_daemon) -> None:
    """Pings carry a fresh payload each time; pongs echoing it keep the socket, other pongs do not."""
    good, bad = RawSocket(wire_daemon.port), RawSocket(wire_daemon.port)
    try:
        for ws in (good, bad):
            assert json.loads(ws.frame()[2])["type"] == "ready"
        payloads: list[bytes] = []
        dropped = False
        for _ in range(30):  # ~0.5 s a ping: at most ~15 s
            opcode, _, payload = good.frame()
            if opcode == 9:
                payloads.append(payload)
                good.send(10, payload)
            bad.sock.settimeout(0.02)
            try:
                while True:
                    opcode, _, payload = bad.frame()
                    if opcode == 9:
                        bad.send(10, b"not-" + payload)  # a pong, but not an echo
            except (TimeoutError, socket.timeout):
                pass
            except (ConnectionError, OSError):
                dropped = True
                break
            finally:
                bad.sock.settimeout(5)
        assert dropped, f"the socket that never echoed was not dropped after {VoiceConfig().heartbeat_max_missed} misses"
        assert len(payloads) >= VoiceConfig().heartbeat_max_missed and len(set(payloads)) == len(payloads), payloads
        # The one that echoed is still served.
        good.send(2, b"\x00" * 1920)
        while True:
            opcode, _, payload = good.frame()
            if opcode == 9:
                good.send(10, payload)
            elif opcode == 1:
                assert json.loads(payload)["type"] == "vad"
                break
    finally:
        good.close()
        bad.close()
