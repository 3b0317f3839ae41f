"""espeak-ng text-to-speech: length, streaming, resampling, cancellation, safe text handling."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from txvoice.engines import pumpSynthesis
from txvoice.engines.interfaces import ISynthesis, ITextToSpeech
from txvoice.engines.tts_espeak import NATIVE_RATE, EspeakTTS, InvalidTTSOption, SynthesisError

LONG = " ".join(
    f"This is sentence number {n} of a long answer, spoken one clause after another." for n in range(1, 13)
)


def duration(synthesis) -> tuple[float, list[np.ndarray]]:
    chunks = list(synthesis)
    return sum(len(c) for c in chunks) / synthesis.sample_rate, chunks


def test_provides_interfaces(tts):
    assert verifyObject(ITextToSpeech, tts)
    assert verifyObject(ISynthesis, tts.synthesize("hello"))


@pytest.mark.parametrize("text", ["hello", "what time is it", "the quick brown fox jumps over the lazy dog"])
def test_audio_has_a_plausible_length(tts, text):
    seconds, chunks = duration(tts.synthesize(text))
    words = len(text.split())
    assert 0.2 * words <= seconds <= 1.0 * words + 0.5, seconds
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    assert np.abs(np.concatenate(chunks)).max() > 1000  # not silence


def test_rate_changes_the_length(tts):
    slow, _ = duration(tts.synthesize("one two three four five six", rate=100))
    fast, _ = duration(tts.synthesize("one two three four five six", rate=300))
    assert slow > 2 * fast


def test_resampled_output_keeps_its_length(tts):
    native, _ = duration(tts.synthesize("what is the date today"))
    for rate in (8000, 16000, 48000):
        synthesis = tts.synthesize("what is the date today", sample_rate=rate)
        assert synthesis.sample_rate == rate
        seconds, chunks = duration(synthesis)
        assert abs(seconds - native) < 0.01, (rate, seconds, native)
        assert all(c.dtype == np.int16 for c in chunks)


def test_first_chunk_comes_before_synthesis_ends(tts):
    synthesis = tts.synthesize(LONG)
    chunks = iter(synthesis)
    first = next(chunks)
    assert len(first) > 0 and synthesis.first_audio_at is not None
    # Nobody reads: espeak blocks on the full pipe, so it is still synthesizing.
    time.sleep(0.3)
    assert synthesis.process.poll() is None
    rest = list(chunks)
    assert synthesis.process.returncode == 0
    total = (len(first) + sum(len(c) for c in rest)) / NATIVE_RATE
    assert total > 30 and len(first) / NATIVE_RATE < 0.2
    assert synthesis.first_audio_at < synthesis.finished_at


def test_cancel_while_streaming_kills_the_process(tts):
    synthesis = tts.synthesize(LONG)
    chunks = iter(synthesis)
    next(chunks)
    synthesis.cancel()
    assert list(chunks) == []
    assert synthesis.process.returncode is not None and synthesis.process.returncode < 0
    synthesis.cancel()  # idempotent


def test_cancel_from_another_thread_stops_the_reader(tts):
    synthesis = tts.synthesize(LONG * 3)
    got = []
    reading = threading.Event()

    def reader():
        for chunk in synthesis:
            got.append(len(chunk))
            reading.set()
            time.sleep(0.01)  # slower than espeak: it soon waits on the pipe

    worker = threading.Thread(target=reader)
    worker.start()
    # Cancel mid-stream, not before espeak-ng's first chunk: on a loaded machine its start-up can take longer than
    # a fixed sleep, and a cancel before any audio is another test's case (test_cancel_before_reading).
    assert reading.wait(10)
    time.sleep(0.1)
    synthesis.cancel()
    worker.join(5)
    assert not worker.is_alive()
    assert synthesis.process.poll() is not None
    assert 0 < sum(got) / NATIVE_RATE < 60


def test_cancel_before_reading(tts):
    synthesis = tts.synthesize(LONG)
    synthesis.cancel()
    assert synthesis.process.poll() is not None
    assert list(synthesis) == []


def test_text_is_never_an_option_or_a_shell_command(tts, tmp_path):
    target = tmp_path / "x.wav"
    text = f'-w {target} --compile=en ; touch {tmp_path / "y"} $(touch {tmp_path / "z"})'
    seconds, _ = duration(tts.synthesize(text))
    assert seconds > 1
    assert list(tmp_path.iterdir()) == []


def test_markup_is_plain_text_unless_asked(tts):
    plain, _ = duration(tts.synthesize("hello"))
    tagged, _ = duration(tts.synthesize("<speak>hello</speak>"))
    assert tagged > plain + 0.3  # the tags are read out
    ssml = EspeakTTS(ssml=True)
    interpreted, _ = duration(ssml.synthesize("<speak>hello</speak>"))
    assert abs(interpreted - plain) < 0.15


def test_empty_text_makes_no_process(tts):
    synthesis = tts.synthesize("  \n ")
    assert synthesis.process is None and list(synthesis) == []


def test_bad_voices_and_rates(tts):
    with pytest.raises(InvalidTTSOption):
        tts.synthesize("hi", voice="-w /tmp/x")
    with pytest.raises(InvalidTTSOption):
        tts.synthesize("hi", rate=5)
    with pytest.raises(SynthesisError) as caught:
        list(tts.synthesize("hi", voice="nonexistentvoice"))
    assert "voice" in str(caught.value) and caught.value.code == "tts_failed"
    assert "en-us" in tts.voices("en")


def test_from_options():
    tts = EspeakTTS.fromOptions({"voice": "en-gb", "rate": "140", "sample_rate": "16000", "ssml": "yes"})
    assert (tts.voice, tts.rate, tts.sample_rate, tts.ssml) == ("en-gb", 140, 16000, True)
    seconds, _ = duration(tts.synthesize("hello world"))
    assert 0.4 < seconds < 2


@pytest_twisted.inlineCallbacks
def test_pump_delivers_on_the_reactor_thread_in_order(tts):
    synthesis = tts.synthesize("Hello there. How are you today? I am fine.", sample_rate=16000)
    delivered: list[tuple[bool, int]] = []
    encoded = yield pumpSynthesis(
        synthesis,
        lambda item: delivered.append((threading.current_thread() is threading.main_thread(), item)),
        transform=lambda pcm: len(pcm),
        flush=lambda: -1,
    )
    assert all(on_main for on_main, _ in delivered)
    sizes = [n for _, n in delivered]
    assert sizes[-1] == -1 and sum(sizes[:-1]) == encoded == synthesis.samples > 16000


@pytest_twisted.inlineCallbacks
def test_pump_cancel_stops_the_engine(tts):
    synthesis = tts.synthesize(LONG * 3)
    delivered = []
    first = defer.Deferred()

    def deliver(chunk):
        delivered.append(chunk)
        if not first.called:
            first.callback(None)

    d = pumpSynthesis(synthesis, deliver, transform=lambda pcm: (time.sleep(0.005), pcm)[1])
    yield first
    d.cancel()
    with pytest.raises(defer.CancelledError):
        yield d
    count = len(delivered)
    yield deferLater(0.2)
    assert len(delivered) == count
    assert synthesis.cancelled and synthesis.process.poll() is not None


def deferLater(seconds: float):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_pump_can_start_the_synthesis_in_the_worker(tts):
    threads = []

    def start():
        threads.append(threading.current_thread() is threading.main_thread())
        return tts.synthesize("good night")

    chunks = []
    samples = yield pumpSynthesis(start, chunks.append)
    assert threads == [False]
    assert samples == sum(len(c) for c in chunks) > NATIVE_RATE // 4


def test_warm_processes_speak_the_same_and_start_sooner():
    """A synthesis takes a process started ahead (its voice loaded) and the next one is started for it."""
    warm = EspeakTTS(warm=1)
    cold = EspeakTTS(warm=0)
    try:
        first = np.concatenate(list(warm.synthesize("It is ten past nine.")))  # cold: none waited yet
        assert (warm.warm.taken_warm, warm.warm.taken_cold) == (0, 1)
        time.sleep(0.3)  # the replacement loads its voice
        again = warm.synthesize("It is ten past nine.")
        second = np.concatenate(list(again))
        assert (warm.warm.taken_warm, warm.warm.taken_cold) == (1, 1)
        reference = np.concatenate(list(cold.synthesize("It is ten past nine.")))
        assert np.array_equal(first, second) and np.array_equal(second, reference)
        assert again.time_to_first_audio_ms is not None and again.time_to_first_audio_ms < 50
        assert not cold.warm._idle  # warm=0 keeps nothing waiting
    finally:
        idle = [p for q in warm.warm._idle.values() for p in q]
        warm.warm.close()
        assert idle and all(p.poll() is not None for p in idle)
