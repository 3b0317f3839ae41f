"""
The speech pipeline with engines defined here, found by name as Twisted plugins by a real daemon:
a barge-in stops a synthesis still running (its espeak-ng process is gone), a slow agent times out,
failing engines fail their turn with their code, and the session goes on after each.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from daemons import ROOT, start_daemon
from signal_speech import silence, speak
from voiceclient import VoiceClient, events, is_event, is_final, pcm_frames

pytestmark = pytest.mark.slow

ENGINES = '''
"""Engines of txvoice's speech tests, loaded by the daemon under test through a Twisted plugin."""

import time

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import deferLater
from zope.interface import implementer

from txvoice.engines.agent_rules import RulesAgent
from txvoice.engines.interfaces import AgentReply, IAgent, ISynthesis, ITextToSpeech
from txvoice.engines.tts_espeak import EspeakTTS, SynthesisError


@implementer(IAgent)
class ScriptedAgent:
    """The rules agent, told by the stream's options to be slow, to fail, or what to say."""

    name = "scripted"

    def __init__(self, options):
        self.rules = RulesAgent()
        self.tools = self.rules.tools

    def phrases(self):
        return self.rules.phrases()

    def respond(self, text, context):
        options = context.options
        if options.get("agent_fail"):
            raise RuntimeError("the scripted agent was told to fail")

        def answer():
            if "agent_reply" in options:
                return AgentReply(options["agent_reply"], (), {"agent": self.name})
            return self.rules.respond(text, context)

        delay = options.get("agent_delay_ms", 0) / 1000.0
        return deferLater(reactor, delay, answer) if delay else maybeDeferred(answer)


@implementer(ISynthesis)
class PacedSynthesis:
    """espeak-ng read at real time, as a streaming TTS service delivers: the process lives as long as the reply."""

    def __init__(self, inner, explode):
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.explode = explode

    @property
    def cancelled(self):
        return self.inner.cancelled

    def __iter__(self):
        for i, chunk in enumerate(self.inner):
            yield chunk
            if self.explode and i == 2:
                raise SynthesisError("the paced synthesizer was told to explode")
            time.sleep(len(chunk) / self.sample_rate)

    def cancel(self):
        self.inner.cancel()


@implementer(ITextToSpeech)
class PacedEspeak:
    name = "paced"
    native_rate = 22050

    def __init__(self, options):
        self.inner = EspeakTTS(chunk_ms=20)

    def synthesize(self, text, voice=None, rate=None, sample_rate=None, options=None):
        synthesis = self.inner.synthesize(text, voice=voice, rate=rate, sample_rate=sample_rate)
        return PacedSynthesis(synthesis, "explode" in text.lower())
'''

PLUGINS = '''
from txvoice.engines.registry import EngineFactory

