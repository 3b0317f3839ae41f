"""
Twilio Media Streams (bidirectional ``<Connect><Stream>``) at ``--twilio-path`` (``/twilio``).

Twilio's messages as Twilio documents them
(https://www.twilio.com/docs/voice/media-streams/websocket-messages), all JSON text frames:

* in: ``connected``, ``start`` (``streamSid``, ``callSid``, ``accountSid``, ``tracks``,
  ``customParameters``, ``mediaFormat`` audio/x-mulaw 8000 Hz mono), ``media`` (``track``,
  ``chunk``, ``timestamp``, base64 ``payload`` of 20 ms of μ-law), ``dtmf``, ``mark`` (a mark we
  sent, echoed once the audio before it has played), ``stop``; every message but ``connected``
  carries a ``sequenceNumber``, checked here (gaps are counted);
* out: ``media`` (base64 μ-law 8 kHz, paced at real time by :mod:`txvoice.server.response`), a
  ``mark`` after each reply segment (``MARK_SEGMENT_MS`` of audio) and at its end, and ``clear``
  when the caller talks over the reply (barge-in).

The voice stream opens on ``start`` in voice-activity mode: the ingest decodes μ-law and resamples
to the pipeline rate (the existing resampler), the reply is resampled and μ-law encoded on the
worker pool.  The call's ids and ``customParameters`` go to the pipeline (the turn context's
options, and the conversation, whose id is the ``callSid``); DTMF digits go to the pipeline as
events (:mod:`txvoice.dialects.telephony`).

What the caller heard comes from the echoed marks: each names its reply and the milliseconds of
audio sent before it, so the played position is known to one segment, and a barge-in truncates
the turn record to it (the native dialect's ``playback`` message gives the same truncation).  A
mark Twilio returns after a ``clear`` stands for audio that was dropped, not played, and is
ignored.  Twilio reads no error messages: bad input is logged and counted, and the call goes on.

``POST <twilio-path>/voice`` is the TwiML webhook (:mod:`txvoice.dialects.twilio_webhook`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from typing import TYPE_CHECKING, Any, Callable

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.dialects.registry import websocket_endpoint
from txvoice.dialects.telephony import audio_failed, deliver_dtmf, input_problem, telephony_metrics
from txvoice.errors import VoiceError
from txvoice.pipeline.interfaces import IResponseSink
from txvoice.server.base import CLOSE_NORMAL, VoiceServerProtocol
from txvoice.server.channel import VoiceChannel
from txvoice.server.observer import IChannelObserver

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

DIALECT = "twilio"
#: Twilio's only media format, both ways.
TWILIO_FORMAT = AudioFormat("mulaw", 8000, 1, 20)
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
#: 8 kHz -> pipeline rate without soxr's block delay (see StreamSettings.resample_quality): barge-in
#: detection 40-120 ms sooner; telephone audio has nothing above 3.4 kHz for a finer filter to keep.
TELEPHONY_RESAMPLE_QUALITY = "QQ"
#: Reply audio between two marks: the resolution of the played position.
MARK_SEGMENT_MS = 200.0


class _Problem(VoiceError):
    """Bad input from Twilio: logged and counted, never answered."""


@implementer(IResponseSink)
class _TwilioSink:
    """A turn's reply as Twilio ``media`` and ``mark`` messages, and its turn record."""

    def __init__(self, protocol: "TwilioMediaStreamProtocol") -> None:
        self.protocol = protocol
        self.response_id: str | None = None
        self.record: dict[str, Any] | None = None
        self.sent_ms = 0.0
        self.marked_ms = 0.0
        self.reply_text: str | None = None

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        protocol = self.protocol
        channel = protocol.channel
        protocol.wslog.debug("twilio call {call_sid}: {event_type} {data}", call_sid=protocol.call.get("callSid"),
                             event_type=event_type, data=data)
        if event_type == "barge_in":
            protocol.clearPlayback("barge_in", data)
        elif (event_type == "vad" and data.get("event") == "speech_start" and channel is not None
              and channel.playing is None
              and not channel.responses and protocol.unplayed()):
            # The reply has all been sent but Twilio is still playing its buffer: stop that too
            # (while it is being sent, the channel's barge-in does it).
            protocol.clearPlayback("speech_over_buffer", data)
        elif event_type == "ai_response":
            self.reply_text = data.get("text")
        elif event_type == "transcript" and data.get("final", True):
            protocol.last_transcript = data.get("text")

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        protocol = self.protocol
        self.response_id = "resp_" + uuid.uuid4().hex[:16]
        self.sent_ms = self.marked_ms = 0.0
        self.record = {
            "turn": len(protocol.turns) + 1, "response_id": self.response_id,
            "text": text_content if text_content is not None else self.reply_text,
            "sent_ms": 0.0, "played_ms": 0.0, "marks_sent": 0, "marks_played": 0,
            "ended": False, "cleared": False, "truncated": False, "logged": False,
        }
        self.reply_text = None
        protocol.turns.append(self.record)
        protocol.records[self.response_id] = self.record
        # What was played is what the marks confirm, nothing until the first one comes back.
        assert protocol.channel is not None
        protocol.channel.playbackPosition(None, 0.0)

    def audio(self, chunk: bytes) -> None:
        protocol = self.protocol
        protocol.sendMedia(chunk)
        self.sent_ms += len(chunk) / 8.0  # μ-law at 8 kHz: 8 bytes a millisecond
        if self.record is not None:
            self.record["sent_ms"] = self.sent_ms
        if self.sent_ms - self.marked_ms >= MARK_SEGMENT_MS:
            self._mark()

    def _mark(self) -> None:
        record = self.record
        if record is None or record["cleared"]:
            return
        self.marked_ms = self.sent_ms
        record["marks_sent"] += 1
        self.protocol.sendMark(f"{self.response_id}:{round(self.sent_ms)}")

    def endResponse(self, summary: dict[str, Any]) -> None:
        record = self.record
        if record is None:
            return
        record["ended"] = True
        if summary.get("cancelled"):
            record["cancelled_reason"] = summary.get("reason")
        elif self.sent_ms > self.marked_ms or not record["marks_sent"]:
            self._mark()  # the reply's last segment
        self.record = None
        self.protocol.recordDone(record)


