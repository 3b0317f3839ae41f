"""
The one interface a dialect implements for what its channel tells it about audio
(``IChannelObserver``): every dialect provides it, and an S4 call's reports follow the call to the
connection that serves it now.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyClass

from txvoice.dialects.audiosocket import AudioSocketProtocol
from txvoice.dialects.native import NativeVoiceProtocol
from txvoice.dialects.realtime_callsession import CallSession
from txvoice.dialects.s3session import UnifiedSession
from txvoice.dialects.telephony import audio_failed
from txvoice.dialects.twilio import TwilioMediaStreamProtocol
from txvoice.dialects.vocal import VocalProtocol
from txvoice.errors import VoiceError
from txvoice.server.observer import IChannelObserver, LoggingObserver


def test_every_dialect_is_an_observer() -> None:
    for cls in (NativeVoiceProtocol, VocalProtocol, TwilioMediaStreamProtocol, UnifiedSession,
                AudioSocketProtocol, CallSession, LoggingObserver):
        assert verifyClass(IChannelObserver, cls), cls


class _Connection:
    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def chunkFailed(self, failure: Failure) -> None:
        self.failures.append(failure)


def test_a_call_reports_audio_failures_to_the_connection_serving_it_now() -> None:
    call: Any = CallSession.__new__(CallSession)
    call.call_id = "call-1"
    first, second = _Connection(), _Connection()
    call.protocol = first
    call.chunkFailed(Failure(ValueError("one")))
    call.protocol = second  # the caller reconnected: the channel (and its stream) stayed with the call
    call.chunkFailed(Failure(ValueError("two")))
    assert [str(f.value) for f in first.failures] == ["one"]
    assert [str(f.value) for f in second.failures] == ["two"]
    call.protocol = None  # offline: logged with its traceback, not lost in a closed connection
    with capturedLogs() as logs:
        call.chunkFailed(Failure(ValueError("three")))
    (event,) = logs
    assert event["log_level"] is LogLevel.critical  # Logger.failure's level
    assert event["log_namespace"] == "txvoice.session.calls"
    assert event["call_id"] == "call-1"
    assert formatEvent(event) == "call call-1: audio failed while offline"
    assert event["log_failure"].check(ValueError) and str(event["log_failure"].value) == "three"
    assert [str(f.value) for f in first.failures + second.failures] == ["one", "two"]  # neither got it


def test_a_phone_bridge_counts_failed_audio_as_a_problem_and_logs_the_unexpected() -> None:
    """Twilio's and AudioSocket's ``chunkFailed``: bad audio is an input problem; a bug is logged with its traceback."""
    problems: list[tuple[str, str]] = []
    logger = Logger(namespace="txvoice.network.telephony")
    with capturedLogs() as logs:
        audio_failed(Failure(VoiceError("not μ-law", code="invalid_audio")), lambda c, m: problems.append((c, m)),
                     logger, "Twilio")
    assert problems == [("invalid_audio", "not μ-law")] and not logs
    with capturedLogs() as logs:
        audio_failed(Failure(ZeroDivisionError("bug")), lambda c, m: problems.append((c, m)), logger, "AudioSocket")
    assert problems[1:] == [("internal_error", "the audio could not be processed")]
    (event,) = logs
    assert formatEvent(event) == "processing AudioSocket audio failed"
    assert event["log_level"] is LogLevel.critical and event["log_failure"].check(ZeroDivisionError)


def test_chunk_error_passes_bad_audio_on_and_hides_the_unexpected_behind_internal_error() -> None:
    """The one rule every dialect's chunkFailed follows (native, S3, S4, vocal, the phone bridges)."""
    from txvoice.server.observer import chunk_error

    log = Logger(namespace="test")
    bad = VoiceError("not Opus", code="invalid_opus_packet")
    with capturedLogs() as events:
        assert chunk_error(Failure(bad), log) is bad
        assert not events  # the client's own mistake: told to it, not logged as a failure
        error = chunk_error(Failure(ZeroDivisionError("secret detail")), log, "processing {bridge} audio failed",
                            "the chunk could not be processed", bridge="twilio")
    assert (error.code, error.message) == ("internal_error", "the chunk could not be processed")
    assert "secret detail" not in str(error)
    assert len(events) == 1 and events[0]["log_level"] is LogLevel.critical
    assert formatEvent(events[0]) == "processing twilio audio failed"
    assert events[0]["log_failure"].check(ZeroDivisionError)
