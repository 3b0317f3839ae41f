"""
The speech pipeline in a real daemon with the default engines (PocketSphinx, rules, espeak-ng):
espeak-ng speech streamed in real time as Opus, transcripts, the agent's answer, and the spoken
reply, decoded by an independent client (opuslib) and recognized again.
"""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import opuslib
import pytest
import soxr

from daemons import start_daemon
from signal_speech import rms_db, silence, speak
from voiceclient import VoiceClient, events, is_event, is_final, opus_packets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def speech_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("speech"), "--pipeline", "speech")
    yield d
    d.stop()


@pytest.fixture
def client(speech_daemon):
    c = VoiceClient(speech_daemon.url)
    yield c
    c.close()


def send_realtime(client: VoiceClient, packets: list[bytes], frame_ms: float = 20.0) -> None:
    """Send one packet every ``frame_ms``, as a microphone would."""
    due = time.perf_counter()
    for packet in packets:
        client.ws.send(packet)
        due += frame_ms / 1000.0
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)


def decode_opus(packets: list[bytes], rate: int = 48000) -> np.ndarray:
    decoder = opuslib.Decoder(rate, 1)
    return np.concatenate([np.frombuffer(decoder.decode(p, rate // 50), dtype=np.int16) for p in packets])


def recognize(pcm16k: np.ndarray, phrases: list[str]) -> str:
    """What PocketSphinx hears in ``pcm16k`` when it may only hear ``phrases`` (in this process)."""
    from txvoice.engines.stt_pocketsphinx import PocketSphinxSTT

    stream = PocketSphinxSTT().startStream(phrases=phrases)
    for i in range(0, len(pcm16k), 320):
        stream.feed(pcm16k[i:i + 320])
    return stream.finish().text


def index_of(received, predicate) -> int:
    return next(i for i, (_, m) in enumerate(received) if predicate(m))


def test_push_to_talk_opus_in_real_time_is_transcribed_answered_and_spoken(client, speech_daemon) -> None:
    said = "repeat after me the weather is nice today"
    speech = speak(said, 48000, pad_ms=(300, 400))
    client.send_json("voice_start", {"codec": "opus", "sample_rate": 48000, "mode": "push_to_talk"}, "s")
    assert client.next_json()["type"] == "voice_start"
    send_realtime(client, opus_packets(speech))
    client.send_json("voice_end", {}, "e")
    received = client.until(is_final, timeout=30)

    # Partial transcripts while the user speaks (before the turn ends), then the final one.
    turn_end = index_of(received, lambda m: is_event(m, "turn_end"))
    partials = [m["data"] for _, m in received[:turn_end] if is_event(m, "transcript")]
    assert len(partials) >= 2 and not any(p["final"] for p in partials)
    assert any(said.startswith(p["text"]) and len(p["text"].split()) >= 3 for p in partials), partials
    assert index_of(received, lambda m: is_event(m, "processing_started")) < index_of(
        received, lambda m: is_event(m, "transcript"))
    (final,) = [t for t in events(received, "transcript") if t["final"]]
    assert final["text"] == said and final["confidence"] > 0.5
    assert [w["word"] for w in final["words"]] == said.split()
    assert all(w["start_ms"] < w["end_ms"] for w in final["words"])
    stages = [p["stage"] for p in events(received, "processing_progress")]
    assert stages == ["stt", "agent", "tts"]

    (answer,) = events(received, "ai_response")
    assert answer["text"] == "the weather is nice today" and answer["agent"] == "rules"
    announce = next(m["data"] for _, m in received if isinstance(m, dict) and m["type"] == "voice_response")
    assert announce["text_content"] == answer["text"]
    assert announce["audio"] == {"codec": "opus", "sample_rate": 48000, "channels": 1, "frame_duration_ms": 20}
    assert announce["metadata"]["transcript"] == said

    (completed,) = events(received, "processing_completed")
    latency = completed["latency_ms"]
    assert set(latency) == {"stt", "agent", "tts", "first_audio", "total", "queue"}
    assert 0 <= latency["first_audio"] < 1000 and latency["total"] >= latency["first_audio"]
    print(f"per-stage latency (ms): {latency}")

    # The reply decodes (an independent Opus decoder) to speech of the right length and words.
    packets = [m for _, m in received if isinstance(m, bytes)]
    reply = decode_opus(packets)
    seconds = len(reply) / 48000
    assert 1.0 <= seconds <= 3.5, seconds
    assert rms_db(reply) > -35
    assert received[-1][1]["data"]["cancelled"] is False
    heard = recognize(soxr.resample(reply, 48000, 16000).astype(np.int16),
                      ["the weather is nice today", "good night", "hello world", "open the door please"])
    assert heard == "the weather is nice today"

    with urllib.request.urlopen(speech_daemon.http + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    for stage in ("stt", "agent", "tts", "first_audio", "total"):
        count = re.search(rf'stage_latency_seconds_count{{stage="{stage}"}} (\S+)', metrics)
        assert count and float(count.group(1)) >= 1, stage


def test_voice_activity_turn_is_cut_by_silence_and_answered(client) -> None:
    utterance = np.concatenate([silence(400, 48000), speak("thank you", 48000), silence(1000, 48000)])
    client.send_json("voice_start", {"codec": "opus", "sample_rate": 48000, "mode": "voice_activity",
                                     "options": {"silence_ms": 500}}, "s")
    client.next_json()
    send_realtime(client, opus_packets(utterance))
    received = client.until(is_final, timeout=30)
    (turn_end,) = events(received, "turn_end")
    assert turn_end["reason"] == "silence"
    assert [t["text"] for t in events(received, "transcript") if t["final"]] == ["thank you"]
    assert events(received, "ai_response")[0]["text"] == "You're welcome."
    reply = decode_opus([m for _, m in received if isinstance(m, bytes)])
    assert 0.4 <= len(reply) / 48000 <= 2.5 and rms_db(reply) > -35
    assert events(received, "processing_completed") and not events(received, "processing_failed")
    client.send_json("voice_end", {}, "e")


def test_unknown_engine_name_stops_the_daemon_with_the_names(tmp_path) -> None:
    with pytest.raises(RuntimeError, match=r"no stt engine named 'whisper'; available: pocketsphinx"):
        start_daemon(tmp_path, "--pipeline", "speech", "--stt", "whisper")
