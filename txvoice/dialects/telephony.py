"""
What the telephony bridges (Twilio Media Streams, Asterisk AudioSocket) share: their metrics, the
accounting of bad input, and DTMF delivery to the pipeline.

A phone bridge cannot answer bad input with an error message (Twilio and Asterisk read none), so
every problem is logged with structured fields, counted (``txvoice_telephony_input_problems_total``
by dialect and problem, and ``txvoice_errors_total`` by code) and the call goes on.

DTMF digits reach the pipeline two ways: a pipeline that provides :class:`IDtmfListener` is told
at once (on the reactor), and every digit is appended to the stream's ``options["dtmf"]``, which
each turn's context (and so the agent's ``AgentContext.options``) carries: an agent can act on
"press 1" without knowing about telephony.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import Counter
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from txvoice.server.observer import chunk_error
from txvoice.logging import NamespaceLogger

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.server.channel import VoiceChannel
    from txvoice.server.context import VoiceServer

log = NamespaceLogger(namespace="txvoice.network.telephony")


class IDtmfListener(Interface):
    """A pipeline that wants to hear DTMF key presses as they happen."""

    def dtmf(session_id: str, conversation_id: str | None, digit: str, details: dict[str, Any]) -> None:
        """A key was pressed on the call (reactor thread); ``details`` names the call."""


class TelephonyMetrics:
    """The bridges' counters, one set per server (they live in the server's Prometheus registry)."""

    def __init__(self, registry: Any) -> None:
        self.problems = Counter("telephony_input_problems", "Bad input from a telephony bridge, by problem",
                                ["dialect", "problem"], namespace="txvoice", registry=registry)
        self.sequence_gaps = Counter("telephony_sequence_gaps", "Messages missing from a bridge's numbering",
                                     ["dialect"], namespace="txvoice", registry=registry)
        self.dtmf = Counter("telephony_dtmf", "DTMF digits received", ["dialect"], namespace="txvoice",
                            registry=registry)
        self.calls = Counter("telephony_calls", "Calls bridged", ["dialect"], namespace="txvoice", registry=registry)


_metrics: "weakref.WeakKeyDictionary[Any, TelephonyMetrics]" = weakref.WeakKeyDictionary()


def telephony_metrics(server: "VoiceServer") -> TelephonyMetrics:
    """The telephony counters of ``server`` (made on first use: a registry takes a name once)."""
    metrics = server.metrics
    found = _metrics.get(metrics)
    if found is None:
        found = _metrics[metrics] = TelephonyMetrics(metrics.registry)
    return found


def input_problem(server: "VoiceServer", session: Any, dialect: str, problem: str, message: str,
                  **fields: Any) -> None:
    """Log, count and carry on: one piece of bad input from a bridge."""
    telephony_metrics(server).problems.labels(dialect, problem).inc()
    server.record_error(problem)
    if session is not None:
        session.counters.errors += 1
    log.warn("{dialect} session {session_id}: {problem}: {message}", dialect=dialect, problem=problem,
             message=message, session_id=getattr(session, "id", None), **fields)


def audio_failed(failure: Failure, problem: Callable[[str, str], None], logger: Logger, bridge: str) -> None:
    """
    A chunk of a call's audio failed (``IChannelObserver.chunkFailed``): bad audio (a VoiceError)
    is an input problem like any other; anything else is logged with its traceback and counted
    as ``internal_error``.  The call goes on either way.
    """
    error = chunk_error(failure, logger, "processing {bridge} audio failed", bridge=bridge)
    problem(error.code, error.message)


def deliver_dtmf(server: "VoiceServer", channel: "VoiceChannel", dialect: str, digit: str, details: dict[str, Any]) -> None:
    """A DTMF digit for the pipeline: its listener now, and the stream's options for later turns."""
    telephony_metrics(server).dtmf.labels(dialect).inc()
    session = channel.session
    stream = channel.stream
    if stream is not None:
        stream.options.setdefault("dtmf", []).append(digit)
    channel.sink.event("dtmf", {"digit": digit, **details})
    pipeline = server.pipeline
    if IDtmfListener.providedBy(pipeline):
        try:
            pipeline.dtmf(session.id, session.conversation_id, digit, details)
        except Exception:
            log.failure("the pipeline failed on a DTMF digit {digit}", digit=digit)
    log.info("{dialect} session {session_id}: DTMF {digit}", dialect=dialect, session_id=session.id, digit=digit)
