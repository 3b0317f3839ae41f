"""
Hypothesis on raw client bytes for every parser that takes them: the WebM demuxer (and its Opus
decoding), the WAV header reader, the Opus packet checks, G.711, PCM, and the envelope.  A parser
may return audio or raise a ``VoiceError`` (a stable code for the client); anything else is a crash.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzsettings import fuzz_settings
from txvoice.audio.codecs import decoder_for
from txvoice.audio.codecs.webm import WebmDemuxer
from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamSettings
from txvoice.errors import VoiceError
from txvoice.protocol.envelope import decode_envelope, encode_envelope
from txvoice.protocol.messages import CLIENT_TYPES

FORMATS = {
    "pcm_s16le": AudioFormat("pcm_s16le", 16000, 1, 20.0),
    "mulaw": AudioFormat("mulaw", 8000, 1, 20.0),
    "alaw": AudioFormat("alaw", 8000, 1, 20.0),
    "opus": AudioFormat("opus", 48000, 1, 20.0),
    "wav": AudioFormat("wav", 16000, 1, 20.0),
    "webm_opus": AudioFormat("webm_opus", 48000, 1, 20.0),
}

# Inputs that start like the real thing get further into each parser than noise alone.
EBML = bytes.fromhex("1a45dfa3")
SEGMENT = bytes.fromhex("18538067")
CLUSTER = bytes.fromhex("1f43b675")
SIMPLEBLOCK = b"\xa3"
PREFIXES = {
    "wav": [b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00"],
    "webm_opus": [EBML, EBML + b"\x9f\x42\x86\x81\x01", SEGMENT + b"\x01\xff\xff\xff\xff\xff\xff\xff",
             CLUSTER + b"\xff", SIMPLEBLOCK + b"\x85\x81\x00\x00\x80"],
    "opus": [b"\xf8", b"\xfc", b"\x78", b"\x03\xff"],
}


def chunks(codec: str) -> st.SearchStrategy[list[bytes]]:
    noise = st.binary(max_size=600)
    prefixed = st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES.get(codec, [b""])), st.binary(max_size=300))
    return st.lists(st.one_of(noise, prefixed), min_size=1, max_size=8)


@pytest.mark.parametrize("codec", sorted(FORMATS))
def test_decoders_return_audio_or_a_voice_error(codec: str) -> None:
    @fuzz_settings(250)
    @given(chunks(codec), st.lists(st.one_of(st.none(), st.integers(-5, 10**6)), min_size=8, max_size=8))
    def run(data: list[bytes], sequences: list[int | None]) -> None:
        decoder = decoder_for(FORMATS[codec])
        for chunk, seq in zip(data, sequences):
            try:
                out = decoder.decode(chunk, seq)
            except VoiceError:
                continue
            assert isinstance(out, np.ndarray) and out.dtype == np.int16
            assert out.size <= 48000 * 2 * 4  # never more than a few seconds from one message
        try:
            assert isinstance(decoder.flush(), np.ndarray)
        except VoiceError:
            pass

    run()


@fuzz_settings(300)
@given(st.lists(st.binary(max_size=400), min_size=1, max_size=10))
def test_the_webm_demuxer_alone(data: list[bytes]) -> None:
    demuxer = WebmDemuxer()
    buffered = 0
    for chunk in data:
        try:
            packets = demuxer.feed(chunk)
        except VoiceError:
            return
        assert all(isinstance(p, bytes) or hasattr(p, "channels") for p in packets)
        buffered += len(chunk)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None), max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def near(*valid) -> st.SearchStrategy:
    """Mostly valid values (so the later checks are reached), sometimes anything."""
    return st.one_of(st.sampled_from(valid), JSONISH)


def hostile_json(obj) -> bytes:
    """JSON as Python writes it, NaN and lone surrogates (escaped) included."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=True).encode()


@fuzz_settings(600)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda t, d, extra: hostile_json({"type": t, "data": d, **extra}),
            st.sampled_from(sorted(CLIENT_TYPES)) | st.text(max_size=10),
            JSONISH,
            st.dictionaries(st.sampled_from(["message_id", "timestamp", "conversation_id", "reliable"]), JSONISH),
        ),
        st.builds(lambda obj: hostile_json(obj), JSONISH),
    )
)
def test_the_envelope_accepts_only_what_it_can_write_back(payload: bytes) -> None:
    try:
        env = decode_envelope(payload)
    except VoiceError as e:
        # The error itself must be writable, whatever the client sent.
        encode_envelope("error", {"code": e.code, "message": e.message, **e.details}).decode("utf-8")
        return
    # What was accepted can be echoed (a pong echoes data) as strict UTF-8 JSON.
    out = encode_envelope("pong", {**env.data, "client_timestamp": env.timestamp}, env.conversation_id,
                          env.message_id)
    json.loads(out.decode("utf-8"))


@fuzz_settings(300)
@given(near(None, "push_to_talk", "continuous", "voice_activity"), st.dictionaries(
    st.sampled_from(["vad", "vad_threshold", "silence_ms", "prefix_padding_ms", "max_turn_ms", "frame_ms",
                     "output_codec", "output_sample_rate", "response_lead_ms", "denoise", "agc", "segment_ms",
                     "other"]), JSONISH, max_size=5))
def test_stream_settings_refuse_with_a_voice_error(mode, options) -> None:
    try:
        StreamSettings.parse(mode if isinstance(mode, str) or mode is None else mode, options)
    except VoiceError:
        pass


@fuzz_settings(300)
@given(near("pcm_s16le", "opus", "webm_opus", "mulaw", "wav", "PCM"), near(8000, 16000, 48000, 16000.0),
       near(1, 2, True), near(20, 20.0, 10))
def test_audio_formats_refuse_with_a_voice_error(codec, rate, channels, frame_ms) -> None:
    try:
        AudioFormat.validated(codec=codec, sample_rate=rate, channels=channels, frame_duration_ms=frame_ms)
    except VoiceError:
        pass


def test_a_wav_header_claiming_huge_sizes_is_bounded() -> None:
    decoder = decoder_for(FORMATS["wav"])
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    header += b"data" + struct.pack("<I", 0xFFFFFFFF)
    out = decoder.decode(header + b"\x01\x00" * 10)
    assert out.size == 10
