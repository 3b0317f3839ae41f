"""
Warm processes: a few copies of a command started ahead, waiting on stdin, for callers that
would otherwise pay its start-up at the moment they need it.

espeak-ng spends ~10 ms (fork, exec, loading its voice) before the first audio of every
synthesis, on an idle machine; twenty turns ending together pay it twenty times at once on two
cores, in the turn's time to first audio.  Started ahead, the process has loaded its voice and
blocks reading stdin; the text written then gives audio in under 1 ms.

A process taken is replaced (:meth:`WarmProcesses.refill`, called by the taker once its own work
is under way), and as many are kept as were taken within a second at the busiest (up to
``limit``, 32): after the first burst of twenty turns, the next twenty find theirs waiting.
Each idle espeak-ng is ~7.7 MB RSS, most of it the shared library and voice data.  Idle processes hold only a pipe each: when this process dies their stdin closes,
they read an empty text and exit.  :meth:`close` ends them all (the engine's ``close``, atexit).
"""

from __future__ import annotations

import atexit
import subprocess
import threading
import time
from collections import deque

__all__ = ["WarmProcesses"]


def _spawn(argv: tuple[str, ...]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        close_fds=True, start_new_session=True,
    )


class WarmProcesses:
    """
    Started processes per command line: at least ``size`` (0: none, always a fresh one), and as
    many as were taken within one second at the busiest yet (turns ending together), up to
    ``limit``.
    """

    def __init__(self, size: int = 2, max_commands: int = 4, limit: int = 32) -> None:
        self.size = max(0, size)
        self.limit = max(self.size, limit)
        self.max_commands = max_commands
        self._idle: dict[tuple[str, ...], deque[subprocess.Popen[bytes]]] = {}
        self._starting: dict[tuple[str, ...], int] = {}
        self._taken: deque[float] = deque()
        self.peak = 0  # most processes taken within one second
        self._lock = threading.Lock()
        self.taken_warm = 0
        self.taken_cold = 0
        if self.size:
            atexit.register(self.close)

    def take(self, argv: list[str]) -> "subprocess.Popen[bytes]":
        """A process running ``argv``, waiting on its stdin: a warm one when there is one alive."""
        key = tuple(argv)
        with self._lock:
            now = time.monotonic()
            taken = self._taken
            taken.append(now)
            while taken and taken[0] < now - 1.0:
                taken.popleft()
            self.peak = min(self.limit, max(self.peak, len(taken)))
            idle = self._idle.get(key)
            while idle:
                process = idle.popleft()
                if process.poll() is None:
                    self.taken_warm += 1
                    return process
                process.wait()
            self.taken_cold += 1
        return _spawn(key)

    def refill(self, argv: list[str]) -> None:
        """Start one process for ``argv`` if fewer than wanted wait or start (bounded command lines)."""
        if not self.size:
            return
        key = tuple(argv)
        with self._lock:
            idle = self._idle.get(key)
            if idle is None:
                if len(self._idle) >= self.max_commands:
                    return  # unusual options (a voice per call ...): those start cold
                idle = self._idle[key] = deque()
            if len(idle) + self._starting.get(key, 0) >= max(self.size, self.peak):
                return
            self._starting[key] = self._starting.get(key, 0) + 1
        try:
            process = _spawn(key)
        finally:
            with self._lock:
                self._starting[key] -= 1
        with self._lock:
            idle.append(process)

    def close(self) -> None:
        with self._lock:
            processes = [p for idle in self._idle.values() for p in idle]
            self._idle.clear()
        for process in processes:
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            if process.poll() is None:
                process.kill()
            process.wait()
