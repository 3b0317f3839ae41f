"""
The codecs of the audio engine, found by canonical codec name.

:func:`decoder_for` and :func:`encoder_for` build a fresh, per-stream :class:`IAudioDecoder` /
:class:`IAudioEncoder` for an :class:`AudioFormat`.  A codec is added (or a built-in one
replaced) with :func:`register_decoder` / :func:`register_encoder`: a factory is any callable
``factory(fmt, **options)`` that returns a provider of the interface.
"""

from __future__ import annotations

from typing import Any, Callable

from txvoice.audio.codecs._libopus import OPUS_RATES
from txvoice.audio.codecs.g711 import G711Decoder, G711Encoder
from txvoice.audio.codecs.opus import OpusDecoder, OpusEncoder
from txvoice.audio.codecs.pcm import PcmDecoder, PcmEncoder, downmix
from txvoice.audio.codecs.wav import WavDecoder, WavEncoder
from txvoice.audio.codecs.webm import WebmOpusDecoder
from txvoice.audio.format import CODEC_RATES, AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder
from txvoice.errors import UnsupportedFormat

__all__ = [
    "decoder_at",
    "decoder_for",
    "downmix",
    "encoder_for",
    "register_decoder",
    "register_encoder",
    "supported_decoders",
    "supported_encoders",
]

DecoderFactory = Callable[..., Any]
EncoderFactory = Callable[..., Any]

_decoders: dict[str, DecoderFactory] = {}
_encoders: dict[str, EncoderFactory] = {}


def register_decoder(codec: str, factory: DecoderFactory) -> None:
    """Make ``decoder_for`` build decoders of canonical ``codec`` with ``factory(fmt, **options)``."""
    _decoders[codec] = factory


def register_encoder(codec: str, factory: EncoderFactory) -> None:
    """Make ``encoder_for`` build encoders of canonical ``codec`` with ``factory(fmt, **options)``."""
    _encoders[codec] = factory


def supported_decoders() -> frozenset[str]:
    """Canonical names of the codecs that can be decoded."""
    return frozenset(_decoders)


def supported_encoders() -> frozenset[str]:
    """Canonical names of the codecs that can be encoded."""
    return frozenset(_encoders)


def _check(fmt: AudioFormat, registry: dict[str, Any], direction: str) -> Any:
    """The factory for ``fmt``; ``UnsupportedFormat`` for what :meth:`AudioFormat.validated` rejects."""
    factory = registry.get(fmt.codec)
    if factory is None:
        raise UnsupportedFormat(
            f"cannot {direction} {fmt.codec!r}; supported: {', '.join(sorted(registry))}", code="unsupported_codec"
        )
    rates = CODEC_RATES.get(fmt.codec)
    if rates is not None and fmt.sample_rate not in rates:
        raise UnsupportedFormat(
            f"codec {fmt.codec} does not support sample_rate {fmt.sample_rate}; supported: {sorted(rates)}",
            code="unsupported_sample_rate",
        )
    if fmt.channels not in (1, 2):
        raise UnsupportedFormat(f"channels must be 1 or 2, not {fmt.channels}", code="unsupported_channels")
    return factory


def decoder_for(fmt: AudioFormat, **options: Any) -> IAudioDecoder:
    """
    A new decoder for one stream of ``fmt``; ``options`` go to the codec (e.g. ``fec=False``
    for Opus, ``output_rate=16000`` for WebM).  Raises :class:`UnsupportedFormat`.
    """
    decoder = _check(fmt, _decoders, "decode")(fmt, **options)
    if not IAudioDecoder.providedBy(decoder):
        raise TypeError(f"the decoder factory for {fmt.codec!r} returned {decoder!r}, not an IAudioDecoder")
    return decoder


#: Codecs whose decoders take ``output_rate``: they decode at any of these rates natively.
_NATIVE_RATES: dict[str, frozenset[int]] = {"opus": OPUS_RATES, "webm_opus": OPUS_RATES}


def decoder_at(fmt: AudioFormat, rate: int, **options: Any) -> IAudioDecoder:
    """
    A decoder for ``fmt`` that outputs at ``rate`` itself when its codec can (Opus decodes
    straight to 8-48 kHz); otherwise the plain :func:`decoder_for`, at the input's rate, and the
    caller resamples.  Check ``output_rate`` on the result.
    """
    if rate in _NATIVE_RATES.get(fmt.codec, ()) and _decoders.get(fmt.codec) in _NATIVE_DECODERS:
        options.setdefault("output_rate", rate)
    return decoder_for(fmt, **options)


def encoder_for(fmt: AudioFormat, **options: Any) -> IAudioEncoder:
    """
    A new encoder for one stream of ``fmt``; ``options`` go to the codec (e.g.
    ``application="audio", bitrate=24000`` for Opus).  Raises :class:`UnsupportedFormat`.
    """
    encoder = _check(fmt, _encoders, "encode")(fmt, **options)
    if not IAudioEncoder.providedBy(encoder):
        raise TypeError(f"the encoder factory for {fmt.codec!r} returned {encoder!r}, not an IAudioEncoder")
    return encoder


#: The built-in factories that take ``output_rate`` (a replacement registered for the codec may not).
_NATIVE_DECODERS = (OpusDecoder, WebmOpusDecoder)

register_decoder("pcm_s16le", PcmDecoder)
register_decoder("wav", WavDecoder)
register_decoder("mulaw", G711Decoder)
register_decoder("alaw", G711Decoder)
register_decoder("opus", OpusDecoder)
register_decoder("webm_opus", WebmOpusDecoder)

register_encoder("pcm_s16le", PcmEncoder)
register_encoder("wav", WavEncoder)
register_encoder("mulaw", G711Encoder)
register_encoder("alaw", G711Encoder)
register_encoder("opus", OpusEncoder)
