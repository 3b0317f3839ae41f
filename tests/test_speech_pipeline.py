"""
The speech pipeline with fake engines on a fake clock: event order, latency accounting, the
processing limits (queue, busy, timeout), cancellation and engine failures, to the call.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txvoice.audio.format import AudioFormat
from txvoice.config import VoiceConfig
from txvoice.engines import AgentReply, Transcript, VocabularyError
from txvoice.engines.interfaces import IAgent, IRecognitionStream, ISpeechToText, ISynthesis, ITextToSpeech
from txvoice.pipeline.interfaces import IResponseSink, ITurn, IVoicePipeline, TurnContext
from txvoice.pipeline.limits import ServerBusy, TurnLimiter
from txvoice.pipeline.speech import SpeechPipeline, parse_engine_options
from txvoice.service.voice import make_pipeline

FRAME = np.full(320, 1000, dtype=np.int16)


# -- fakes ------------------------------------------------------------------------------------------


class Pool:
    """A thread pool stand-in: work runs when the test says (``run``), or at once with ``eager``."""

    def __init__(self, eager: bool = True) -> None:
        self.eager = eager
        self.pending: deque = deque()

    def callInThreadWithCallback(self, onResult, f, *args, **kw) -> None:
        self.pending.append((onResult, f, args, kw))
        if self.eager:
            self.run()

    def run(self) -> None:
        """Run what is queued now (work queued by that work waits for the next run)."""
        for _ in range(len(self.pending)):
            onResult, f, args, kw = self.pending.popleft()
            try:
                result = f(*args, **kw)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)


class FakeReactor(Clock):
    """A Clock whose thread hops happen at once (the test is the only thread)."""

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool

    def callFromThread(self, f, *args, **kw) -> None:
        f(*args, **kw)

    def getThreadPool(self) -> Pool:
        return self.pool


@implementer(IRecognitionStream)
class FakeStream:
    sample_rate = 16000

    def __init__(self, stt: "FakeSTT") -> None:
        self.stt = stt
        self.samples = 0
        self.cancelled = False
        self.finished = False

    def feed(self, pcm) -> Transcript | None:
        if self.stt.fail_feed:
            raise RuntimeError("decoder exploded")
        self.samples += len(pcm)
        words = self.stt.text.split()[: self.samples // 640]
        if self.samples % 640 == 0 and words:
            return Transcript(" ".join(words), False, self.samples // 16)
        return None

    def finish(self) -> Transcript:
        self.finished = True
        return Transcript(self.stt.text, True, self.samples // 16, confidence=0.9)

    def cancel(self) -> None:
        self.cancelled = True


@implementer(ISpeechToText)
class FakeSTT:
    name = "fake-stt"
    sample_rate = 16000

    def __init__(self, text: str = "what time is it") -> None:
        self.text = text
        self.fail_feed = False
        self.streams: list[FakeStream] = []
        self.calls: list[dict] = []

    def startStream(self, phrases=None, grammar=None, options=None) -> FakeStream:
        self.calls.append({"phrases": phrases, "options": options})
        if phrases and any("xyzzy" in p for p in phrases):
            raise VocabularyError("unknown words: xyzzy", words=["xyzzy"])
        stream = FakeStream(self)
        self.streams.append(stream)
        return stream

    def checkPhrases(self, phrases):
        return []

    def warmUp(self, phrases=None, grammar=None, options=None) -> None:
        self.warmed = {"phrases": phrases, "options": options}


@implementer(IAgent)
class FakeAgent:
    """Answers at once, or with a Deferred the test fires (``hold``), or raises (``fail``)."""

    name = "fake-agent"
    tools = None

    def __init__(self) -> None:
        self.hold = False
        self.fail = False
        self.pending: list[Deferred] = []
        self.cancelled = 0

    def phrases(self) -> list[str]:
        return ["what time is it", "hello"]

    def respond(self, text, context):
        if self.fail:
            raise RuntimeError("agent exploded")
        context.emit("tool_call", name="get_time", arguments={})
        reply = AgentReply(f"you said {text}", tuple(context.events), {"rule": "fake"})
        if not self.hold:
            return reply

        def cancelled(d: Deferred) -> None:
            self.cancelled += 1

        d = Deferred(cancelled)
        d.reply = reply
        self.pending.append(d)
        return d

    def release(self) -> None:
        d = self.pending.pop(0)
        d.callback(d.reply)


@implementer(ISynthesis)
class FakeSynthesis:
    def __init__(self, sample_rate: int, chunks: int, fail: bool, gaps: list[float], clock: Clock | None) -> None:
        self.sample_rate = sample_rate
        self.chunks = chunks
        self.fail = fail
        self.gaps = list(gaps)
        self.clock = clock
        self.cancelled = False

    def __iter__(self):
        for i in range(self.chunks):
            if i < len(self.gaps) and self.clock is not None:
                self.clock.advance(self.gaps[i])  # synthesis takes time (the fake clock's)
            if self.cancelled:
                return
            yield np.full(self.sample_rate // 50, 500, dtype=np.int16)
        if self.fail:
            raise RuntimeError("synthesizer exploded")

    def cancel(self) -> None:
        self.cancelled = True


@implementer(ITextToSpeech)
class FakeTTS:
    name = "fake-tts"
    native_rate = 16000

    def __init__(self) -> None:
        self.fail = False
        self.gaps: list[float] = []
        self.clock: Clock | None = None
        self.made: list[FakeSynthesis] = []
        self.calls: list[dict] = []

    def synthesize(self, text, voice=None, rate=None, sample_rate=None, options=None) -> FakeSynthesis:
        self.calls.append({"text": text, "voice": voice, "rate": rate, "sample_rate": sample_rate})
        synthesis = FakeSynthesis(sample_rate or 16000, 5, self.fail, self.gaps, self.clock)
        self.made.append(synthesis)
        return synthesis


@implementer(IResponseSink)
class Sink:
    """Records what a turn sends, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def event(self, event_type: str, data: dict) -> None:
        self.calls.append(("event", (event_type, data)))

    def startResponse(self, text_content, audio_format, metadata) -> None:
        self.calls.append(("start", (text_content, audio_format, metadata)))

    def audio(self, chunk) -> None:
        self.calls.append(("audio", len(chunk)))

    def endResponse(self, summary: dict) -> None:
        self.calls.append(("end", summary))

    def events(self, event_type: str | None = None) -> list:
        return [d if event_type else (t, d) for kind, (t, d) in ((k, v) for k, v in self.calls if k == "event")
                if event_type is None or t == event_type]

    def names(self) -> list[str]:
        return [v[0] if k == "event" else k for k, v in self.calls]


