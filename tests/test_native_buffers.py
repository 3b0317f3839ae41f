"""The native batch's PCM buffers come from a few kept ctypes types: no cyclic garbage per batch."""

from __future__ import annotations

import ctypes
import gc

from txvoice.audio import native


def test_buffers_are_zeroed_large_enough_and_share_types() -> None:
    for n in (1, 4096, 4097, 10_000, 123_457):
        buf = native.pcm_buffer(n)
        assert ctypes.sizeof(buf) >= n and ctypes.sizeof(buf) < max(2 * n, 8192)
        assert buf.raw == b"\0" * ctypes.sizeof(buf)
    assert type(native.pcm_buffer(5000)) is type(native.pcm_buffer(8000))


def test_many_sizes_leave_no_garbage_for_the_collector() -> None:
    sizes = [3000 + 37 * i for i in range(200)]
    for n in sizes:
        native.pcm_buffer(n)  # warm: the types for these sizes exist now
    gc.collect()
    before = gc.isenabled()
    gc.disable()  # no collection in between, so the next one sees everything left
    try:
        for n in sizes:
            native.pcm_buffer(n)
        assert gc.collect() == 0
        for n in sizes:
            ctypes.create_string_buffer(n)  # the old way: a new array type per size, cyclic garbage
        assert gc.collect() > 0, "the check above would not see type garbage"
    finally:
        if before:
            gc.enable()
