"""The per-stream ingest: which decoder and resampler it builds, and what it finds in real speech."""

from __future__ import annotations

import numpy as np
import pytest

from txvoice.audio.codecs import encoder_for
from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamIngest, StreamSettings, TurnOutput, Voiced
from txvoice.audio.turns import TurnEnded, TurnStarted
from txvoice.audio.vad import SpeechStarted, SpeechStopped


def _ingest(fmt: AudioFormat, mode: str = "voice_activity") -> StreamIngest:
    return StreamIngest(fmt, StreamSettings(mode=mode), pipeline_rate=16000, answers=False)


def _vad(events) -> list[tuple[str, float]]:
    found = []
    for event in events or []:
        if isinstance(event, Voiced):
            found.append((event.start.kind, event.start.t_ms))
        elif isinstance(event, SpeechStopped):
            found.append((event.kind, event.t_ms))
    return found


def _vad_events(ingest: StreamIngest, chunks: list[bytes]) -> list[tuple[str, float]]:
    found = []
    for i, chunk in enumerate(chunks):
        found += _vad(ingest.process((chunk, i, 0.0)))
    return found + _vad(ingest.end())


@pytest.mark.parametrize(
    "fmt, decoded_at, resamples",
    [
        (AudioFormat("opus", 48000, 1), 16000, False),
        (AudioFormat("opus", 16000, 1), 16000, False),
        (AudioFormat("webm_opus", 48000, 1), 16000, False),
        (AudioFormat("pcm_s16le", 48000, 1), 48000, True),
        (AudioFormat("pcm_s16le", 16000, 1), 16000, False),
    ],
)
def test_opus_is_decoded_at_the_pipeline_rate(fmt, decoded_at, resamples):
    ingest = _ingest(fmt)
    assert ingest.decoder.output_rate == decoded_at
    assert ingest.resampler.passthrough is not resamples


def test_opus_speech_is_found_where_the_pcm_says(speech):
    pcm48 = speech(48000)
    fmt = AudioFormat("opus", 48000, 1)
    encoder = encoder_for(fmt, bitrate=24000)
    packets = encoder.encode(pcm48) + encoder.flush()
    opus_events = _vad_events(_ingest(fmt), packets)
    pcm_fmt = AudioFormat("pcm_s16le", 48000, 1)
    raw = pcm48.tobytes()
    pcm_events = _vad_events(_ingest(pcm_fmt), [raw[i : i + 1920] for i in range(0, len(raw), 1920)])
    assert [kind for kind, _ in opus_events] == [kind for kind, _ in pcm_events]
    assert {SpeechStarted.kind, SpeechStopped.kind} <= {kind for kind, _ in opus_events}
    for (_, t_opus), (_, t_pcm) in zip(opus_events, pcm_events):
        # Opus adds its look-ahead (6.5 ms at 48 kHz) and soxr its own delay: a frame either way.
        assert abs(t_opus - t_pcm) <= 40, (opus_events, pcm_events)
    assert np.isfinite([t for _, t in opus_events]).all()


class _RecordingTurn:
    """A pipeline turn that keeps what the ingest feeds it."""

    def __init__(self) -> None:
        self.pcm: list[np.ndarray] = []

    def feed(self, raw: bytes | None, pcm: np.ndarray | None) -> None:
        if pcm is not None:
            self.pcm.append(pcm.copy())


@pytest.mark.parametrize("attach_after_chunks", [0, 3, 40])
def test_the_ingest_streams_whole_turns_without_keeping_them(speech, attach_after_chunks):
    """
    Each turn reaches the pipeline frame by frame, whenever the reactor attaches it (at once, or
    chunks later: the frames in between are held, then fed in order); the detector keeps no copy.
    """
    pcm16 = speech(16000)
    fed: list[_RecordingTurn] = []
    waiting: list[list] = []  # [chunks left, turn number] of turns the "reactor" has not attached yet

    ingest = StreamIngest(AudioFormat("pcm_s16le", 16000, 1), StreamSettings(mode="voice_activity"), 16000)
    raw = pcm16.tobytes()
    ends = []

    def react(events) -> None:
        for event in events or []:
            if isinstance(event, TurnStarted):
                fed.append(_RecordingTurn())
                waiting.append([attach_after_chunks, event.turn, fed[-1]])
            elif isinstance(event, TurnEnded):
                ends.append(event)
            else:
                assert not isinstance(event, TurnOutput)  # this turn returns nothing to deliver

    def attach_due(flush: bool = False) -> None:
        for item in list(waiting):
            item[0] -= 1
            if item[0] < 0 or flush:
                waiting.remove(item)
                react(ingest.attach((item[1], item[2].feed)))

    for i in range(0, len(raw), 640):
        attach_due()
        react(ingest.process((raw[i : i + 640], None, 0.0)))
    react(ingest.end())
    attach_due(flush=True)
    assert ends and len(fed) == len(ends)
    assert not ingest.feeds._slots  # nothing held once every turn is attached and ended
    assert ingest.turns._audio.nbytes == 0
    for turn, end in zip(fed, ends):
        streamed = np.concatenate(turn.pcm)
        assert len(streamed) == round((end.t_ms - end.start_ms) * 16)
        start = round(end.start_ms * 16)
        assert np.array_equal(streamed, pcm16[start : start + len(streamed)])


def test_the_arrival_log_answers_as_the_deque_of_pairs_it_replaced():
    """ArrivalLog: the oldest of the last 64 chunks that ends after t, as deque(maxlen=64) of (end, arrival) did."""
    from collections import deque

    from txvoice.audio.ingest import ArrivalLog

    rng = np.random.default_rng(7)
    log, reference = ArrivalLog(64), deque(maxlen=64)
    assert log.arrival_of(0.0) is None
    end = 0.0
    for k in range(200):
        end += float(rng.choice([20.0, 40.0, 60.0]))
        arrival = 1000.0 + k * 0.02 + float(rng.random()) * 1e-3
        log.append(end, arrival)
        reference.append((end, arrival))
        for t in (0.0, end - 1000.0, end - 61.0, end - 20.0, end - 0.5, end, end + 1.0, float(rng.random()) * end):
            expected = next((a for e, a in reference if e > t), None)
            assert log.arrival_of(t) == expected
