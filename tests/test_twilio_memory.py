"""
The Twilio dialect in memory (fake clock, inline audio work): DTMF to the pipeline, marks and the
turn record, the sequence check and bad input, each exactly and fast.
"""

from __future__ import annotations


from zope.interface import implementer

from twiliocall import ACCOUNT_SID
from txvoice.dialects.telephony import IDtmfListener, telephony_metrics
from txvoice.dialects.twilio import TwilioMediaStreamProtocol
from txvoice.pipeline.echo import EchoPipeline
from wsmemory import MemoryClient, memory_server

SID, CALL = "MZ" + "1" * 32, "CA" + "2" * 32


@implementer(IDtmfListener)
class ListeningEcho(EchoPipeline):
    def __init__(self) -> None:
        super().__init__()
        self.digits: list[tuple] = []

    def dtmf(self, session_id, conversation_id, digit, details) -> None:
        self.digits.append((conversation_id, digit, details["call_sid"]))


def started(server=None):
    server = server or memory_server()
    client = MemoryClient(server, TwilioMediaStreamProtocol, subprotocol=None)
    client.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    client.send_json({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
        "accountSid": ACCOUNT_SID, "streamSid": SID, "callSid": CALL, "tracks": ["inbound"],
        "customParameters": {"FirstName": "Jane"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    return server, client


def test_dtmf_reaches_the_pipeline_listener_and_the_turn_options() -> None:
    server = memory_server()
    server.pipeline = ListeningEcho()
    server, client = started(server)
    client.send_json({"event": "dtmf", "streamSid": SID, "sequenceNumber": "2",
                      "dtmf": {"track": "inbound_track", "digit": "1"}})
    assert server.pipeline.digits == [(CALL, "1", CALL)]
    stream = client.protocol.channel.stream
    assert stream.options["dtmf"] == ["1"] and stream.options["custom_parameters"] == {"FirstName": "Jane"}
    assert stream.options["call_sid"] == CALL and client.session.conversation_id == CALL
    assert server.conversation(CALL).metadata["custom_parameters"] == {"FirstName": "Jane"}
    assert telephony_metrics(server).dtmf.labels("twilio")._value.get() == 1


def test_marks_move_the_played_position_and_a_clear_truncates_the_record() -> None:
    server, client = started()
    protocol = client.protocol
    sink = protocol.sink
    sink.startResponse("Hello there", None, {})
    for _ in range(3):
        sink.audio(b"\xff" * 1600)  # 200 ms each
    out = client.messages()
    media = [m for m in out if m["event"] == "media"]
    marks = [m["mark"]["name"] for m in out if m["event"] == "mark"]
    assert len(media) == 3 and all(m["streamSid"] == SID for m in media)
    rid = sink.response_id
    assert marks == [f"{rid}:200", f"{rid}:400", f"{rid}:600"]
    client.send_json({"event": "mark", "sequenceNumber": "2", "streamSid": SID, "mark": {"name": marks[0]}})
    record = protocol.turns[0]
    assert record["played_ms"] == 200.0 and not record["truncated"]
    protocol.clearPlayback("barge_in", {})
    assert [m for m in client.messages() if m["event"] == "clear"] == [{"event": "clear", "streamSid": SID}]
    # The marks a clear returns were not played.
    client.send_json({"event": "mark", "sequenceNumber": "3", "streamSid": SID, "mark": {"name": marks[1]}})
    client.send_json({"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": marks[2]}})
    assert record["played_ms"] == 200.0 and record["truncated"] and record["cleared"] and record["sent_ms"] == 600.0
    assert record["text"] == "Hello there"


def test_the_last_mark_covers_a_reply_whose_length_is_not_a_whole_millisecond() -> None:
    """Mark names round to the millisecond; the mark for all that was sent means all of it was heard."""
    server, client = started()
    protocol = client.protocol
    sink = protocol.sink
    sink.startResponse("Odd length", None, {})
    sink.audio(b"\xff" * 15161)  # 1895.125 ms
    rid = sink.response_id
    sink.endResponse({})
    (last,) = [m["mark"]["name"] for m in client.messages() if m["event"] == "mark"][-1:]
    assert last == f"{rid}:1895"
    client.send_json({"event": "mark", "sequenceNumber": "2", "streamSid": SID, "mark": {"name": last}})
    record = protocol.turns[0]
    assert record["played_ms"] == record["sent_ms"] == 1895.1 and not record["truncated"], record


def test_a_mark_naming_our_reply_with_a_bad_position_is_an_unknown_mark() -> None:
    """``<reply id>:<ms>`` with a non-number, NaN, a negative or a time past what was sent: not an internal error."""
    server, client = started()
    protocol = client.protocol
    sink = protocol.sink
    sink.startResponse("Short", None, {})
    sink.audio(b"\xff" * 1600)  # 200 ms
    rid = sink.response_id
    problems = telephony_metrics(server).problems
    bad = [f"{rid}:soon", f"{rid}:nan", f"{rid}:-5", f"{rid}:999999", f"{rid}:inf"]
    for n, name in enumerate(bad, 2):
        client.send_json({"event": "mark", "sequenceNumber": str(n), "streamSid": SID, "mark": {"name": name}})
    assert problems.labels("twilio", "unknown_mark")._value.get() == len(bad)
    assert problems.labels("twilio", "internal_error")._value.get() == 0
    assert protocol.turns[0]["played_ms"] == 0 and protocol.turns[0]["marks_played"] == 0
    assert not client.closes


def test_bad_input_is_counted_never_answered() -> None:
    server, client = started()
    problems = telephony_metrics(server).problems
    client.send_text("{nope")
    client.send_json({"event": "media", "sequenceNumber": "5", "streamSid": SID,
                      "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "***"}})
    client.send_json({"event": "media", "sequenceNumber": "6", "streamSid": SID,
                      "media": {"track": "outbound", "chunk": "2", "timestamp": "20", "payload": "/w=="}})
    client.send_json({"event": "mark", "sequenceNumber": "7", "streamSid": SID, "mark": {"name": "someone-else"}})
    client.send_json({"event": "whatever", "sequenceNumber": "8"})
    counted = {p: problems.labels("twilio", p)._value.get()
               for p in ("invalid_json", "sequence_gap", "invalid_payload", "wrong_track", "unknown_mark", "unknown_event")}
    assert counted == {"invalid_json": 1, "sequence_gap": 1, "invalid_payload": 1, "wrong_track": 1,
                       "unknown_mark": 1, "unknown_event": 1}
    assert telephony_metrics(server).sequence_gaps.labels("twilio")._value.get() == 3  # 2, 3 and 4 missing
    assert client.messages() == [] and not client.closes  # nothing Twilio would read; the call goes on
    assert client.protocol.sequence_gaps == 3


def test_media_before_start_is_dropped() -> None:
    server = memory_server()
    client = MemoryClient(server, TwilioMediaStreamProtocol, subprotocol=None)
    client.send_json({"event": "media", "sequenceNumber": "1", "streamSid": SID,
                      "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "/w=="}})
    assert telephony_metrics(server).problems.labels("twilio", "media_before_start")._value.get() == 1
    assert client.session.counters.audio_frames_in == 0
