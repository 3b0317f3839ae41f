"""
The audio work alone: what one frame of the benchmark's Opus payload costs in C, with no socket,
framing or Python around it, measured on the server's core in the same run as the servers.

``bench/run.py`` compares txvoice's whole CPU per frame with a bare Autobahn echo's.  txvoice has
to decode every frame (libopus, 48 kHz hybrid packets to 16 kHz) and classify it (webrtcvad and
the spectral gate); the echo does neither.  So whatever txvoice does around the audio, its CPU per
frame cannot go below this floor, and "at most the echo's" leaves the echo's figure minus this
floor for everything else.  Two figures:

- ``decode_us``: ``opus_decode`` alone per packet (one ctypes call each, no GIL hand-over: the
  library handle keeps the GIL), a fresh decoder per pass at 16 kHz;
- ``audio_us``: txvoice's native batch (``txvoice.audio.native.run_batch``: decode, re-slice,
  webrtcvad, the spectral gate) per frame, in batches of ``--batch`` streams, as the server's
  audio path runs it (its Python setup per batch included, the turn bookkeeping not);
- ``silk_decode_us``: the same speech encoded by a sender that caps Opus at wideband
  (``OPUS_SET_MAX_BANDWIDTH``), decoded the same way.  At a 16 kHz output libopus still decodes
  the CELT layer of a hybrid packet and then zeroes its bands (they are all above 8 kHz), so this
  is what the decode would cost if that work were skipped; a sender can do it, the server cannot
  through libopus' API.

Each is the smallest of ``--passes`` passes over the payload (process CPU time): a floor.

Usage: ``python bench/floor.py [--frames bench/build/payloads/opus48k.frames]``; prints JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from frames import read_frames  # noqa: E402  # bench/frames.py: the payload files' reader

FRAMES = BENCH / "build" / "payloads" / "opus48k.frames"
PCM48 = BENCH / "build" / "payloads" / "pcm48k.frames"
OPUS_BANDWIDTH_WIDEBAND = 1103


def smallest(passes: int, run: Callable[[], int]) -> float:
    """The smallest process CPU time per item (µs) over ``passes`` calls of ``run`` (returns its item count)."""
    best = float("inf")
    for _ in range(passes):
        t0 = time.process_time()
        count = run()
        best = min(best, (time.process_time() - t0) / count * 1e6)
    return best


def decode_cost(packets: list[bytes], passes: int) -> float:
    """µs of ``opus_decode`` per packet to 16 kHz mono (a fresh decoder each pass)."""
    from txvoice.audio.codecs._libopus import DecoderState

    out = (ctypes.c_int16 * 5760)()
    address = ctypes.c_void_p(ctypes.addressof(out))

    def run() -> int:
        state = DecoderState(16000, 1)
        for p in packets:
            if state.decode(p, address, 5760) <= 0:
                raise RuntimeError("opus_decode failed on the payload")
        return len(packets)

    return smallest(passes, run)


def audio_cost(packets: list[bytes], passes: int, batch: int) -> float | None:
    """µs per frame of the native batch (decode and classify) over ``batch`` streams, or None without it."""
    from txvoice.audio import native
    from txvoice.audio.format import AudioFormat
    from txvoice.audio.ingest import StreamIngest, StreamSettings

    if not native.available():
        return None
    fmt = AudioFormat.validated(codec="opus", sample_rate=48000, channels=1)

    def run() -> int:
        ingests = [StreamIngest(fmt, StreamSettings.parse("voice_activity", {}), 16000, answers=True)
                   for _ in range(batch)]
        streams = [i.native for i in ingests]
        nothing, idle = [None] * batch, [False] * batch
        for p in packets:
            native.run_batch(streams, [p] * batch, nothing, idle)  # type: ignore[arg-type]
        return len(packets) * batch

    return smallest(passes, run)


def wideband_packets(pcm_frames: list[bytes]) -> list[bytes]:
    """The payload's speech (48 kHz PCM frames) encoded as ``bench/frames.py`` does, capped at wideband."""
    import opuslib
    from opuslib.api import ctl, encoder

    enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = 24000
    encoder.encoder_ctl(enc.encoder_state, ctl.set_max_bandwidth, OPUS_BANDWIDTH_WIDEBAND)
    return [enc.encode(f, len(f) // 2) for f in pcm_frames]


def measure(frames: Path = FRAMES, pcm48: Path | None = PCM48, passes: int = 3, batch: int = 8) -> dict[str, Any]:
    packets = read_frames(frames)
    result: dict[str, Any] = {
        "frames": len(packets),
        "passes": passes,
        "batch": batch,
        "decode_us": round(decode_cost(packets, passes), 2),
        "audio_us": None,
        "silk_decode_us": None,
    }
    audio = audio_cost(packets, passes, batch)
    if audio is not None:
        result["audio_us"] = round(audio, 2)
    if pcm48 is not None and pcm48.exists():
        result["silk_decode_us"] = round(decode_cost(wideband_packets(read_frames(pcm48)), passes), 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=Path, default=FRAMES)
    p.add_argument("--pcm48", type=Path, default=PCM48, help="the same speech as 48 kHz PCM frames (for silk_decode_us)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.frames, a.pcm48, a.passes, a.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
