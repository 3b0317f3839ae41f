"""
A peer that keeps sending but never reads (so never answers a WebSocket ping), over a real socket:
the daemon's heartbeat drops it after ``heartbeat_max_missed`` unanswered pings although messages
and audio keep arriving from it, while a session that answers its pings (the ``websockets``
client does) stays open next to it.  And what a ``pong`` echoes is bounded: a ``ping`` whose
``data`` is over 4 KiB is refused (``ping_too_large``) instead of being echoed.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from websockets.sync.client import connect

from daemons import start_daemon
from slowclients import FRAME, connect as raw_connect, frame, text

PING_INTERVAL, PING_TIMEOUT, MAX_MISSED = 1.0, 0.5, 2


def metric(daemon, name: str) -> float:
    body = urllib.request.urlopen(daemon.http + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_a_peer_that_sends_but_never_answers_pings_is_dropped_after_the_misses(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT),
                          "--heartbeat-max-missed", str(MAX_MISSED))
    try:
        parts = urlsplit(daemon.url)
        with connect(daemon.url, subprotocols=["txvoice.v1"], open_timeout=5) as listener:
            listener.recv(timeout=5)
            deaf = raw_connect(parts.hostname, parts.port)
            opened = time.monotonic()
            deaf.sendall(text({"type": "voice_start", "data": {"codec": "pcm_s16le", "sample_rate": 16000}}))
            sent, dropped_after = 0, None
            while time.monotonic() - opened < 15:
                try:
                    # Busy the whole time: a control message and 100 ms of audio every 100 ms.
                    deaf.sendall(text({"type": "ping", "message_id": f"d{sent}"}))
                    deaf.sendall(frame(0x2, FRAME))
                    sent += 1
                except OSError:
                    dropped_after = time.monotonic() - opened
                    break
                # The session that answers its pings (websockets does) is read and stays open.
                listener.send(json.dumps({"type": "ping", "message_id": f"l{sent}"}))
                while json.loads(listener.recv(timeout=5)).get("data", {}).get("reply_to") != f"l{sent}":
                    pass
                time.sleep(0.1)
            deaf.close()
            assert dropped_after is not None, "the deaf peer was never dropped"
            # The first ping goes out ping_interval after the open, each miss takes ping_timeout,
            # the sweep runs every min(interval, timeout) / 2: about 2 s here, not 15.
            assert PING_INTERVAL + MAX_MISSED * PING_TIMEOUT <= dropped_after + 0.3, dropped_after
            assert dropped_after < PING_INTERVAL + MAX_MISSED * (PING_TIMEOUT + 0.5) + 2.0, dropped_after
            assert sent > 10  # it really was sending all along
            assert metric(daemon, "txvoice_heartbeat_drops_total") == 1
            listener.send(json.dumps({"type": "ping", "message_id": "still"}))
            assert json.loads(listener.recv(timeout=5))["data"]["reply_to"] == "still"
        assert "pings unanswered" in daemon.log()
        assert "Traceback" not in daemon.log()
    finally:
        daemon.stop()


def test_a_pong_does_not_amplify_a_big_ping(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        with connect(daemon.url, subprotocols=["txvoice.v1"], open_timeout=5, max_size=None) as conn:
            conn.recv(timeout=5)
            conn.send(json.dumps({"type": "ping", "message_id": "big", "data": {"pad": "x" * 256 * 1024}}))
            reply = conn.recv(timeout=5)
            assert len(reply) < 1024, len(reply)  # an error naming the limit, not 256 KiB back
            answer = json.loads(reply)
            assert answer["type"] == "error" and answer["data"]["code"] == "ping_too_large"
            conn.send(json.dumps({"type": "ping", "message_id": "small", "data": {"pad": "x" * 3000}}))
            pong = json.loads(conn.recv(timeout=5))
            assert pong["type"] == "pong" and pong["data"]["pad"] == "x" * 3000
    finally:
        daemon.stop()


def read_close_code(sock, seconds: float = 10.0) -> int | None:
    """Read server frames (unmasked) until a close frame; its code (None: the socket ended first)."""
    import struct

    sock.settimeout(seconds)
    buf = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            head = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, head = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, head = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < head + n:
                break
            payload, buf = buf[head:head + n], buf[head + n:]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        try:
            chunk = sock.recv(1 << 16)
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return None


def test_a_client_that_never_reads_is_closed_4006_over_the_hard_mark(tmp_path: Path) -> None:
    """Over a real socket, with small marks: pongs pile up, past the soft mark (congested once Twisted's own
    64 KiB buffer is full) then the hard one."""
    daemon = start_daemon(tmp_path, "--output-buffer-soft-limit", "16384", "--max-output-buffer", "262144",
                          "--rate-limit-max-requests", "1000000", "--rate-limit-strikes", "1000000")
    try:
        parts = urlsplit(daemon.url)
        sock = raw_connect(parts.hostname, parts.port)
        sent = 0
        started = time.monotonic()
        while metric(daemon, "txvoice_output_overflow_closes_total") < 1 and time.monotonic() - started < 30:
            for _ in range(50):  # 50 pings of 4 KiB data, each echoed in full by its pong
                sock.sendall(text({"type": "ping", "message_id": f"p{sent}", "data": {"pad": "x" * 4000}}))
                sent += 1
            time.sleep(0.05)
        assert metric(daemon, "txvoice_output_overflow_closes_total") == 1, sent
        assert metric(daemon, "txvoice_output_congested_total") >= 1
        # Read now: what was queued, then the close frame, within the close-handshake timeout.
        assert read_close_code(sock) == 4006
        sock.close()
        # The daemon is fine, and serves the next client.
        with connect(daemon.url, subprotocols=["txvoice.v1"], open_timeout=5) as conn:
            conn.recv(timeout=5)
            conn.send(json.dumps({"type": "ping", "message_id": "after"}))
            assert json.loads(conn.recv(timeout=5))["data"]["reply_to"] == "after"
        assert "over max_output_buffer" in daemon.log()
        assert "Traceback" not in daemon.log()
    finally:
        daemon.stop()