class Harness:
    def __init__(self, eager: bool = True, **kw: Any) -> None:
        self.pool = Pool(eager)
        self.clock = FakeReactor(self.pool)
        self.stt, self.agent, self.tts = FakeSTT(), FakeAgent(), FakeTTS()
        self.tts.clock = self.clock
        self.pipeline = SpeechPipeline(self.stt, self.agent, self.tts, reactor=self.clock,
                                       threadpool=lambda: self.pool, timer=self.clock.seconds, **kw)
        self.latencies: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.pipeline.record_latency = lambda stage, s: self.latencies.append((stage, s))
        self.pipeline.record_error = self.errors.append

    def turn(self, frames: int = 10, **options: Any):
        sink = Sink()
        context = TurnContext("sess_1", "strm_1", AudioFormat("pcm_s16le", 16000, 1, 20), options=options)
        turn = self.pipeline.startTurn(context, sink)
        for _ in range(frames):
            deliver = turn.feed(None, FRAME)  # on the worker; what it returns runs on the reactor
            if deliver is not None:
                deliver()
            self.clock.advance(0.02)
        return turn, sink


# -- the turn ---------------------------------------------------------------------------------------


def test_interfaces() -> None:
    h = Harness()
    assert verifyObject(IVoicePipeline, h.pipeline)
    assert h.pipeline.decodes is True and h.pipeline.pipeline_rate == 16000
    turn, _ = h.turn(0)
    assert verifyObject(ITurn, turn)


