"""
The audio engine over a real socket: streaming modes, VAD events, turn ends, paced output,
barge-in and bad audio, with espeak-ng speech and an independent client.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from signal_speech import silence, speak, speech_span
from voiceclient import VoiceClient, events, is_event, is_final, opus_packets, pcm_frames


@pytest.fixture
def client(daemon):
    c = VoiceClient(daemon.url)
    yield c
    c.close()


def response_of(received):
    """(voice_response data, binary packets with arrival times, final chunk data) of one response."""
    announce = next(m["data"] for _, m in received if isinstance(m, dict) and m["type"] == "voice_response")
    packets = [(t, m) for t, m in received if isinstance(m, bytes)]
    final = next(m["data"] for _, m in received if is_final(m))
    return announce, packets, final


def test_push_to_talk_opus_vad_events_and_exact_echo(client) -> None:
    speech = speak("Hello there, this is a test.", 48000, pad_ms=(400, 600))
    start_ms, end_ms = speech_span(speech, 48000)
    packets = opus_packets(speech)
    client.send_json("voice_start", {"codec": "opus", "sample_rate": 48000, "mode": "push_to_talk"}, "s")
    ack = client.next_json()
    assert ack["data"]["mode"] == "push_to_talk" and ack["data"]["vad"] is True
    for p in packets:
        client.ws.send(p)
    client.send_json("voice_end", {}, "e")
    received = client.until(is_final)
    vad = events(received, "vad")
    starts = [e["stream_time_ms"] for e in vad if e["event"] == "speech_start"]
    ends = [e["stream_time_ms"] for e in vad if e["event"] == "speech_end"]
    assert starts and abs(starts[0] - start_ms) <= 60, (starts, start_ms)
    assert ends and abs(ends[-1] - end_ms) <= 80, (ends, end_ms)
    (turn_end,) = events(received, "turn_end")
    assert turn_end["reason"] in ("explicit", "end_of_stream")
    announce, got, final = response_of(received)
    assert announce["audio"]["codec"] == "opus" and announce["audio"]["sample_rate"] == 48000
    assert [p for _, p in got] == packets  # push-to-talk echo: the packets exactly as sent
    assert final["cancelled"] is False


def test_voice_activity_cuts_turns_after_the_configured_silence(client) -> None:
    silence_ms = 400
    utterance = speak("Good morning.", 16000)
    start_ms, end_ms = speech_span(utterance, 16000)
    audio = np.concatenate([silence(500), utterance, silence(1200)])
    client.send_json("voice_start", {"codec": "pcm_s16le", "sample_rate": 16000, "mode": "voice_activity",
                                     "options": {"silence_ms": silence_ms, "prefix_padding_ms": 300}}, "s")
    client.next_json()
    for frame in pcm_frames(audio):
        client.ws.send(frame)
    received = client.until(is_final, timeout=30)
    (turn_end,) = events(received, "turn_end")
    assert turn_end["reason"] == "silence"
    expected_end = 500 + end_ms + silence_ms
    assert abs(turn_end["end_ms"] - expected_end) <= 40, (turn_end, expected_end)
    assert abs(turn_end["start_ms"] - (500 + start_ms - 300)) <= 60
    announce, packets, final = response_of(received)
    # The echo of a decoded turn comes back encoded in the client's format, as long as the turn.
    assert announce["audio"]["codec"] == "pcm_s16le" and announce["audio"]["sample_rate"] == 16000
    echoed = sum(len(p) for _, p in packets) / 32.0
    assert abs(echoed - turn_end["duration_ms"]) <= 40
    # Paced: never more than the lead (100 ms) ahead of real time, plus one packet and a tick.
    t0 = packets[0][0]
    sent_ms, worst = 0.0, 0.0
    for t, p in packets:
        sent_ms += len(p) / 32.0
        worst = max(worst, sent_ms - (t - t0) * 1000.0)
    assert worst <= 100 + 20 + 15, worst
    assert (packets[-1][0] - t0) * 1000.0 >= echoed - 100 - 40  # and it really took real time
    client.send_json("voice_end")


def test_continuous_mode_cuts_fixed_segments(client) -> None:
    audio = np.concatenate([speak("one two three four five six seven", 16000), silence(200)])
    total_ms = len(audio) / 16
    client.send_json("voice_start", {"mode": "continuous", "options": {"segment_ms": 1000}, "response_audio": "base64"})
    client.next_json()
    for frame in pcm_frames(audio):
        client.ws.send(frame)
    client.send_json("voice_end")
    received = client.until(lambda m: is_event(m, "turn_end") and m["data"]["reason"] == "end_of_stream", timeout=30)
    ends = events(received, "turn_end")
    segments = [e for e in ends if e["reason"] == "segment"]
    assert len(segments) == int(total_ms // 1000)
    assert all(abs(e["duration_ms"] - 1000) <= 20 for e in segments)


def test_barge_in_stops_the_response_within_60_ms(client) -> None:
    """The user talks over the reply: the server stops it and says how much was played."""
    first = np.concatenate([speak("The quick brown fox jumps over the lazy dog.", 16000), silence(700)])
    interrupt = speak("Stop, please.", 16000, pad_ms=(200, 0))
    client.send_json("voice_start", {"mode": "voice_activity", "options": {"silence_ms": 500}}, "s")
    client.next_json()
    frames_sent = 0
    for frame in pcm_frames(first):
        client.ws.send(frame)
        frames_sent += 1
    delays, server_delays = [], []
    for attempt in range(3):
        client.until(lambda m: isinstance(m, dict) and m["type"] == "voice_response", timeout=30)
        # Let some of the reply play, then speak over it in real time.
        time.sleep(0.3)
        sent_at: dict[int, float] = {}
        schedule = time.perf_counter()
        barge = None
        for i, frame in enumerate(pcm_frames(interrupt)):
            schedule += 0.02
            while time.perf_counter() < schedule:
                time.sleep(0.001)
            sent_at[frames_sent] = time.perf_counter()
            client.ws.send(frame)
            frames_sent += 1
            while not client.inbox.empty() and barge is None:
                t, msg = client.next()
                if is_event(msg, "barge_in"):
                    barge = (t, msg["data"])
        if barge is None:
            rest = client.until(lambda m: is_event(m, "barge_in"), timeout=10)
            barge = (rest[-1][0], rest[-1][1]["data"])
        t_barge, info = barge
        first_voiced = int(info["stream_time_ms"] // 20)
        delays.append((t_barge - sent_at[first_voiced]) * 1000.0)
        server_delays.append(info["detection_delay_ms"])
        assert info["played_source"] == "server" and 0 < info["played_ms"] <= info["sent_ms"] + 1
        tail = client.until(is_final, timeout=10)
        assert not [m for _, m in tail if isinstance(m, bytes)], "audio kept coming after the barge-in"
        assert tail[-1][1]["data"]["cancelled"] is True and tail[-1][1]["data"]["reason"] == "barge_in"
        # Silence after the interruption ends that turn; its echo is the next reply to talk over.
        for frame in pcm_frames(silence(700)):
            client.ws.send(frame)
            frames_sent += 1
    print(f"barge-in delay (client, ms): {delays}; server-side: {server_delays}")
    assert statistics.median(delays) < 60, delays
    assert statistics.median(server_delays) < 60, server_delays


def test_client_reported_playback_position_is_used(client) -> None:
    first = np.concatenate([speak("The quick brown fox jumps over the lazy dog.", 16000), silence(700)])
    client.send_json("voice_start", {"mode": "voice_activity"})
    client.next_json()
    for frame in pcm_frames(first):
        client.ws.send(frame)
    response = client.until(lambda m: isinstance(m, dict) and m["type"] == "voice_response", timeout=30)
    response_id = response[-1][1]["data"]["response_id"]
    time.sleep(0.2)
    client.send_json("playback", {"response_id": response_id, "position_ms": 123.0})
    for frame in pcm_frames(speak("Wait.", 16000, pad_ms=(100, 0))):
        client.ws.send(frame)
    got = client.until(lambda m: is_event(m, "barge_in"), timeout=10)
    info = got[-1][1]["data"]
    assert info["played_ms"] == 123.0 and info["played_source"] == "client" and info["response_id"] == response_id


@pytest.mark.parametrize(
    "start, chunks, code",
    [
        ({"codec": "opus", "sample_rate": 48000}, [b"\xff\xff\xff\xff\xff"], "invalid_opus_packet"),
        ({"codec": "opus", "sample_rate": 48000}, [b""], "truncated_frame"),
        ({"codec": "wav", "sample_rate": 16000}, [b"RIFF\x24\x00\x00\x00WAVXfmt "], "invalid_wav_header"),
        ({"codec": "wav", "sample_rate": 16000},
         [b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\xbb\x00\x00\x00w\x01\x00\x02\x00\x10\x00"
          b"data\xff\xff\xff\xff"], "wav_format_mismatch"),
    ],
)
def test_bad_audio_gets_its_code_and_the_stream_goes_on(client, start, chunks, code) -> None:
    client.send_json("voice_start", {**start, "mode": "push_to_talk"})
    client.next_json()
    for chunk in chunks:
        client.ws.send(chunk)
    err = client.until(lambda m: isinstance(m, dict) and m["type"] == "error")[-1][1]
    assert err["data"]["code"] == code and err["data"]["category"] == "audio"
    client.send_json("ping", {}, "p")
    assert client.until(lambda m: isinstance(m, dict) and m["type"] == "pong")[-1][1]["data"]["reply_to"] == "p"
    if start["codec"] == "opus":  # the stream itself goes on: a good packet decodes
        for p in opus_packets(speak("Yes.", 48000)):
            client.ws.send(p)
        client.send_json("voice_end")
        assert response_of(client.until(is_final))[2]["cancelled"] is False


@pytest.mark.parametrize(
    "start, code",
    [
        ({"codec": "mulaw", "sample_rate": 16000}, "unsupported_sample_rate"),
        ({"mode": "sometimes"}, "invalid_field"),
        ({"options": {"silence_ms": 50}}, "invalid_field"),
        ({"options": {"vad_threshold": "high"}}, "invalid_field"),
    ],
)
def test_bad_stream_settings_are_refused(client, start, code) -> None:
    client.send_json("voice_start", start, "s")
    err = client.next_json()
    assert err["type"] == "error" and err["data"]["code"] == code


@pytest.mark.parametrize("output, exact", [({"output_codec": "opus"}, True), ({"output_codec": "pcm_s16le"}, False)])
def test_push_to_talk_reply_in_the_requested_format(client, output, exact) -> None:
    speech = speak("Hello there.", 48000, pad_ms=(100, 100))
    packets = opus_packets(speech)
    client.send_json("voice_start", {"codec": "opus", "sample_rate": 48000, "options": output})
    client.next_json()
    for p in packets:
        client.ws.send(p)
    client.send_json("voice_end")
    announce, got, final = response_of(client.until(is_final))
    assert announce["audio"]["codec"] == output["output_codec"]
    if exact:
        assert [p for _, p in got] == packets
    else:
        pcm = np.frombuffer(b"".join(p for _, p in got), dtype=np.int16)
        rate = announce["audio"]["sample_rate"]
        assert abs(len(pcm) / rate * 1000 - len(speech) / 48) <= 60  # the whole turn, decoded
        assert np.abs(pcm).max() > 1000  # speech, not silence or noise-free zeros
