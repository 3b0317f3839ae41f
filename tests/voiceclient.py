"""
A small independent test client: the `websockets` library, a reader thread that timestamps every
message, opuslib for the client's Opus (not txvoice's own codec code), espeak-ng speech.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import numpy as np
import opuslib
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


def connected(url: str, **kw: Any) -> ClientConnection:
    """
    websockets' sync ``connect`` for a connection its owner closes by hand: since websockets 17.1 a
    connection not entered as a context manager warns on first use (and will stop working).
    """
    ws = connect(url, **kw)
    ws.__enter__()  # returns ws; the owner's close() ends it
    return ws


class VoiceClient:
    """Sends on the caller's thread; a reader thread queues (arrival time, message)."""

    def __init__(self, url: str, **kw: Any) -> None:
        self.ws = connected(url, subprotocols=["txvoice.v1"], open_timeout=5, close_timeout=3, max_size=None, **kw)
        self.inbox: queue.Queue[tuple[float, Any]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.greeting = self.next_json()

    def _read(self) -> None:
        try:
            while True:
                msg = self.ws.recv()
                self.inbox.put((time.perf_counter(), msg))
        except (ConnectionClosed, OSError):
            self.inbox.put((time.perf_counter(), None))

    def send_json(self, msg_type: str, data: dict | None = None, message_id: str | None = None) -> None:
        body: dict[str, Any] = {"type": msg_type, "data": data or {}}
        if message_id:
            body["message_id"] = message_id
        self.ws.send(json.dumps(body))

    def next(self, timeout: float = 10.0) -> tuple[float, Any]:
        t, msg = self.inbox.get(timeout=timeout)
        if msg is None:
            raise ConnectionError("closed")
        return t, (msg if isinstance(msg, bytes) else json.loads(msg))

    def next_json(self, timeout: float = 10.0) -> dict:
        while True:
            _, msg = self.next(timeout)
            if isinstance(msg, dict):
                return msg

    def until(self, predicate, timeout: float = 20.0) -> list[tuple[float, Any]]:
        """Everything received up to and including the first message ``predicate`` accepts."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            t, msg = self.next(max(0.1, deadline - time.monotonic()))
            got.append((t, msg))
            if predicate(msg):
                return got

    def close(self) -> None:
        self.ws.close()


def is_event(msg: Any, event_type: str) -> bool:
    return isinstance(msg, dict) and msg["type"] == "status" and msg["data"].get("event_type") == event_type


def is_final(msg: Any) -> bool:
    return isinstance(msg, dict) and msg["type"] == "voice_stream_chunk" and msg["data"]["final"]


def events(received: list[tuple[float, Any]], event_type: str) -> list[dict]:
    return [m["data"] for _, m in received if is_event(m, event_type)]


def opus_packets(pcm: np.ndarray, rate: int = 48000, frame_ms: int = 20) -> list[bytes]:
    """Encode mono int16 PCM with opuslib (an encoder independent of txvoice's)."""
    enc = opuslib.Encoder(rate, 1, opuslib.APPLICATION_VOIP)
    n = rate * frame_ms // 1000
    pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % n, dtype=np.int16)])
    return [enc.encode(pcm[i:i + n].tobytes(), n) for i in range(0, len(pcm), n)]


def pcm_frames(pcm: np.ndarray, rate: int = 16000, frame_ms: int = 20) -> list[bytes]:
    n = rate * frame_ms // 1000
    pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % n, dtype=np.int16)])
    return [pcm[i:i + n].tobytes() for i in range(0, len(pcm), n)]
