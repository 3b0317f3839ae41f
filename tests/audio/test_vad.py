"""Tests for txvoice.audio.vad: webrtcvad plus the spectral gate, and the hysteresis detector."""

from __future__ import annotations

import numpy as np
import pytest
import webrtcvad
from zope.interface.verify import verifyObject

import signal_speech as speech
from txvoice.audio.vad import (
    GateParams,
    SpectralGate,
    ISpeechClassifier,
    SpeechStarted,
    SpeechStopped,
    VoiceActivityDetector,
    WebRtcClassifier,
    gate_params,
)

UTTERANCES = [speech.SENTENCE, "Please stop.", "Seven silly snakes sat sideways."]
SPAN_TOLERANCE_MS = 60


def run(detector: VoiceActivityDetector, pcm: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """Feed whole frames; return (events, per-frame decisions, per-frame webrtcvad decisions)."""
    n = detector.frame_size
    events, decisions, webrtc = [], [], []
    for i in range(0, len(pcm) - n + 1, n):
        event = detector.process(pcm[i : i + n])
        if event is not None:
            events.append(event)
        decisions.append(detector.is_speech)
        webrtc.append(getattr(detector.classifier, "webrtc", False))
    final = detector.finish()
    if final is not None:
        events.append(final)
    return events, np.array(decisions), np.array(webrtc)


def scripted(script: str, **kw) -> list[tuple[str, float, float]]:
    """Run a scripted 20 ms detector; return (kind, t_ms, emitted_at_ms) triples."""
    detector = VoiceActivityDetector(16000, 20, classifier=speech.ScriptedClassifier(script), **kw)
    out = []
    for _ in script:
        event = detector.process(np.zeros(320, dtype=np.int16))
        if event is not None:
            out.append((event.kind, event.t_ms, detector.time_ms))
    return out


# -- threshold mapping ----------------------------------------------------------------------------


def test_threshold_maps_monotonically_onto_aggressiveness_and_gate() -> None:
    params = [gate_params(t / 10) for t in range(11)]
    assert [p.aggressiveness for p in params] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(a.snr_db < b.snr_db for a, b in zip(params, params[1:]))
    assert all(a.max_flatness > b.max_flatness for a, b in zip(params, params[1:]))
    assert gate_params(0.5) == GateParams(2, 5.0, 0.35, -60.0)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan")])
def test_threshold_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError):
        gate_params(bad)


def test_unsupported_rate_or_frame() -> None:
    with pytest.raises(ValueError):
        WebRtcClassifier(44100, 20)
    with pytest.raises(ValueError):
        WebRtcClassifier(16000, 40)


def test_classifier_provides_the_interface() -> None:
    assert verifyObject(ISpeechClassifier, WebRtcClassifier())


def test_wrong_frame_size() -> None:
    with pytest.raises(ValueError):
        WebRtcClassifier(16000, 20).classify(np.zeros(160, dtype=np.int16))


# -- real speech ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("text", UTTERANCES)
def test_finds_the_speech_span(rate: int, frame_ms: int, text: str) -> None:
    pcm = speech.speak(text, rate, pad_ms=(500, 1000))
    true_start, true_end = speech.speech_span(pcm, rate)  # clean signal's envelope, -50 dBFS
    events, _, _ = run(VoiceActivityDetector(rate, frame_ms), pcm)
    kinds = [e.kind for e in events]
    assert kinds == ["speech_start", "speech_end"], events
    assert abs(events[0].t_ms - true_start) <= SPAN_TOLERANCE_MS
    assert abs(events[1].t_ms - true_end) <= SPAN_TOLERANCE_MS


def test_webrtcvad_alone_overruns_the_end_of_speech() -> None:
    """The premise of the gate: webrtcvad keeps saying "speech" into the digital silence."""
    pcm = speech.speak(speech.SENTENCE, 16000, pad_ms=(500, 1000))
    _, true_end = speech.speech_span(pcm, 16000)
    _, decisions, webrtc = run(VoiceActivityDetector(16000, 20), pcm)
    assert (np.flatnonzero(webrtc)[-1] + 1) * 20 - true_end >= 80
    assert (np.flatnonzero(decisions)[-1] + 1) * 20 - true_end <= 20


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("rate,frame_ms", [(8000, 10), (16000, 20), (16000, 10), (48000, 30)])
def test_loud_white_noise_is_not_speech(threshold: float, rate: int, frame_ms: int) -> None:
    noise = speech.noise_at(3000, -10, rate)
    events, decisions, webrtc = run(VoiceActivityDetector(rate, frame_ms, threshold), noise)
    assert webrtc.mean() > 0.95  # webrtcvad alone: all speech
    assert events == []
    assert decisions.mean() <= 0.01


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_silence_is_not_speech(frame_ms: int) -> None:
    events, decisions, _ = run(VoiceActivityDetector(16000, frame_ms), speech.silence(2000))
    assert events == [] and not decisions.any()


