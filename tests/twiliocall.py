"""
A Twilio Media Streams call replayed as Twilio sends it, for the live tests and the bench.

The caller's audio is espeak-ng speech converted by sox to headerless μ-law at 8 kHz (what Twilio
streams), cut into 20 ms frames (160 bytes) and sent as ``media`` messages at real time, with
Twilio's ``sequenceNumber`` / ``chunk`` / ``timestamp`` numbering; the messages are Twilio's
documented examples (https://www.twilio.com/docs/voice/media-streams/websocket-messages) with
their fields filled in.  μ-law is decoded here with the G.711 formula, independently of txvoice.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

import numpy as np

FRAME = 160  # 20 ms of μ-law at 8 kHz
ULAW_SILENCE = b"\xff"
ACCOUNT_SID = "AC" + "0" * 31 + "1"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (scripts/setup-env.sh installs it)")
    return path


@functools.lru_cache(maxsize=16)
def ulaw_speech(text: str, pad_ms: tuple[int, int] = (0, 0), wpm: int = 160) -> bytes:
    """``text`` spoken by espeak-ng, as sox makes it μ-law 8 kHz mono (raw bytes, no header)."""
    tmp = tempfile.mkdtemp(prefix="txvoice-twilio-")
    try:
        wav, out = os.path.join(tmp, "s.wav"), os.path.join(tmp, "s.ul")
        subprocess.run([_tool("espeak-ng"), "-v", "en-us", "-s", str(wpm), "-w", wav, text], check=True,
                       capture_output=True)
        effects = ["pad", f"{pad_ms[0] / 1000}", f"{pad_ms[1] / 1000}"] if pad_ms != (0, 0) else []
        subprocess.run([_tool("sox"), "-D", wav, "-t", "raw", "-r", "8000", "-e", "u-law", "-b", "8", "-c", "1", out,
                        *effects], check=True, capture_output=True)
        with open(out, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ulaw_silence(ms: int) -> bytes:
    return ULAW_SILENCE * (8 * ms)


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law to int16 (the ITU formula: complement, sign, exponent, mantissa, bias 0x84)."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def frames(audio: bytes) -> list[bytes]:
    audio += ULAW_SILENCE * (-len(audio) % FRAME)
    return [audio[i:i + FRAME] for i in range(0, len(audio), FRAME)]


def dbfs(pcm: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
    return 20 * np.log10(max(rms, 1e-9) / 32768.0)


def voiced(frame: bytes, threshold_dbfs: float = -45.0) -> bool:
    return dbfs(ulaw_decode(frame)) > threshold_dbfs


class TwilioCall:
    """One replayed call: Twilio's side of a bidirectional Media Stream, over a ``websockets`` client."""

    def __init__(self, url: str, call_sid: str = "CA" + "a" * 32, stream_sid: str = "MZ" + "b" * 32,
                 open_timeout: float = 10.0) -> None:
        from websockets.sync.client import connect

        self.url = url
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self._connection = connect(url, open_timeout=open_timeout, max_size=None, compression=None)
        self.ws = self._connection.__enter__()
        self.sequence = 0
        self.chunk = 0
        self.started_at: float | None = None
        self.received: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                t = time.monotonic()
                msg = json.loads(raw)
                with self.cond:
                    self.received.append((t, msg))
                    self.cond.notify_all()
        except Exception:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    # what Twilio sends

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send(json.dumps(msg))

    def _next(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def connected(self) -> None:
        self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, custom: dict[str, str] | None = None) -> None:
        self.send({
            "event": "start", "sequenceNumber": self._next(),
            "start": {
                "accountSid": ACCOUNT_SID, "streamSid": self.stream_sid, "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": custom or {},
            },
            "streamSid": self.stream_sid,
        })
        self.started_at = time.monotonic()

    def media(self, frame: bytes, track: str = "inbound", payload: str | None = None) -> None:
        self.chunk += 1
        self.send({
            "event": "media", "sequenceNumber": self._next(),
            "media": {"track": track, "chunk": str(self.chunk), "timestamp": str((self.chunk - 1) * 20),
                      "payload": payload if payload is not None else base64.b64encode(frame).decode("ascii")},
            "streamSid": self.stream_sid,
        })

    def dtmf(self, digit: str) -> None:
        self.send({"event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": self._next(),
                   "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark(self, name: str) -> None:
        """Echo one of the server's marks, as Twilio does once the audio before it has played."""
        self.send({"event": "mark", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
                   "mark": {"name": name}})

    def stop(self) -> None:
        self.send({"event": "stop", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
                   "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}})

    def skip_sequence(self, n: int = 1) -> None:
        """Lose ``n`` messages (a gap in the numbering)."""
        self.sequence += n

    def stream(self, audio: bytes, on_frame=None, t0: float | None = None) -> list[float]:
        """Send ``audio`` as 20 ms media frames at real time; return each frame's send time."""
        sent: list[float] = []
        t0 = time.monotonic() if t0 is None else t0
        for i, frame in enumerate(frames(audio)):
            delay = t0 + i * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.media(frame)
            sent.append(time.monotonic())
            if on_frame is not None:
                on_frame(i, frame)
        return sent

    def play_along(self, seconds: float, echoed: list[str], lag_s: float = 0.06, until_played: bool = False,
                   since: float | None = None) -> None:
        """
        Stream silence for up to ``seconds`` while "playing" the reply as a phone would: each mark is
        echoed once the audio before it has been heard (real time since the first reply frame,
        plus ``lag_s`` of jitter buffer).  ``until_played``: stop once every mark is echoed and
        the reply has stopped coming.  ``since``: only what came after this time (the reply after a clear).
        """
        t0 = time.monotonic()
        for i in range(int(seconds / 0.02)):
            delay = t0 + i * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.media(ULAW_SILENCE * FRAME)
            media = [(t, m) for t, m in self.messages("media") if since is None or t > since]
            if not media:
                continue
            first = media[0][0]
            marks = [(t, m) for t, m in self.messages("mark") if since is None or t > since]
            for _, m in marks:
                name = m["mark"]["name"]
                if name not in echoed and time.monotonic() - first >= float(name.rsplit(":", 1)[1]) / 1000 + lag_s:
                    echoed.append(name)
                    self.mark(name)
            if until_played and marks and len(echoed) == len(marks) and time.monotonic() - media[-1][0] > 0.3:
                return

    # what comes back

    def messages(self, event: str | None = None) -> list[tuple[float, dict]]:
        with self.cond:
            return [(t, m) for t, m in self.received if event is None or m.get("event") == event]

    def wait_for(self, predicate, timeout: float = 10.0) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if predicate(self.received):
                    return list(self.received)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"timed out; received {[m.get('event') for _, m in self.received][-20:]}")
                self.cond.wait(left)

    def reply_audio(self) -> bytes:
        return b"".join(base64.b64decode(m["media"]["payload"]) for _, m in self.messages("media"))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
