"""
Clients that stream audio, ask for responses and pings, and never read their sockets.

Run as a separate process (``python slowclients.py URL N SECONDS``) so that its threads do not
share a GIL with the test's latency probe; prints one JSON line of counts at the end.  Each
client reconnects when the server closes it (over ``max_output_buffer``), so the pressure lasts
the whole run.  The client's receive buffer is made small, so the server's own buffers fill
instead of the kernel's.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

PAD = int(os.environ.get("SLOW_PING_PAD", "4000"))
FRAME = b"\x10\x00" * 1600  # 100 ms of 16 kHz PCM (a constant, loud enough for no VAD to matter)


def frame(opcode: int, payload: bytes) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, mask)
    return head + mask + body


def _mask(payload: bytes, mask: bytes) -> bytes:
    key = int.from_bytes((mask * ((len(payload) + 3) // 4))[: len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")


def text(obj: dict) -> bytes:
    return frame(0x1, json.dumps(obj).encode())


def connect(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: txvoice.v1\r\n\r\n").encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def run_client(host: str, port: int, until: float, counts: dict, lock: threading.Lock) -> None:
    while time.monotonic() < until:
        try:
            sock = connect(host, port)
        except OSError:
            with lock:
                counts["connect_failures"] += 1
            time.sleep(0.2)
            continue
        with lock:
            counts["connections"] += 1
        seq = 0
        try:
            sock.sendall(text({"type": "metrics", "data": {"subscribe": True}}))
            while time.monotonic() < until:
                # One 1 s turn of audio sent in 0.25 s (4x real time, under the audio rate limit),
                # echoed back at real time, plus 4 KiB pings (each pong echoes them), inside the
                # default message rate limit.
                sock.sendall(text({"type": "voice_start", "data": {"mode": "push_to_talk", "codec": "pcm_s16le",
                                                                   "sample_rate": 16000}}))
                for _ in range(5):
                    sock.sendall(frame(0x2, FRAME + FRAME))
                    time.sleep(0.05)
                sock.sendall(text({"type": "voice_end", "data": {}}))
                for _ in range(3):
                    seq += 1
                    sock.sendall(text({"type": "ping", "message_id": f"p{seq}", "data": {"pad": "x" * PAD}}))
                with lock:
                    counts["turns"] += 1
        except OSError:
            with lock:
                counts["closed_by_server"] += 1
        finally:
            sock.close()


def main() -> None:
    url, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    parts = urlsplit(url)
    until = time.monotonic() + seconds
    counts = {"connections": 0, "connect_failures": 0, "closed_by_server": 0, "turns": 0}
    lock = threading.Lock()
    threads = [threading.Thread(target=run_client, args=(parts.hostname, parts.port, until, counts, lock))
               for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
