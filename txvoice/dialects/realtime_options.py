"""
S4's ``AudioProcessingOptions`` in ``session_start``: the fallback format (for audio whose first
bytes name no container), the stream options and the chunk limit.
"""

from __future__ import annotations

from typing import Any

from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamSettings
from txvoice.errors import ProtocolError

#: session_start.data keys that are S4 AudioProcessingOptions (also accepted under data.audioOptions).
AUDIO_OPTIONS = ("sampleRate", "channels", "enableVAD", "vadThreshold", "enableDenoising", "enableAGC",
                 "maxChunkSize", "bufferDuration", "format", "codec", "maxAudioDuration", "outputFormat",
                 "outputSampleRate")


def audio_options(data: dict[str, Any], max_message_size: int) -> tuple[AudioFormat, dict[str, Any], int]:
    """S4's AudioProcessingOptions -> the fallback format, stream options and the chunk limit."""
    opts = dict(data.get("audioOptions") or data.get("options") or {})
    for key in AUDIO_OPTIONS:
        if key in data:
            opts.setdefault(key, data[key])
    codec = opts.get("format") or opts.get("codec") or "pcm_s16le"
    fmt = AudioFormat.validated(codec=codec, sample_rate=opts.get("sampleRate", 16000),
                                channels=opts.get("channels", 1))
    options: dict[str, Any] = {k: v for k, v in opts.items()
                               if k in ("enableVAD", "vadThreshold", "enableDenoising", "enableAGC",
                                        "maxAudioDuration")}
    turn_ms = min(int(opts.get("bufferDuration", 180_000)), int(opts.get("maxAudioDuration", 180_000)))
    options["max_turn_ms"] = turn_ms
    options.pop("maxAudioDuration", None)
    options["output_codec"] = opts.get("outputFormat", "pcm_s16le")
    options["output_sample_rate"] = opts.get("outputSampleRate", 16000)
    StreamSettings.parse("voice_activity", options)  # refuse bad options now, not at the first chunk
    chunk = opts.get("maxChunkSize", 0)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ProtocolError("maxChunkSize must be a non-negative integer", code="invalid_field", field="maxChunkSize")
    return fmt, options, min(chunk, max_message_size) if chunk else 0
