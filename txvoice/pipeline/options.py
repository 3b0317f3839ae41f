"""
What a speech turn may be asked to do, and how it fails: STT modes, the ``voice_start`` options a
client may set per stream (:class:`TurnOptions`), engine option strings, the latency stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from txvoice.errors import VoiceError

if TYPE_CHECKING:
    from txvoice.audio.workers import AudioWorkers

GRAMMAR = "grammar"
GENERAL = "general"
STT_MODES = (GRAMMAR, GENERAL)

#: Latency stages reported per turn (``server.record_latency`` knows these).
STAGES = ("stt", "agent", "tts", "first_audio", "total")


class InvalidOption(VoiceError):
    """A speech option in ``voice_start`` has the wrong type or value."""

    code = "invalid_field"


class StageFailed(Exception):
    """An engine raised while serving a turn; ``stage`` is ``stt``, ``agent`` or ``tts``."""

    def __init__(self, stage: str, failure: Failure) -> None:
        super().__init__(f"{stage}: {failure.getErrorMessage()}")
        self.stage = stage
        self.failure = failure


def parse_engine_options(text: str) -> dict[str, str]:
    """``"key=value,key=value"`` (from ``--stt-options`` ...) as a dict; values stay strings."""
    options: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"engine option {item.strip()!r} is not key=value")
        options[key.strip()] = value.strip()
    return options


def audio_threadpool(workers: "AudioWorkers") -> "AudioWorkers | None":
    """
    The audio workers as a thread pool (they take ``deferToThreadPool``'s calls), for short work
    that needs no shard ordering (final transcripts); ``None`` before the service starts or when
    the workers run inline.
    """
    return workers if workers.started else None


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """What a client may choose per stream in ``voice_start`` ``options``."""

    stt_mode: str = GRAMMAR
    phrases: tuple[str, ...] | None = None
    tts_voice: str | None = None
    tts_rate: int | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any], default_mode: str) -> "TurnOptions":
        """
        Read ``stt_mode``, ``phrase_list`` (like vosk-server), ``tts_voice``, ``tts_rate`` (words per
        minute); ``stt_options`` (an object) goes to the STT engine's stream as it is.
        """
        mode = options.get("stt_mode", default_mode)
        if mode not in STT_MODES:
            raise InvalidOption(f"options.stt_mode must be grammar or general, not {mode!r}", field="stt_mode")
        phrases = options.get("phrase_list")
        if phrases is not None:
            if (not isinstance(phrases, list) or not phrases or len(phrases) > 10000
                    or not all(isinstance(p, str) and p.strip() for p in phrases)):
                raise InvalidOption("options.phrase_list must be a non-empty list of phrases (strings)",
                                    field="phrase_list")
            phrases = tuple(phrases)
            mode = GRAMMAR
        voice = options.get("tts_voice")
        if voice is not None and not (isinstance(voice, str) and voice):
            raise InvalidOption("options.tts_voice must be a voice name", field="tts_voice")
        rate = options.get("tts_rate")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool)):
            raise InvalidOption("options.tts_rate must be an integer (words per minute)", field="tts_rate")
        if not isinstance(options.get("stt_options", {}), dict):
            raise InvalidOption("options.stt_options must be an object (passed to the STT engine)", field="stt_options")
        return cls(mode, phrases, voice, rate)


def error_code(failure: Failure) -> str | None:
    value = failure.value
    return value.code if isinstance(value, VoiceError) else None