def test_a_turn_sends_events_in_order_and_accounts_latency() -> None:
    h = Harness()
    turn, sink = h.turn()
    assert sink.names()[:2] == ["processing_started", "transcript"]
    partials = sink.events("transcript")
    assert partials and all(not p["final"] for p in partials) and partials[-1]["text"] == "what time is it"
    assert h.stt.calls[0]["phrases"] == ["what time is it", "hello"]  # grammar: the agent's phrases
    done = turn.finish()
    assert done.called
    names = sink.names()
    tail = names[len(partials) + 1:]
    assert tail == ["processing_progress", "transcript", "processing_progress", "tool_call", "ai_response",
                    "processing_progress", "start", "audio", "audio", "audio", "audio", "audio",
                    "processing_completed", "end"]
    final = sink.events("transcript")[-1]
    assert final["final"] is True and final["text"] == "what time is it" and final["confidence"] == 0.9
    ai = sink.events("ai_response")[0]
    assert ai["text"] == "you said what time is it" and ai["tool_calls"] == [{"name": "get_time", "arguments": {}}]
    start = next(v for k, v in sink.calls if k == "start")
    assert start[0] == "you said what time is it" and start[1] == AudioFormat("pcm_s16le", 16000, 1, 20)
    assert h.tts.calls[0]["sample_rate"] == 16000
    completed = sink.events("processing_completed")[0]
    assert set(completed["latency_ms"]) == {"stt", "agent", "tts", "first_audio", "total", "queue"}
    assert [stage for stage, _ in h.latencies] == ["stt", "agent", "tts", "first_audio", "total"]
    assert h.stt.streams[0].finished and not h.errors
    assert h.pipeline.limiter.active == 0


def test_latency_is_measured_per_stage() -> None:
    h = Harness(eager=False)
    turn, sink = h.turn()
    h.pool.run()
    h.clock.advance(0.1)  # the turn ends 100 ms after its last audio
    turn.finish()
    h.clock.advance(0.05)
    h.pool.run()  # final transcript 170 ms after the last audio (fed 20 ms before the turn's last frame time)
    h.clock.advance(0.2)
    h.pool.run()  # synthesis: first audio 200 ms after it started
    latency = sink.events("processing_completed")[0]["latency_ms"]
    assert latency["stt"] == pytest.approx(170, abs=1)
    assert latency["agent"] == 0
    assert latency["tts"] == pytest.approx(200, abs=1)
    assert latency["first_audio"] == pytest.approx(250, abs=1)
    assert latency["total"] == pytest.approx(250, abs=1)


def test_stream_options_choose_the_vocabulary_and_the_voice() -> None:
    h = Harness()
    turn, sink = h.turn(phrase_list=["hello there"], tts_voice="en-gb", tts_rate=150,
                        output_sample_rate=48000, output_codec="opus", stt_options={"partial_interval_ms": 100})
    turn.finish()
    assert h.stt.calls[0] == {"phrases": ["hello there"], "options": {"partial_interval_ms": 100, "mode": "grammar"}}
    assert h.tts.calls[0] == {"text": "you said what time is it", "voice": "en-gb", "rate": 150, "sample_rate": 48000}
    general, _ = h.turn(stt_mode="general")
    assert h.stt.calls[1]["phrases"] is None and h.stt.calls[1]["options"]["mode"] == "general"


