"""Tests for txvoice.audio.enhance: measured noise reduction and gain control."""

from __future__ import annotations

import numpy as np
import pytest
from zope.interface.verify import verifyObject

import signal_speech as speech
from txvoice.audio.enhance import AutomaticGainControl, Denoiser, IFrameProcessor


def clean_speech(rate: int = 16000) -> np.ndarray:
    """Two utterances with pauses, starting with 500 ms of silence (a stream's usual start)."""
    return np.concatenate(
        [
            speech.silence(500, rate),
            speech.speak(speech.SENTENCE, rate),
            speech.silence(400, rate),
            speech.speak("Hello, how are you doing today?", rate),
            speech.silence(500, rate),
        ]
    )


def denoise(pcm: np.ndarray, rate: int = 16000, frame_ms: int = 20, **kw) -> np.ndarray:
    """Run a Denoiser over whole frames; return its output re-aligned with the input."""
    d = Denoiser(rate, **kw)
    n = rate * frame_ms // 1000
    out = np.concatenate([d.process(pcm[i : i + n]).copy() for i in range(0, len(pcm) - n + 1, n)])
    return out[d.delay_samples :]


def agc(pcm: np.ndarray, frame_ms: int = 20, **kw) -> tuple[np.ndarray, AutomaticGainControl]:
    a = AutomaticGainControl(16000, **kw)
    n = 16 * frame_ms
    return np.concatenate([a.process(pcm[i : i + n]).copy() for i in range(0, len(pcm) - n + 1, n)]), a


def snr_gain(clean: np.ndarray, noisy: np.ndarray, out: np.ndarray) -> float:
    m = len(out)
    return speech.snr_db(clean[:m], out) - speech.snr_db(clean[:m], noisy[:m])


def test_processors_provide_the_interface() -> None:
    assert verifyObject(IFrameProcessor, Denoiser())
    assert verifyObject(IFrameProcessor, AutomaticGainControl())


# -- Denoiser -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_overlap_add_reconstructs_the_input_when_nothing_is_removed(rate: int, frame_ms: int) -> None:
    pcm = speech.speak("Hello", rate)
    out = denoise(pcm, rate, frame_ms, floor_db=0.0)  # gain clamped to 1 everywhere
    m = len(out)
    assert np.max(np.abs(out.astype(np.int32) - pcm[:m])) <= 1


# Measured (espeak, 16 kHz, 20 ms frames, SNR over the whole signal against the clean reference,
# speech distortion included): white noise 5 dB -> +7.5 dB, pink 5 dB -> +6.5 dB, white 20 dB ->
# +4.5 dB, white 0 dB -> +8.6 dB, pink 10 dB -> +5.8 dB; the same within 0.3 dB for 10 and 30 ms
# frames.  The thresholds leave about 2 dB for other espeak versions and noise seeds.
@pytest.mark.parametrize(
    "color,snr,min_gain",
    [("white", 5, 5.5), ("pink", 5, 4.5), ("white", 0, 6.0), ("white", 20, 2.5), ("pink", 10, 3.5)],
)
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_denoising_gains_snr(color: str, snr: float, min_gain: float, frame_ms: int) -> None:
    clean = clean_speech()
    noisy, _ = speech.mix(clean, snr, color)
    assert snr_gain(clean, noisy, denoise(noisy, frame_ms=frame_ms)) >= min_gain


@pytest.mark.parametrize("rate", [8000, 48000])
def test_denoising_at_other_rates(rate: int) -> None:
    clean = clean_speech(rate)
    noisy, _ = speech.mix(clean, 5, "white")
    assert snr_gain(clean, noisy, denoise(noisy, rate)) >= 4.5  # measured 6.5 (8 kHz), 9 (48 kHz)


def test_clean_speech_passes_almost_untouched() -> None:
    clean = clean_speech()
    out = denoise(clean)
    assert speech.snr_db(clean[: len(out)], out) >= 30  # measured 44 dB


def test_noise_alone_is_attenuated_by_the_floor() -> None:
    noise = speech.noise_at(3000, -30)
    out = denoise(noise)
    # Measured 11.3 dB: the gain floor is -20 dB, but the decision-directed gain lets the
    # noise's own peaks through in part (the price of little musical noise).
    assert speech.rms_db(out[16000:]) <= speech.rms_db(noise) - 9


def test_in_place_and_frame_checks() -> None:
    d = Denoiser()
    frame = speech.noise_at(20, -30)
    assert d.process(frame, out=frame) is frame
    with pytest.raises(ValueError):
        d.process(np.zeros(100, dtype=np.int16))  # not a multiple of the 160-sample hop


# -- AGC ------------------------------------------------------------------------------------------


def active_level(out: np.ndarray, reference: np.ndarray, skip_ms: int = 1000) -> float:
    """RMS (dBFS) of ``out`` over the 20 ms blocks where ``reference`` has speech, after ``skip_ms``."""
    env = speech.envelope_db(reference, 16000, 20)
    active = env > env.max() - 40
    blocks = out[: len(out) // 320 * 320].astype(np.float64).reshape(-1, 320) / 32768
    skip = skip_ms // 20
    chosen = blocks[skip:][active[skip : len(blocks)]]
    return float(10 * np.log10(np.mean(chosen**2)))


def speech_at(dbfs: float) -> np.ndarray:
    base = np.concatenate([speech.speak(speech.SENTENCE), speech.silence(400), speech.speak("Hello, how are you doing today?")])
    return speech.scale_to(base, dbfs)


# Measured, target -20 dBFS: active level -21.3 .. -23.0 dBFS for input from -45 to -6 dBFS
# (the follower rides a little above the mean power of speech).
@pytest.mark.parametrize("level", [-45.0, -40.0, -30.0, -10.0, -6.0])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_agc_brings_quiet_and_loud_speech_into_the_window(level: float, frame_ms: int) -> None:
    pcm = speech_at(level)
    out, _ = agc(pcm, frame_ms)
    assert -20 - 3.5 <= active_level(out, pcm) <= -20 + 2
    assert np.max(np.abs(out.astype(np.int32))) < 32767  # never clips


def test_agc_does_not_pump_up_silence_or_background() -> None:
    pcm = np.concatenate([speech_at(-40), speech.noise_at(2000, -70)])
    out, a = agc(pcm)
    gain = a.gain_db
    assert speech.rms_db(out[-16000:]) <= -70 + gain + 0.5  # the speech gain is held, no more
    assert gain < 25


def test_agc_follows_the_speech_hint() -> None:
    a = AutomaticGainControl(16000)
    loud = speech.noise_at(20, -30)
    for _ in range(50):
        a.process(loud, speech=False)
    assert a.level_db is None and a.gain_db == 0  # nothing tracked on non-speech frames


def test_agc_in_place() -> None:
    a = AutomaticGainControl(16000)
    frame = speech.noise_at(20, -40)
    assert a.process(frame, out=frame) is frame
