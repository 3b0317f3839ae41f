"""Opus through libopus: round trips on speech, exact framing, concealment, FEC, errors, fuzzing."""

from __future__ import annotations

import numpy as np
import opuslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from txvoice.audio.codecs import _libopus, decoder_for, encoder_for
from txvoice.audio.codecs.opus import OPUS_FRAME_DURATIONS_MS, OpusDecoder, OpusEncoder
from txvoice.audio.format import AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder
from txvoice.errors import AudioError, UnsupportedFormat

OPUS_RATES = [8000, 12000, 16000, 24000, 48000]


def encode_all(fmt: AudioFormat, pcm: np.ndarray, **options) -> list[bytes]:
    encoder = encoder_for(fmt, **options)
    return encoder.encode(pcm) + encoder.flush()


def decode_all(fmt: AudioFormat, packets, sequences=None, **options) -> np.ndarray:
    decoder = decoder_for(fmt, **options)
    if sequences is None:
        sequences = [None] * len(packets)
    return np.concatenate([decoder.decode(p, s) for p, s in zip(packets, sequences)] + [decoder.flush()])


def test_interfaces():
    fmt = AudioFormat("opus", 48000, 2)
    assert verifyObject(IAudioDecoder, decoder_for(fmt))
    assert verifyObject(IAudioEncoder, encoder_for(fmt))


