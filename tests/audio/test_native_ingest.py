"""
The native batch ingest (txvoice/audio/_native.c through txvoice.audio.native) against the
pure-Python path on the same audio: the same decoded PCM, frame for frame, the same 20 ms VAD and
10 ms onset decisions, the same events and the same errors -- alone, and in worker batches that
interleave many streams with a reply starting and stopping between their chunks.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

import signal_speech as speech
from txvoice.audio import native
from txvoice.audio.codecs.opus import OpusEncoder
from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamIngest, StreamSettings, batch_preparer, prepare_batch
from txvoice.audio.vad import SpectralGate, gate_params
from txvoice.audio.workers import _run_batch
from txvoice.errors import AudioError

OPUS48 = AudioFormat("opus", 48000, 1)


def test_the_native_ingest_is_built_and_used():
    # No skip: scripts/setup-env.sh builds it (setup.py's optional extension; in a checkout
    # `python setup.py build_ext --inplace`), so a CI without it fails here.
    assert native.available(), "txvoice/audio/_native*.so is missing: run scripts/setup-env.sh"
    assert batch_preparer() is prepare_batch
    ingest = StreamIngest(OPUS48, StreamSettings(mode="voice_activity"))
    assert ingest.native is not None
    # Paths it does not cover stay in Python.
    assert StreamIngest(AudioFormat("pcm_s16le", 16000, 1), StreamSettings()).native is None
    assert StreamIngest(OPUS48, StreamSettings(denoise=True)).native is None
    assert StreamIngest(AudioFormat("opus", 48000, 2), StreamSettings()).native is None
    assert StreamIngest(OPUS48, StreamSettings(), native=False).native is None


def test_turned_off_by_the_environment_the_python_path_serves():
    code = ("from txvoice.audio import native; from txvoice.audio.ingest import StreamIngest, StreamSettings, "
            "batch_preparer; from txvoice.audio.format import AudioFormat; "
            "print(native.available(), batch_preparer(), "
            "StreamIngest(AudioFormat('opus', 48000, 1), StreamSettings()).native)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TXVOICE_NATIVE_INGEST": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "None", "None"]


def corpus() -> np.ndarray:
    """48 kHz: speech, speech in pink noise at 5 dB SNR, quiet speech, white and pink noise, silence, bursts."""
    clean = speech.speak(rate=48000, pad_ms=(200, 400))
    noisy, _ = speech.mix(clean, 5.0, "pink", seed=4)
    quiet = speech.scale_to(clean, -45.0)
    bursts = np.concatenate([np.concatenate([speech.noise_at(60, -12, 48000, seed=s), speech.silence(240, 48000)])
                             for s in range(5)])
    return np.concatenate([
        speech.silence(300, 48000), clean, noisy, quiet, speech.noise_at(1500, -10, 48000, "white"),
        speech.noise_at(1500, -30, 48000, "pink", seed=2), bursts, clean, speech.silence(700, 48000),
    ])


@pytest.fixture(scope="module")
def packets() -> list[bytes]:
    return OpusEncoder(OPUS48, bitrate=24000).encode(corpus())


def record(ingest: StreamIngest) -> list[tuple]:
    """What every frame pushed to the turns was and decided: PCM, the VAD's decision and state, the onset's."""
    seen: list[tuple] = []
    push = ingest.turns.push
    vad, onset = ingest.turns.vad, ingest.onset

    def recording(frame):
        events = push(frame)
        seen.append((frame.tobytes(), vad.is_speech, vad.speaking,
                     None if onset is None else (onset.run, onset.armed)))
        return events

    ingest.turns.push = recording  # type: ignore[method-assign]
    return seen


def summary(events) -> list[tuple]:
    out = []
    for event in events or ():
        start = getattr(event, "start", None)
        out.append((type(event).__name__, getattr(event, "t_ms", None), getattr(event, "turn", None),
                    getattr(event, "reason", None), None if start is None else start.t_ms,
                    getattr(event, "audio", np.zeros(0, np.int16)).tobytes()))
    return out


def feed(ingest: StreamIngest, chunks, replying_at=()) -> list:
    """Process ``(packet, sequence)`` chunks one by one; a reply plays from chunk a to b for each (a, b)."""
    log: list = []
    for k, (packet, sequence) in enumerate(chunks):
        for a, b in replying_at:
            if k == a:
                ingest.replying(True)
            if k == b:
                ingest.replying(False)
        try:
            log.append(summary(ingest.process((packet, sequence, float(k)))))
            # The onset's count of 10 ms frames (its stream time) after each chunk.
            log.append(ingest.onset.frames if ingest.onset is not None else None)
        except AudioError as e:
            log.append(("error", e.code, str(e)))
    log.append(summary(ingest.end()))
    return log


@pytest.mark.parametrize("mode", ["push_to_talk", "voice_activity", "continuous"])
@pytest.mark.parametrize("replying", [(), ((40, 90), (300, 520))])
@pytest.mark.parametrize("frame_ms", [20, 10, 30])
def test_both_paths_decode_and_decide_alike(packets, mode, replying, frame_ms):
    settings = StreamSettings(mode=mode, frame_ms=frame_ms)
    chunks = [(p, k) for k, p in enumerate(packets)]
    runs = []
    for use_native in (False, True):
        ingest = StreamIngest(OPUS48, settings, native=use_native)
        assert (ingest.native is not None) is use_native
        frames = record(ingest)
        runs.append((feed(ingest, chunks, replying), frames))
    (events_py, frames_py), (events_c, frames_c) = runs
    assert len(frames_py) == len(frames_c) > 600
    assert frames_c == frames_py  # bit-identical PCM, decisions and detector states, frame by frame
    assert events_c == events_py
    assert any(e for e in events_py[:-1])  # the corpus does make speech start and stop
    assert any(s for _, s, _, _ in frames_py) and not all(s for _, s, _, _ in frames_py)


def test_sequence_gaps_errors_and_long_packets_alike(packets):
    # Gaps (concealment, FEC), a gap far longer than max_conceal, an empty packet, garbage, a
    # sequence number gone backwards, chunks without one, and 40 and 60 ms packets.
    long40 = OpusEncoder(AudioFormat("opus", 48000, 1, 40.0)).encode(corpus()[: 48000 * 2])
    long60 = OpusEncoder(AudioFormat("opus", 48000, 1, 60.0)).encode(corpus()[: 48000 * 2])
    chunks: list[tuple[bytes, int | None]] = []
    seq = 0
    for k, p in enumerate(packets[:400]):
        seq += 1 if k % 37 else 3
        chunks.append((p, seq))
    chunks += [(b"", seq + 1), (b"\xff\xff\xff\xff", seq + 1), (packets[400], seq + 200000), (packets[401], 5),
               (packets[402], None), (packets[403], None)]
    chunks += [(p, None) for p in long40] + [(p, None) for p in long60]
    chunks += [(p, 10**30 + k) for k, p in enumerate(packets[404:450])]
    for fec in (True, False):
        logs = []
        for use_native in (False, True):
            ingest = StreamIngest(OPUS48, StreamSettings(mode="voice_activity"), native=False)
            ingest.decoder.fec = fec
            if use_native:  # the C stream takes fec when it is made
                ingest._go_native()
            frames = record(ingest)
            logs.append((feed(ingest, chunks), frames))
        assert logs[1] == logs[0]
        errors = [entry for entry in logs[0][0] if isinstance(entry, tuple) and entry[0] == "error"]
        assert [e[1] for e in errors] == ["truncated_frame", "invalid_opus_packet"]


def test_batches_of_many_streams_with_replies_between_their_chunks(packets):
    settings = StreamSettings(mode="voice_activity")
    streams = 5
    per = [[(packets[(k * 7 + s * 31) % len(packets)], k) for k in range(240)] for s in range(streams)]
    # Reference: each stream alone on the Python path, in order.
    want = []
    for s in range(streams):
        ingest = StreamIngest(OPUS48, settings, native=False)
        want.append([entry for entry in feed(ingest, per[s], replying_at=[(50 + s, 120)]) if isinstance(entry, list)])
    ingests = [StreamIngest(OPUS48, settings, native=True) for _ in range(streams)]
    got: list[list] = [[] for _ in range(streams)]
    items = []
    for k in range(240):
        for s, ingest in enumerate(ingests):
            if k == 50 + s:
                items.append((ingest.replying, True, None, None))
            if k == 120:
                items.append((ingest.replying, False, None, None))
            packet, sequence = per[s][k]
            items.append((ingest.process, (packet, sequence, float(k)), lambda r, s=s: got[s].append(summary(r)),
                          None))
    for start in range(0, len(items), 23):  # worker batches of 23 items (prepared in runs)
        for deliver, value in _run_batch(items[start:start + 23], prepare_batch):
            deliver(value)
    for s, ingest in enumerate(ingests):
        assert not ingest.ready
        got[s].append(summary(ingest.end()))
        assert got[s] == want[s]


def test_the_c_gate_follows_the_python_gate():
    clean = speech.speak(rate=16000)
    pcm = np.concatenate([clean, clean // 16, speech.mix(clean, 0.0, "pink")[0]])
    pcm = np.concatenate([pcm, (np.random.default_rng(5).standard_normal(32000) * 800).astype(np.int16)])
    lib = native._lib
    lib.txv_gate_accept.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    lib.txv_gate_accept.restype = ctypes.c_int
    for name in ("txv_gate_level", "txv_gate_floor", "txv_gate_flatness"):
        getattr(lib, name).argtypes = (ctypes.c_void_p,)
        getattr(lib, name).restype = ctypes.c_double
    for threshold in (0.0, 0.5, 1.0):
        gate = SpectralGate(16000, 320, gate_params(threshold))
        c_gate = native._gate(gate)
        try:
            for i in range(0, len(pcm) - 320, 320):
                frame = np.ascontiguousarray(pcm[i:i + 320])
                spectral = (i // 320) % 5 != 0
                assert bool(lib.txv_gate_accept(c_gate, frame.ctypes.data, int(spectral))) == gate.accept(frame, spectral)
                assert lib.txv_gate_level(c_gate) == pytest.approx(gate.level_db, abs=1e-4)
                assert lib.txv_gate_floor(c_gate) == pytest.approx(gate.floor_db, abs=1e-4)
                if not np.isnan(gate.flatness):
                    assert lib.txv_gate_flatness(c_gate) == pytest.approx(gate.flatness, rel=2e-3, abs=1e-6)  # float32 numpy against double C
        finally:
            lib.txv_gate_free(c_gate)
