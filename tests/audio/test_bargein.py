"""
The fast barge-in rule (txvoice.audio.bargein.FastOnset) on generated audio: it fires on speech,
sooner than the three-frame rule, and not on the false-barge-in corpus (bench/barge_corpus.py:
pink noise, espeak-ng babble, coughs, clicks, the reply's echo at -20 dB), where it fires no more
often than the three-frame rule.  Deterministic: fixed seeds, espeak-ng output made in memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import barge_corpus as corpus  # noqa: E402

from txvoice.audio.bargein import FastOnset  # noqa: E402
from txvoice.audio.format import AudioFormat  # noqa: E402
from txvoice.audio.ingest import BargeOnset, StreamIngest, StreamSettings, Voiced  # noqa: E402
from txvoice.audio.vad import SpeechStarted, VoiceActivityDetector  # noqa: E402
from txvoice.errors import ProtocolError  # noqa: E402

FRAME = 320
REPLY = "The weather today is sunny with a light breeze from the west, and it will stay warm."


def onsets(x: np.ndarray, rule: str) -> list[int]:
    """The 20 ms frames at which ``rule`` fires over ``x`` (the 20 ms VAD running beside it, as in the ingest)."""
    vad = VoiceActivityDetector(16000, 20, 0.5, hangover_ms=300)
    fast = FastOnset(16000, 0.5)
    fired = []
    for k, i in enumerate(range(0, len(x) - FRAME + 1, FRAME)):
        frame = x[i:i + FRAME]
        speaking = vad.speaking
        event = vad.process(frame)
        if rule == "fast":
            event = fast.push(frame, speaking)
        if isinstance(event, SpeechStarted):
            fired.append(k)
    return fired


def with_speech(bed: np.ndarray, text: str = "Hello there.", at_s: float = 1.0) -> tuple[np.ndarray, int]:
    """``bed`` with espeak-ng speech added at ``at_s``; the mix and the speech's first sounding frame."""
    speech = corpus.espeak(text)
    at = int(at_s * 16000)
    x = bed.astype(np.float64).copy()
    x[at:at + len(speech)] += speech
    first = next(i for i in range(0, len(speech), FRAME) if np.abs(speech[i:i + FRAME].astype(np.int32)).max() > 300)
    return corpus.to_int16(x), (at + first) // FRAME


@pytest.mark.parametrize("bed", ["silence", "pink -40 dBFS", "pink -50 dBFS"])
def test_fast_fires_on_speech_within_one_packet_of_its_first_sound(bed):
    n = 3 * 16000
    noise = np.zeros(n) if bed == "silence" else corpus.at_level(corpus.pink(n), float(bed.split()[1]))
    x, first = with_speech(noise)
    fast = [k for k in onsets(x, "fast") if k >= 45]
    three = [k for k in onsets(x, "frames3") if k >= 45]
    assert fast and first <= fast[0] <= first + 3, (fast, first)
    assert three and fast[0] < three[0], (fast, three)  # sooner than the three-frame rule


def corpus_counts() -> dict[str, tuple[int, int]]:
    reply = corpus.espeak(REPLY)
    counts = {}
    for name, kind, _, x in corpus.clips(10.0):
        if kind == "echo":
            x = corpus.to_int16(corpus.echo_of(reply, len(x)))
        # The first second is the detector meeting a new stream; the bench plays it before the reply too.
        counts[name] = tuple(len([k for k in onsets(x, rule) if k >= 50]) for rule in ("frames3", "fast"))
    return counts


def test_fast_fires_no_more_often_than_three_frames_on_the_corpus():
    counts = corpus_counts()
    print(counts)
    assert sum(f for _, f in counts.values()) <= sum(t for t, _ in counts.values()), counts
    for name in ("pink -50 dBFS", "pink -40 dBFS", "pink -30 dBFS", "coughs -25 dBFS", "clicks -20 dBFS",
                 "echo -20 dB", "babble -45 dBFS", "babble -38 dBFS"):
        assert counts[name][1] == 0, (name, counts[name])


def test_the_corpus_is_what_it_says():
    for name, kind, level, x in corpus.clips(3.0):
        if kind in ("pink", "babble"):
            assert abs(corpus.dbfs(x) - level) < 0.5, name
        assert x.dtype == np.int16 and len(x) == 48000


def pcm_chunks(x: np.ndarray):
    for i in range(0, len(x) - FRAME + 1, FRAME):
        yield x[i:i + FRAME].astype("<i2").tobytes()


@pytest.mark.parametrize("rule", ["fast", "frames3"])
def test_the_ingest_reports_a_barge_onset_only_with_the_fast_rule(rule):
    x, first = with_speech(np.zeros(3 * 16000))
    settings = StreamSettings.parse("voice_activity", {"barge_in_rule": rule})
    ingest = StreamIngest(AudioFormat("pcm_s16le", 16000, 1), settings, answers=False)
    ingest.replying(True)  # a reply is playing: barge-in is possible
    seen: list[tuple[int, object]] = []
    for k, chunk in enumerate(pcm_chunks(x)):
        for e in ingest.process((chunk, None, float(k))) or []:
            if isinstance(e, (BargeOnset, Voiced)):
                seen.append((k, e))
    kinds = [type(e).__name__ for _, e in seen]
    if rule == "fast":
        assert kinds == ["BargeOnset", "Voiced"], seen
        k, onset = seen[0]
        assert k <= first + 1 and onset.arrival is not None and onset.arrival <= k  # dated to its first chunk
    else:
        assert kinds == ["Voiced"], seen


