"""
WebM/Opus as MediaRecorder streams it: files muxed by ffmpeg at test time, rewritten with the
unknown Segment/Cluster sizes a browser writes, split everywhere; hand-built streams for lacing,
BlockGroups and every error; hypothesis fuzzing.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txvoice.audio.codecs import decoder_for, encoder_for
from txvoice.audio.codecs.webm import WebmDemuxer, parse_opus_head
from txvoice.audio.format import AudioFormat
from txvoice.errors import AudioError, UnsupportedFormat

WEBM = AudioFormat("webm_opus", 48000, 1)
UNKNOWN = b"\x01\xff\xff\xff\xff\xff\xff\xff"


# -- a tiny EBML writer (independent of the reader under test)


def vint_size(n: int) -> bytes:
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | n).to_bytes(length, "big")
    raise ValueError(n)


def el(element: int, *body: bytes, unknown: bool = False) -> bytes:
    data = b"".join(body)
    ident = element.to_bytes((element.bit_length() + 7) // 8, "big")
    return ident + (UNKNOWN if unknown else vint_size(len(data))) + data


def uint_el(element: int, value: int) -> bytes:
    return el(element, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def opus_head(channels: int = 1, pre_skip: int = 312, family: int = 0, extra: bytes = b"") -> bytes:
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, 48000, 0, family) + extra


def header(codec: bytes = b"A_OPUS", private: bytes | None = None, doc_type: bytes = b"webm") -> bytes:
    """EBML header + unknown-size Segment start + Info + Tracks."""
    private = opus_head() if private is None else private
    track = el(0xAE, uint_el(0xD7, 1), uint_el(0x83, 2), el(0x86, codec), el(0x63A2, private) if private else b"")
    return (
        el(0x1A45DFA3, uint_el(0x4286, 1), el(0x4282, doc_type))
        + el(0x18538067, unknown=True)
        + el(0x1549A966, uint_el(0x2AD7B1, 1000000))
        + el(0x1654AE6B, track)
    )


def simple_block(payload: bytes, track: int = 1, timecode: int = 0, lacing: int = 0) -> bytes:
    assert track < 127
    return el(0xA3, vint_size(track), struct.pack(">hB", timecode, 0x80 | lacing << 1), payload)


def cluster(*blocks: bytes, timecode: int = 0, unknown: bool = True) -> bytes:
    return el(0x1F43B675, uint_el(0xE7, timecode), *blocks, unknown=unknown)


def hand_webm(packets: list[bytes], per_cluster: int = 25, unknown: bool = True, **header_args) -> bytes:
    out = [header(**header_args)]
    for start in range(0, len(packets), per_cluster):
        blocks = [simple_block(p, timecode=20 * i) for i, p in enumerate(packets[start : start + per_cluster])]
        out.append(cluster(*blocks, timecode=20 * start, unknown=unknown))
    return b"".join(out)


def browserize(data: bytes) -> bytes:
    """Rewrite a Matroska stream as MediaRecorder writes it: unknown Segment and Cluster sizes, no SeekHead/Cues."""

    def read_vint(pos: int, keep_marker: bool) -> tuple[int, int]:
        length = 9 - data[pos].bit_length()
        value = int.from_bytes(data[pos : pos + length], "big")
        return (value if keep_marker else value & ((1 << (7 * length)) - 1)), length

    def walk(pos: int, end: int | None):
        """(id, element start, body start, end or None) of the elements from ``pos`` to ``end``."""
        while pos < (len(data) if end is None else end):
            element, id_len = read_vint(pos, True)
            size, size_len = read_vint(pos + id_len, False)
            body = pos + id_len + size_len
            if size == (1 << (7 * size_len)) - 1:  # unknown: the rest of the stream
                yield element, pos, body, None
                return
            yield element, pos, body, body + size
            pos = body + size

    out = []
    for element, start, body, end in walk(0, None):
        if element != 0x18538067:  # not the Segment: as is
            out.append(data[start:end])
            continue
        out.append(data[start:body][:4] + UNKNOWN)
        for child, child_start, child_body, child_end in walk(body, end):
            if child in (0x114D9B74, 0x1C53BB6B):  # SeekHead, Cues: their offsets no longer hold
                continue
            if child == 0x1F43B675:
                out.append(data[child_start : child_start + 4] + UNKNOWN + data[child_body:child_end])
            else:
                out.append(data[child_start:child_end])
    return b"".join(out)


def decode_chunks(chunks, fmt: AudioFormat = WEBM, **options) -> np.ndarray:
    decoder = decoder_for(fmt, **options)
    return np.concatenate([decoder.decode(c) for c in chunks] + [decoder.flush()])


def split_sizes(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def random_split(data: bytes, seed: int, max_size: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_size)
        out.append(data[pos : pos + n])
        pos += n
    return out


# -- real muxer (ffmpeg)


@pytest.fixture(scope="module")
def webm_variants(ffmpeg_webm):
    plain = ffmpeg_webm()
    live = ffmpeg_webm(live=True)
    return {"ffmpeg": plain, "ffmpeg_live": live, "browser_like": browserize(live)}


def test_browserize_gives_unknown_sizes(webm_variants):
    browser = webm_variants["browser_like"]
    assert browser.count(b"\x1f\x43\xb6\x75" + UNKNOWN) > 10  # many unknown-size Clusters
    assert b"\x18\x53\x80\x67" + UNKNOWN in browser


@pytest.mark.parametrize("variant", ["ffmpeg", "ffmpeg_live", "browser_like"])
def test_one_shot_decode_matches_ffmpeg_and_the_speech(variant, webm_variants, ffmpeg_decode, speech, correlate):
    data = webm_variants[variant]
    out = decode_chunks([data])
    reference = ffmpeg_decode(webm_variants["ffmpeg"], 48000, 1)
    r, lag = correlate(reference, out, 960)
    assert r > 0.9 and abs(lag) <= 2, (r, lag)
    r, lag = correlate(speech(48000), out, 2400)
    assert r > 0.9, (r, lag)
    # Pre-skip removed: the length is the source's, up to the last frame's padding.
    assert 0 <= len(out) - len(reference) < 960


@pytest.mark.parametrize("variant", ["ffmpeg_live", "browser_like"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64, 100, 333, 1000, 4096])
def test_small_chunks_give_the_one_shot_pcm(variant, size, webm_variants):
    data = webm_variants[variant]
    one_shot = decode_chunks([data])
    decoder = decoder_for(WEBM)
    parts = [decoder.decode(c) for c in split_sizes(data, size)]
    if size < 400:
        assert len(parts[0]) == 0  # part of the header alone decodes to nothing
    np.testing.assert_array_equal(np.concatenate(parts + [decoder.flush()]), one_shot)


@pytest.mark.parametrize("seed", range(6))
def test_random_splits_give_the_one_shot_pcm(seed, webm_variants, correlate):
    data = webm_variants["browser_like"]
    one_shot = decode_chunks([data])
    out = decode_chunks(random_split(data, seed, max_size=[50, 500, 5000][seed % 3]))
    np.testing.assert_array_equal(out, one_shot)
    assert correlate(one_shot, out, 960)[0] > 0.9


def test_stereo_and_output_options(ffmpeg_webm, ffmpeg_decode, correlate):
    data = browserize(ffmpeg_webm(channels=2, bitrate="64k", live=True))
    stereo = decode_chunks(split_sizes(data, 777), AudioFormat("webm_opus", 48000, 2))
    reference = ffmpeg_decode(data, 48000, 2)
    for channel in (0, 1):
        assert correlate(reference[channel::2], stereo[channel::2], 960)[0] > 0.9
    mono = decode_chunks([data], AudioFormat("webm_opus", 48000, 1))
    assert correlate(ffmpeg_decode(data, 48000, 1), mono, 960)[0] > 0.9
    at_16k = decode_chunks([data], WEBM, output_rate=16000)
    assert abs(len(at_16k) * 3 - len(mono)) < 48
    assert correlate(ffmpeg_decode(data, 16000, 1), at_16k, 320)[0] > 0.9


def test_sixty_ms_frames(ffmpeg_webm, ffmpeg_decode, correlate):
    data = browserize(ffmpeg_webm(frame_ms=60, live=True))
    out = decode_chunks(split_sizes(data, 50))
    assert correlate(ffmpeg_decode(data, 48000, 1), out, 960)[0] > 0.9


# -- hand-built streams


@pytest.fixture(scope="module")
def packets(speech):
    encoder = encoder_for(AudioFormat("opus", 48000, 1), bitrate=24000)
    pcm = speech(48000)[: 48000 * 2]
    return encoder.encode(pcm) + encoder.flush()


@pytest.fixture(scope="module")
def expected(packets):
    """What the packets decode to, with the header's 312-sample pre-skip removed."""
    decoder = decoder_for(AudioFormat("opus", 48000, 1))
    return np.concatenate([decoder.decode(p) for p in packets])[312:]


