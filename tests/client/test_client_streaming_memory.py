"""The streaming helper on a Clock: pacing, codecs, collecting the answer, when it is complete."""

from __future__ import annotations

import numpy as np
import opuslib
from twisted.python.failure import Failure

from client_fakes import open_client
from txvoice.client import ArraySource, AudioStreamer, StreamInterrupted
from txvoice.client.streaming import FrameEncoder


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return np.repeat(mono, channels) if channels == 2 else mono


def start(link, clock, streamer: AudioStreamer):
    results: list = []
    streamer.run().addBoth(results.append)
    (voice_start,) = link.json_sent("voice_start")
    link.reply(voice_start, "voice_start", {"stream_id": "strm_1"})
    return results, voice_start


def frames(link) -> list[bytes]:
    return [m for m in link.sent if isinstance(m, bytes)]


def test_frames_are_paced_at_20_ms_and_the_answer_is_collected() -> None:
    client, endpoint, clock, link = open_client()
    progress: list[float] = []
    streamer = AudioStreamer(client, ArraySource(tone(1.0), 16000), codec="pcm",
                             on_progress=lambda sent, total: progress.append(sent))
    results, voice_start = start(link, clock, streamer)
    assert voice_start["data"] == {"codec": "pcm_s16le", "sample_rate": 16000, "channels": 1, "frame_duration_ms": 20.0,
                                   "mode": "push_to_talk", "response_audio": "binary"}
    assert len(frames(link)) == 1  # the first frame at once
    clock.advance(0.1)
    assert len(frames(link)) == 6  # then one every 20 ms
    assert all(len(f) == 640 for f in frames(link))
    clock.pump([0.02] * 60)
    assert len(frames(link)) == 50 and progress[-1] == 1000.0
    (voice_end,) = link.json_sent("voice_end")
    link.reply(voice_end, "voice_end", {"frames": 50})
    link.receive({"type": "status", "data": {"event_type": "turn_end", "turn": 1, "reason": "explicit"}})
    link.receive({"type": "status", "data": {"event_type": "transcript", "text": "a tone"}})
    link.receive({"type": "voice_response", "data": {"response_id": "r1", "audio": {
        "codec": "pcm_s16le", "sample_rate": 16000, "channels": 1, "frame_duration_ms": 20}}})
    assert not results
    for _ in range(3):
        link.receive(b"\x01\x00" * 320)
    link.receive({"type": "voice_stream_chunk", "data": {"response_id": "r1", "final": True, "cancelled": False}})
    (result,) = results
    assert result.complete and result.stream_id == "strm_1" and result.frames_sent == 50
    assert result.transcripts == ["a tone"] and [e["event_type"] for e in result.events] == ["turn_end", "transcript"]
    assert result.reply_ms == 60.0 and result.responses[0].chunks == 3
    pcm, rate, channels = result.reply_audio()
    assert (rate, channels) == (16000, 1) and set(pcm.tolist()) == {1}


def test_opus_frames_are_real_20_ms_packets() -> None:
    client, endpoint, clock, link = open_client()
    streamer = AudioStreamer(client, ArraySource(tone(0.2, 48000), 48000), codec="opus", speed=0)
    start(link, clock, streamer)
    clock.advance(0)
    packets = frames(link)
    assert len(packets) == 10
    decoder = opuslib.Decoder(48000, 1)  # an independent decoder
    assert all(len(decoder.decode(p, 960)) == 960 * 2 for p in packets)


def test_a_rate_the_codec_does_not_run_at_is_resampled() -> None:
    client, endpoint, clock, link = open_client()
    streamer = AudioStreamer(client, ArraySource(tone(0.5, 11025, channels=2), 11025, channels=2), codec="pcm",
                             speed=0)
    _, voice_start = start(link, clock, streamer)
    assert voice_start["data"]["sample_rate"] == 16000 and voice_start["data"]["channels"] == 1
    clock.advance(0)
    assert 7900 <= sum(len(f) for f in frames(link)) // 2 <= 8000  # 0.5 s at 16 kHz


def test_resampled_audio_goes_out_with_little_held_back() -> None:
    """A mic at a rate the codec does not run at: no more than the frame being filled waits (soxr's LL tuning)."""
    for codec, rate in (("opus", 44100), ("pcm", 32000)):
        encoder = FrameEncoder(codec, rate, 1)
        assert encoder.resampler is not None
        pcm = tone(2.0, rate)
        chunk = rate // 50
        fed = sent = 0
        behind = []
        for i in range(0, len(pcm) - chunk + 1, chunk):
            sent += len(encoder.encode(pcm[i:i + chunk]))
            fed += 1
            behind.append(20 * (fed - sent))  # ms of audio in, not yet out as a 20 ms frame
        # LL: 20 ms after every chunk.  HQ held a second frame back now and then (44.1 kHz -> 48 kHz
        # Opus: 40 ms at most, 20.8 on average) or often (32 -> 16 kHz PCM: 60 ms, 41.3 on average).
        assert max(behind[5:]) <= 20, (codec, rate, max(behind[5:]))


def test_voice_activity_waits_for_open_turns_and_a_quiet_moment() -> None:
    client, endpoint, clock, link = open_client()
    streamer = AudioStreamer(client, ArraySource(tone(0.1), 16000), mode="voice_activity", settle=1.0, speed=0)
    results, _ = start(link, clock, streamer)
    clock.advance(0)
    (voice_end,) = link.json_sent("voice_end")
    link.reply(voice_end, "voice_end", {})
    link.receive({"type": "status", "data": {"event_type": "turn_start", "turn": 1}})
    clock.advance(5.0)
    assert not results  # a turn is open
    link.receive({"type": "status", "data": {"event_type": "turn_end", "turn": 1, "reason": "end_of_stream"}})
    link.receive({"type": "voice_response", "data": {"response_id": "r1", "audio": None}})
    link.receive({"type": "voice_stream_chunk", "data": {"response_id": "r1", "final": True}})
    clock.advance(0.9)
    assert not results
    clock.advance(0.1)
    assert results[0].complete and results[0].reply_ms == 0.0


def test_no_answer_in_time_is_an_incomplete_result() -> None:
    client, endpoint, clock, link = open_client()
    streamer = AudioStreamer(client, ArraySource(tone(0.1), 16000), speed=0, response_timeout=3.0)
    results, _ = start(link, clock, streamer)
    clock.advance(0)
    (voice_end,) = link.json_sent("voice_end")
    link.reply(voice_end, "voice_end", {})
    clock.advance(3.0)
    assert results[0].complete is False


def test_a_lost_connection_interrupts_the_stream() -> None:
    client, endpoint, clock, link = open_client()
    streamer = AudioStreamer(client, ArraySource(tone(1.0), 16000))
    results, _ = start(link, clock, streamer)
    clock.advance(0.1)
    link.drop()
    clock.advance(0)
    clock.advance(1.0)
    assert isinstance(results[0], Failure) and results[0].check(StreamInterrupted)
    assert len(frames(link)) == 6
