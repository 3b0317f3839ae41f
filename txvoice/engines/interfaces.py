"""
The contract of the speech engines: speech-to-text, agent, text-to-speech, and the values that cross it.

Threading model (the pipeline relies on it):

* :class:`ISpeechToText`, :class:`IRecognitionStream`, :class:`ITextToSpeech` and
  :class:`ISynthesis` are used from the audio worker thread pool.  Their methods may block (load a
  model, run a decoder, read a pipe) and must never be called on the reactor thread.  One stream or
  synthesis serves one turn and is fed by one thread at a time; only ``cancel()`` may be called from
  another thread (the reactor's) while a worker is inside ``feed`` or iterating.
* :class:`IAgent` is used on the reactor thread.  ``respond`` must not block; it returns a reply or a
  Deferred that fires with one, and cancelling that Deferred cancels the work (and its tool calls).
* Each engine is made by a factory that is an :class:`twisted.plugin.IPlugin` provider, found by
  name (see :mod:`txvoice.engines.registry`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from txvoice.errors import VoiceError


# --- errors ---------------------------------------------------------------------------------------


class VocabularyError(VoiceError):
    """A phrase list or grammar names words the recognizer cannot recognize, or does not parse."""

    code = "unknown_words"


class ToolError(VoiceError):
    """An agent asked for a tool that does not exist or was called with bad arguments."""

    code = "tool_error"


# --- speech-to-text -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word with its place in the stream's audio."""

    word: str
    start_ms: int
    end_ms: int
    confidence: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start_ms": self.start_ms, "end_ms": self.end_ms, "confidence": self.confidence}


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result: a partial hypothesis while audio flows, or the final one."""

    text: str
    final: bool
    audio_ms: int
    words: tuple[Word, ...] = ()
    confidence: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "final": self.final,
            "audio_ms": self.audio_ms,
            "confidence": self.confidence,
            "words": [w.as_dict() for w in self.words],
        }


class IRecognitionStream(Interface):
    """One utterance being recognized (worker thread)."""

    sample_rate = Attribute("Rate (Hz) of the PCM that feed() takes.")

    def feed(pcm) -> Transcript | None:
        """
        Recognize a chunk of mono ``numpy.int16`` PCM (or raw little-endian int16 bytes) at
        ``sample_rate``.  Return a new partial :class:`Transcript` when the hypothesis changed and
        enough audio passed since the last one (rate-limited), else ``None``.
        """

    def finish() -> Transcript:
        """End the utterance and return the final transcript with word timings."""

    def cancel() -> None:
        """Abandon the utterance; safe from any thread, idempotent; feed/finish then do nothing."""


class ISpeechToText(Interface):
    """A streaming recognizer (worker thread)."""

    name = Attribute("Engine name, e.g. 'pocketsphinx'.")
    sample_rate = Attribute("Rate (Hz) of the PCM its streams take (resample to this before feeding).")

    def startStream(phrases: Sequence[str] | None = None, grammar: str | None = None,
                    options: Mapping[str, Any] | None = None) -> IRecognitionStream:
        """
        Open a recognition stream.  ``phrases`` (a list of phrases the speaker may say) or
        ``grammar`` (engine-specific, e.g. JSGF) constrain recognition for this stream; both
        ``None`` means the deployment's default.  Raise :class:`VocabularyError` for words the
        engine cannot recognize.  May block (loads a model on first use).
        """

    def checkPhrases(phrases: Sequence[str]) -> list[str]:
        """Return the words in ``phrases`` the engine cannot recognize (empty when all are known)."""

    def warmUp(phrases: Sequence[str] | None = None, grammar: str | None = None,
               options: Mapping[str, Any] | None = None) -> None:
        """
        Load what streams opened with these arguments (as for :meth:`startStream`) need, for as
        many streams at once as the engine is configured for, so the first turns load nothing
        (optional to call; blocks: call it off the reactor).
        """


# --- text-to-speech -------------------------------------------------------------------------------


class ISynthesis(Interface):
    """
    The audio of one text, as a stream: iterate it (worker thread) to get mono ``numpy.int16``
    chunks at ``sample_rate`` as soon as they are synthesized.
    """

    sample_rate = Attribute("Rate (Hz) of the chunks.")
    cancelled = Attribute("True once cancel() was called.")

    def __iter__() -> Iterator:
        """Yield the audio chunks; ends when the text is spoken or the synthesis is cancelled."""

    def cancel() -> None:
        """Stop synthesizing now (kill the process, free the engine); safe from any thread, idempotent."""


class ITextToSpeech(Interface):
    """A speech synthesizer (worker thread)."""

    name = Attribute("Engine name, e.g. 'espeak'.")
    native_rate = Attribute("Rate (Hz) the engine synthesizes at.")

    def synthesize(text: str, voice: str | None = None, rate: int | None = None,
                   sample_rate: int | None = None, options: Mapping[str, Any] | None = None) -> ISynthesis:
        """
        Start speaking ``text`` (plain text unless ``options`` ask for markup).  ``voice`` and
        ``rate`` (words per minute) override the engine's defaults; ``sample_rate`` asks for
        resampled output (``None``: ``native_rate``).
        """


# --- agent ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Something an agent did while answering, e.g. a tool call; sent to the client as an event."""

    type: str
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.data}