@pytest.mark.parametrize("unknown", [True, False])
def test_hand_built_stream_decodes_to_the_packets(unknown, packets, expected):
    data = hand_webm(packets, unknown=unknown)
    np.testing.assert_array_equal(decode_chunks([data]), expected)
    np.testing.assert_array_equal(decode_chunks(split_sizes(data, 3)), expected)


def lace(kind: int, frames: list[bytes]) -> bytes:
    count = bytes([len(frames) - 1])
    if kind == 1:  # Xiph
        sizes = b"".join(b"\xff" * (len(f) // 255) + bytes([len(f) % 255]) for f in frames[:-1])
    elif kind == 3:  # fixed
        assert len({len(f) for f in frames}) == 1
        sizes = b""
    else:  # EBML: first size, then signed differences
        sizes = vint_size(len(frames[0]))
        for prev, cur in zip(frames, frames[1:-1]):
            diff = len(cur) - len(prev)
            sizes += ((1 << 14) | (diff + (1 << 13) - 1)).to_bytes(2, "big")
    return count + sizes + b"".join(frames)


@pytest.mark.parametrize("kind", [1, 2, 3], ids=["xiph", "ebml", "fixed"])
def test_laced_blocks(kind, packets, expected):
    if kind == 3:
        fixed = encoder_for(AudioFormat("opus", 48000, 1), bitrate=16000)
        fixed._state.set(4006, 0)  # OPUS_SET_VBR(0): constant-size packets
        frames = fixed.encode(np.zeros(960 * 12, np.int16))
        assert len({len(f) for f in frames}) == 1
        decoder = decoder_for(AudioFormat("opus", 48000, 1))
        want = np.concatenate([decoder.decode(f) for f in frames])[312:]
    else:
        frames, want = packets, expected
    blocks = [simple_block(lace(kind, frames[i : i + 6]), lacing=kind) for i in range(0, len(frames), 6)]
    data = header() + cluster(*blocks)
    np.testing.assert_array_equal(decode_chunks(split_sizes(data, 11)), want)


def test_block_groups_and_skipped_elements(packets, expected):
    blocks = []
    for i, p in enumerate(packets):
        block = el(0xA1, b"\x81", struct.pack(">hB", i, 0), p)
        blocks.append(el(0xA0, block, uint_el(0x9B, 20)) if i % 2 else simple_block(p))
        if i % 10 == 0:
            blocks.append(el(0xEC, b"\0" * i) + el(0xBF, b"\0\0\0\0"))  # Void, CRC-32
    data = header() + el(0x1254C367, b"\0" * 40) + cluster(*blocks) + el(0x1C53BB6B, b"\0" * 100)
    np.testing.assert_array_equal(decode_chunks(split_sizes(data, 5)), expected)


def test_a_cluster_ends_where_the_next_one_starts_whatever_size_it_claimed(packets, expected):
    """A Cluster whose (known) size overshoots, e.g. a recorder that patched it wrongly."""
    body = uint_el(0xE7, 0) + b"".join(simple_block(p) for p in packets[:40])
    bogus = b"\x1f\x43\xb6\x75" + (0x10000000 | (len(body) + 10**6)).to_bytes(4, "big") + body  # 1 MB too big
    data = header() + bogus + cluster(*[simple_block(p) for p in packets[40:]], unknown=False)
    np.testing.assert_array_equal(decode_chunks(split_sizes(data, 97)), expected)


def test_other_tracks_are_ignored(packets, expected):
    video = el(0xAE, uint_el(0xD7, 2), uint_el(0x83, 1), el(0x86, b"V_VP8"))
    audio = el(0xAE, uint_el(0xD7, 1), uint_el(0x83, 2), el(0x86, b"A_OPUS"), el(0x63A2, opus_head()))
    data = el(0x1A45DFA3, el(0x4282, b"webm")) + el(0x18538067, unknown=True) + el(0x1654AE6B, video, audio)
    blocks = []
    for p in packets:
        blocks += [simple_block(b"\x9d\x01\x2a" * 30, track=2), simple_block(p, track=1)]
    data += cluster(*blocks)
    np.testing.assert_array_equal(decode_chunks(split_sizes(data, 64)), expected)


def test_a_new_ebml_header_restarts_the_stream(packets, expected):
    first = hand_webm(packets[:50])
    second = hand_webm(packets)
    out = decode_chunks(split_sizes(first + second, 100))
    np.testing.assert_array_equal(out[len(out) - len(expected) :], expected)


def test_opus_head_parsing():
    head = parse_opus_head(opus_head(channels=2, pre_skip=3840))
    assert (head.channels, head.pre_skip, head.input_rate) == (2, 3840, 48000)
    with pytest.raises(UnsupportedFormat) as caught:
        parse_opus_head(opus_head(channels=6, family=1, extra=b"\x04\x02\x00\x04\x01\x02\x03\x05"))
    assert caught.value.code == "unsupported_channels"
    with pytest.raises(AudioError) as caught:
        parse_opus_head(b"OpusTags" + b"\0" * 20)
    assert caught.value.code == "invalid_webm"


# -- errors and recovery

ERRORS = {
    "garbage": (b"GET / HTTP/1.1\r\n\r\n" * 3, "invalid_webm"),
    "not_webm_doctype": (header(doc_type=b"mkvx"), "invalid_webm"),
    "vorbis_only": (header(codec=b"A_VORBIS", private=b"\x02"), "unsupported_codec"),
    "multistream": (
        header(private=opus_head(channels=6, family=1, extra=b"\x04\x02" + bytes(range(6)))),
        "unsupported_channels",
    ),
    "block_before_tracks": (
        el(0x1A45DFA3, el(0x4282, b"webm")) + el(0x18538067, unknown=True) + cluster(simple_block(b"\xf8\xff\xfe")),
        "invalid_webm",
    ),
    "huge_block": (header() + el(0x1F43B675, unknown=True) + b"\xa3\x10\x00\x00\x00" + b"\0" * 10, "invalid_webm"),
    "unknown_size_leaf": (header() + el(0x1F43B675, unknown=True) + b"\xa3\xff" + b"\0" * 10, "invalid_webm"),
    "zero_id_byte": (header() + b"\x00" * 8, "invalid_webm"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_have_codes_and_a_new_stream_decodes(name, packets, expected):
    bad, code = ERRORS[name]
    decoder = decoder_for(WEBM)
    with pytest.raises(AudioError) as caught:
        for chunk in split_sizes(bad, 9):
            decoder.decode(chunk)
    assert caught.value.code == code
    # The client starts over with a good stream: it decodes fully.
    good = hand_webm(packets)
    out = np.concatenate([decoder.decode(c) for c in split_sizes(good, 500)])
    np.testing.assert_array_equal(out[len(out) - len(expected) :], expected)


def test_a_corrupt_chunk_costs_audio_up_to_the_next_cluster(packets, expected):
    data = hand_webm(packets, per_cluster=10)
    chunks = split_sizes(data, 200)
    chunks[5] = bytes(len(chunks[5]))  # zeroed in transit
    decoder = decoder_for(WEBM)
    out, errors = [], 0
    for chunk in chunks:
        try:
            out.append(decoder.decode(chunk))
        except AudioError as e:
            assert e.code == "invalid_webm"
            errors += 1
    out.append(decoder.flush())
    pcm = np.concatenate(out)
    assert errors == 1
    assert len(expected) - 960 * 20 < len(pcm) < len(expected)
    np.testing.assert_array_equal(pcm[-48000:], expected[-48000:])  # the end decodes as before


def test_a_lost_chunk_resyncs(webm_variants):
    chunks = split_sizes(webm_variants["browser_like"], 1000)
    one_shot = decode_chunks(chunks)
    decoder = decoder_for(WEBM)
    out = []
    for i, chunk in enumerate(chunks):
        if i == 7:
            continue
        try:
            out.append(decoder.decode(chunk))
        except AudioError as e:
            assert e.code in ("invalid_webm", "invalid_opus_packet")
    pcm = np.concatenate(out)
    assert len(one_shot) * 0.8 < len(pcm) < len(one_shot)
    np.testing.assert_array_equal(pcm[-96000:], one_shot[-96000:])


def test_invalid_opus_packet_in_a_valid_block_keeps_the_rest(packets, expected):
    bad = b"\x03"  # an invalid Opus packet
    blocks = [simple_block(p) for p in packets]
    data = header() + cluster(*blocks[:10], simple_block(bad), *blocks[10:])
    decoder = decoder_for(WEBM)
    with pytest.raises(AudioError) as caught:
        decoder.decode(data[: len(data) // 2])
    assert caught.value.code == "invalid_opus_packet"
    rest = decoder.decode(data[len(data) // 2 :])
    # Nothing decoded before the error was lost: it comes with the next chunk.
    assert len(rest) == len(expected)


def test_truncated_stream_flush(packets):
    data = hand_webm(packets[:10])
    decoder = decoder_for(WEBM)
    assert len(decoder.decode(data[:-5])) > 0
    with pytest.raises(AudioError) as caught:
        decoder.flush()
    assert caught.value.code == "truncated_frame"


def test_demuxer_marks_streams_and_keeps_packets_read_before_an_error():
    packet = b"\xf8\xff\xfe"
    demuxer = WebmDemuxer()
    items = demuxer.feed(hand_webm([packet] * 3))
    assert items == [parse_opus_head(opus_head()), packet, packet, packet]
    assert demuxer.opus_head.pre_skip == 312
    with pytest.raises(AudioError) as caught:
        demuxer.feed(simple_block(packet) + b"\x00garbage" + simple_block(packet))
    assert caught.value.code == "invalid_webm"
    # The block before the garbage is kept for the next feed; the one after it is lost with
    # the resync (the reader looks for the next Cluster).
    assert demuxer.take_pending() == [packet]
    assert demuxer.feed(cluster(simple_block(packet))) == [packet]


# -- fuzzing


@settings(max_examples=150, deadline=1000)
@given(chunks=st.lists(st.binary(max_size=200), max_size=6))
def test_fuzz_random_bytes(chunks):
    decoder = decoder_for(WEBM)
    for chunk in chunks:
        try:
            out = decoder.decode(chunk)
        except AudioError:
            continue
        assert out.dtype == np.int16
    try:
        decoder.flush()
    except AudioError:
        pass


@pytest.fixture(scope="module")
def small_stream(packets):
    return hand_webm(packets[:30], per_cluster=8)


@settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_streams(small_stream, data):
    """Flipped, inserted and deleted bytes in a valid stream, split anywhere: only AudioError."""
    stream = bytearray(small_stream)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "ff"]))
        if action == "flip":
            stream[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "ff":
            stream[pos : pos + 8] = UNKNOWN
        else:
            del stream[pos : pos + data.draw(st.integers(1, 16))]
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8))))
    decoder = decoder_for(WEBM)
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        try:
            out = decoder.decode(bytes(stream[start:end]))
        except AudioError:
            continue
        assert out.dtype == np.int16
    try:
        decoder.flush()
    except AudioError:
        pass
