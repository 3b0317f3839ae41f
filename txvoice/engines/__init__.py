"""
Speech engines: speech-to-text, agents and text-to-speech, found by name through Twisted plugins.

The contract is in :mod:`txvoice.engines.interfaces`, the lookup in :mod:`txvoice.engines.registry`;
the offline defaults are ``pocketsphinx`` (STT), ``rules`` and ``echo`` (agents) and ``espeak``
(TTS).  :func:`pumpSynthesis` is the glue that plays a blocking :class:`ISynthesis` from the worker
pool to the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from txvoice.engines.interfaces import (
    AgentContext,
    AgentEvent,
    AgentReply,
    IAgent,
    IRecognitionStream,
    ISpeechToText,
    ISynthesis,
    ITextToSpeech,
    Tool,
    ToolError,
    ToolRegistry,
    Transcript,
    VocabularyError,
    Word,
)
from txvoice.engines.registry import EngineFactory, EngineNotFound, create_engine, engine_names, find_engine


def pumpSynthesis(
    synthesis: ISynthesis | Callable[[], ISynthesis],
    deliver: Callable[[Any], None],
    *,
    transform: Callable[[Any], Any] | None = None,
    flush: Callable[[], Any] | None = None,
    threadpool: Any = None,
    reactor: Any = None,
) -> Deferred:
    """
    Iterate ``synthesis`` on the worker pool and call ``deliver`` on the reactor thread with each
    chunk, in order, as soon as it is synthesized.  ``transform`` (e.g. an encoder's ``encode``)
    and ``flush`` (its ``flush``, called once at the end) run in the worker; ``None`` results are
    not delivered.  ``synthesis`` may be a callable that makes it, so that starting the engine
    (e.g. ``lambda: tts.synthesize(text)``, which spawns a process) happens in the worker too.  The
    Deferred fires with the number of samples after the last delivery; cancelling it cancels the
    synthesis (the engine stops) and nothing more is delivered.
    """
    if reactor is None:
        from twisted.internet import reactor
    if threadpool is None:
        threadpool = reactor.getThreadPool()
    stopped = False
    # An ISynthesis, or a zero-argument callable that makes one (zope interfaces make callable() useless here).
    maker: Callable[[], Any] | None = None
    current: list[Any] = []
    if callable(synthesis) and not ISynthesis.providedBy(synthesis):
        maker = synthesis
    else:
        current.append(synthesis)

    def onReactor(item: Any) -> None:
        if not stopped:
            deliver(item)

    def work() -> int:
        if not current:
            assert maker is not None
            current.append(maker())
            if stopped:
                current[0].cancel()
        samples = 0
        for chunk in current[0]:
            if stopped:
                break
            samples += len(chunk)
            item = transform(chunk) if transform is not None else chunk
            if item is not None:
                reactor.callFromThread(onReactor, item)
        if flush is not None and not stopped:
            item = flush()
            if item is not None:
                reactor.callFromThread(onReactor, item)
        return samples

    def cancel(d: Deferred) -> None:
        nonlocal stopped
        stopped = True
        for made in list(current):
            made.cancel()

    result: Deferred = Deferred(cancel)
    deferToThreadPool(reactor, threadpool, work).addBoth(lambda r: None if result.called else result.callback(r))
    return result


__all__ = [
    "AgentContext", "AgentEvent", "AgentReply", "EngineFactory", "EngineNotFound", "IAgent",
    "IRecognitionStream", "ISpeechToText", "ISynthesis", "ITextToSpeech", "Tool", "ToolError", "ToolRegistry",
    "Transcript", "VocabularyError", "Word", "create_engine", "engine_names", "find_engine", "pumpSynthesis",
]
