"""
The voice channel of a session: the part of a conversation that does not depend on the dialect.

A dialect turns its wire messages into ``start`` / ``audio`` / ``end`` calls; the channel opens a
turn in the pipeline, hands audio to the worker pool (in order, batched) and lets the turn answer
through the dialect's :class:`~txvoice.pipeline.interfaces.IResponseSink`.
"""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txvoice.audio.format import AudioFormat
from txvoice.errors import StateError
from txvoice.pipeline.interfaces import IResponseSink, ITurn, TurnContext
from txvoice.session.session import Session, SessionState

if TYPE_CHECKING:
    from txvoice.server.context import VoiceServer

_stream_keys = itertools.count()


class VoiceStream:
    """One open voice stream (``voice_start`` ... ``voice_end``)."""

    __slots__ = ("id", "format", "turn", "key", "frames", "bytes", "options")

    def __init__(self, stream_id: str, fmt: AudioFormat, turn: ITurn, options: dict[str, Any]) -> None:
        self.id = stream_id
        self.format = fmt
        self.turn = turn
        self.key = next(_stream_keys)
        self.frames = 0
        self.bytes = 0
        self.options = options

    def process(self, raw: bytes) -> None:
        """Worker thread: one chunk of client audio into the turn."""
        self.turn.feed(raw, None)

    def as_dict(self) -> dict[str, Any]:
        return {"stream_id": self.id, "format": self.format.as_dict(), "frames": self.frames, "bytes": self.bytes}


class VoiceChannel:
    """Streams and turns of one session."""

    log = Logger(namespace="txvoice.session")

    def __init__(self, server: "VoiceServer", session: Session, sink: IResponseSink) -> None:
        self.server = server
        self.session = session
        self.sink = sink
        self.stream: VoiceStream | None = None
        self._responding: ITurn | None = None

    def start(self, fmt: AudioFormat, stream_id: str | None = None, options: dict[str, Any] | None = None) -> VoiceStream:
        """Open a voice stream; raise ``stream_already_active`` when one is open."""
        if self.stream is not None:
            raise StateError(
                f"voice stream {self.stream.id} is already active; send voice_end first",
                code="stream_already_active",
            )
        session = self.session
        stream_id = stream_id or "strm_" + uuid.uuid4().hex[:16]
        context = TurnContext(
            session_id=session.id,
            stream_id=stream_id,
            input_format=fmt,
            user_id=session.user_id,
            conversation_id=session.conversation_id,
            options=dict(options or {}),
        )
        turn = self.server.pipeline.startTurn(context, self.sink)
        self.stream = VoiceStream(stream_id, fmt, turn, context.options)
        session.transition(SessionState.STREAMING)
        return self.stream

    def audio(
        self, raw: bytes, deliver: Callable[[Any], None] | None = None, fail: Callable[[Any], None] | None = None
    ) -> None:
        """
        A chunk of audio for the active stream (hot path: no hop here, just queue it).
        ``deliver`` is called on the reactor with the chunk's processing result once it is done
        (dialects that acknowledge every chunk use it); ``fail`` with the Failure when it raised.
        """
        stream = self.stream
        if stream is None:
            raise StateError("audio received but no voice stream is active; send voice_start first", code="no_active_stream")
        stream.frames += 1
        stream.bytes += len(raw)
        self.session.counters.audio_frames_in += 1
        self.server.workers.submit(stream.key, stream.process, raw, deliver, fail)

    def end(self, stream_id: str | None = None) -> tuple[VoiceStream, Deferred]:
        """
        Close the active stream; the turn answers once all its audio has been processed.  Returns
        the stream and a Deferred that fires when the response has been sent.
        """
        stream = self.active(stream_id)
        self.stream = None
        self.session.transition(SessionState.AUTHENTICATED)
        self.session.counters.turns += 1
        if self.session.conversation_id is not None:
            self.server.conversation(self.session.conversation_id).turns += 1
        done: Deferred = Deferred()

        def finish(_: object) -> None:
            d = stream.turn.finish()
            d.chainDeferred(done)

        # Queued behind the stream's audio so the turn has seen every chunk before it finishes.
        self.server.workers.submit(stream.key, _noop, None, finish, done.errback)
        self._responding = stream.turn

        def responded(result: object) -> object:
            if self._responding is stream.turn:
                self._responding = None
            return result

        done.addBoth(responded)
        return stream, done

    def active(self, stream_id: str | None) -> VoiceStream:
        stream = self.stream
        if stream is None:
            raise StateError("no voice stream is active", code="no_active_stream")
        if stream_id is not None and stream_id != stream.id:
            raise StateError(f"stream {stream_id!r} is not the active stream {stream.id!r}", code="unknown_stream")
        return stream

    def cancel(self) -> None:
        """Drop the active stream and stop any response (disconnect)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.turn.cancel()
        responding, self._responding = self._responding, None
        if responding is not None:
            responding.cancel()


def _noop(_: object) -> None:
    return None