@pytest.mark.parametrize("options, field", [
    ({"stt_mode": "loose"}, "stt_mode"),
    ({"phrase_list": "hello"}, "phrase_list"),
    ({"phrase_list": []}, "phrase_list"),
    ({"tts_rate": "fast"}, "tts_rate"),
    ({"stt_options": [1]}, "stt_options"),
])
def test_bad_options_fail_the_turn(options, field) -> None:
    h = Harness()
    turn, sink = h.turn(**options)
    turn.finish()
    assert sink.names() == ["processing_started", "processing_progress", "processing_failed"]
    failed = sink.events("processing_failed")[0]
    assert failed["code"] == "invalid_field" and failed["details"] == {"field": field}
    assert not h.stt.streams


# -- limits -----------------------------------------------------------------------------------------


def test_limiter_queues_then_refuses() -> None:
    limiter = TurnLimiter(max_active=2, max_queued=1)
    first, second = limiter.acquire(), limiter.acquire()
    assert first.called and second.called and limiter.active == 2
    third = limiter.acquire()
    assert not third.called and limiter.queued == 1
    with pytest.raises(ServerBusy) as busy:
        limiter.acquire()
    assert busy.value.code == "server_busy" and busy.value.details == {"active": 2, "queued": 1}
    limiter.release()
    assert third.called and limiter.active == 2 and limiter.queued == 0
    fourth = limiter.acquire()
    fourth.cancel()  # leaves the queue
    assert limiter.queued == 0
    limiter.release()
    limiter.release()
    assert limiter.active == 0 and limiter.stats()["refused"] == 1


def test_turns_beyond_the_limit_wait_and_beyond_the_queue_are_dropped() -> None:
    h = Harness(max_concurrent_processing=1, max_queued_turns=1)
    h.agent.hold = True
    a, a_sink = h.turn()
    b, b_sink = h.turn()
    c, c_sink = h.turn()
    a.finish()
    b_done = b.finish()
    assert b_sink.events("processing_progress")[-1] == {"stage": "queued", "progress": 0.0, "queued": 1}
    assert not h.stt.streams[1].finished  # waiting: not even transcribed yet
    assert c.finish().called
    assert c_sink.events("busy") == [{"code": "server_busy", "message": c_sink.events("busy")[0]["message"],
                                      "active": 1, "queued": 1}]
    assert c_sink.events("processing_failed")[0]["code"] == "server_busy"
    assert h.stt.streams[2].cancelled and h.errors == ["server_busy"]
    h.agent.release()  # a completes, b gets its slot
    assert a_sink.events("processing_completed")
    assert h.stt.streams[1].finished and not b_done.called
    h.agent.release()
    assert b_done.called and b_sink.events("processing_completed")
    assert h.pipeline.limiter.active == 0 and h.pipeline.limiter.queued == 0


def test_a_queued_turn_that_is_cancelled_leaves_the_queue() -> None:
    h = Harness(max_concurrent_processing=1, max_queued_turns=5)
    h.agent.hold = True
    a, _ = h.turn()
    b, b_sink = h.turn()
    a.finish()
    done = b.finish()
    assert h.pipeline.limiter.queued == 1
    sent = len(b_sink.calls)
    b.cancel()
    assert done.called and h.pipeline.limiter.queued == 0
    assert len(b_sink.calls) == sent and h.stt.streams[1].cancelled


def test_timeout_in_the_agent_fails_the_turn_and_frees_the_slot() -> None:
    h = Harness(processing_timeout_ms=5000)
    h.agent.hold = True
    turn, sink = h.turn()
    done = turn.finish()
    h.clock.advance(4.9)
    assert not done.called
    h.clock.advance(0.2)
    assert done.called and h.agent.cancelled == 1
    failed = sink.events("processing_failed")[0]
    assert failed["code"] == "processing_timeout" and failed["stage"] == "agent" and failed["timeout_ms"] == 5000
    assert "start" not in sink.names()  # no response was started, so none to close
    assert h.pipeline.limiter.active == 0 and h.errors == ["processing_timeout"]


