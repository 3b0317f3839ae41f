"""
What a client may set per stream in ``voice_start`` (``mode`` and ``options``), read and checked
once when the stream opens: :class:`StreamSettings`, used by the ingest on the audio worker
(:mod:`txvoice.audio.ingest`) and by the channel on the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from txvoice.audio._libsoxr import QUALITIES
from txvoice.audio.bargein import DEFAULT_RULE, RULES
from txvoice.audio.format import AudioFormat
from txvoice.audio.turns import TurnSettings
from txvoice.errors import ProtocolError

__all__ = ["MODE_ALIASES", "StreamSettings"]

MODE_ALIASES = {
    "push_to_talk": "push_to_talk",
    "ptt": "push_to_talk",
    "continuous": "continuous",
    "voice_activity": "voice_activity",
    "vad": "voice_activity",
    "adaptive": "voice_activity",
}

# Option names clients use (S1 snake_case, S4 camelCase) -> StreamSettings fields.
_OPTION_NAMES = {
    "enable_vad": "vad", "enableVAD": "vad", "vad": "vad",
    "vad_threshold": "vad_threshold", "vadThreshold": "vad_threshold",
    "prefix_padding_ms": "prefix_padding_ms",
    "silence_ms": "silence_ms", "end_of_turn_silence_ms": "silence_ms", "silence_duration_ms": "silence_ms",
    "max_turn_ms": "max_turn_ms", "max_audio_duration": "max_turn_ms", "maxAudioDuration": "max_turn_ms",
    "segment_ms": "segment_ms",
    "enable_denoising": "denoise", "enableDenoising": "denoise", "denoise": "denoise",
    "enable_agc": "agc", "enableAGC": "agc", "agc": "agc",
    "frame_ms": "frame_ms",
    "output_codec": "output_codec", "output_sample_rate": "output_sample_rate",
    "response_lead_ms": "response_lead_ms",
    "resample_quality": "resample_quality",
    "barge_in_rule": "barge_in_rule", "bargeInRule": "barge_in_rule",
}


@dataclass(frozen=True)
class StreamSettings:
    """What a client may set per stream in ``voice_start`` (``mode`` and ``options``)."""

    mode: str = "push_to_talk"
    vad: bool = True
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_ms: int = 500
    max_turn_ms: int = 180_000
    segment_ms: int = 5000
    denoise: bool = False
    agc: bool = False
    frame_ms: int = 20
    output_codec: str | None = None
    output_sample_rate: int | None = None
    response_lead_ms: int = 100
    #: soxr quality of the input's resampling to the pipeline rate.  "HQ" holds audio back in
    #: blocks (at 48 kHz: ~490 samples every other 20 ms chunk, up to 37 ms); "LL" (the default) is
    #: HQ's filter at minimum phase in small blocks: output on every chunk, at most ~9 ms behind
    #: (issue #21); "QQ" adds none (cubic interpolation): the telephony bridges use it.
    resample_quality: str = "LL"
    #: When speech over a playing reply interrupts it (txvoice.audio.bargein): "fast" (two 10 ms
    #: frames, the default) or "frames3" (the turn VAD's speech start, three 20 ms frames).
    barge_in_rule: str = DEFAULT_RULE

    @classmethod
    def parse(cls, mode: str | None, options: Mapping[str, Any]) -> "StreamSettings":
        """Read ``voice_start``'s mode and options; unknown or ill-typed ones are ``invalid_field``."""
        values: dict[str, Any] = {}
        if mode is not None:
            canonical = MODE_ALIASES.get(str(mode).lower())
            if canonical is None:
                raise ProtocolError(
                    f"mode must be one of push_to_talk, continuous, voice_activity, not {mode!r}",
                    code="invalid_field", field="mode",
                )
            values["mode"] = canonical
        defaults = cls()
        for key, value in options.items():
            name = _OPTION_NAMES.get(key)
            if name is None:
                continue  # pipeline options pass through untouched
            expected = type(getattr(defaults, name)) if getattr(defaults, name) is not None else None
            if name in ("output_codec", "resample_quality", "barge_in_rule"):
                ok = isinstance(value, str)
            elif name == "output_sample_rate":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif expected is bool:
                ok = isinstance(value, bool)
            elif expected is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise ProtocolError(f"options.{key} has the wrong type", code="invalid_field", field=key)
            values[name] = value
        settings = cls(**values)
        if settings.frame_ms not in (10, 20, 30):
            raise ProtocolError("options.frame_ms must be 10, 20 or 30", code="invalid_field", field="frame_ms")
        if not 0 <= settings.response_lead_ms <= 2000:
            raise ProtocolError("options.response_lead_ms must be within 0..2000", code="invalid_field",
                                field="response_lead_ms")
        if settings.resample_quality not in QUALITIES:
            raise ProtocolError(f"options.resample_quality must be one of {', '.join(QUALITIES)}",
                                code="invalid_field", field="resample_quality")
        if settings.barge_in_rule not in RULES:
            raise ProtocolError(f"options.barge_in_rule must be one of {', '.join(RULES)}",
                                code="invalid_field", field="barge_in_rule")
        settings.turn_settings()  # validates the ranges
        return settings

    def turn_settings(self) -> TurnSettings:
        try:
            return TurnSettings(
                prefix_padding_ms=self.prefix_padding_ms,
                silence_ms=self.silence_ms,
                max_turn_ms=self.max_turn_ms,
                segment_ms=self.segment_ms,
                vad_threshold=float(self.vad_threshold),
            )
        except ProtocolError as e:
            raise ProtocolError(e.message, code="invalid_field", field=e.details.get("field")) from None

    def wants_input_format(self, fmt: AudioFormat) -> bool:
        """True when responses may go out in the input's own format (no output_* override to another)."""
        return self.output_codec in (None, fmt.codec) and self.output_sample_rate in (None, fmt.sample_rate)

    @property
    def decodes(self) -> bool:
        """Whether the stream needs decoding at all (VAD, turns by VAD/segments, enhancement)."""
        return self.vad or self.mode != "push_to_talk" or self.denoise or self.agc
