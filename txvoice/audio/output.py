"""
Response audio in the client's format (worker side): resample the pipeline's PCM to the output
rate and encode it in the output codec, as packets with their durations (for pacing).
"""

from __future__ import annotations

import numpy as np

from txvoice.audio.codecs import encoder_for
from txvoice.audio.format import CODEC_RATES, AudioFormat
from txvoice.audio.resample import Resampler

_BYTES_PER_SAMPLE = {"pcm_s16le": 2, "wav": 2, "mulaw": 1, "alaw": 1}
_ENCODABLE_FRAMES = {"opus": (10, 20, 40, 60), "pcm_s16le": (10, 20, 30, 40, 60), "wav": (10, 20, 30, 40, 60),
                     "mulaw": (10, 20, 30, 40, 60), "alaw": (10, 20, 30, 40, 60)}


def output_format(input_format: AudioFormat, codec: str | None = None, sample_rate: int | None = None) -> AudioFormat:
    """
    The format a response is sent in: what the client asked for (``output_codec``,
    ``output_sample_rate``) or else its own input format; WebM input gets raw Opus back (WebM is
    not encoded), 44.1 kHz Opus becomes 48 kHz.  Responses are mono.
    """
    codec = codec or input_format.codec
    if codec == "webm_opus":
        codec = "opus"
    fmt = AudioFormat.validated(codec, input_format.sample_rate if sample_rate is None else sample_rate, 1, 20)
    rate = fmt.sample_rate
    if rate not in CODEC_RATES[fmt.codec]:
        rate = 48000 if fmt.codec == "opus" else 16000
    frame = input_format.frame_duration_ms
    if frame not in _ENCODABLE_FRAMES.get(fmt.codec, ()):
        frame = 20
    return AudioFormat(fmt.codec, rate, 1, frame)


def packet_duration_ms(fmt: AudioFormat, packet: bytes) -> float:
    """How much audio one packet of ``fmt`` carries (pacing needs it)."""
    width = _BYTES_PER_SAMPLE.get(fmt.codec)
    if width is None:
        return float(fmt.frame_duration_ms)
    return 1000.0 * len(packet) / (width * fmt.channels * fmt.sample_rate)


class ResponseEncoder:
    """PCM at ``source_rate`` -> packets of ``out`` with durations; one per response, on the worker."""

    def __init__(self, source_rate: int, out: AudioFormat) -> None:
        self.format = out
        self.resampler = Resampler(source_rate, out.sample_rate)
        self.encoder = encoder_for(out)
        self._ms = float(out.frame_duration_ms)

    def _timed(self, packets: list[bytes]) -> list[tuple[bytes, float]]:
        fmt = self.format
        if fmt.codec == "opus":
            return [(p, self._ms) for p in packets]
        return [(p, packet_duration_ms(fmt, p)) for p in packets]

    def encode(self, pcm: np.ndarray) -> list[tuple[bytes, float]]:
        return self._timed(self.encoder.encode(self.resampler.process(np.asarray(pcm, dtype=np.int16))))

    def flush(self, _: object = None) -> list[tuple[bytes, float]]:
        rest = self.resampler.flush()
        packets = self.encoder.encode(rest) if rest.size else []
        return self._timed(packets + self.encoder.flush())
