"""
The per-frame ingest work of the benchmark, shared by the baseline servers.

One :class:`IngestStream` per session: decode the frame (Opus or PCM), resample to 16 kHz (Opus
decodes straight to 16 kHz, as in txvoice), cut into 20 ms frames and run VAD on each.  It uses
txvoice's own audio code when it is importable (``txvoice.audio.codecs.decoder_at``,
``txvoice.audio.resample.Resampler``,
``txvoice.audio.frames.FrameAssembler``, ``txvoice.audio.vad.VoiceActivityDetector``) so a
baseline does exactly the work txvoice does; otherwise it falls back to the same libraries
called directly (libopus through opuslib, soxr, webrtcvad).  ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

import numpy as np

PIPELINE_RATE = 16000
FRAME_MS = 20

try:
    from txvoice.audio.codecs import decoder_at
    from txvoice.audio.format import AudioFormat
    from txvoice.audio.frames import FrameAssembler
    from txvoice.audio.resample import Resampler
    from txvoice.audio.vad import VoiceActivityDetector

    IMPLEMENTATION = "txvoice.audio"
except ImportError:  # the txvoice audio engine is not there: same libraries, called directly
    IMPLEMENTATION = "direct"


class _DirectStream:
    """Fallback: opuslib / raw PCM, soxr, webrtcvad, without txvoice."""

    def __init__(self, codec: str, sample_rate: int, channels: int) -> None:
        import soxr
        import webrtcvad

        self.channels = channels
        self.codec = codec
        if codec == "opus":
            import opuslib

            self._opus = opuslib.Decoder(sample_rate, channels)
            self._max = sample_rate * 120 // 1000
        self._stream = None if sample_rate == PIPELINE_RATE else soxr.ResampleStream(
            sample_rate, PIPELINE_RATE, 1, dtype="int16", quality="HQ"
        )
        self._vad = webrtcvad.Vad(2)
        self._size = PIPELINE_RATE * FRAME_MS // 1000
        self._pending = np.zeros(0, dtype=np.int16)

    def ingest(self, frame: bytes) -> bool:
        if self.codec == "opus":
            pcm = np.frombuffer(self._opus.decode(frame, self._max), dtype=np.int16)
        else:
            pcm = np.frombuffer(frame[: len(frame) & ~1], dtype="<i2")
        if self.channels == 2:
            pcm = pcm.reshape(-1, 2).mean(axis=1).astype(np.int16)
        if self._stream is not None:
            pcm = self._stream.resample_chunk(pcm)
        buf = np.concatenate((self._pending, pcm)) if len(self._pending) else pcm
        speech = False
        n = len(buf) // self._size
        for i in range(n):
            speech = self._vad.is_speech(buf[i * self._size : (i + 1) * self._size].tobytes(), PIPELINE_RATE)
        self._pending = buf[n * self._size :].copy()
        return speech


class _TxvoiceStream:
    """txvoice's audio engine: decoder_at + Resampler + FrameAssembler + VoiceActivityDetector."""

    def __init__(self, codec: str, sample_rate: int, channels: int) -> None:
        fmt = AudioFormat.validated(codec, sample_rate, channels)
        self.decoder = decoder_at(fmt, PIPELINE_RATE)  # as txvoice does: Opus decodes straight to 16 kHz
        self.resampler = Resampler(self.decoder.output_rate, PIPELINE_RATE, self.decoder.output_channels)
        self.frames = FrameAssembler(PIPELINE_RATE, FRAME_MS)
        self.vad = VoiceActivityDetector(PIPELINE_RATE, FRAME_MS)
        self.events = 0

    def ingest(self, frame: bytes) -> bool:
        pcm = self.decoder.decode(frame)
        for f in self.frames.push(self.resampler.process(pcm)):
            if self.vad.process(f) is not None:
                self.events += 1
        return self.vad.speaking


def IngestStream(codec: str = "opus", sample_rate: int = 48000, channels: int = 1):
    """A per-session ingest object with ``ingest(frame: bytes) -> bool`` (speech in progress)."""
    if IMPLEMENTATION == "txvoice.audio":
        return _TxvoiceStream(codec, sample_rate, channels)
    return _DirectStream(codec, sample_rate, channels)
