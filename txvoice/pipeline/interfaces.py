"""
The contract between a session and whatever answers its voice turns.

A session opens one :class:`ITurn` per turn its stream's ingest finds (per stream in push-to-talk),
on the reactor thread.  Audio is fed on the audio worker pool, in arrival order; the response goes
out through an :class:`IResponseSink` that the session provides, on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from txvoice.audio.format import AudioFormat


@dataclass(slots=True)
class TurnContext:
    """What a pipeline knows about the turn it serves."""

    session_id: str
    stream_id: str
    input_format: AudioFormat
    user_id: str | None = None
    conversation_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class IResponseSink(Interface):
    """Where a turn's response goes; every method is called on the reactor thread."""

    def event(event_type: str, data: dict[str, Any]) -> None:
        """Send a processing event (``processing_started``, ``transcript`` ...) to the client."""

    def startResponse(text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        """Announce a response (sent as ``voice_response``); audio chunks follow."""

    def audio(chunk: Any) -> None:
        """
        One chunk of response audio in the format given to ``startResponse`` (``bytes``, or a
        ``numpy.int16`` array for PCM); the server resamples, encodes and paces it.
        """

    def endResponse(summary: dict[str, Any]) -> None:
        """Close the response (final ``voice_stream_chunk``)."""


class ITurn(Interface):
    """One voice turn in a pipeline."""

    def feed(raw: bytes | None, pcm: Any) -> Callable[[], object] | None:
        """
        Audio arrived (called on the audio worker pool, in order).  Either ``raw``, a chunk
        exactly as the client sent it (push-to-talk streams of a pipeline that does not decode),
        or ``pcm``, one frame of decoded ``numpy.int16`` mono audio at the pipeline rate (a view
        valid only during the call: copy what you keep).

        Return ``None``, or a callable for the reactor thread (to send a partial transcript, say):
        it goes back with the chunk's results and is called there, in order.  That is a turn's
        only way back to the reactor while it is fed.
        """

    def finish() -> Deferred[Any]:
        """
        The client ended the turn (reactor thread, after every ``feed``).  Produce the response
        through the sink; return a Deferred that fires when it has been sent.
        """

    def cancel() -> None:
        """Stop the turn now (barge-in, disconnect); the sink may no longer be written."""


class IVoicePipeline(Interface):
    """Answers voice turns; found by name by the daemon."""

    name = Attribute("Short name, e.g. 'echo'.")
    decodes = Attribute("True when turns want decoded PCM at ``pipeline_rate`` in ``feed``.")
    pipeline_rate = Attribute("Sample rate (Hz) of the PCM fed to turns when ``decodes`` is true.")

    def startTurn(context: TurnContext, sink: IResponseSink) -> ITurn:
        """
        Open a turn (reactor thread, when the ingest finds a turn's start).  Build objects only:
        anything slow (loading a model) belongs in the first ``feed``, on the worker.
        """


@dataclass(frozen=True, slots=True)
class PipelineHost:
    """
    What the daemon gives a pipeline that runs as a service: its reactor, the audio worker pool
    (short blocking engine calls), and where latencies (seconds, by stage) and error codes go.
    """

    reactor: Any
    workers: Any
    record_latency: Callable[[str, float], None]
    record_error: Callable[[str], None]


class IServicePipeline(IVoicePipeline):
    """A pipeline with a life of its own in the daemon (thread pools, engines to load at start)."""

    def makeService(host: PipelineHost) -> IService:
        """
        The pipeline's service (an ``IService``), wired to ``host``; the daemon starts it with the
        others and stops it once every session is closed, before the audio threads.
        """
