"""The codec registry: every served format gets a working codec; the rest gets a coded error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txvoice.audio import codecs
from txvoice.audio.codecs import decoder_for, encoder_for, register_decoder, supported_decoders, supported_encoders
from txvoice.audio.format import CODEC_RATES, AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder
from txvoice.errors import AudioError, UnsupportedFormat

SERVED = [
    (codec, rate, channels)
    for codec, rates in sorted(CODEC_RATES.items())
    for rate in sorted(rates)
    for channels in (1, 2)
]


def test_every_canonical_codec_decodes():
    assert supported_decoders() == set(CODEC_RATES)
    assert supported_encoders() == set(CODEC_RATES) - {"webm_opus"}


@pytest.mark.parametrize("codec, rate, channels", SERVED, ids=lambda v: str(v))
def test_decoder_for_every_served_format(codec, rate, channels):
    fmt = AudioFormat.validated(codec, rate, channels)
    decoder = decoder_for(fmt)
    assert verifyObject(IAudioDecoder, decoder)
    assert decoder.format is fmt
    assert decoder.output_channels == channels
    assert decoder.output_rate == (48000 if codec == "webm_opus" else rate)
    assert decoder_for(fmt) is not decoder  # one per stream


@pytest.mark.parametrize("codec, rate, channels", [s for s in SERVED if s[0] != "webm_opus"], ids=lambda v: str(v))
def test_encoder_for_every_served_format(codec, rate, channels):
    fmt = AudioFormat.validated(codec, rate, channels)
    encoder = encoder_for(fmt)
    assert verifyObject(IAudioEncoder, encoder)
    pcm = (np.sin(np.arange(fmt.samples_per_frame * channels * 3) / 7) * 5000).astype(np.int16)
    packets = encoder.encode(pcm) + encoder.flush()
    assert len(packets) >= 3 and all(isinstance(p, bytes) for p in packets)
    decoder = decoder_for(fmt)
    chunks = packets if codec == "opus" else [b"".join(packets)]  # Opus packets go one by one
    decoded = np.concatenate([decoder.decode(c) for c in chunks] + [decoder.flush()])
    assert len(decoded) == len(pcm)


@pytest.mark.parametrize(
    "fmt, code",
    [
        (AudioFormat("mp3", 16000, 1), "unsupported_codec"),
        (AudioFormat("pcm_s16le", 12345, 1), "unsupported_sample_rate"),
        (AudioFormat("opus", 44100, 1), "unsupported_sample_rate"),
        (AudioFormat("mulaw", 16000, 1), "unsupported_sample_rate"),
        (AudioFormat("pcm_s16le", 16000, 3), "unsupported_channels"),
    ],
    ids=lambda v: getattr(v, "codec", v),
)
def test_unserved_formats(fmt, code):
    for factory in (decoder_for, encoder_for):
        with pytest.raises(UnsupportedFormat) as caught:
            factory(fmt)
        assert caught.value.code == code


def test_webm_is_not_encoded():
    with pytest.raises(UnsupportedFormat) as caught:
        encoder_for(AudioFormat.validated("webm_opus", 48000, 1))
    assert caught.value.code == "unsupported_codec"


def test_options_reach_the_codec():
    decoder = decoder_for(AudioFormat("opus", 48000, 1), fec=False)
    assert decoder.fec is False
    assert decoder_for(AudioFormat("webm_opus", 48000, 1), output_rate=16000).output_rate == 16000
    with pytest.raises(TypeError):
        decoder_for(AudioFormat("pcm_s16le", 16000, 1), fec=False)


def test_registering_a_codec():
    @implementer(IAudioDecoder)
    class Silence:
        def __init__(self, fmt):
            self.format, self.output_rate, self.output_channels = fmt, fmt.sample_rate, fmt.channels

        def decode(self, data, sequence=None):
            return np.zeros(len(data), np.int16)

        def flush(self):
            return np.zeros(0, np.int16)

    original = codecs._decoders["pcm_s16le"]
    try:
        register_decoder("pcm_s16le", Silence)
        assert isinstance(decoder_for(AudioFormat()), Silence)
        register_decoder("pcm_s16le", lambda fmt: object())
        with pytest.raises(TypeError):
            decoder_for(AudioFormat())
    finally:
        register_decoder("pcm_s16le", original)
    assert not isinstance(decoder_for(AudioFormat()), Silence)


@settings(max_examples=300, deadline=1000)
@given(
    served=st.sampled_from(SERVED),
    chunks=st.lists(st.tuples(st.binary(max_size=120), st.one_of(st.none(), st.integers(0, 30))), max_size=5),
)
def test_fuzz_every_decoder_raises_only_audio_errors(served, chunks):
    """Random bytes never raise anything but AudioError, and what decodes is well-formed PCM."""
    codec, rate, channels = served
    decoder = decoder_for(AudioFormat(codec, rate, channels))
    for data, sequence in chunks:
        try:
            out = decoder.decode(data, sequence)
        except AudioError as e:
            assert e.code and e.code != "internal_error"
            continue
        assert isinstance(out, np.ndarray) and out.dtype == np.int16 and out.ndim == 1
        assert len(out) % channels == 0
    try:
        decoder.flush()
    except AudioError as e:
        assert e.code == "truncated_frame"
