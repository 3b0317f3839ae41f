#!/usr/bin/env python3
"""
What letting go of the GIL costs the audio thread when the reactor is busy.

Each step runs over a few hundred 20 ms frames twice: alone, and beside a thread that spins in pure
Python (as a busy reactor does; CPython's 5 ms switch interval).  A step that keeps the GIL shares
it in 5 ms turns and takes about twice as long beside the spinner; a step that lets go of it for a
C call of tens of microseconds hands the GIL to the spinner until its next forced switch, and is
many times slower.  The old way of each step runs side by side with txvoice's:

* Opus decode: opuslib (``ctypes.CDLL``: drops the GIL per call; txvoice's binding did the same
  before) vs txvoice's ``OpusDecoder`` (``ctypes.PyDLL``);
* resample 48 kHz -> 16 kHz: python-soxr's ``ResampleStream`` float path (drops the GIL per chunk;
  txvoice's Resampler before) vs ``txvoice.audio.resample.Resampler`` (``SoxrStream``, keeps it);
* the whole per-stream ingest (decode, resample, frames, VAD, turns) for Opus 48 kHz and PCM.

    .venv/bin/python bench/bench_gil.py [--rounds 5] [--json PATH]

Run it on a quiet machine: other processes on the cores blur the contended figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txvoice.audio.codecs.opus import OpusDecoder, OpusEncoder  # noqa: E402
from txvoice.audio.format import AudioFormat  # noqa: E402
from txvoice.audio.ingest import StreamIngest, StreamSettings  # noqa: E402
from txvoice.audio.resample import Resampler  # noqa: E402


def timed(work: Callable[[], None], rounds: int) -> float:
    """Median wall time of ``rounds`` runs."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def alone_and_beside_spinner(work: Callable[[], None], rounds: int) -> tuple[float, float]:
    """Median wall time of ``work()`` alone, then beside a thread spinning in Python."""
    alone = timed(work, rounds)
    stop = False
    spinning = threading.Event()

    def spin() -> None:
        spinning.set()
        while not stop:
            pass

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        spinning.wait(5)
        beside = timed(work, rounds)
    finally:
        stop = True
        thread.join(10)
        sys.setswitchinterval(previous)
    return alone, beside


def speech(rate: int) -> np.ndarray:
    """About 6 s of espeak-ng speech at ``rate`` (sox resamples)."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout",
                          "what time is it, please tell me the date, and then say hello to everyone here"],
                         check=True, capture_output=True).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-b", "16", "-e", "signed-integer", "-t", "raw", "-r", str(rate),
                          "-c", "1", "-"], input=wav, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import opuslib
    import soxr

    fmt48 = AudioFormat("opus", 48000, 1)
    pcm48 = speech(48000)
    frames48 = [pcm48[i:i + 960] for i in range(0, len(pcm48) - 960, 960)]
    encoder = OpusEncoder(fmt48)
    packets = [p for f in frames48 for p in encoder.encode(f)]
    decoded = [f.copy() for f in frames48]
    n = len(packets)

    def opuslib_decode() -> None:
        d = opuslib.Decoder(48000, 1)
        for p in packets:
            d.decode(p, 960)

    def txvoice_decode() -> None:
        d = OpusDecoder(fmt48)
        for p in packets:
            d.decode(p)

    def pysoxr_resample() -> None:  # the float path txvoice's Resampler used before
        stream = soxr.ResampleStream(48000, 16000, 1, dtype="float32", quality="HQ")
        scratch = np.empty(960, dtype=np.float32)
        for f in decoded:
            np.copyto(scratch, f)
            scratch *= np.float32(1.0 / 32768.0)
            stream.resample_chunk(scratch)

    def txvoice_resample() -> None:
        r = Resampler(48000)
        for f in decoded:
            r.process(f)

    def ingest(fmt: AudioFormat, payloads: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            stream = StreamIngest(fmt, StreamSettings(mode="voice_activity"), answers=False)
            for p in payloads:
                stream.process((p, None, 0.0))
        return run

    pcm_fmt = AudioFormat("pcm_s16le", 48000, 1)
    steps = {
        "opus decode: opuslib (CDLL)": opuslib_decode,
        "opus decode: txvoice (PyDLL)": txvoice_decode,
        "resample: python-soxr stream": pysoxr_resample,
        "resample: txvoice SoxrStream": txvoice_resample,
        "ingest opus 48 kHz: txvoice": ingest(fmt48, packets),
        "ingest pcm 48 kHz: txvoice": ingest(pcm_fmt, [f.tobytes() for f in frames48]),
    }
    results = {}
    print(f"{n} frames of 20 ms per run, median of {args.rounds}; µs of wall time per frame")
    print(f"{'step':32s} {'alone':>9s} {'beside a busy thread':>21s} {'slowdown':>9s}")
    for name, work in steps.items():
        work()  # warm
        alone, beside = alone_and_beside_spinner(work, args.rounds)
        results[name] = {"alone_us": round(alone / n * 1e6, 2), "beside_busy_us": round(beside / n * 1e6, 2),
                         "slowdown": round(beside / alone, 2)}
        r = results[name]
        print(f"{name:32s} {r['alone_us']:9.1f} {r['beside_busy_us']:21.1f} {r['slowdown']:8.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"frames": n, "rounds": args.rounds, "steps": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
