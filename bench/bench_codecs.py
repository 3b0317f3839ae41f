"""
Micro-benchmark of the codecs: CPU cost per 20 ms frame (median over repetitions).

Not a test.  Run ``python bench/bench_codecs.py`` for a table, ``--json`` for JSON.  The signal
is espeak-ng speech when espeak-ng and sox are installed, else a synthetic voice-like signal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txvoice.audio.codecs import _libopus  # noqa: E402
from txvoice.audio.codecs.g711 import G711Decoder, G711Encoder  # noqa: E402
from txvoice.audio.codecs.opus import OpusDecoder, OpusEncoder  # noqa: E402
from txvoice.audio.codecs.pcm import PcmDecoder  # noqa: E402
from txvoice.audio.codecs.webm import WebmDemuxer, WebmOpusDecoder  # noqa: E402
from txvoice.audio.format import AudioFormat  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Real time voice needs robust codecs, even when packets are lost."


def speech(rate: int) -> tuple[np.ndarray, str]:
    """Mono int16 speech at ``rate`` and where it came from."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak and sox:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "s.wav"
            subprocess.run([espeak, "-w", str(wav), TEXT], check=True, capture_output=True)
            raw = subprocess.run(
                [sox, "-G", str(wav), "-b", "16", "-e", "signed-integer", "-t", "raw", "-r", str(rate), "-c", "1", "-"],
                check=True,
                capture_output=True,
            ).stdout
        return np.frombuffer(raw, "<i2").astype(np.int16), "espeak-ng"
    t = np.arange(rate * 6) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    noise = np.random.default_rng(0).normal(0, 0.05, len(t))
    return (6000 * (voice + noise)).astype(np.int16), "synthetic"


def webm_stream(packets: list[bytes]) -> bytes:
    """A MediaRecorder-like WebM (unknown Segment and Cluster sizes, 1 s Clusters)."""

    def size(n: int) -> bytes:
        length = next(k for k in range(1, 9) if n < (1 << (7 * k)) - 1)
        return ((1 << (7 * length)) | n).to_bytes(length, "big")

    def el(ident: int, body: bytes) -> bytes:
        return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + size(len(body)) + body

    unknown = b"\x01\xff\xff\xff\xff\xff\xff\xff"
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 48000, 0, 0)
    track = el(0xAE, el(0xD7, b"\x01") + el(0x83, b"\x02") + el(0x86, b"A_OPUS") + el(0x63A2, head))
    out = [el(0x1A45DFA3, el(0x4282, b"webm")), b"\x18\x53\x80\x67" + unknown, el(0x1654AE6B, track)]
    for i, packet in enumerate(packets):
        if i % 50 == 0:
            out.append(b"\x1f\x43\xb6\x75" + unknown + el(0xE7, struct.pack(">H", i * 20 & 0xFFFF)))
        out.append(el(0xA3, b"\x81" + struct.pack(">hB", (i % 50) * 20, 0x80) + packet))
    return b"".join(out)


def measure(run: Callable[[], int], reps: int) -> dict[str, float]:
    """
    Run ``run`` (which returns how many 20 ms frames it processed) ``reps`` times after a warm-up;
    CPU time of this thread per frame (immune to waiting for a shared core) and wall time.
    """
    run()
    cpu, wall = [], []
    for _ in range(reps):
        start_cpu, start_wall = time.thread_time_ns(), time.perf_counter_ns()
        frames = run()
        cpu.append((time.thread_time_ns() - start_cpu) / 1000 / frames)
        wall.append((time.perf_counter_ns() - start_wall) / 1000 / frames)
    return {
        "cpu_us_per_frame": statistics.median(cpu),
        "min_cpu_us_per_frame": min(cpu),
        "wall_us_per_frame": statistics.median(wall),
        "frames": frames,
    }


