"""Tests for txvoice.audio.frames: exact frames out of arbitrary chunks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import signal_speech as speech
from txvoice.audio.frames import FrameAssembler, frame_samples
from txvoice.audio.resample import PIPELINE_RATE, Resampler, resample_once


def assemble(assembler: FrameAssembler, chunks) -> tuple[list[np.ndarray], np.ndarray]:
    """Push every chunk; return copies of all frames and the flushed remainder."""
    frames = []
    for chunk in chunks:
        for frame in assembler.push(chunk):
            frames.append(frame.copy())
    return frames, assembler.flush().copy()


def cut(pcm: np.ndarray, sizes: list[int]):
    """``pcm`` in consecutive chunks whose sizes cycle through ``sizes`` (0: an empty chunk)."""
    i, k = 0, 0
    while i < len(pcm):
        yield pcm[i : i + sizes[k % len(sizes)]]
        i += sizes[k % len(sizes)]
        k += 1


def test_frame_samples() -> None:
    assert frame_samples(16000, 20) == 320
    assert frame_samples(44100, 10) == 441
    with pytest.raises(ValueError):
        frame_samples(22050, 10)  # 220.5 samples


def test_rejects_unsupported_durations() -> None:
    with pytest.raises(ValueError):
        FrameAssembler(16000, 25)


@settings(max_examples=150, deadline=None)
@given(
    frame_ms=st.sampled_from([10, 20, 30]),
    rate=st.sampled_from([8000, 16000, 48000]),
    sizes=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=20).filter(any),
    total=st.integers(min_value=0, max_value=20000),
)
def test_exact_frames_for_any_chunking(frame_ms: int, rate: int, sizes: list[int], total: int) -> None:
    pcm = np.random.default_rng(total).integers(-32768, 32768, total, dtype=np.int16)
    assembler = FrameAssembler(rate, frame_ms)
    size = frame_samples(rate, frame_ms)
    frames, rest = assemble(assembler, cut(pcm, sizes))  # zero sizes push empty chunks
    assert all(f.shape == (size,) and f.dtype == np.int16 for f in frames)
    assert len(frames) == total // size == assembler.frames_out
    assert len(rest) == total % size
    assert np.array_equal(np.concatenate(frames + [rest]), pcm)


def test_frames_are_views_valid_until_the_next_push() -> None:
    assembler = FrameAssembler(16000, 20)
    pcm = np.arange(1000, dtype=np.int16)
    block = assembler.push(pcm)
    assert block.shape == (3, 320)
    assert np.array_equal(block[1], pcm[320:640])
    assert not np.shares_memory(block, pcm)  # the input was copied once, into the assembler
    again = assembler.push(np.arange(1000, 1280, dtype=np.int16))  # 40 pending + 280 = one frame
    assert np.array_equal(again[0], np.arange(960, 1280))
    assert np.shares_memory(block, again)  # the buffer is reused: views live until the next push


def test_whole_frames_with_nothing_pending_pass_through_uncopied() -> None:
    """A 20 ms packet decoded to 320 samples is the common case: no copy into the buffer."""
    assembler = FrameAssembler(16000, 20)
    pcm = np.arange(6000, dtype=np.int16)
    whole = pcm[:640]
    block = assembler.push(whole)
    assert block.shape == (2, 320) and np.shares_memory(block, whole)
    # A partial chunk leaves samples pending: the next whole-frame-sized chunk must be copied
    # behind them, not passed through.
    assert assembler.push(pcm[640:700]).shape == (0, 320)
    block = assembler.push(pcm[700:1020])
    assert not np.shares_memory(block, pcm)
    assert np.array_equal(block[0], pcm[640:960])
    # The remaining 60 samples complete with the next chunk; then the fast path is back.
    assert np.array_equal(assembler.push(pcm[1020:1280])[0], pcm[960:1280])
    block = assembler.push(pcm[1280:1600])
    assert np.shares_memory(block, pcm) and np.array_equal(block[0], pcm[1280:1600])
    assert assembler.frames_out == 5 and assembler.pending == 0
    # Another dtype is converted through the buffer as before.
    block = assembler.push(np.arange(320, dtype=np.int32))
    assert block.dtype == np.int16 and np.array_equal(block[0], np.arange(320))
    # So is a read-only chunk (PCM straight from the client's bytes): frames stay writable.
    readonly = np.frombuffer(np.arange(320, dtype=np.int16).tobytes(), dtype=np.int16)
    block = assembler.push(readonly)
    assert not np.shares_memory(block, readonly) and block.flags.writeable
    assert np.array_equal(block[0], readonly)

def test_flush_pads_to_a_whole_frame_on_request() -> None:
    assembler = FrameAssembler(16000, 10)
    assembler.push(np.ones(250, dtype=np.int16))
    padded = assembler.flush(pad=True)
    assert len(padded) == 160
    assert padded[:90].tolist() == [1] * 90 and not padded[90:].any()
    assert assembler.frames_out == 2
    assert len(assembler.flush()) == 0


def test_a_chunk_larger_than_the_buffer_grows_it() -> None:
    assembler = FrameAssembler(16000, 20, capacity_ms=40)
    pcm = np.arange(32000, dtype=np.int16) % 1000
    assembler.push(pcm[:100])
    block = assembler.push(pcm[100:])
    assert block.shape == (100, 320)
    assert np.array_equal(block.reshape(-1), pcm)


@pytest.mark.parametrize("capacity_ms", [0, 200])
def test_an_assembler_without_capacity_holds_no_buffer_until_a_chunk_needs_one(capacity_ms: int) -> None:
    """capacity_ms=0 (the native ingest's assembler): the same frames and tail, a buffer only when used."""
    assembler = FrameAssembler(16000, 20, capacity_ms=capacity_ms)
    assert assembler._buf.nbytes == (0 if capacity_ms == 0 else 6400)
    assert len(assembler.flush(pad=True)) == 0
    pcm = np.arange(2000, dtype=np.int16)
    assert assembler.push(pcm[:100]).shape == (0, 320)
    block = assembler.push(pcm[100:1000])
    assert np.array_equal(block.reshape(-1), pcm[:960])
    padded = assembler.flush(pad=True)
    assert len(padded) == 320 and np.array_equal(padded[:40], pcm[960:1000]) and not padded[40:].any()


def test_stream_time_counts_frames() -> None:
    assembler = FrameAssembler(48000, 30)
    assembler.push(np.zeros(48000, dtype=np.int16))
    assert assembler.time_ms == 990  # 33 whole frames; 10 ms pending
    assert assembler.pending == 480
    assembler.reset()
    assert assembler.time_ms == 0 and assembler.pending == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from([44100, 48000, 8000]),
    sizes=st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=10),
    frame_ms=st.sampled_from([10, 20, 30]),
)
def test_resampled_frames_equal_one_shot_resampling(rate: int, sizes: list[int], frame_ms: int) -> None:
    """Resampler + assembler over any chunking == one-shot resampling, sliced (0 LSB measured)."""
    pcm = speech.speak(rate=rate)[: rate]
    resampler, assembler = Resampler(rate), FrameAssembler(PIPELINE_RATE, frame_ms)
    frames = []
    for chunk in cut(pcm, sizes):
        frames.extend(f.copy() for f in assembler.push(resampler.process(chunk)))
    frames.extend(f.copy() for f in assembler.push(resampler.flush()))
    rest = assembler.flush()
    got = np.concatenate(frames + [rest])
    assert np.array_equal(got, resample_once(pcm, rate, PIPELINE_RATE))
