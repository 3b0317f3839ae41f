"""
Micro-benchmark of the audio signal path, per frame: resampling, frame assembly, VAD (webrtcvad
alone, the spectral gate, both, with hysteresis), turn detection, denoising, AGC and the buffer
pool.  Not a test: it prints a table and, with ``--json PATH``, writes the numbers.

    .venv/bin/python bench/bench_signal.py [--repeat 7] [--seconds 4] [--json out.json]

Each case runs over ``--seconds`` of real speech (espeak-ng, made at run time; white noise when
espeak-ng is missing) frame by frame, ``--repeat`` times; the table shows the median over the
repetitions of the per-frame cost.  CPU time is this thread's (``time.thread_time_ns``), so other
processes on a shared machine disturb it less than the wall clock, which is shown as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _webrtcvad  # noqa: E402
import soxr  # noqa: E402
import webrtcvad  # noqa: E402

from txvoice.audio.bufferpool import AudioBufferPool  # noqa: E402
from txvoice.audio.enhance import AutomaticGainControl, Denoiser  # noqa: E402
from txvoice.audio.codecs.opus import OpusEncoder  # noqa: E402
from txvoice.audio.format import AudioFormat  # noqa: E402
from txvoice.audio.frames import FrameAssembler  # noqa: E402
from txvoice.audio.ingest import StreamIngest, StreamSettings  # noqa: E402
from txvoice.audio.resample import Resampler  # noqa: E402
from txvoice.audio.turns import TurnDetector  # noqa: E402
from txvoice.audio.vad import SpectralGate, VoiceActivityDetector, WebRtcClassifier  # noqa: E402
from txvoice.audio.workers import _run_batch  # noqa: E402

try:  # the native batch ingest (issue 26); an older tree has none
    from txvoice.audio.ingest import prepare_batch  # noqa: E402
    from txvoice.audio.native import available as native_available  # noqa: E402
    _HAS_NATIVE = True
except ImportError:
    _HAS_NATIVE = False

TEXT = (
    "The quick brown fox jumps over the lazy dog. Real time voice needs a fast signal path. "
    "Every frame counts, twenty milliseconds at a time."
)


def make_speech(rate: int, seconds: float) -> np.ndarray:
    """``seconds`` of espeak-ng speech at ``rate`` (looped), or white noise without espeak-ng."""
    n = int(rate * seconds)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return (np.random.default_rng(1).standard_normal(n) * 3000).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.wav")
        subprocess.run([espeak, "-w", path, TEXT], check=True, capture_output=True)
        with wave.open(path, "rb") as w:
            src_rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    pcm = soxr.resample(pcm.astype(np.float32) / 32768, src_rate, rate)
    pcm = np.round(np.clip(pcm, -1, 1 - 1 / 32768) * 32768).astype(np.int16)
    return np.resize(pcm, n)


def chunks(pcm: np.ndarray, size: int) -> list[np.ndarray]:
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


def measure(setup: Callable[[], Callable[[], int]], repeat: int) -> dict[str, float]:
    """
    ``setup()`` makes fresh state and returns ``run``, which processes the whole input and
    returns how many frames it handled.  Returns median / min per-frame CPU and wall µs.
    """
    cpu, wall = [], []
    for _ in range(repeat):
        run = setup()
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        frames = run()
        c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        cpu.append((c1 - c0) / 1000 / frames)
        wall.append((w1 - w0) / 1000 / frames)
    return {
        "cpu_us": statistics.median(cpu),
        "cpu_us_min": min(cpu),
        "wall_us": statistics.median(wall),
        "frames": frames,
    }


def cases(seconds: float) -> dict[str, Callable[[], Callable[[], int]]]:
    s16, s48, s441 = make_speech(16000, seconds), make_speech(48000, seconds), make_speech(44100, seconds)
    stereo48 = np.repeat(s48, 2)
    f16 = chunks(s16, 320)
    out: dict[str, Callable[[], Callable[[], int]]] = {}

    def resample(pcm: np.ndarray, rate: int, size: int, channels: int = 1) -> Callable[[], Callable[[], int]]:
        parts = chunks(pcm, size * channels)

        def setup() -> Callable[[], int]:
            r = Resampler(rate, 16000, channels)

            def run() -> int:
                for p in parts:
                    r.process(p)
                return len(parts)

            return run

        return setup

    out["resample 48k->16k (20 ms in)"] = resample(s48, 48000, 960)
    out["resample 44.1k->16k (20 ms in)"] = resample(s441, 44100, 882)
    out["resample 48k stereo->16k mono"] = resample(stereo48, 48000, 960, 2)

    def soxr_int16() -> Callable[[], int]:
        parts = chunks(s48, 960)
        stream = soxr.ResampleStream(48000, 16000, 1, dtype="int16")

        def run() -> int:
            for p in parts:
                stream.resample_chunk(p)
            return len(parts)

        return run

    out["  (soxr int16 path, for reference)"] = soxr_int16

    def assemble() -> Callable[[], int]:
        # What the resampler hands over from 48 kHz: bursts of 0 / ~490 samples.
        r = Resampler(48000)
        bursts = [r.process(p).copy() for p in chunks(s48, 960)]
        a = FrameAssembler(16000, 20)

        def run() -> int:
            n = 0
            for b in bursts:
                n += len(a.push(b))
            return n

        return run

    out["frame assembly (per 20 ms frame)"] = assemble

    def per_frame(make: Callable[[], Callable[[np.ndarray], object]], frames: list[np.ndarray] = f16):
        def setup() -> Callable[[], int]:
            fn = make()

            def run() -> int:
                for f in frames:
                    fn(f)
                return len(frames)

            return run

        return setup

    def webrtc_alone() -> Callable[[np.ndarray], object]:
        v = webrtcvad.Vad(2)
        return lambda f: _webrtcvad.process(v._vad, 16000, f, 320)

    out["VAD webrtcvad alone (20 ms)"] = per_frame(webrtc_alone)
    out["VAD spectral gate alone (20 ms)"] = per_frame(lambda: SpectralGate(16000, 320).accept)
    out["VAD webrtcvad + gate (20 ms)"] = per_frame(lambda: WebRtcClassifier(16000, 20).classify)
    out["VAD + hysteresis (20 ms)"] = per_frame(lambda: VoiceActivityDetector(16000, 20).process)
    background = chunks((np.random.default_rng(2).standard_normal(len(s16)) * 100).astype(np.int16), 320)
    out["VAD webrtcvad + gate, background (-50 dBFS)"] = per_frame(
        lambda: WebRtcClassifier(16000, 20).classify, background
    )
    out["turn detector voice_activity (20 ms)"] = per_frame(lambda: TurnDetector("voice_activity").push)
    out["denoise 10 ms frame"] = per_frame(lambda: Denoiser(16000).process, chunks(s16, 160))
    out["denoise 20 ms frame"] = per_frame(lambda: Denoiser(16000).process)
    out["denoise 30 ms frame"] = per_frame(lambda: Denoiser(16000).process, chunks(s16, 480))
    out["denoise 20 ms, overlap 2"] = per_frame(lambda: Denoiser(16000, overlap=2).process)
    out["AGC 20 ms frame"] = per_frame(lambda: AutomaticGainControl(16000).process)

    def chain() -> Callable[[], int]:
        parts = chunks(s48, 960)
        r, a = Resampler(48000), FrameAssembler(16000, 20)
        d, g, t = Denoiser(16000), AutomaticGainControl(16000), TurnDetector("voice_activity")

        def run() -> int:
            n = 0
            for p in parts:
                for f in a.push(r.process(p)):
                    d.process(f, out=f)
                    g.process(f, out=f)
                    t.push(f)
                    n += 1
            return n

        return run

    out["chain 48k: resample+frames+denoise+AGC+turns"] = chain

    def ingest(codec: str, replying: bool = False, native: bool = False, streams: int = 1
               ) -> Callable[[], Callable[[], int]]:
        # What the server does per client chunk on its audio thread (voice_activity mode): decode
        # (Opus straight to 16 kHz), frames, VAD, turns; packets made once, outside the timing.
        # ``native``: the native batch ingest (txvoice/audio/_native.c), the chunks of ``streams``
        # streams interleaved and run as worker batches of one chunk per stream, as the audio
        # thread gets them under load (prepare_batch, then each chunk's own work).
        if codec == "opus":
            fmt = AudioFormat("opus", 48000, 1)
            packets = OpusEncoder(fmt).encode(s48)
        else:
            fmt = AudioFormat("pcm_s16le", 16000, 1)
            packets = [f.tobytes() for f in f16]

        def setup() -> Callable[[], int]:
            extra = {"native": native} if native or _HAS_NATIVE else {}
            ingests = [StreamIngest(fmt, StreamSettings(mode="voice_activity"), answers=False, **extra)
                       for _ in range(streams)]
            for stream in ingests:
                if replying and hasattr(stream, "replying"):
                    stream.replying(True)  # a reply plays: the fast barge-in onset classifies every frame
            batches = [[(stream.process, (packet, k, 0.0), None, None) for stream in ingests]
                       for k, packet in enumerate(packets)]
            prepare = prepare_batch if native else None

            def run() -> int:
                if prepare is not None:
                    for batch in batches:
                        _run_batch(batch, prepare)  # type: ignore[arg-type]
                elif streams == 1:  # as before there were batches: the chunks straight to the ingest
                    process = ingests[0].process
                    for k, packet in enumerate(packets):
                        process((packet, k, 0.0))
                else:
                    for batch in batches:
                        _run_batch(batch)  # type: ignore[arg-type]
                return len(packets) * streams

            return run

        return setup

    out["ingest opus 48k, 20 ms packet (decode+VAD+turns)"] = ingest("opus")
    out["ingest pcm 16k, 20 ms chunk (VAD+turns)"] = ingest("pcm")
    out["ingest opus 48k, 20 ms packet, reply playing (fast onset on)"] = ingest("opus", True)
    out["ingest pcm 16k, 20 ms chunk, reply playing (fast onset on)"] = ingest("pcm", True)
    if _HAS_NATIVE and native_available():
        for n in (1, 10, 50):
            out[f"ingest opus 48k, native batch of {n} streams"] = ingest("opus", native=True, streams=n)
        out["ingest opus 48k, Python, 50 streams (same batches)"] = ingest("opus", streams=50)
        out["ingest opus 48k, native batch of 50, reply playing"] = ingest("opus", True, native=True, streams=50)
        out["ingest opus 48k, Python, 50 streams, reply playing"] = ingest("opus", True, streams=50)

    n_ops = 20000

    def pool_case(threads: int) -> Callable[[], Callable[[], int]]:
        def setup() -> Callable[[], int]:
            pool = AudioBufferPool(64, 60)

            def work() -> None:
                for _ in range(n_ops):
                    pool.release(pool.acquire(320))

            def run() -> int:
                if threads == 1:
                    work()
                    return n_ops
                ts = [threading.Thread(target=work) for _ in range(threads - 1)]
                for th in ts:
                    th.start()
                work()  # measured on this thread, while the others contend
                for th in ts:
                    th.join()
                return n_ops

            return run

        return setup

    out["buffer pool acquire+release"] = pool_case(1)
    out["buffer pool acquire+release, 2 threads"] = pool_case(2)

    def alloc() -> Callable[[], int]:
        def run() -> int:
            for _ in range(n_ops):
                np.empty(320, dtype=np.int16)
            return n_ops

        return run

    out["  (np.empty(320), for reference)"] = alloc

    big, n_big = 16000 * 10, 500  # a 10 s turn buffer, written once

    def pool_big() -> Callable[[], int]:
        pool = AudioBufferPool(4, 60)

        def run() -> int:
            for _ in range(n_big):
                buf = pool.acquire(big)
                buf.fill(1)
                pool.release(buf)
            return n_big

        return run

    def alloc_big() -> Callable[[], int]:
        def run() -> int:
            for _ in range(n_big):
                np.empty(big, dtype=np.int16).fill(1)
            return n_big

        return run

    out["buffer pool 10 s buffer, acquire+fill+release"] = pool_big
    out["  (np.empty 10 s buffer + fill, for reference)"] = alloc_big
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", metavar="TEXT", help="run the cases whose name contains TEXT")
    args = parser.parse_args()

    results = {}
    print(f"{'case':48} {'CPU µs/frame':>13} {'min':>8} {'wall µs':>9} {'frames':>7}")
    for name, setup in cases(args.seconds).items():
        if args.only and args.only not in name:
            continue
        r = measure(setup, args.repeat)
        results[name.strip()] = r
        print(f"{name:48} {r['cpu_us']:13.2f} {r['cpu_us_min']:8.2f} {r['wall_us']:9.2f} {r['frames']:7d}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "soxr": soxr.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "repeat": args.repeat,
            "seconds": args.seconds,
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
