"""Start-up objects are frozen out of the collector's full collections; garbage is not kept."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.logger import Logger

from txvoice.service.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # the rest of the test run collects as usual


def test_live_objects_are_frozen_and_garbage_is_collected_first(unfrozen) -> None:
    live = _Node()
    garbage = _Node()
    garbage.peer = _Node()
    garbage.peer.peer = garbage  # a cycle only the collector can free
    gone = weakref.ref(garbage)
    del garbage
    events: list[dict] = []
    log = Logger(observer=events.append)

    frozen = freeze_startup_heap(log)

    assert frozen == gc.get_freeze_count() > 1000
    assert gone() is None, "garbage from before the freeze must be collected, not frozen"
    assert not any(o is live for o in gc.get_objects()), "a live start-up object is still scanned"
    assert events and events[0]["frozen"] == frozen



def test_gc_thresholds_are_parsed_and_applied() -> None:
    from txvoice.service.heap import apply_gc_thresholds, parse_gc_thresholds

    assert parse_gc_thresholds("") is None and parse_gc_thresholds(" ") is None
    assert parse_gc_thresholds("700,1,10") == (700, 1, 10)
    for bad in ("700,1", "a,b,c", "0,10,10", "700,-1,10", "1,2,3,4"):
        with pytest.raises(ValueError, match="--gc-thresholds"):
            parse_gc_thresholds(bad)
    before = gc.get_threshold()
    events: list[dict] = []
    try:
        apply_gc_thresholds((900, 2, 11), Logger(observer=events.append))
        assert gc.get_threshold() == (900, 2, 11)
    finally:
        gc.set_threshold(*before)
    assert events[0]["thresholds"] == "900,2,11" and events[0]["before"] == ",".join(map(str, before))


def test_bad_gc_thresholds_are_a_usage_error() -> None:
    from twisted.python.usage import UsageError

    from txvoice.config import VoiceConfig
    from txvoice.service.voice import makeVoiceService

    with pytest.raises(UsageError, match="--gc-thresholds"):
        makeVoiceService(VoiceConfig(listen="tcp:0", gc_thresholds="lots"))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_gc_pauses_are_timed_per_generation_and_long_ones_logged() -> None:
    from txvoice.service.gcpauses import GCPauses

    events: list[dict] = []
    clock = _Clock()
    pauses = GCPauses(Logger(observer=events.append), log_over_ms=5.0, timer=clock)
    # Driven by hand (the phases CPython calls with), so the durations are exact.
    for gen, ms in ((0, 1.0), (0, 3.0), (1, 7.5), (2, 20.0)):
        pauses._callback("start", {"generation": gen})
        clock.now += ms / 1000.0
        pauses._callback("stop", {"generation": gen, "collected": 4})
    assert pauses.count == [2, 1, 1]
    assert pauses.max_ms == pytest.approx([3.0, 7.5, 20.0])
    assert pauses.total_ms[0] == pytest.approx(4.0)
    logged = [(e["generation"], round(e["ms"], 1)) for e in events]
    assert logged == [(1, 7.5), (2, 20.0)], "only collections over 5 ms are logged"
    assert pauses.stats()["gen2"] == {"count": 1, "total_ms": 20.0, "max_ms": 20.0}


def test_gc_pauses_see_real_collections_while_installed_only() -> None:
    from txvoice.service.gcpauses import GCPauses

    events: list[dict] = []
    pauses = GCPauses(Logger(observer=events.append))
    pauses.install()
    pauses.install()  # once only
    try:
        assert gc.callbacks.count(pauses._callback) == 1
        gc.collect(1)
        gc.collect()
    finally:
        pauses.remove()
    assert pauses.count[1] >= 1 and pauses.count[2] >= 1
    assert pauses._callback not in gc.callbacks
    seen = list(pauses.count)
    gc.collect()
    assert pauses.count == seen, "removed: no longer called"
    assert "gen2" in events[-1]["gc_pauses"]
