"""
What a voice channel tells the dialect that serves it about the audio it was given.

The reply goes to the dialect's :class:`~txvoice.pipeline.interfaces.IResponseSink`; the fate of
each chunk (processed: acknowledge it if the dialect acknowledges chunks; failed: tell the client)
goes to its :class:`IChannelObserver`, given to the channel once, when it is made.  Both are
called on the reactor thread.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from txvoice.errors import VoiceError


class IChannelObserver(Interface):
    """The dialect's side of a :class:`~txvoice.server.channel.VoiceChannel`'s audio."""

    def chunkProcessed(events: list[Any] | None) -> None:
        """A chunk has been processed (``events``: what it caused, already handled by the channel)."""

    def chunkFailed(failure: Failure) -> None:
        """A chunk, or the stream's end, could not be processed: report it to the client."""


def chunk_error(failure: Failure, log: Any, what: str = "processing audio failed",
                message: str = "the audio could not be processed", **fields: Any) -> VoiceError:
    """
    What a dialect tells the client of a chunk's ``failure`` (``IChannelObserver.chunkFailed``):
    bad audio (a :class:`VoiceError`) as it is; anything else is logged through ``log`` with its
    traceback (``what``, a format of ``fields``) and reported as ``internal_error`` with ``message``
    (no internals reach the client).  The session goes on either way.
    """
    error = failure.value
    if isinstance(error, VoiceError):
        return error
    log.failure(what, failure, **fields)
    return VoiceError(message, code="internal_error")


@implementer(IChannelObserver)
class LoggingObserver:
    """For a channel whose dialect neither acknowledges chunks nor reports failures: log them."""

    log = Logger(namespace="txvoice.session")

    def chunkProcessed(self, events: list[Any] | None) -> None:
        pass

    def chunkFailed(self, failure: Failure) -> None:
        self.log.failure("audio chunk failed", failure)