@implementer(IChannelObserver)
class TwilioMediaStreamProtocol(VoiceServerProtocol):
    """One Twilio Media Stream: one phone call."""

    dialect = DIALECT

    channel: VoiceChannel | None = None
    stream_sid: str | None = None

    def sessionOpened(self) -> None:
        session = self.session
        assert session is not None
        self.metrics = telephony_metrics(self.server)
        self.sink = _TwilioSink(self)
        self.channel = VoiceChannel(self.server, session, self.sink, self)
        self.call: dict[str, Any] = {}
        self.turns: list[dict[str, Any]] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.last_sequence: int | None = None
        self.sequence_gaps = 0
        self.last_transcript: str | None = None
        self._media_prefix = b""
        self._mark_prefix = b""
        session.transition(session.state.AUTHENTICATED)

    def sessionClosing(self) -> None:
        if self.channel is not None:
            self.channel.cancel()
        for record in self.turns:
            self.recordDone(record, final=True)

    # receiving

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Twilio's audio comes as text (50 ``media`` messages a second, more than the control-message
        rate limit allows a minute): every message is held to the audio byte rate instead.
        """
        session = self.session
        if session is None:
            return
        if self._oversize or isBinary:
            super().onMessage(payload, isBinary)
            return
        now = session.last_activity = self.server.clock.seconds()
        counters = session.counters
        counters.text_in += 1
        counters.text_bytes_in += len(payload)
        if not self._audio_bucket.allow(now, len(payload)):
            self.problem("rate_limited", "message dropped: above --max-audio-bytes-per-second")
            return
        self.textReceived(payload)

    def textReceived(self, payload: bytes) -> None:
        try:
            try:
                msg = json.loads(payload)
            except ValueError:
                raise _Problem("the message is not JSON", code="invalid_json") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
                raise _Problem("the message is not an object with an event", code="invalid_message")
            event = msg["event"]
            self._sequence(msg)
            handler = self._handlers.get(event)
            if handler is None:
                raise _Problem(f"unknown event {event!r}", code="unknown_event")
            handler(self, msg)
        except VoiceError as e:
            self.problem(e.code, e.message)
        except Exception:
            self.wslog.failure("handling a Twilio message failed")
            self.problem("internal_error", "the message could not be handled")

    def binaryReceived(self, payload: bytes) -> None:
        self.problem("unexpected_binary", "Twilio Media Streams send JSON text frames only")

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        self.problem("message_too_large", f"message of {size} bytes dropped")

    def problem(self, code: str, message: str, **fields: Any) -> None:
        input_problem(self.server, self.session, DIALECT, code, message,
                      call_sid=self.call.get("callSid") if hasattr(self, "call") else None, **fields)

    def chunkProcessed(self, events: list[Any] | None) -> None:
        """Twilio acknowledges no media message (IChannelObserver)."""

    def chunkFailed(self, failure: Failure) -> None:
        audio_failed(failure, self.problem, self.wslog, "Twilio")

    def _sequence(self, msg: dict[str, Any]) -> None:
        """Check ``sequenceNumber`` (a string counting up from 1); a gap is counted, and the call goes on."""
        raw = msg.get("sequenceNumber")
        if raw is None:
            return
        try:
            seq = int(raw)
        except (TypeError, ValueError):
            raise _Problem(f"sequenceNumber {raw!r} is not a number", code="invalid_sequence") from None
        last = self.last_sequence
        if last is None or seq > last:
            self.last_sequence = seq
        if last is None or seq == last + 1:
            return
        if seq > last + 1:
            missing = seq - last - 1
            self.sequence_gaps += missing
            self.metrics.sequence_gaps.labels(DIALECT).inc(missing)
            self.problem("sequence_gap", f"{missing} message(s) missing before sequenceNumber {seq}",
                         expected=last + 1, got=seq, missing=missing)
        else:
            self.problem("sequence_out_of_order", f"sequenceNumber {seq} after {last}", expected=last + 1, got=seq)

    def on_connected(self, msg: dict[str, Any]) -> None:
        self.call["protocol"], self.call["version"] = msg.get("protocol"), msg.get("version")

    def on_start(self, msg: dict[str, Any]) -> None:
        channel = self.channel
        assert channel is not None and self.session is not None
        if channel.stream is not None:
            raise _Problem("a second start on one stream", code="start_repeated")
        start = msg.get("start")
        if not isinstance(start, dict):
            raise _Problem("start has no start object", code="invalid_message")
        media_format = start.get("mediaFormat") or MEDIA_FORMAT
        if (media_format.get("encoding"), media_format.get("sampleRate"), media_format.get("channels", 1)) != (
                MEDIA_FORMAT["encoding"], MEDIA_FORMAT["sampleRate"], MEDIA_FORMAT["channels"]):
            raise _Problem(f"unsupported mediaFormat {media_format!r}", code="unsupported_media_format")
        stream_sid = start.get("streamSid") or msg.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise _Problem("start names no streamSid", code="missing_field")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise _Problem("customParameters is not an object", code="invalid_field")
        self.stream_sid = stream_sid
        self._media_prefix = b'{"event":"media","streamSid":%s,"media":{"payload":"' % json.dumps(stream_sid).encode()
        self._mark_prefix = b'{"event":"mark","streamSid":%s,"mark":{"name":' % json.dumps(stream_sid).encode()
        call_sid, account_sid = start.get("callSid"), start.get("accountSid")
        self.call.update(streamSid=stream_sid, callSid=call_sid, accountSid=account_sid,
                         tracks=start.get("tracks") or ["inbound"], customParameters=params)
        session = self.session
        session.attributes["call"] = dict(self.call)
        conversation = self.server.conversation(call_sid if isinstance(call_sid, str) and call_sid else None)
        conversation.metadata.update(telephony=DIALECT, call_sid=call_sid, account_sid=account_sid,
                                     stream_sid=stream_sid, custom_parameters=dict(params))
        session.identify(conversation_id=conversation.id)
        options: dict[str, Any] = {
            "telephony": DIALECT, "call_id": call_sid, "call_sid": call_sid, "account_sid": account_sid,
            "stream_sid": stream_sid, "custom_parameters": dict(params), "dtmf": [],
            "resample_quality": TELEPHONY_RESAMPLE_QUALITY}
        channel.start(TWILIO_FORMAT, stream_id=stream_sid, options=options, mode="voice_activity")
        self.metrics.calls.labels(DIALECT).inc()
        self.wslog.info("twilio call {call_sid} started: stream {stream_sid}, session {session_id}",
                        call_sid=call_sid, stream_sid=stream_sid, session_id=session.id,
                        custom_parameters=params)

    def on_media(self, msg: dict[str, Any]) -> None:
        channel = self.channel
        assert channel is not None
        if channel.stream is None:
            raise _Problem("media before start", code="media_before_start")
        media = msg.get("media")
        if not isinstance(media, dict):
            raise _Problem("media has no media object", code="invalid_message")
        track = media.get("track", "inbound")
        if track != "inbound":
            raise _Problem(f"media on track {track!r}: only the caller's inbound track is heard", code="wrong_track")
        try:
            raw = base64.b64decode(media.get("payload", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _Problem("media.payload is not base64", code="invalid_payload") from None
        if not raw:
            raise _Problem("media.payload is empty", code="invalid_payload")
        raw_chunk: Any = media.get("chunk")  # JSON: a number, a string of one, or missing
        chunk: int | None
        try:
            chunk = int(raw_chunk)
        except (TypeError, ValueError):
            chunk = None
        channel.audio(raw, chunk)

    def on_dtmf(self, msg: dict[str, Any]) -> None:
        dtmf = msg.get("dtmf")
        if not isinstance(dtmf, dict):
            dtmf = {}
        digit = dtmf.get("digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise _Problem(f"dtmf digit {digit!r} is not a key", code="invalid_dtmf")
        assert self.channel is not None
        deliver_dtmf(self.server, self.channel, DIALECT, digit,
                     {"call_sid": self.call.get("callSid"), "track": dtmf.get("track")})

    def on_mark(self, msg: dict[str, Any]) -> None:
        mark = msg.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        response_id, _, at = name.rpartition(":") if isinstance(name, str) else ("", "", "")
        record = self.records.get(response_id)
        if record is None:
            raise _Problem(f"mark {name!r} is not one of ours", code="unknown_mark")
        if record["cleared"]:
            return  # returned by a clear: that audio was dropped, not played
        # Mark names round to the millisecond: the mark for everything sent stands for all of it.
        try:
            played = float(at)
        except ValueError:
            played = math.nan
        if not 0 <= played <= record["sent_ms"] + 0.5:  # NaN too: a name we did not send, not an internal error
            raise _Problem(f"mark {name!r} is not one of ours", code="unknown_mark")
        if played >= record["sent_ms"] - 0.5:
            played = record["sent_ms"]
        record["marks_played"] += 1
        if played > record["played_ms"]:
            record["played_ms"] = played
        assert self.channel is not None
        self.channel.playbackPosition(response_id, played)
        if record["ended"] and record["played_ms"] >= record["sent_ms"] - 0.5:
            self.recordDone(record, final=True)

    def on_stop(self, msg: dict[str, Any]) -> None:
        self.wslog.info("twilio call {call_sid} stopped after {turns} turn(s), {gaps} message(s) missing",
                        call_sid=self.call.get("callSid"), turns=len(self.turns), gaps=self.sequence_gaps)
        if self.channel is not None:
            self.channel.cancel()
        self.sendClose(CLOSE_NORMAL, "stream stopped")

    # sending

    def sendMedia(self, chunk: bytes) -> None:
        if self.session is not None:
            self.session.counters.audio_frames_out += 1
        self.sendText(self._media_prefix + base64.b64encode(chunk) + b'"}}')

    def sendMark(self, name: str) -> None:
        self.sendText(self._mark_prefix + json.dumps(name).encode() + b"}}")

    def unplayed(self) -> bool:
        """True when reply audio has been sent that the marks do not yet confirm as played."""
        return any(not r["cleared"] and r["played_ms"] < r["sent_ms"] - 0.5 for r in self.turns if not r["logged"])

    def clearPlayback(self, reason: str, info: dict[str, Any]) -> None:
        """The caller talks over the reply: Twilio drops what it has buffered; the turn records truncate."""
        if self.stream_sid is None:
            return
        self.sendText(json.dumps({"event": "clear", "streamSid": self.stream_sid}).encode())
        self.wslog.info("twilio call {call_sid}: clear ({reason})", call_sid=self.call.get("callSid"),
                        reason=reason, barge_in=info)
        for record in self.turns:
            if not record["logged"] and not record["cleared"] and record["played_ms"] < record["sent_ms"] - 0.5:
                record["cleared"] = True
                record["truncated"] = True
                record["clear_reason"] = reason
                if record["ended"] or reason == "barge_in":
                    self.recordDone(record, final=True)

    def recordDone(self, record: dict[str, Any], final: bool = False) -> None:
        """Log a turn record once it is settled (played through, truncated, or the call is over)."""
        if record["logged"] or not (final or record["cleared"]):
            return
        record["logged"] = True
        record["sent_ms"], record["played_ms"] = round(record["sent_ms"], 1), round(record["played_ms"], 1)
        self.wslog.info(
            "twilio call {call_sid} turn {turn}: sent {sent_ms} ms, caller heard {played_ms} ms{cut}",
            call_sid=self.call.get("callSid"), turn=record["turn"], sent_ms=record["sent_ms"],
            played_ms=record["played_ms"], cut=" (truncated)" if record["truncated"] else "",
            turn_record={k: v for k, v in record.items() if k != "logged"},
        )

    _handlers: dict[str, Callable[["TwilioMediaStreamProtocol", dict[str, Any]], None]] = {}


TwilioMediaStreamProtocol._handlers = {
    name[3:]: getattr(TwilioMediaStreamProtocol, name) for name in dir(TwilioMediaStreamProtocol)
    if name.startswith("on_") and name not in ("on_chunk",)
}


class TwilioResource(Resource):
    """``<path>``: the Media Streams WebSocket; ``<path>/voice``: the TwiML webhook."""

    def __init__(self, websocket: Any) -> None:
        super().__init__()
        self.websocket = websocket

    def render(self, request: Any) -> Any:
        return self.websocket.render(request)

    def getChild(self, path: bytes, request: Any) -> Any:
        if path == b"":
            return self
        return super().getChild(path, request)


def endpoints(server: "VoiceServer") -> dict[str, "IResource"]:
    """Media Streams at ``--twilio-path`` and its TwiML webhook below it; off when the path is empty."""
    path = server.config.twilio_path
    if not path:
        return {}
    from txvoice.dialects.twilio_webhook import TwimlWebhook

    (websocket,) = websocket_endpoint(path, server, TwilioMediaStreamProtocol).values()
    resource = TwilioResource(websocket)
    resource.putChild(b"voice", TwimlWebhook(server))
    return {path: resource}
