#!/usr/bin/env python3
"""
Unmasking one client frame: txvoice's ``unmask`` (the fast lane, txvoice/server/framing.py)
against Autobahn's NVX masker (cffi), as Autobahn calls it and with its C functions called
directly.  CPU µs per call, best of 5 rounds of 50,000, for an Opus frame and two PCM frames.

    .venv/bin/python bench/bench_unmask.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import autobahn.websocket  # noqa: E402
from autobahn.nvx._xormasker import create_xor_masker  # noqa: E402

from txvoice.server.framing import unmask  # noqa: E402


def autobahn_nvx(payload: bytes, mask: bytes) -> bytes:
    return create_xor_masker(mask, len(payload)).process(payload)


def nvx_direct() -> object:
    from _nvx_xormasker import ffi, lib  # type: ignore[import-not-found]

    new, process, free, from_buffer = lib.nvx_xormask_new, lib.nvx_xormask_process, lib.nvx_xormask_free, ffi.from_buffer

    def direct(payload: bytes, mask: bytes) -> bytes:
        masker = new(mask)
        buf = bytearray(payload)
        process(masker, from_buffer(buf), len(buf))
        free(masker)
        return bytes(buf)

    return direct


def main() -> int:
    print(f"autobahn {autobahn.__version__}, USES_NVX {autobahn.websocket.USES_NVX}")
    ways = {"txvoice unmask": unmask, "Autobahn NVX masker": autobahn_nvx, "NVX C functions": nvx_direct()}
    mask = os.urandom(4)
    for size in (70, 640, 1920):
        payload = os.urandom(size)
        for name, f in ways.items():
            assert f(payload, mask) == unmask(payload, mask)  # type: ignore[operator]
            best = min(_timed(f, payload, mask) for _ in range(5))
            print(f"{size:5d} B  {name:20s} {best * 1e6:.2f} us")
    return 0


def _timed(f: object, payload: bytes, mask: bytes, n: int = 50000) -> float:
    t = time.process_time()
    for _ in range(n):
        f(payload, mask)  # type: ignore[operator]
    return (time.process_time() - t) / n


if __name__ == "__main__":
    sys.exit(main())