def cases(rate_pcm: dict[int, np.ndarray]) -> dict[str, Callable[[], int]]:
    import opuslib  # the baseline the ctypes path replaces

    out: dict[str, Callable[[], int]] = {}
    for rate in (48000, 16000):
        fmt = AudioFormat("opus", rate, 1)
        pcm = rate_pcm[rate]
        n = fmt.samples_per_frame
        frames = [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]
        encoder = OpusEncoder(fmt, bitrate=24000)
        packets = [encoder.encode(f)[0] for f in frames]
        khz = rate // 1000

        def opuslib_decode(packets=packets, rate=rate):
            decoder = opuslib.Decoder(rate, 1)
            for p in packets:
                decoder.decode(p, 5760 * rate // 48000)  # never str() an OpusError: it raises
            return len(packets)

        def ctypes_decode(packets=packets, fmt=fmt):
            decoder = OpusDecoder(fmt)
            for p in packets:
                decoder.decode(p)
            return len(packets)

        def ctypes_decode_plc(packets=packets, fmt=fmt):
            decoder = OpusDecoder(fmt)
            for i, p in enumerate(packets):
                if i % 10 != 5:  # 10 % loss, concealed (FEC)
                    decoder.decode(p, i)
            return len(packets)

        def opuslib_encode(frames=frames, rate=rate, n=n):
            enc = opuslib.Encoder(rate, 1, "voip")
            enc.bitrate = 24000
            for f in frames:
                enc.encode(f.tobytes(), n)
            return len(frames)

        def ctypes_encode(frames=frames, fmt=fmt, complexity=None):
            enc = OpusEncoder(fmt, bitrate=24000, complexity=complexity)
            for f in frames:
                enc.encode(f)
            return len(frames)

        out[f"opus_decode_opuslib_{khz}k"] = opuslib_decode
        out[f"opus_decode_ctypes_{khz}k"] = ctypes_decode
        out[f"opus_decode_ctypes_plc10%_{khz}k"] = ctypes_decode_plc
        out[f"opus_encode_opuslib_{khz}k"] = opuslib_encode
        out[f"opus_encode_ctypes_{khz}k"] = ctypes_encode
        out[f"opus_encode_ctypes_complexity5_{khz}k"] = lambda run=ctypes_encode: run(complexity=5)
        if rate == 48000:
            stream = webm_stream(packets)
            chunks = [stream[i : i + 1500] for i in range(0, len(stream), 1500)]  # ~ 100 ms timeslices

            def webm_demux(chunks=chunks, count=len(packets)):
                demuxer = WebmDemuxer()
                for c in chunks:
                    demuxer.feed(c)
                return count

            def webm_decode(chunks=chunks, count=len(packets)):
                decoder = WebmOpusDecoder(AudioFormat("webm_opus", 48000, 1))
                for c in chunks:
                    decoder.decode(c)
                return count

            out["webm_demux_48k"] = webm_demux
            out["webm_demux+decode_48k"] = webm_decode

    pcm8 = rate_pcm[8000]
    frames8 = [pcm8[i : i + 160] for i in range(0, len(pcm8) - 159, 160)]
    for law in ("mulaw", "alaw"):
        fmt = AudioFormat(law, 8000, 1)
        coded = [G711Encoder(fmt).encode(f)[0] for f in frames8]

        def g711_decode(coded=coded, fmt=fmt):
            decoder = G711Decoder(fmt)
            for c in coded:
                decoder.decode(c)
            return len(coded)

        def g711_encode(frames=frames8, fmt=fmt):
            encoder = G711Encoder(fmt)
            for f in frames:
                encoder.encode(f)
            return len(frames)

        out[f"{law}_decode_8k"] = g711_decode
        out[f"{law}_encode_8k"] = g711_encode

    pcm16 = rate_pcm[16000]
    chunks16 = [pcm16[i : i + 320].tobytes() for i in range(0, len(pcm16) - 319, 320)]

    def pcm_decode(chunks=chunks16):
        decoder = PcmDecoder(AudioFormat("pcm_s16le", 16000, 1))
        for c in chunks:
            decoder.decode(c)
        return len(chunks)

    out["pcm_s16le_decode_16k"] = pcm_decode
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per case (median reported)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args(argv)

    rate_pcm, source = {}, ""
    for rate in (48000, 16000, 8000):
        rate_pcm[rate], source = speech(rate)
    results = {name: measure(run, args.reps) for name, run in cases(rate_pcm).items() if args.only in name}
    meta = {
        "signal": source,
        "seconds": round(len(rate_pcm[48000]) / 48000, 2),
        "reps": args.reps,
        "libopus": _libopus.version(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    print(f"# {meta}")
    print("# per 20 ms frame: CPU time of the benchmark thread (median, min) and wall time (median)")
    print(f"{'case':36} {'cpu us (median)':>15} {'cpu min':>8} {'wall us':>8} {'frames':>7}")
    for name, r in results.items():
        print(
            f"{name:36} {r['cpu_us_per_frame']:15.2f} {r['min_cpu_us_per_frame']:8.2f}"
            f" {r['wall_us_per_frame']:8.2f} {r['frames']:7d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
