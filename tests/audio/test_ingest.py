"""The per-stream ingest: which decoder and resampler it builds, and what it finds in real speech."""

from __future__ import annotations

import numpy as np
import pytest

from txvoice.audio.codecs import encoder_for
from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamIngest, StreamSettings
from txvoice.audio.vad import SpeechStarted, SpeechStopped


def _ingest(fmt: AudioFormat, mode: str = "voice_activity") -> StreamIngest:
    return StreamIngest(fmt, StreamSettings(mode=mode), start_turn=lambda: None, pipeline_rate=16000)


def _vad_events(ingest: StreamIngest, chunks: list[bytes]) -> list[tuple[str, float]]:
    found = []
    for i, chunk in enumerate(chunks):
        for kind, event, _ in ingest.process((chunk, i, 0.0)) or []:
            if kind == "vad":
                found.append((event.kind, event.t_ms))
    for kind, event, _ in ingest.end():
        if kind == "vad":
            found.append((event.kind, event.t_ms))
    return found


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


def test_the_ingest_streams_whole_turns_without_keeping_them(speech):
    """Each turn reaches the pipeline frame by frame; the turn detector keeps no copy of it."""
    pcm16 = speech(16000)
    fed: list[_RecordingTurn] = []

    def start_turn() -> _RecordingTurn:
        fed.append(_RecordingTurn())
        return fed[-1]

    ingest = StreamIngest(AudioFormat("pcm_s16le", 16000, 1), StreamSettings(mode="voice_activity"), start_turn, 16000)
    raw = pcm16.tobytes()
    ends = []
    for i in range(0, len(raw), 640):
        for kind, event, _ in ingest.process((raw[i : i + 640], None, 0.0)) or []:
            if kind == "turn_end":
                ends.append(event)
    ends += [event for kind, event, _ in ingest.end() if kind == "turn_end"]
    assert ends and len(fed) == len(ends)
    assert ingest.turns._audio.nbytes == 0
    for turn, end in zip(fed, ends):
        streamed = np.concatenate(turn.pcm)
        assert len(streamed) == round((end.t_ms - end.start_ms) * 16)
        start = round(end.start_ms * 16)
        assert np.array_equal(streamed, pcm16[start : start + len(streamed)])
