"""
S4's client flow from Python (``websockets``) against a daemon with the speech pipeline and a
JWT key: token exchange, ``session_start``, binary audio with no announcement (ffmpeg-made WebM
chunks, and raw PCM), then ``transcript``, ``ai_response``, ``audio_response`` + binary audio and
``processing_status`` with stage latencies; a dropped call resumes with its reply delivered once.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

import numpy as np
import pytest

from rtsupport import S4Client, is_type, start_rt_daemon
from signal_speech import speak

PHRASE = "what time is it"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    d = start_rt_daemon(tmp_path_factory.mktemp("rt-speech"), "--pipeline", "speech",
                        "--stt-options", "pool_size=2")
    yield d
    d.stop()


def pcm_chunks(pcm: np.ndarray, rate: int, ms: int = 100) -> list[bytes]:
    step = rate * ms // 1000
    return [pcm[i:i + step].tobytes() for i in range(0, len(pcm), step)]


def webm_chunks(pcm: np.ndarray, rate: int, tmp_path, pieces_per_s: int = 10) -> list[bytes]:
    """A WebM/Opus file made by ffmpeg from ``pcm``, cut in byte pieces as MediaRecorder.start(100) would."""
    raw, out = tmp_path / "in.raw", tmp_path / "out.webm"
    raw.write_bytes(pcm.tobytes())
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "s16le", "-ar", str(rate),
                    "-ac", "1", "-i", str(raw), "-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20",
                    "-f", "webm", str(out)], check=True, timeout=60)
    data = out.read_bytes()
    count = max(1, int(len(pcm) / rate * pieces_per_s))
    size = -(-len(data) // count)
    return [data[i:i + size] for i in range(0, len(data), size)]


def send(client: S4Client, chunks: list[bytes], pause: float = 0.01) -> None:
    for chunk in chunks:
        client.ws.send(chunk)
        time.sleep(pause)


def converse(client: S4Client) -> dict:
    """Wait for the whole answer of one turn; return what came, by kind."""
    done = client.until(is_type("processing_status", status="completed"), timeout=30)
    client.until(is_type("audio_response", status="end"), timeout=15)
    got = client.received
    kinds = [m["type"] if isinstance(m, dict) else "binary" for m in got]
    return {"done": done, "kinds": kinds, "audio": b"".join(m for m in got if isinstance(m, bytes))}


def check_answer(client: S4Client, result: dict) -> None:
    finals = [m for m in client.of_type("transcript") if m["data"]["isFinal"]]
    assert finals and finals[-1]["data"]["text"] == PHRASE, client.of_type("transcript")
    answers = client.of_type("ai_response")
    assert len(answers) == 1 and "time" in answers[0]["data"]["text"].lower() or "it is" in answers[0]["data"]["text"].lower()
    start = next(m for m in client.of_type("audio_response") if m["data"]["status"] == "start")
    assert start["data"]["format"] == "pcm_s16le" and start["data"]["sampleRate"] == 16000
    kinds = result["kinds"]
    # Order: final transcript, ai_response, audio_response start, binary audio, audio_response end.
    assert kinds.index("ai_response") < kinds.index("audio_response") < kinds.index("binary")
    audio = np.frombuffer(result["audio"], dtype="<i2")
    assert len(audio) > 16000 * 0.5 and np.abs(audio).max() > 1000  # at least half a second of speech
    latency = result["done"]["data"]["latency"]
    for stage in ("speechToText", "aiGeneration", "textToSpeech", "total"):
        assert isinstance(latency[stage], (int, float)) and latency[stage] >= 0, latency
    assert latency["total"] >= latency["speechToText"]
    call_id = client.of_type("connection_status")[-1]["data"]["callId"]
    assert all(m["callId"] == call_id for m in client.received[1:] if isinstance(m, dict) and m["type"] != "heartbeat")


def test_pcm_stream_is_answered(speech):
    client = S4Client(speech)
    try:
        assert client.start(speech)["data"]["resumed"] is False
        pcm = speak(PHRASE, 16000, pad_ms=(300, 1000))
        send(client, pcm_chunks(pcm, 16000))
        result = converse(client)
        check_answer(client, result)
        assert client.of_type("processing_status")[0]["data"]["stage"] in ("voice_activity", "speech_to_text")
        client.send("session_end", "call-456")
        client.until(is_type("connection_status", status="session_ended"))
    finally:
        client.close()


def test_webm_chunks_are_detected_and_answered(speech, tmp_path):
    client = S4Client(speech)
    try:
        client.start(speech, call="call-webm")
        pcm = speak(PHRASE, 48000, pad_ms=(300, 1000))
        send(client, webm_chunks(pcm, 48000, tmp_path))
        result = converse(client)
        finals = [m for m in client.of_type("transcript") if m["data"]["isFinal"]]
        assert finals[-1]["data"]["text"] == PHRASE
        assert len(client.of_type("ai_response")) == 1
        client.send("processing_status", "call-webm")
        status = client.until(is_type("processing_status", stage="session"))
        assert status["data"]["container"] == "webm"
        assert len(result["audio"]) > 16000
    finally:
        client.close()


def test_dropped_call_resumes_with_the_reply_once_in_order(speech):
    first = S4Client(speech)
    pcm = speak(PHRASE, 16000, pad_ms=(300, 1000))
    try:
        first.start(speech, call="call-drop")
        send(first, pcm_chunks(pcm, 16000), pause=0.0)
        # The caller drops right behind its audio: the close frame follows the last chunk, so the
        # server reads it before the turn (ended by the trailing silence, or by the drop) is
        # answered, and the whole reply goes to the call's queue.  (Waiting for turn_end first left
        # a race the protocol cannot close: with the final transcript ready at turn end, the reply
        # could already sit unread in this client's buffer when it closed — delivered, then lost.)
    finally:
        first.close()
    time.sleep(1.0)  # the reply is finished meanwhile, into the call's queue
    second = S4Client(speech)
    try:
        started = second.start(speech, call="call-drop")
        assert started["data"]["resumed"] is True and started["data"]["queued"] >= 3, started
        result = converse(second)
        answers = first.of_type("ai_response") + second.of_type("ai_response")
        assert len(answers) == 1 and second.of_type("ai_response"), "the reply must arrive once, on the new connection"
        kinds = result["kinds"]
        assert kinds.index("connection_status") < kinds.index("ai_response") < kinds.index("audio_response") \
            < kinds.index("binary")
        assert sum(1 for m in second.of_type("audio_response") if m["data"]["status"] == "start") == 1
        # Another resume finds nothing left to deliver.
        second.close()
        third = S4Client(speech)
        again = third.start(speech, call="call-drop")
        assert again["data"]["resumed"] is True and again["data"]["queued"] == 0
        third.close()
    finally:
        second.close()
    with urllib.request.urlopen(f"{speech.http}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "txvoice_offline_messages_dropped_total" in text