@pytest.mark.parametrize("application", ["voip", "audio"])
@pytest.mark.parametrize("rate", [48000, 16000])
def test_speech_round_trip_correlates(rate, application, speech, correlate):
    pcm = speech(rate)
    fmt = AudioFormat.validated("opus", rate, 1)
    packets = encode_all(fmt, pcm, application=application, bitrate=24000)
    out = decode_all(fmt, packets)
    assert len(out) == len(packets) * fmt.samples_per_frame >= len(pcm)
    r, lag = correlate(pcm, out, rate // 50)
    assert r > 0.9, f"correlation {r:.3f} at lag {lag}"
    lookahead = encoder_for(fmt, application=application).lookahead
    assert abs(lag - lookahead) <= rate // 8000 * 2


@pytest.mark.parametrize("rate", OPUS_RATES)
def test_stereo_round_trip_keeps_the_channels_apart(rate, stereo_speech, correlate):
    pcm = stereo_speech(rate)
    fmt = AudioFormat.validated("opus", rate, 2)
    out = decode_all(fmt, encode_all(fmt, pcm, application="audio", bitrate=64000))
    assert len(out) % 2 == 0
    for channel in (0, 1):
        r, _ = correlate(pcm[channel::2], out[channel::2], rate // 50)
        assert r > 0.9, f"channel {channel}: correlation {r:.3f}"
    # The right channel is the quieter one, as in the input.
    assert np.abs(out[1::2]).mean() < 0.7 * np.abs(out[0::2]).mean()


@pytest.mark.parametrize("duration", sorted(OPUS_FRAME_DURATIONS_MS))
def test_encoder_emits_exact_frame_durations(duration):
    fmt = AudioFormat.validated("opus", 16000, 1, duration)
    encoder = encoder_for(fmt)
    rng = np.random.default_rng(1)
    pcm = rng.integers(-3000, 3000, size=fmt.samples_per_frame * 7 + 3, dtype=np.int16)
    packets = []
    for chunk in np.array_split(pcm, 5):  # uneven pieces
        packets += encoder.encode(chunk)
    assert len(packets) == 7
    packets += encoder.flush()
    assert len(packets) == 8 and encoder.flush() == []
    for packet in packets:
        assert _libopus.packet_samples(packet, 16000) == fmt.samples_per_frame


def test_thirty_ms_frames_cannot_be_encoded():
    with pytest.raises(UnsupportedFormat) as caught:
        encoder_for(AudioFormat.validated("opus", 48000, 1, 30))
    assert caught.value.code == "unsupported_frame_duration"


def test_encoder_options_reach_libopus():
    """FEC and bitrate are set through the CTL (opuslib's inband_fec setter raises TypeError)."""
    encoder = OpusEncoder(AudioFormat("opus", 48000, 1), bitrate=20000, fec=True, packet_loss_perc=10)
    assert encoder.fec is True and encoder.bitrate == 20000
    assert OpusEncoder(AudioFormat("opus", 48000, 1)).fec is False
    with pytest.raises(ValueError):
        OpusEncoder(AudioFormat("opus", 48000, 1), application="music")
    with pytest.raises(ValueError):
        OpusEncoder(AudioFormat("opus", 48000, 1), bitrate=10)


def test_decoding_is_bit_exact_with_opuslib(speech):
    fmt = AudioFormat("opus", 48000, 1)
    packets = encode_all(fmt, speech(48000)[:48000])
    reference = opuslib.Decoder(48000, 1)
    expected = np.frombuffer(b"".join(reference.decode(p, 5760) for p in packets), np.int16)
    np.testing.assert_array_equal(decode_all(fmt, packets), expected)


def test_decode_returns_arrays_the_caller_owns():
    fmt = AudioFormat("opus", 16000, 1)
    rng = np.random.default_rng(2)
    packets = encode_all(fmt, rng.integers(-8000, 8000, 3200, dtype=np.int16))
    decoder = decoder_for(fmt)
    first = decoder.decode(packets[0])
    kept = first.copy()
    decoder.decode(packets[1])
    np.testing.assert_array_equal(first, kept)
    assert first.flags.writeable


def test_a_decoder_makes_its_buffers_on_first_use():
    """A stream on the native batch ingest never decodes in Python: its decoder holds no buffer."""
    fmt = AudioFormat("opus", 16000, 1)
    packets = encode_all(fmt, np.random.default_rng(3).integers(-8000, 8000, 3200, dtype=np.int16))
    decoder = decoder_for(fmt)
    assert decoder._buffer is None and decoder._state._parse_scratch is None
    first = decoder.decode(packets[0], 0)
    assert decoder._buffer is not None and decoder._state._parse_scratch is None
    assert len(decoder.decode(packets[2], 2)) == 2 * len(first)  # a gap: validated, concealed, decoded
    assert decoder._state._parse_scratch is not None


@pytest.mark.parametrize("fec", [True, False])
@pytest.mark.parametrize("rate", [48000, 16000])
def test_lost_packets_are_concealed_with_the_right_length(rate, fec, speech):
    fmt = AudioFormat("opus", rate, 1)
    packets = encode_all(fmt, speech(rate), bitrate=24000, fec=True, packet_loss_perc=20)
    lossless = decode_all(fmt, packets)
    lost = {3, 4, 5, 20} | set(range(30, len(packets) - 1, 9))
    kept = [i for i in range(len(packets)) if i not in lost]
    out = decode_all(fmt, [packets[i] for i in kept], kept, fec=fec)
    assert len(out) == len(lossless)
    # Outside the losses (and a little while after them) the audio is the lossless audio again.
    r = np.corrcoef(out.astype(float), lossless.astype(float))[0, 1]
    assert r > 0.85


def test_fec_recovers_better_than_concealment_alone(speech):
    fmt = AudioFormat("opus", 16000, 1)
    packets = encode_all(fmt, speech(16000), bitrate=24000, fec=True, packet_loss_perc=20)
    lossless = decode_all(fmt, packets)
    kept = [i for i in range(len(packets)) if i % 7 != 5]
    errors = {}
    for fec in (True, False):
        out = decode_all(fmt, [packets[i] for i in kept], kept, fec=fec)
        errors[fec] = np.sqrt(np.mean((out.astype(float) - lossless) ** 2))
    assert errors[True] < 0.6 * errors[False]


def test_no_concealment_without_sequence_or_going_backwards():
    fmt = AudioFormat("opus", 16000, 1)
    packets = encode_all(fmt, np.zeros(320 * 4, np.int16))
    assert len(decode_all(fmt, packets[::2])) == 2 * 320
    assert len(decode_all(fmt, packets[:3], [10, 11, 5])) == 3 * 320
    assert len(decode_all(fmt, packets[:3], [0, 0, 1])) == 3 * 320


def test_concealment_is_bounded():
    fmt = AudioFormat("opus", 16000, 1)
    packets = encode_all(fmt, np.zeros(320 * 2, np.int16))
    out = decode_all(fmt, packets, [0, 10**9], max_conceal_ms=200)
    assert len(out) == 320 + 10 * 320 + 320


def test_concealment_uses_the_packet_duration():
    fmt = AudioFormat.validated("opus", 48000, 1, 60)
    packets = encode_all(fmt, np.zeros(2880 * 2, np.int16))
    assert len(decode_all(fmt, packets, [1, 4])) == 2880 * 4


INVALID_PACKETS = [
    b"\x03",  # code 3 without its frame count byte
    b"\x03\x00",  # code 3 with zero frames
    b"\x01\x01\x01\x01",  # code 1 needs two frames of equal size: odd payload
    b"\x02\xfd",  # code 2 whose first frame size overruns the packet
    b"\xfb\xff\x01",  # code 3: 63 x 20 ms frames is more than 120 ms
]


@pytest.mark.parametrize("packet", INVALID_PACKETS, ids=lambda p: p.hex())
def test_invalid_packets_are_rejected_and_the_next_decodes(packet):
    fmt = AudioFormat("opus", 48000, 1)
    good = encode_all(fmt, np.zeros(960 * 3, np.int16))
    decoder = decoder_for(fmt)
    decoder.decode(good[0], 0)
    with pytest.raises(AudioError) as caught:
        decoder.decode(packet, 1)
    assert caught.value.code == "invalid_opus_packet"
    assert caught.value.details["opus_error"].startswith("OPUS_")
    # The rejected packet is concealed when the next one arrives.
    assert len(decoder.decode(good[1], 2)) == 2 * 960
    with pytest.raises(AudioError):
        decoder.decode(packet, 4)  # a gap before an invalid packet: nothing is concealed yet
    assert len(decoder.decode(good[2], 5)) == 3 * 960


def test_empty_packet_is_a_truncated_frame():
    decoder = decoder_for(AudioFormat("opus", 48000, 1))
    with pytest.raises(AudioError) as caught:
        decoder.decode(b"", 0)
    assert caught.value.code == "truncated_frame"


def test_rates_opus_does_not_run_at_are_rejected():
    with pytest.raises(UnsupportedFormat) as caught:
        decoder_for(AudioFormat("opus", 44100, 1))  # built without validation
    assert caught.value.code == "unsupported_sample_rate"
    with pytest.raises(UnsupportedFormat):
        OpusDecoder(AudioFormat("opus", 44100, 1))
    with pytest.raises(UnsupportedFormat):
        OpusEncoder(AudioFormat("opus", 22050, 1))


def test_error_names_never_raise():
    assert _libopus.error_name(-4) == "OPUS_INVALID_PACKET"
    assert _libopus.error_name(-99) == "OPUS_ERROR_-99"


@settings(max_examples=200, deadline=500)
@given(
    packets=st.lists(st.tuples(st.binary(max_size=300), st.one_of(st.none(), st.integers(0, 40))), max_size=6),
    channels=st.sampled_from([1, 2]),
    rate=st.sampled_from(OPUS_RATES),
)
def test_fuzz_only_audio_errors(packets, channels, rate):
    decoder = decoder_for(AudioFormat("opus", rate, channels))
    for packet, sequence in packets:
        try:
            out = decoder.decode(packet, sequence)
        except AudioError as e:
            assert e.code in ("invalid_opus_packet", "truncated_frame")
            continue
        assert out.dtype == np.int16 and len(out) % channels == 0
        assert len(out) <= channels * rate * 1.2 + channels * rate * 120 // 1000


def test_a_48k_stream_decodes_straight_to_16k_like_decoding_then_resampling(speech, correlate):
    from txvoice.audio.resample import Resampler

    fmt = AudioFormat("opus", 48000, 1)
    packets = encode_all(fmt, speech(48000), bitrate=24000)
    direct = decode_all(fmt, packets, output_rate=16000)
    assert len(direct) == len(packets) * 320
    resampler = Resampler(48000, 16000)
    via_48k = np.concatenate([resampler.process(decode_all(fmt, packets)), resampler.flush()])
    r, lag = correlate(via_48k, direct, 16000 // 50)
    assert r > 0.95, f"correlation {r:.3f} at lag {lag}"


def test_concealment_at_another_output_rate_keeps_the_length(speech):
    fmt = AudioFormat("opus", 48000, 1)
    packets = encode_all(fmt, speech(48000)[:48000], bitrate=24000, fec=True)
    kept = [i for i in range(len(packets)) if i % 5 != 2]
    out = decode_all(fmt, [packets[i] for i in kept], kept, output_rate=16000)
    assert len(out) == (kept[-1] + 1) * 320


def test_decoder_at_decodes_natively_when_the_codec_can():
    from txvoice.audio.codecs import decoder_at

    assert decoder_at(AudioFormat("opus", 48000, 1), 16000).output_rate == 16000
    assert decoder_at(AudioFormat("webm_opus", 48000, 1), 16000).output_rate == 16000
    assert decoder_at(AudioFormat("opus", 48000, 1), 22050).output_rate == 48000  # not an Opus rate
    assert decoder_at(AudioFormat("pcm_s16le", 48000, 1), 16000).output_rate == 48000
    with pytest.raises(UnsupportedFormat):
        OpusDecoder(AudioFormat("opus", 48000, 1), output_rate=44100)


def test_decoder_at_leaves_a_replaced_factory_alone():
    from txvoice.audio.codecs import decoder_at, register_decoder

    seen = {}

    def factory(fmt, **options):
        seen.update(options)
        return OpusDecoder(fmt)

    register_decoder("opus", factory)
    try:
        assert decoder_at(AudioFormat("opus", 48000, 1), 16000).output_rate == 48000
        assert seen == {}
    finally:
        register_decoder("opus", OpusDecoder)


def test_a_packet_of_no_duration_after_a_gap_is_an_invalid_packet(monkeypatch):
    """Concealment divides by the packet's length: a packet that parses but holds no audio is refused, not a crash."""
    fmt = AudioFormat("opus", 48000, 1, 20.0)
    packets = OpusEncoder(fmt).encode(np.zeros(48000 // 5, dtype=np.int16))
    decoder = OpusDecoder(fmt)
    decoder.decode(packets[0], 1)
    monkeypatch.setattr("txvoice.audio.codecs.opus.packet_samples", lambda data, rate: 0)
    with pytest.raises(AudioError) as caught:
        decoder.decode(packets[1], 5)  # a gap of three: concealment first
    assert caught.value.code == "invalid_opus_packet"
