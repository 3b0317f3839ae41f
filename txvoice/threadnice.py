"""
Worker threads scheduled below the reactor: a per-thread nice increment (Linux).

On a machine whose cores are all busy, a reactor thread woken by a timer or a socket waits on the
run queue for a CPU behind whatever else is runnable -- in this process, first of all the audio
and synthesis threads.  With twenty speakers ending turns together on two cores
(``bench/bench_speech_lag.py``, 65 s) the reactor thread spent 10.2 s runnable without a CPU (its
own work was 7.9 s; the two audio threads ran 40 s), over 100 ms of the 250 ms before most of its
latest ticks: the lag p99 was mostly that wait, not its own work nor the GIL.  Linux keeps a nice
value per thread (``setpriority(PRIO_PROCESS, tid)`` changes only that thread), and a thread
with a higher nice gets a smaller share and loses the CPU to a waking thread of normal priority
sooner; raising one's own nice needs no privilege.  Child processes (espeak-ng) inherit the nice
of the thread that starts them.

Elsewhere ``setpriority`` on a thread id is not per thread (or there are no thread ids), so
:func:`lower_current_thread` does nothing there.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

__all__ = ["MAX_NICE", "lower_current_thread", "niced_thread_factory", "supported"]

MAX_NICE = 19


def supported() -> bool:
    """True where a thread's nice can be set on its own (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority") and hasattr(threading, "get_native_id")


def lower_current_thread(increment: int) -> int | None:
    """
    Add ``increment`` (> 0) to the calling thread's nice, up to :data:`MAX_NICE`: the thread's
    nice afterwards, or None when nothing was changed (``increment`` <= 0, unsupported, refused).
    """
    if increment <= 0 or not supported():
        return None
    tid = threading.get_native_id()
    try:
        nice = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        return None
    return nice


def niced_thread_factory(increment: int) -> Callable[..., threading.Thread]:
    """
    A ``threading.Thread`` factory (for :attr:`twisted.python.threadpool.ThreadPool.threadFactory`)
    whose threads first lower themselves by ``increment``.
    """

    def factory(**kwargs: Any) -> threading.Thread:
        target: Callable[..., object] | None = kwargs.pop("target", None)

        def run(*a: Any, **kw: Any) -> object:
            lower_current_thread(increment)
            return target(*a, **kw) if target is not None else None

        return threading.Thread(target=run, **kwargs)

    return factory