scripted = EngineFactory("agent", "scripted", "txvoice_test_engines:ScriptedAgent", "test: a rules agent told what to do")
paced = EngineFactory("tts", "paced", "txvoice_test_engines:PacedEspeak", "test: espeak-ng read at real time")
'''


@pytest.fixture(scope="module")
def plugin_daemon(tmp_path_factory):
    """A daemon whose agent and TTS are this module's plugins (a drop-in twisted/plugins dir on its path)."""
    tmp = tmp_path_factory.mktemp("speech-plugins")
    (tmp / "txvoice_test_engines.py").write_text(ENGINES)
    dropins = tmp / "twisted" / "plugins"
    dropins.mkdir(parents=True)
    (dropins / "txvoice_test_engines_plugins.py").write_text(PLUGINS)
    d = start_daemon(tmp, "--pipeline", "speech", "--agent", "scripted", "--tts", "paced",
                     "--processing-timeout-ms", "500", env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)])})
    yield d
    d.stop()


@pytest.fixture
def client(plugin_daemon):
    c = VoiceClient(plugin_daemon.url)
    yield c
    c.close()


def espeak_children(pid: int) -> set[int]:
    """The espeak-ng processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and comm.startswith("espeak"):
            found.add(int(entry.name))
    return found


def turn(client: VoiceClient, text: str, until, **options) -> list:
    """One push-to-talk turn (sent at once) with ``options``; everything up to ``until``."""
    client.send_json("voice_start", {"mode": "push_to_talk", "options": options})
    assert client.next_json()["type"] == "voice_start"
    for frame in pcm_frames(speak(text, 16000, pad_ms=(200, 200))):
        client.ws.send(frame)
    client.send_json("voice_end")
    return client.until(until, timeout=20)


def test_plugin_engines_are_found_by_name(client) -> None:
    received = turn(client, "what time is it", is_final)
    (answer,) = events(received, "ai_response")
    assert answer["agent"] == "scripted" and answer["text"].startswith("It is")  # it delegates to the rules
    assert [e["name"] for e in events(received, "tool_call")] == ["get_time"]
    announce = next(m["data"] for _, m in received if isinstance(m, dict) and m["type"] == "voice_response")
    assert announce["metadata"]["agent"] == "scripted" and announce["metadata"]["tts"] == "paced"
    assert events(received, "processing_completed")


def test_barge_in_stops_the_synthesis_and_its_process(client, plugin_daemon) -> None:
    client.send_json("voice_start", {"mode": "voice_activity", "options": {"silence_ms": 500}})
    client.next_json()
    for frame in pcm_frames(np.concatenate([speak("help", 16000), silence(800)])):
        client.ws.send(frame)
    client.until(lambda m: isinstance(m, dict) and m["type"] == "voice_response", timeout=20)
    time.sleep(0.5)
    speaking = espeak_children(plugin_daemon.proc.pid)
    assert speaking, "the paced synthesis should still be running (the help reply lasts ~9 s)"
    # Talk over the reply, in real time.
    due = time.perf_counter()
    barge = None
    for frame in pcm_frames(np.concatenate([speak("thank you", 16000, pad_ms=(100, 0)), silence(800)])):
        client.ws.send(frame)
        due += 0.02
        time.sleep(max(0.0, due - time.perf_counter()))
        while barge is None and not client.inbox.empty():
            _, msg = client.next()
            if is_event(msg, "barge_in"):
                barge = msg["data"]
    if barge is None:
        barge = client.until(lambda m: is_event(m, "barge_in"), timeout=10)[-1][1]["data"]
    assert 0 < barge["played_ms"] < 3000
    tail = client.until(is_final, timeout=10)
    assert not [m for _, m in tail if isinstance(m, bytes)], "audio kept coming after the barge-in"
    assert tail[-1][1]["data"]["cancelled"] is True and tail[-1][1]["data"]["reason"] == "barge_in"
    deadline = time.monotonic() + 3
    while speaking & espeak_children(plugin_daemon.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not speaking & espeak_children(plugin_daemon.proc.pid), "the synthesis process outlived the barge-in"
    # The interruption is a turn of its own, answered.
    rest = client.until(is_final, timeout=20)
    assert [a["text"] for a in events(rest, "ai_response")] == ["You're welcome."]
    assert rest[-1][1]["data"]["cancelled"] is False
    client.send_json("voice_end")


def test_slow_agent_times_out_and_the_session_goes_on(client) -> None:
    started = time.monotonic()
    received = turn(client, "what time is it", lambda m: is_event(m, "processing_failed"), agent_delay_ms=3000)
    assert time.monotonic() - started < 2.5
    failed = events(received, "processing_failed")[0]
    assert failed["code"] == "processing_timeout" and failed["stage"] == "agent" and failed["timeout_ms"] == 500
    assert not events(received, "ai_response")
    received = turn(client, "good morning", lambda m: is_event(m, "processing_completed"))
    assert events(received, "ai_response")[0]["text"].startswith("Hello!")


def test_failing_engines_fail_their_turn_and_the_session_goes_on(client) -> None:
    received = turn(client, "hello", lambda m: is_event(m, "processing_failed"), phrase_list=["xyzzy plugh"])
    failed = events(received, "processing_failed")[0]
    assert failed["code"] == "stt_failed" and failed["error_code"] == "unknown_words"
    assert failed["details"]["words"] == ["xyzzy", "plugh"]

    received = turn(client, "hello", lambda m: is_event(m, "processing_failed"), agent_fail=True)
    failed = events(received, "processing_failed")[0]
    assert failed["code"] == "agent_failed" and "told to fail" in failed["message"]

    received = turn(client, "hello", is_final, agent_reply="please explode now")
    failed = events(received, "processing_failed")[0]
    assert failed["code"] == "tts_failed" and failed["error_code"] == "tts_failed" and failed["stage"] == "tts"
    assert received[-1][1]["data"]["reason"] == "tts_failed" and received[-1][1]["data"]["truncated"] is True

    received = turn(client, "thank you", is_final)
    assert events(received, "ai_response")[0]["text"] == "You're welcome."
    assert events(received, "processing_completed") and received[-1][1]["data"]["cancelled"] is False