def test_timeout_while_speaking_stops_the_synthesis_and_closes_the_response() -> None:
    h = Harness(eager=False, processing_timeout_ms=1000)
    turn, sink = h.turn()
    h.pool.run()
    done = turn.finish()
    h.pool.run()  # final transcript; the agent answers; the synthesis is queued on the pool
    assert sink.names()[-1] == "start"
    h.clock.advance(1.0)
    assert done.called
    h.pool.run()  # the synthesis starts after it was cancelled: nothing comes out
    assert h.tts.made[0].cancelled
    assert sink.names()[-2:] == ["processing_failed", "end"]
    assert sink.calls[-1][1]["reason"] == "processing_timeout" and sink.calls[-1][1]["truncated"] is True
    assert "audio" not in sink.names()


def test_a_reply_that_keeps_streaming_is_not_cut_but_a_stall_is() -> None:
    h = Harness(eager=False, processing_timeout_ms=1000)
    h.tts.gaps = [0.9, 0.9, 0.9, 0.9, 0.9]  # 4.5 s of synthesis, never 1 s without audio
    turn, sink = h.turn()
    turn.finish()
    h.pool.run()  # the final transcript, then the agent
    h.pool.run()  # the synthesis
    assert sink.events("processing_completed") and sink.names().count("audio") == 5
    h.tts.gaps = [0.5, 0.5, 1.1]
    turn, sink = h.turn()
    turn.finish()
    h.pool.run()
    h.pool.run()
    failed = sink.events("processing_failed")[0]
    assert failed["code"] == "processing_timeout" and "between two audio chunks" in failed["message"]
    assert sink.names().count("audio") == 2 and sink.calls[-1][1]["reason"] == "processing_timeout"
    assert h.tts.made[1].cancelled


def test_the_deadline_is_disarmed_when_the_turn_completes() -> None:
    h = Harness()
    turn, sink = h.turn()
    turn.finish()
    assert not h.clock.getDelayedCalls()


# -- cancellation -----------------------------------------------------------------------------------


def test_cancel_while_speaking_stops_the_synthesis_and_the_sink() -> None:
    h = Harness(eager=False)
    turn, sink = h.turn()
    h.pool.run()
    done = turn.finish()
    h.pool.run()
    sent = len(sink.calls)
    turn.cancel()
    assert done.called
    h.pool.run()
    assert h.tts.made[0].cancelled and len(sink.calls) == sent
    assert not h.clock.getDelayedCalls() and h.pipeline.limiter.active == 0


def test_cancel_in_the_agent_cancels_its_deferred() -> None:
    h = Harness()
    h.agent.hold = True
    turn, sink = h.turn()
    done = turn.finish()
    sent = len(sink.calls)
    turn.cancel()
    assert done.called and h.agent.cancelled == 1 and len(sink.calls) == sent


def test_cancel_while_listening_cancels_the_stream() -> None:
    h = Harness()
    turn, sink = h.turn(frames=3)
    sent = len(sink.calls)
    turn.cancel()
    assert turn.feed(None, FRAME) is None
    assert h.stt.streams[0].cancelled and h.stt.streams[0].samples == 3 * 320
    assert turn.finish().called and len(sink.calls) == sent


# -- engine failures --------------------------------------------------------------------------------


def test_failing_stt_fails_the_turn_and_the_next_turn_works() -> None:
    h = Harness()
    h.stt.fail_feed = True
    turn, sink = h.turn()
    turn.finish()
    failed = sink.events("processing_failed")[0]
    assert failed["code"] == "stt_failed" and failed["stage"] == "stt" and "decoder exploded" in failed["message"]
    assert h.stt.streams[0].cancelled
    h.stt.fail_feed = False
    turn, sink = h.turn()
    turn.finish()
    assert sink.events("processing_completed") and h.pipeline.limiter.active == 0


