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
