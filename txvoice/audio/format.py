"""The declared shape of an audio stream, as a client announces it in ``voice_start``."""

from __future__ import annotations

from dataclasses import dataclass

from txvoice.errors import UnsupportedFormat

#: Canonical codec names and the aliases clients may use for them.
CODEC_ALIASES: dict[str, str] = {
    "pcm_s16le": "pcm_s16le",
    "pcm": "pcm_s16le",
    "linear16": "pcm_s16le",
    "wav": "wav",
    "opus": "opus",
    "mulaw": "mulaw",
    "pcmu": "mulaw",
    "g711_ulaw": "mulaw",
    "alaw": "alaw",
    "pcma": "alaw",
    "g711_alaw": "alaw",
    "webm_opus": "webm_opus",
    "webm": "webm_opus",
}

#: Sample rates each codec accepts.
CODEC_RATES: dict[str, frozenset[int]] = {
    "pcm_s16le": frozenset({8000, 16000, 22050, 24000, 44100, 48000}),
    "wav": frozenset({8000, 16000, 22050, 24000, 44100, 48000}),
    "opus": frozenset({8000, 12000, 16000, 24000, 48000}),
    "mulaw": frozenset({8000}),
    "alaw": frozenset({8000}),
    "webm_opus": frozenset({8000, 12000, 16000, 24000, 44100, 48000}),
}

FRAME_DURATIONS_MS: frozenset[float] = frozenset({2.5, 5, 10, 20, 30, 40, 60, 80, 100, 120})


def canonical_codec(name: str) -> str:
    """Map a codec name or alias to its canonical name, or raise ``unsupported_format``."""
    try:
        return CODEC_ALIASES[name.lower()]
    except (KeyError, AttributeError):
        raise UnsupportedFormat(
            f"unsupported codec {name!r}; supported: {', '.join(sorted(set(CODEC_ALIASES.values())))}",
            code="unsupported_codec",
        ) from None


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Codec, rate, channels and nominal frame duration of one audio stream."""

    codec: str = "pcm_s16le"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration_ms: float = 20.0

    @classmethod
    def validated(
        cls,
        codec: str = "pcm_s16le",
        sample_rate: int = 16000,
        channels: int = 1,
        frame_duration_ms: float = 20.0,
    ) -> "AudioFormat":
        """Build a format from client input, raising :class:`UnsupportedFormat` when it is not served."""
        # Client input: a list or a dict where a number belongs must be a clear error, not a TypeError.
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool):
            raise UnsupportedFormat(f"sample_rate must be an integer, not {type(sample_rate).__name__}",
                                    code="unsupported_sample_rate")
        if not isinstance(channels, int) or isinstance(channels, bool):
            raise UnsupportedFormat(f"channels must be 1 or 2, not {type(channels).__name__}",
                                    code="unsupported_channels")
        if not isinstance(frame_duration_ms, (int, float)) or isinstance(frame_duration_ms, bool):
            raise UnsupportedFormat(f"frame_duration_ms must be a number, not {type(frame_duration_ms).__name__}",
                                    code="unsupported_frame_duration")
        canonical = canonical_codec(codec)
        if sample_rate not in CODEC_RATES[canonical]:
            raise UnsupportedFormat(
                f"codec {canonical} does not support sample_rate {sample_rate}; "
                f"supported: {sorted(CODEC_RATES[canonical])}",
                code="unsupported_sample_rate",
            )
        if channels not in (1, 2):
            raise UnsupportedFormat(f"channels must be 1 or 2, not {channels}", code="unsupported_channels")
        if frame_duration_ms not in FRAME_DURATIONS_MS:
            raise UnsupportedFormat(
                f"frame_duration_ms must be one of {sorted(FRAME_DURATIONS_MS)}, not {frame_duration_ms}",
                code="unsupported_frame_duration",
            )
        return cls(canonical, sample_rate, channels, frame_duration_ms)

    @property
    def samples_per_frame(self) -> int:
        """Samples per channel in one nominal frame."""
        return int(self.sample_rate * self.frame_duration_ms / 1000)

    def as_dict(self) -> dict[str, object]:
        return {
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_duration_ms": self.frame_duration_ms,
        }