def test_steady_pink_noise_stops_counting_after_half_a_second() -> None:
    """Pink noise is not flat enough for the flatness test; the adaptive floor catches it."""
    events, decisions, _ = run(VoiceActivityDetector(16000, 20), speech.noise_at(5000, -20, color="pink"))
    assert not decisions[30:].any()  # after 600 ms
    assert all(e.t_ms <= 600 for e in events)


@pytest.mark.parametrize("color", ["white", "pink"])
def test_speech_in_noise_at_10_db_snr(color: str) -> None:
    clean = np.concatenate([speech.silence(1000), speech.speak("Hello, how are you doing today?"), speech.silence(1500)])
    true_start, true_end = speech.speech_span(clean, 16000)
    noisy, _ = speech.mix(clean, 10, color)
    events, _, _ = run(VoiceActivityDetector(16000, 20), noisy)
    spans = [(a.t_ms, b.t_ms) for a, b in zip(events[::2], events[1::2])]
    # Pink noise may count as speech until the floor adapts (<= 500 ms); see the pink noise test.
    assert all(end <= 600 for start, end in spans if start < 500)
    spans = [span for span in spans if span[0] >= 500]
    assert len(spans) == 1, events
    assert abs(spans[0][0] - true_start) <= 100
    assert abs(spans[0][1] - true_end) <= 100


# -- hysteresis (scripted decisions: exact) ---------------------------------------------------------


def test_a_click_does_not_start_speech() -> None:
    assert scripted("0000" + "11" + "0" * 30) == []  # 40 ms < min_speech_ms 60


def test_start_is_back_dated_to_the_first_speech_frame() -> None:
    # Frames 4, 5, 7 are speech: 60 ms of speech within 120 ms confirms at the end of frame 7.
    events = scripted("0000" + "1101" + "0" * 30)
    assert events[0] == ("speech_start", 80, 160)


def test_end_comes_after_the_hangover_and_is_dated_to_the_last_speech_frame() -> None:
    events = scripted("0" * 5 + "1" * 10 + "0" * 20, hangover_ms=300)
    assert events == [("speech_start", 100, 160), ("speech_end", 300, 600)]


def test_pauses_shorter_than_the_hangover_do_not_end_speech() -> None:
    script = "1" * 10 + "0" * 14 + "1" * 10 + "0" * 20  # 280 ms pause < 300 ms hangover
    assert [e[0] for e in scripted(script)] == ["speech_start", "speech_end"]
    script = "1" * 10 + "0" * 15 + "1" * 10 + "0" * 20  # 300 ms: two segments
    assert [e[0] for e in scripted(script)] == ["speech_start", "speech_end"] * 2


def test_finish_reports_speech_in_progress() -> None:
    detector = VoiceActivityDetector(16000, 20, classifier=speech.ScriptedClassifier("1" * 10))
    for _ in range(10):
        detector.process(np.zeros(320, dtype=np.int16))
    assert detector.speaking
    assert detector.finish() == SpeechStopped(200)
    assert detector.finish() is None


def test_events_carry_stream_time() -> None:
    assert SpeechStarted(120).kind == "speech_start" and SpeechStopped(200).kind == "speech_end"
    detector = VoiceActivityDetector(16000, 30)
    for _ in range(7):
        detector.process(np.zeros(480, dtype=np.int16))
    assert detector.time_ms == 210


def test_webrtcvad_wrapper_cannot_take_int16_arrays() -> None:
    """Why vad.py calls _webrtcvad directly: Vad.is_speech takes len(buf) as a byte count."""
    with pytest.raises(Exception):
        webrtcvad.Vad(2).is_speech(np.zeros(480, dtype=np.int16), 16000)