@dataclass(slots=True)
class AgentContext:
    """
    Who is talking and where: agents keep per-conversation memory keyed by ``conversation_id``
    (falling back to ``session_id``).  ``listener`` (reactor thread) hears each event as it happens,
    before the reply is complete.
    """

    conversation_id: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    listener: Callable[[AgentEvent], None] | None = None
    events: list[AgentEvent] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The memory key of this conversation."""
        return self.conversation_id or self.session_id or "default"

    def emit(self, event_type: str, **data: Any) -> AgentEvent:
        """Record an event and tell the listener, if any."""
        event = AgentEvent(event_type, data)
        self.events.append(event)
        if self.listener is not None:
            self.listener(event)
        return event


@dataclass(frozen=True, slots=True)
class AgentReply:
    """What the agent says back, and what it did to get there."""

    text: str
    events: tuple[AgentEvent, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


class IAgent(Interface):
    """Answers the text of a turn (reactor thread)."""

    name = Attribute("Agent name, e.g. 'rules'.")
    tools = Attribute("The agent's ToolRegistry (may be empty).")

    def respond(text: str, context: AgentContext):
        """
        Answer ``text`` (what the user said) in ``context``.  Return an :class:`AgentReply` or a
        Deferred firing with one; never block.  Cancelling the Deferred abandons the answer.
        """

    def phrases() -> list[str] | None:
        """The phrases this agent understands (to constrain recognition), or ``None`` for open vocabulary."""


# --- tools ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    """
    A function an agent may call by name with a JSON-like argument dict.  ``func(**arguments)``
    returns a JSON-like result or a Deferred of one; it runs on the reactor thread, so a blocking
    tool must defer to a thread itself.
    """

    name: str
    func: Callable[..., Any]
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)  # JSON-schema-like: {"arg": {"type": ...}}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}


class ToolRegistry:
    """The tools an agent can call; every call is reported as ``tool_call`` / ``tool_result`` events."""

    log = Logger()

    def __init__(self, tools: Sequence[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> Tool:
        """Add a tool; a tool of the same name is replaced."""
        self._tools[tool.name] = tool
        return tool

    def tool(self, name: str | None = None, description: str = "",
             parameters: Mapping[str, Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register`."""

        def deco(func: Callable[..., Any]) -> Callable[..., Any]:
            self.register(Tool(name or func.__name__, func, description or (func.__doc__ or "").strip(),
                               dict(parameters or {})))
            return func

        return deco

    def names(self) -> list[str]:
        return sorted(self._tools)

    def describe(self) -> list[dict[str, Any]]:
        return [self._tools[n].describe() for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def call(self, name: str, arguments: Mapping[str, Any] | None = None,
             context: AgentContext | None = None) -> Deferred:
        """
        Call tool ``name`` with ``arguments``; return a Deferred of its result.  The call and its
        result (or error) are reported as events on ``context``.
        """
        arguments = dict(arguments or {})
        if context is not None:
            context.emit("tool_call", name=name, arguments=arguments)
        tool = self._tools.get(name)
        error = None
        if tool is None:
            error = ToolError(f"unknown tool {name!r}; available: {', '.join(self.names()) or 'none'}", tool=name)
        elif unknown := set(arguments) - set(tool.parameters):
            error = ToolError(f"tool {name!r} has no argument(s) {sorted(unknown)}", tool=name)
        if error is not None or tool is None:
            error = error or ToolError(f"unknown tool {name!r}", tool=name)
            if context is not None:
                context.emit("tool_error", name=name, error=error.message)
            return fail(error)
        started = time.perf_counter()

        def report(result: Any) -> Any:
            elapsed = round((time.perf_counter() - started) * 1000, 3)
            self.log.debug("tool {tool} answered in {elapsed_ms} ms", tool=name, elapsed_ms=elapsed)
            if context is not None:
                context.emit("tool_result", name=name, result=result, elapsed_ms=elapsed)
            return result

        def failed(failure):
            if failure.check(CancelledError):
                if context is not None:
                    context.emit("tool_cancelled", name=name)
                return failure
            if failure.check(ToolError):
                self.log.info("tool {tool} refused: {error}", tool=name, error=failure.value.message)
            else:
                self.log.failure("tool {tool} failed", failure, tool=name, arguments=arguments)
            if context is not None:
                context.emit("tool_error", name=name, error=str(failure.value))
            return failure

        return maybeDeferred(tool.func, **arguments).addCallbacks(report, failed)


# --- factories (plugins) --------------------------------------------------------------------------


class IEngineFactory(Interface):
    """Makes engines of one kind; the plugin objects provide this and a kind-specific subinterface."""

    name = Attribute("The name users pick the engine by (``--stt NAME``).")
    description = Attribute("One line saying what the engine is.")

    def create(options: Mapping[str, Any] | None = None):
        """Make an engine; ``options`` come from the deployment (strings from the command line are fine)."""


class ISpeechToTextFactory(IEngineFactory):
    """Makes :class:`ISpeechToText` engines."""


class IAgentFactory(IEngineFactory):
    """Makes :class:`IAgent` engines."""


class ITextToSpeechFactory(IEngineFactory):
    """Makes :class:`ITextToSpeech` engines."""


__all__ = [
    "AgentContext", "AgentEvent", "AgentReply", "IAgent", "IAgentFactory", "IEngineFactory",
    "IRecognitionStream", "ISpeechToText", "ISpeechToTextFactory", "ISynthesis", "ITextToSpeech",
    "ITextToSpeechFactory", "Tool", "ToolError", "ToolRegistry", "Transcript", "VocabularyError", "Word",
]