def test_an_unknown_rule_is_an_invalid_field():
    with pytest.raises(ProtocolError) as e:
        StreamSettings.parse("voice_activity", {"barge_in_rule": "psychic"})
    assert e.value.details.get("field") == "barge_in_rule"


class CountingClassify:
    """Wraps a FastOnset's classifier.classify and counts the calls (the onset's expensive part)."""

    def __init__(self, onset: FastOnset) -> None:
        self.calls = 0
        self._classify = onset.classifier.classify
        onset.classifier.classify = self  # type: ignore[method-assign]

    def __call__(self, frame: np.ndarray) -> bool:
        self.calls += 1
        return self._classify(frame)


def fast_ingest() -> StreamIngest:
    settings = StreamSettings.parse("voice_activity", {"barge_in_rule": "fast"})
    return StreamIngest(AudioFormat("pcm_s16le", 16000, 1), settings, answers=False)


def test_no_onset_classification_while_no_reply_is_playing():
    x, first = with_speech(corpus.to_int16(corpus.at_level(corpus.pink(3 * 16000), -45.0)))
    ingest = fast_ingest()
    assert ingest.onset is not None and ingest.onset.active is False
    counter = CountingClassify(ingest.onset)
    seen = []
    for k, chunk in enumerate(pcm_chunks(x)):
        seen += [e for e in ingest.process((chunk, None, float(k))) or [] if isinstance(e, BargeOnset)]
    assert counter.calls == 0 and seen == []
    # The noise floor was still tracked on every 10 ms frame.
    assert ingest.onset.frames == len(x) // 160
    assert ingest.onset.classifier.gate.floor_db > -60.0


def barge_onsets(x: np.ndarray, reply_at: int | None) -> tuple[list[tuple[int, BargeOnset]], FastOnset, CountingClassify]:
    """The ingest's barge onsets over ``x`` in 20 ms chunks, told at chunk ``reply_at`` that a reply plays (None: from the start)."""
    ingest = fast_ingest()
    onset = ingest.onset
    assert onset is not None
    counter = CountingClassify(onset)
    if reply_at is None:
        ingest.replying(True)
    fired = []
    for k, chunk in enumerate(pcm_chunks(x)):
        if k == reply_at:
            assert counter.calls == 0
            ingest.replying(True)
        fired += [(k, e) for e in ingest.process((chunk, None, k * 0.02)) or [] if isinstance(e, BargeOnset)]
    return fired, onset, counter


@pytest.mark.parametrize("bed", ["silence", "pink -45 dBFS"])
def test_barge_onset_within_30_ms_of_speech_over_a_reply(bed):
    n = 5 * 16000
    noise = np.zeros(n) if bed == "silence" else corpus.at_level(corpus.pink(n), float(bed.split()[1]))
    x, first = with_speech(noise, at_s=2.0)
    fired, onset, counter = barge_onsets(x, 50)  # the reply starts 1 s before the user speaks
    assert fired, "no barge onset"
    k, barge = fired[0]
    assert first <= k <= first + 2, (k, first, barge)
    detected_ms = (k + 1) * 20.0  # the end of the chunk whose processing reported it
    assert detected_ms - barge.start.t_ms <= 30.0, (k, first, barge)
    assert counter.calls == 2 * (len(x) // FRAME - 50)  # only since the reply started
    # The same onset, at the same chunk, as with the detector classifying all along.
    always, _, _ = barge_onsets(x, None)
    assert [(k, e.start) for k, e in always if k >= 50][:1] == [(k, barge.start)]
    # The reply ended: the onset stops classifying again.
    ingest = fast_ingest()
    ingest.replying(True)
    ingest.replying(False)
    c2 = CountingClassify(ingest.onset)  # type: ignore[arg-type]
    for chunk in pcm_chunks(x[:16000]):
        ingest.process((chunk, None, 0.0))
    assert c2.calls == 0


def onsets_from(x: np.ndarray, start: int) -> list[int]:
    """As :func:`onsets` with the fast rule, but its onset only classifying from 20 ms frame ``start`` (a reply)."""
    vad = VoiceActivityDetector(16000, 20, 0.5, hangover_ms=300)
    fast = FastOnset(16000, 0.5)
    fast.set_active(False)
    fired = []
    for k, i in enumerate(range(0, len(x) - FRAME + 1, FRAME)):
        if k == start:
            fast.set_active(True)
        frame = x[i:i + FRAME]
        speaking = vad.speaking
        vad.process(frame)
        if isinstance(fast.push(frame, speaking), SpeechStarted):
            fired.append(k)
    return fired


def test_starting_the_onset_at_reply_start_fires_no_more_often_on_the_corpus():
    reply = corpus.espeak(REPLY)
    always, late = {}, {}
    for name, kind, _, x in corpus.clips(10.0):
        if kind == "echo":
            x = corpus.to_int16(corpus.echo_of(reply, len(x)))
        always[name] = len([k for k in onsets(x, "fast") if k >= 100])
        late[name] = len(onsets_from(x, 100))  # the reply starts 2 s into the stream
    print(always, late)
    assert sum(late.values()) <= sum(always.values()), (always, late)
    for name in ("pink -50 dBFS", "pink -40 dBFS", "pink -30 dBFS", "coughs -25 dBFS", "clicks -20 dBFS",
                 "echo -20 dB", "babble -45 dBFS", "babble -38 dBFS"):
        assert late[name] == 0, (name, late)
