"""
Keep the garbage collector's full collections off what lives for the whole process.

CPython's full (generation 2) collection walks every tracked object while holding the GIL: the
reactor stops for as long as it takes.  A started txvoice holds ~70,000 tracked objects that live
as long as the process (modules, functions, classes, settings); measured on the 2-core CI VM, a
full collection with 100 Opus sessions open took 39 ms (82,000 objects), and such a collection
comes with every quarter's growth of long-lived objects, e.g. as sessions open.  ``gc.freeze()``
(Python >= 3.7, made for this) moves everything tracked so far to a permanent generation that
collections skip, so they walk only what sessions allocated.  It runs once, after a collection,
so nothing that was already garbage is kept.
"""

from __future__ import annotations

import gc
import time

from twisted.logger import Logger


def freeze_startup_heap(log: Logger) -> int:
    """Collect, then freeze every object tracked now; return how many were frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "froze {frozen} start-up objects out of the garbage collector's full collections ({ms:.1f} ms)",
        frozen=frozen,
        ms=(time.perf_counter() - started) * 1000,
    )
    return frozen


def parse_gc_thresholds(text: str) -> tuple[int, int, int] | None:
    """``"700,2,10"`` as the three thresholds ``gc.set_threshold`` takes; ``""``: None (keep Python's)."""
    if not text.strip():
        return None
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or values[0] < 1 or min(values) < 0:
        raise ValueError(f"--gc-thresholds: {text!r} is not three counts like 700,2,10 (the first at least 1)")
    return values


def apply_gc_thresholds(thresholds: tuple[int, int, int], log: Logger) -> None:
    """``gc.set_threshold(*thresholds)``, logged with what it replaces."""
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    log.info("garbage collector thresholds {thresholds} (were {before})",
             thresholds=",".join(map(str, thresholds)), before=",".join(map(str, before)))