def test_unknown_words_in_a_phrase_list_are_reported() -> None:
    h = Harness()
    turn, sink = h.turn(phrase_list=["xyzzy plugh"])
    turn.finish()
    failed = sink.events("processing_failed")[0]
    assert failed["code"] == "stt_failed" and failed["error_code"] == "unknown_words"
    assert failed["details"] == {"words": ["xyzzy"]}


def test_failing_agent_fails_the_turn() -> None:
    h = Harness()
    h.agent.fail = True
    turn, sink = h.turn()
    turn.finish()
    failed = sink.events("processing_failed")[0]
    assert failed["code"] == "agent_failed" and failed["stage"] == "agent"
    assert h.errors == ["agent_failed"] and h.pipeline.limiter.active == 0


def test_failing_tts_closes_the_started_response() -> None:
    h = Harness()
    h.tts.fail = True
    turn, sink = h.turn()
    turn.finish()
    names = sink.names()
    assert names[-2:] == ["processing_failed", "end"] and names.count("audio") == 5
    assert sink.events("processing_failed")[0]["code"] == "tts_failed"
    assert sink.calls[-1][1]["reason"] == "tts_failed" and sink.calls[-1][1]["audio_ms"] == 100.0


# -- configuration ----------------------------------------------------------------------------------


def test_engine_options_parse() -> None:
    assert parse_engine_options("") == {}
    assert parse_engine_options("pool_size=20, voice=en-gb") == {"pool_size": "20", "voice": "en-gb"}
    with pytest.raises(ValueError, match="not key=value"):
        parse_engine_options("pool_size")


def test_unknown_engine_is_a_usage_error_listing_the_names() -> None:
    with pytest.raises(UsageError, match="no tts engine named 'festival'; available: espeak"):
        make_pipeline("speech", VoiceConfig(tts="festival"))
    with pytest.raises(UsageError, match="available: echo, speech"):
        make_pipeline("parrot", VoiceConfig())
    with pytest.raises(UsageError, match="stt mode"):
        make_pipeline("speech", VoiceConfig(stt_mode="loose"))


def test_default_pipeline_is_speech_with_the_default_engines() -> None:
    assert VoiceConfig().pipeline == "speech"
    pipeline = make_pipeline("speech", VoiceConfig(tts_options="rate=150"))
    assert isinstance(pipeline, SpeechPipeline)
    assert (pipeline.stt.name, pipeline.agent.name, pipeline.tts.name) == ("pocketsphinx", "rules", "espeak")
    assert pipeline.tts.rate == 150 and "what time is it" in pipeline.phrases
    assert pipeline.limiter.max_active == 10 and pipeline.limiter.max_queued == 50 and pipeline.timeout == 5.0


def test_the_final_transcript_is_made_on_the_synthesis_pool_not_behind_the_audio_threads() -> None:
    """Twenty turns ending together: their finishes must not queue behind every session's frames."""
    h = Harness(eager=False)
    speech_pool = Pool(eager=False)
    h.pipeline.useSynthesisPool(lambda: speech_pool)
    turn, sink = h.turn()
    done = turn.finish()
    assert not h.pool.pending  # nothing for the audio workers (still busy with frames)
    assert len(speech_pool.pending) == 1 and not h.stt.streams[0].finished
    speech_pool.run()  # the finish
    assert h.stt.streams[0].finished and sink.events("transcript")[-1]["final"] is True
    speech_pool.run()  # the synthesis
    assert done.called and sink.events("processing_completed")
    assert not h.pool.pending


def test_without_a_synthesis_pool_the_final_transcript_uses_the_worker_pool() -> None:
    h = Harness(eager=False)
    turn, sink = h.turn()
    done = turn.finish()
    assert len(h.pool.pending) == 1
    h.pool.run()
    assert h.stt.streams[0].finished
    h.pool.run()
    assert done.called and sink.events("processing_completed")
