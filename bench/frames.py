"""
Make the benchmark's payload files at run time (audio is never committed).

Speech comes from espeak-ng (a few sentences with pauses, ~12 s), is resampled with soxr and cut
into 20 ms frames:

* ``opus48k.frames``  -- Opus packets (opuslib, 48 kHz mono, VOIP, 24 kb/s), one per 20 ms;
* ``pcm16k.frames``   -- raw ``pcm_s16le`` at 16 kHz, 640 bytes per frame;
* ``pcm48k.frames``   -- raw ``pcm_s16le`` at 48 kHz, 1920 bytes per frame.

File format (what ``bench/loadgen.c`` reads): for each frame a 4-byte little-endian length, then
the frame's bytes.  Usage: ``python bench/frames.py [OUTDIR]`` (default ``bench/build/payloads``).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import soxr

FRAME_MS = 20
SENTENCES = [
    "Hello, this is a benchmark of real time voice sessions.",
    "Each session streams twenty millisecond frames of speech to the server.",
    "The server decodes the audio, resamples it and runs voice activity detection.",
    "Then it acknowledges every frame, and the generator measures the round trip.",
]
WORKLOADS = {
    # name: (file, codec query, sample rate)
    "opus": ("opus48k.frames", "opus", 48000),
    "pcm16k": ("pcm16k.frames", "pcm_s16le", 16000),
    "pcm48k": ("pcm48k.frames", "pcm_s16le", 48000),
}


def speech(rate: int) -> np.ndarray:
    """int16 mono speech at ``rate``: the sentences with 400 ms of silence after each."""
    parts = []
    for text in SENTENCES:
        wav = subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], check=True, capture_output=True
        ).stdout
        with wave.open(io.BytesIO(wav)) as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise RuntimeError("espeak-ng did not produce 16-bit mono")
            src_rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        parts.append(soxr.resample(pcm, src_rate, rate, quality="HQ").astype(np.int16))
        parts.append(np.zeros(rate * 400 // 1000, dtype=np.int16))
    return np.concatenate(parts)


def frames_of(pcm: np.ndarray, rate: int) -> list[np.ndarray]:
    n = rate * FRAME_MS // 1000
    usable = len(pcm) - len(pcm) % n
    return [pcm[i : i + n] for i in range(0, usable, n)]


def opus_packets(pcm48: np.ndarray) -> list[bytes]:
    import opuslib

    enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = 24000
    n = 48000 * FRAME_MS // 1000
    return [enc.encode(frame.tobytes(), n) for frame in frames_of(pcm48, 48000)]


def write_frames(path: Path, frames: list[bytes]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for frame in frames:
            f.write(struct.pack("<I", len(frame)))
            f.write(frame)
    os.replace(tmp, path)


def make(outdir: Path, force: bool = False) -> dict[str, Path]:
    """Write every payload file into ``outdir`` (kept when already there); return name -> path."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: outdir / spec[0] for name, spec in WORKLOADS.items()}
    if not force and all(p.exists() and p.stat().st_size > 0 for p in paths.values()):
        return paths
    pcm48 = speech(48000)
    pcm16 = speech(16000)
    write_frames(paths["opus"], opus_packets(pcm48))
    write_frames(paths["pcm16k"], [f.tobytes() for f in frames_of(pcm16, 16000)])
    write_frames(paths["pcm48k"], [f.tobytes() for f in frames_of(pcm48, 48000)])
    return paths


def read_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "build" / "payloads"
    for name, p in make(target, force=True).items():
        frames = read_frames(p)
        print(f"{name}: {p} ({len(frames)} frames, {sum(map(len, frames))} bytes)")
