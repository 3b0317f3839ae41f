"""
Twilio Media Streams against a real daemon: a call replayed as Twilio sends it (espeak-ng speech,
sox μ-law 8 kHz, 20 ms ``media`` frames at real time) over a ``websockets`` client; the reply comes
back as paced ``media`` with ``mark`` s, talking over it gives ``clear``, the echoed marks truncate
the turn record; the TwiML webhook signed as Twilio signs it; bad input is counted and survived.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from daemons import metric, start_daemon
from twiliocall import TwilioCall, dbfs, frames, ulaw_decode, ulaw_silence, ulaw_speech, voiced

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://voice.example.test"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("twilio"), "--log-format", "json", "--twilio-auth-token", TOKEN,
                     "--public-url", PUBLIC, twistd_args=("--logger", "txvoice.logging.twistd_observer"))
    yield d
    d.stop()


@pytest.fixture
def call(daemon):
    c = TwilioCall(f"ws://127.0.0.1:{daemon.port}/twilio")
    yield c
    c.close()


def log_records(daemon, key: str) -> list[dict]:
    out = []
    for line in daemon.log().splitlines():
        if key in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def turn_records(daemon, call_sid: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r["turn_record"] for r in log_records(daemon, '"turn_record"') if r.get("call_sid") == call_sid]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def has_marks_for_all_audio(received) -> bool:
    return any(m.get("event") == "mark" for _, m in received) and received[-1][1].get("event") == "mark"


def test_replayed_call_is_answered_with_paced_speech_and_marks(call, daemon) -> None:
    speech = ulaw_speech("Hello, I am calling about my order.")
    call.connected()
    call.start({"FirstName": "Jane"})
    call.stream(ulaw_silence(300) + speech + ulaw_silence(1000))
    call.wait_for(lambda r: any(m.get("event") == "mark" for _, m in r), timeout=15)
    # Keep streaming silence (Twilio always does) while the reply plays; echo marks as it "plays".
    call.play_along(8.0, [], until_played=True)
    media = call.messages("media")
    marks = call.messages("mark")
    assert all(m["streamSid"] == call.stream_sid for _, m in media + marks)
    assert not call.messages("clear")
    reply = ulaw_decode(call.reply_audio())
    spoken = ulaw_decode(speech)
    duration_ms = len(reply) / 8.0
    # The echo of the turn: the speech (plus the turn's padding), at its level.
    assert len(spoken) / 8.0 <= duration_ms <= len(spoken) / 8.0 + 1500, (duration_ms, len(spoken) / 8.0)
    loud = [dbfs(f) for f in np.array_split(reply, max(1, len(reply) // 160))]
    assert max(loud) > -30 and abs(dbfs(reply) - dbfs(spoken)) < 6, (dbfs(reply), dbfs(spoken))
    assert all(len(m["media"]["payload"]) == 216 for _, m in media[:-1])  # 160 bytes: 20 ms frames
    # Paced at real time: the reply takes about as long to arrive as to play (100 ms lead).
    spread_ms = (media[-1][0] - media[0][0]) * 1000
    assert duration_ms - 250 <= spread_ms <= duration_ms + 200, (spread_ms, duration_ms)
    # A mark every 200 ms of audio and one at the end, each naming the audio sent before it.
    positions = [float(m["mark"]["name"].rsplit(":", 1)[1]) for _, m in marks]
    assert positions == sorted(positions) and abs(positions[-1] - duration_ms) < 1
    assert len(marks) >= duration_ms // 200
    call.stop()
    (record,) = turn_records(daemon, call.call_sid)
    assert record["truncated"] is False and record["played_ms"] == record["sent_ms"] == round(duration_ms, 1)


def test_talking_over_the_reply_clears_it_and_marks_truncate_the_turn(daemon) -> None:
    call = TwilioCall(f"ws://127.0.0.1:{daemon.port}/twilio", call_sid="CA" + "c" * 32, stream_sid="MZ" + "d" * 32)
    interruption = ulaw_speech("Wait, stop.")
    onset = next(i for i, f in enumerate(frames(interruption)) if voiced(f))
    delays, heard = [], []
    try:
        call.connected()
        call.start()
        call.stream(ulaw_silence(300) + ulaw_speech("The quick brown fox jumps over the lazy dog.") + ulaw_silence(900))
        for round_ in range(3):
            # The reply plays for a while (the phone echoes the marks of what it played)...
            call.wait_for(lambda r: len(call.messages("media")) > 0 and
                          (not call.messages("clear") or call.messages("media")[-1][0] > call.messages("clear")[-1][0]),
                          timeout=15)
            echoed: list[str] = []
            clears = len(call.messages("clear"))
            call.play_along(0.7, echoed, since=call.messages("clear")[-1][0] if clears else None)
            # ...then the caller talks over it.
            sent = call.stream(interruption)
            call.wait_for(lambda r: len(call.messages("clear")) > clears, timeout=5)
            t_clear, clear = call.messages("clear")[clears]
            assert clear == {"event": "clear", "streamSid": call.stream_sid}
            delays.append((t_clear - sent[onset]) * 1000)
            heard.append(echoed[-1])
            # Twilio hands back the marks a clear dropped: they were not played and must not count.
            for _, m in call.messages("mark"):
                if m["mark"]["name"] not in echoed and m["mark"]["name"].split(":")[0] == echoed[-1].split(":")[0]:
                    call.mark(m["mark"]["name"])
            call.stream(ulaw_silence(700))  # the interruption's turn ends: its echo is the next reply
        call.stop()
        print(f"clear after the first voiced frame (ms): {[round(d, 1) for d in delays]}")
        records = turn_records(daemon, call.call_sid)
        clears = [r for r in log_records(daemon, "clear (barge_in)") if r.get("call_sid") == call.call_sid]
        for record, name, clear in zip(records, heard, clears):
            position = float(name.rsplit(":", 1)[1])
            assert record["response_id"] == name.split(":")[0]
            assert record["truncated"] is True and record["cleared"] is True
            assert record["played_ms"] == position < record["sent_ms"], (record, name)
            info = clear["barge_in"]
            assert info["played_source"] == "client" and info["played_ms"] == position, info
        assert len(records) >= 3 and len(clears) == 3
        assert statistics.median(delays) < 60, delays
    finally:
        call.close()


def test_bad_input_is_counted_and_the_call_goes_on(daemon) -> None:
    call = TwilioCall(f"ws://127.0.0.1:{daemon.port}/twilio", call_sid="CA" + "e" * 32, stream_sid="MZ" + "f" * 32)
    before = {p: metric(daemon.http, "txvoice_telephony_input_problems_total", dialect="twilio", problem=p)
              for p in ("invalid_json", "media_before_start", "invalid_payload", "wrong_track", "sequence_gap")}
    gaps_before = metric(daemon.http, "txvoice_telephony_sequence_gaps_total", dialect="twilio")
    try:
        call.connected()
        call.ws.send("this is not JSON {")
        call.media(ulaw_silence(20))  # before start
        call.start()
        call.media(b"", payload="%%% not base64 %%%")
        call.media(ulaw_silence(20), track="outbound")
        call.skip_sequence(3)
        call.stream(ulaw_silence(200) + ulaw_speech("Are you still there?") + ulaw_silence(900))
        call.wait_for(lambda r: any(m.get("event") == "mark" for _, m in r), timeout=15)
        assert len(call.reply_audio()) > 8 * 500  # the call went on: answered
        call.stop()
    finally:
        call.close()
    for problem, was in before.items():
        assert metric(daemon.http, "txvoice_telephony_input_problems_total", dialect="twilio", problem=problem) == was + 1, problem
    assert metric(daemon.http, "txvoice_telephony_sequence_gaps_total", dialect="twilio") == gaps_before + 3
    logged = {r.get("problem") for r in log_records(daemon, '"problem"') if r.get("call_sid") in (call.call_sid, None)}
    assert {"invalid_json", "media_before_start", "invalid_payload", "wrong_track", "sequence_gap"} <= logged


def test_dtmf_reaches_the_pipeline_as_an_event(call, daemon) -> None:
    before = metric(daemon.http, "txvoice_telephony_dtmf_total", dialect="twilio")
    call.connected()
    call.start()
    call.dtmf("1")
    call.dtmf("#")
    call.stop()
    deadline = time.monotonic() + 5
    while metric(daemon.http, "txvoice_telephony_dtmf_total", dialect="twilio") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(daemon.http, "txvoice_telephony_dtmf_total", dialect="twilio") == before + 2
    digits = [r["digit"] for r in log_records(daemon, "DTMF") if r.get("digit")]
    assert digits[-2:] == ["1", "#"]


def _post(daemon, path: str, params: dict[str, str], signature: str | None):
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(daemon.http + path, data=data, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    if signature is not None:
        req.add_header("X-Twilio-Signature", signature)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("content-type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read().decode()


WEBHOOK = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+15005550006", "To": "+15005550001",
           "Direction": "inbound", "CallStatus": "ringing"}


def test_webhook_signed_as_twilio_signs_gets_twiml_naming_the_stream(daemon) -> None:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/voice", WEBHOOK)
    status, ctype, body = _post(daemon, "/twilio/voice", WEBHOOK, signature)
    assert status == 200 and ctype.startswith("text/xml"), (status, body)
    assert body.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>')
    assert '<Stream url="wss://voice.example.test/twilio">' in body
    assert '<Parameter name="From" value="+15005550006" />' in body


@pytest.mark.parametrize("signature", ["bm90IHRoZSBzaWduYXR1cmU=", None])
def test_webhook_with_a_wrong_or_missing_signature_gets_403(daemon, signature) -> None:
    if signature is not None:  # signed for another URL: the right key, the wrong request
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/elsewhere", WEBHOOK)
    status, _, body = _post(daemon, "/twilio/voice", WEBHOOK, signature)
    assert status == 403 and "<Response>" not in body
    tampered = dict(WEBHOOK, From="+15005550009")
    good = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/voice", WEBHOOK)
    assert _post(daemon, "/twilio/voice", tampered, good)[0] == 403


def test_a_phone_call_talks_with_the_offline_assistant(tmp_path) -> None:
    """The speech pipeline (PocketSphinx, rules agent, espeak-ng) answers a caller over Twilio."""
    d = start_daemon(tmp_path, "--pipeline", "speech", "--log-format", "json", timeout=60,
                     twistd_args=("--logger", "txvoice.logging.twistd_observer"))
    call = TwilioCall(f"ws://127.0.0.1:{d.port}/twilio", call_sid="CA" + "9" * 32)
    try:
        call.connected()
        call.start({"FirstName": "Jane"})
        call.stream(ulaw_silence(300) + ulaw_speech("What time is it?") + ulaw_silence(900))
        call.play_along(12, [], until_played=True)
        reply = ulaw_decode(call.reply_audio())
        assert len(reply) / 8.0 > 800 and dbfs(reply) > -35, (len(reply) / 8.0, dbfs(reply))
        call.stop()
        (record,) = turn_records(d, call.call_sid)
        assert record["text"].startswith("It is ") and record["played_ms"] == record["sent_ms"], record
    finally:
        call.close()
        d.stop()
