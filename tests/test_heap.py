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

