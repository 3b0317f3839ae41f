"""
Asterisk AudioSocket against a real daemon: the protocol's documented sequence (UUID, 20 ms slin
8 kHz frames of espeak-ng speech at real time, DTMF, hangup) replayed by a raw TCP client, the
reply read back as slin frames; bad input counted and survived; the frame parser beside it on a
StringTransport.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid

import numpy as np
import pytest

from daemons import free_port, metric, start_daemon
from test_twilio_live import log_records
from twiliocall import dbfs

FRAME = 320  # 20 ms of slin: 160 samples of 16 bits


def slin_speech(text: str) -> bytes:
    """espeak-ng speech as sox makes it signed 16-bit little-endian 8 kHz mono (AudioSocket's 0x10)."""
    tmp = tempfile.mkdtemp(prefix="txvoice-as-")
    try:
        wav, out = os.path.join(tmp, "s.wav"), os.path.join(tmp, "s.raw")
        subprocess.run([shutil.which("espeak-ng") or "espeak-ng", "-v", "en-us", "-w", wav, text], check=True,
                       capture_output=True)
        subprocess.run([shutil.which("sox") or "sox", "-D", wav, "-t", "raw", "-r", "8000", "-e", "signed-integer",
                        "-b", "16", "-L", "-c", "1", out], check=True, capture_output=True)
        with open(out, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class AsteriskCall:
    """Asterisk's side of AudioSocket: it connects, names the call, streams slin and reads what comes back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.received: list[tuple[float, int, bytes]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 3:
                    kind, length = struct.unpack(">BH", buf[:3])
                    if len(buf) < 3 + length:
                        break
                    self.received.append((time.monotonic(), kind, buf[3:3 + length]))
                    buf = buf[3 + length:]
        except OSError:
            pass
        self.closed.set()

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">BH", kind, len(payload)) + payload)

    def stream(self, pcm: bytes) -> None:
        pcm += b"\0" * (-len(pcm) % FRAME)
        t0 = time.monotonic()
        for i in range(0, len(pcm), FRAME):
            delay = t0 + i / FRAME * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send(0x10, pcm[i:i + FRAME])

    def audio(self) -> bytes:
        return b"".join(p for _, k, p in self.received if k == 0x10)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def asterisk_daemon(tmp_path_factory):
    port = free_port()
    # A fast heartbeat: AudioSocket has no ping, so the service must take Asterisk's frames as life.
    d = start_daemon(tmp_path_factory.mktemp("audiosocket"), "--audiosocket", f"tcp:{port}:interface=127.0.0.1",
                     "--ping-interval", "0.5", "--ping-timeout", "0.5", "--log-format", "json", twistd_args=("--logger", "txvoice.logging.twistd_observer"))
    d.audiosocket_port = port
    yield d
    d.stop()


def test_documented_sequence_with_real_audio_is_answered_with_speech(asterisk_daemon) -> None:
    call_id = uuid.uuid4()
    call = AsteriskCall(asterisk_daemon.audiosocket_port)
    try:
        speech = slin_speech("I would like to book a table for two.")
        call.send(0x01, call_id.bytes)
        time.sleep(1.2)  # quiet for longer than --ping-interval: the heartbeat "pings" the call
        call.stream(b"\0" * 8 * 2 * 300 + speech + b"\0" * 8 * 2 * 800)
        call.send(0x03, b"5")
        # Keep sending silence (Asterisk always streams) until the reply has played.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            call.stream(b"\0" * FRAME * 10)
            got = [t for t, k, _ in call.received if k == 0x10]
            if got and time.monotonic() - got[-1] > 0.4:
                break
        frames = [(t, p) for t, k, p in call.received if k == 0x10]
        reply = np.frombuffer(call.audio(), dtype="<i2")
        spoken = np.frombuffer(speech, dtype="<i2")
        duration_ms = len(reply) / 8.0
        assert len(spoken) / 8.0 <= duration_ms <= len(spoken) / 8.0 + 1500, (duration_ms, len(spoken) / 8)
        assert abs(dbfs(reply) - dbfs(spoken)) < 3, (dbfs(reply), dbfs(spoken))
        assert all(len(p) == FRAME for _, p in frames[:-1])  # 20 ms slin frames
        spread_ms = (frames[-1][0] - frames[0][0]) * 1000
        assert duration_ms - 250 <= spread_ms <= duration_ms + 200, (spread_ms, duration_ms)  # real time
        call.send(0x00)  # hangup
        assert call.closed.wait(5)
    finally:
        call.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not [r for r in log_records(asterisk_daemon, "DTMF") if r.get("digit") == "5"]:
        time.sleep(0.1)
    assert [r for r in log_records(asterisk_daemon, "DTMF") if r.get("digit") == "5"]
    started = [r for r in log_records(asterisk_daemon, "audiosocket call") if r.get("call_id") == str(call_id)]
    assert started and "started" in started[0]["message"]
    assert not log_records(asterisk_daemon, "Traceback") and not log_records(asterisk_daemon, "pings unanswered")
    assert not log_records(asterisk_daemon, '"level": "critical"') and not log_records(asterisk_daemon, '"level": "error"')


def test_bad_input_is_counted_and_the_call_goes_on(asterisk_daemon) -> None:
    problems = ("audio_before_uuid", "unsupported_kind", "invalid_audio", "asterisk_error")
    before = {p: metric(asterisk_daemon.http, "txvoice_telephony_input_problems_total", dialect="audiosocket", problem=p)
              for p in problems}
    call = AsteriskCall(asterisk_daemon.audiosocket_port)
    try:
        call.send(0x10, b"\0" * FRAME)  # audio before the UUID
        call.send(0x01, uuid.uuid4().bytes)
        call.send(0x42, b"??")  # no such kind
        call.send(0x10, b"\0" * 3)  # half a sample
        call.send(0xFF, b"\x02")  # Asterisk: frame forwarding error
        # One message split across writes: the parser waits for the rest.
        frame = struct.pack(">BH", 0x10, FRAME) + b"\0" * FRAME
        call.sock.sendall(frame[:2])
        time.sleep(0.05)
        call.sock.sendall(frame[2:])
        call.stream(slin_speech("Hello there.") + b"\0" * 8 * 2 * 900)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(call.audio()) < 8 * 2 * 400:
            call.stream(b"\0" * FRAME * 5)
        assert len(call.audio()) >= 8 * 2 * 400  # answered: the call went on
    finally:
        call.send(0x00)
        call.close()
    for problem, was in before.items():
        got = metric(asterisk_daemon.http, "txvoice_telephony_input_problems_total", dialect="audiosocket", problem=problem)
        assert got == was + 1, problem


def test_parser_takes_messages_split_and_joined_anyhow() -> None:
    from twisted.internet.testing import StringTransport

    from txvoice.dialects.audiosocket import AudioSocketProtocol, message
    from txvoice.session.session import Session

    seen: list[tuple[int, bytes]] = []

    class Recording(AudioSocketProtocol):
        def messageReceived(self, kind: int, payload: bytes) -> None:
            seen.append((kind, payload))

    class FakeServer:
        shutting_down = False

    p = Recording(FakeServer())  # type: ignore[arg-type]
    p.session = Session(peer="test", dialect="audiosocket")
    p.transport = StringTransport()
    u = uuid.uuid4().bytes
    stream = message(0x01, u) + message(0x10, b"\1\0" * 160) + message(0x03, b"#") + message(0x00)
    for i in range(0, len(stream), 7):
        p.dataReceived(stream[i:i + 7])
    assert seen == [(0x01, u), (0x10, b"\1\0" * 160), (0x03, b"#"), (0x00, b"")]
    assert message(0x10, b"ab") == b"\x10\x00\x02ab" and message(0x00) == b"\x00\x00\x00"
