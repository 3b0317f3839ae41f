"""
Load for the scale-out tests: ``clients`` txvoice Python clients (txvoice.client.VoiceClient) that
send a reliable ``ping`` each ``interval`` seconds until the file ``stop`` appears (or
``duration`` s pass), then wait up to 15 s for their outstanding acks and write what happened to
``out`` (JSON): per client its sessions, every ack seen (with ``duplicate``), what was never
acknowledged, and how long each resume took (connection lost -> resumed).

    python lbdriver.py URL CLIENTS INTERVAL DURATION STOPFILE OUT
"""

from __future__ import annotations

import json
import os
import sys
import time

from twisted.internet import defer, reactor, task

from txvoice.client.backoff import Backoff
from txvoice.client.breaker import CircuitBreaker
from txvoice.client.connection import VoiceClient


class Driven:
    def __init__(self, index: int, url: str) -> None:
        self.index = index
        self.client = VoiceClient(url, backoff=Backoff(base=0.05, factor=1.5, max_delay=0.5, max_attempts=None),
                                  breaker=CircuitBreaker(reactor, failure_threshold=1000, reset_timeout=0.1),
                                  heartbeat_interval=2.0, heartbeat_timeout=2.0, ready_timeout=5.0, connect_timeout=3.0)
        self.sessions: list[str] = []
        self.fresh: dict[str, int] = {}  # message id -> acks with duplicate false
        self.dups: dict[str, int] = {}
        self.acked: dict[str, float] = {}  # message id -> when its send() fired
        self.pending: dict[str, defer.Deferred] = {}
        self.failed: dict[str, str] = {}
        self.lost_at: float | None = None
        self.resume_ms: list[float] = []
        self.resume_failures = 0
        self.seq = 0
        c = self.client
        c.on("open", self._open)
        c.on("close", self._close)
        c.on("resumed", self._resumed)
        c.on("resume_failed", self._resume_failed)
        c.on("message:ack", self._ack)

    def _open(self, greeting: dict) -> None:
        sid = self.client.session_id
        if sid and (not self.sessions or self.sessions[-1] != sid):
            self.sessions.append(sid)

    def _close(self, *args: object) -> None:
        if self.lost_at is None:
            self.lost_at = time.monotonic()

    def _resumed(self, data: dict) -> None:
        if self.lost_at is not None:
            self.resume_ms.append((time.monotonic() - self.lost_at) * 1000)
            self.lost_at = None

    def _resume_failed(self, data: dict) -> None:
        self.resume_failures += 1
        self.lost_at = None

    def _ack(self, env: dict) -> None:
        data = env["data"]
        mid = data.get("message_id")
        book = self.dups if data.get("duplicate") else self.fresh
        book[mid] = book.get(mid, 0) + 1

    def send(self) -> None:
        if not self.client.is_open and not self.sessions:
            return
        mid = f"c{self.index}-m{self.seq}"
        self.seq += 1
        d = self.client.send({"type": "ping", "data": {"n": self.seq}, "message_id": mid}, reliable=True)
        self.pending[mid] = d
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(mid,), errbackArgs=(mid,))

    def _sent(self, ack: dict, mid: str) -> None:
        self.pending.pop(mid, None)
        self.acked[mid] = time.time()

    def _send_failed(self, failure, mid: str) -> None:
        self.pending.pop(mid, None)
        self.failed[mid] = failure.getErrorMessage()

    def report(self) -> dict:
        return {"sessions": self.sessions, "sent": self.seq, "acked": self.acked, "fresh": self.fresh,
                "dups": self.dups, "pending": len(self.pending), "failed": self.failed,
                "resume_ms": self.resume_ms, "resume_failures": self.resume_failures}


@defer.inlineCallbacks
def main(url: str, count: int, interval: float, duration: float, stop: str, out: str):
    driven = [Driven(i, url) for i in range(count)]
    yield defer.gatherResults([d.client.connect() for d in driven])
    with open(out + ".ready", "w") as f:
        json.dump({"sessions": [d.client.session_id for d in driven]}, f)
    loops = []
    for i, d in enumerate(driven):
        lc = task.LoopingCall(d.send)
        loops.append(lc)
        reactor.callLater(interval * i / count, lc.start, interval)
    deadline = time.monotonic() + duration
    while not os.path.exists(stop) and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.1, lambda: None)
    for lc in loops:
        if lc.running:
            lc.stop()
    settle = time.monotonic() + 15
    while any(d.pending for d in driven) and time.monotonic() < settle:
        yield task.deferLater(reactor, 0.1, lambda: None)
    with open(out, "w") as f:
        json.dump([d.report() for d in driven], f)
    yield defer.gatherResults([defer.maybeDeferred(d.client.close) for d in driven], consumeErrors=True).addErrback(lambda f: None)


if __name__ == "__main__":
    url, count, interval, duration, stop, out = sys.argv[1:7]

    def run():
        d = main(url, int(count), float(interval), float(duration), stop, out)
        d.addErrback(lambda f: (f.printTraceback(), None))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