@pytest.mark.parametrize("rate,frame_ms", [(16000, 20), (8000, 30), (48000, 10)])
def test_gate_features_match_a_plain_float64_computation(rate: int, frame_ms: int) -> None:
    """The gate's in-place float32 arithmetic computes the documented level and flatness."""
    pcm = speech.mix(speech.speak(rate=rate), 10, "pink")[0]
    gate = SpectralGate(rate, rate * frame_ms // 1000)
    n = gate.frame_size
    top = min(n // 2, int(8000 * n / rate))
    checked = 0
    for i in range(0, len(pcm) - n + 1, n):
        frame = pcm[i : i + n]
        gate.accept(frame)
        x = frame.astype(np.float64) / 32768.0
        level = 10 * np.log10(np.mean(x * x))
        assert gate.level_db == pytest.approx(level, abs=1e-3)
        if not np.isnan(gate.flatness):
            power = np.abs(np.fft.rfft(x * np.hanning(n))[1 : top + 1]) ** 2 + 1e-12
            flatness = np.exp(np.mean(np.log(power))) / np.mean(power)
            assert gate.flatness == pytest.approx(flatness, rel=1e-3, abs=1e-6)
            checked += 1
    assert checked > 10  # the spectral test ran on the voiced frames


# -- the spectrum skipped where a tonal frame continues: the same decisions ---------------------------


def _bench_corpus() -> dict[str, np.ndarray]:
    """The benchmark's speech (bench/frames.py) as the server sees it: Opus 48 kHz decoded to 16 kHz, and PCM."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import frames as bench_frames
    finally:
        sys.path.pop(0)
    from txvoice.audio.codecs import decoder_at
    from txvoice.audio.format import AudioFormat

    decoder = decoder_at(AudioFormat.validated("opus", 48000, 1), 16000)
    packets = bench_frames.opus_packets(bench_frames.speech(48000))
    opus = np.concatenate([np.asarray(decoder.decode(p), dtype=np.int16).ravel() for p in packets])
    return {"bench opus": opus, "bench pcm16k": bench_frames.speech(16000)}


def _corpus() -> dict[str, np.ndarray]:
    clean = np.concatenate([speech.silence(500), *[np.concatenate([speech.speak(u), speech.silence(400)]) for u in UTTERANCES]])
    audio = {"speech": clean, "white noise": speech.noise_at(3000, -10), "pink noise": speech.noise_at(3000, -20, color="pink")}
    for color in ("white", "pink"):
        for snr in (10, 0):
            audio[f"speech in {color} noise at {snr} dB"] = speech.mix(clean, snr, color)[0]
    # Speech straight into a burst of loud noise: the skip must not carry "tonal" into the noise.
    audio["speech then noise burst"] = np.concatenate([speech.speak("Hello there."), speech.noise_at(300, -15), speech.silence(500)])
    return {**audio, **_bench_corpus()}


def test_skipping_the_spectrum_changes_no_decision() -> None:
    skipped = {}
    for name, pcm in _corpus().items():
        for threshold in (0.2, 0.5, 0.8):
            with_skips = VoiceActivityDetector(16000, 20, threshold)
            without = VoiceActivityDetector(16000, 20, threshold)
            without.classifier.gate.skips = False
            events_a, decisions_a, _ = run(with_skips, pcm)
            events_b, decisions_b, _ = run(without, pcm)
            assert (decisions_a == decisions_b).all(), (name, threshold, np.flatnonzero(decisions_a != decisions_b))
            assert events_a == events_b, (name, threshold)
            assert without.classifier.gate.skipped == 0
            skipped[name, threshold] = (with_skips.classifier.gate.skipped, len(decisions_a))
    # It does skip on speech (about one spectrum in three on the benchmark's corpus), never on noise alone.
    assert skipped["bench opus", 0.5][0] > skipped["bench opus", 0.5][1] / 5, skipped
    assert skipped["speech", 0.5][0] > 0
    assert skipped["white noise", 0.5][0] == skipped["pink noise", 0.5][0] == 0


def test_without_a_tonal_frame_before_it_a_loud_frame_gets_its_spectrum() -> None:
    gate = SpectralGate(16000, 320)
    noise = speech.noise_at(200, -10)
    for i in range(0, len(noise), 320):
        assert gate.accept(noise[i : i + 320]) is False  # 90 dB above a silent floor, but flat
    assert gate.skipped == 0
