"""
A response's audio is encoded a slice at a time: the first packet goes out once the first
``ENCODE_SLICE_MS`` are encoded, then slices are kept ``ENCODE_AHEAD_MS`` beyond the pacer's lead
(so a slow worker round trip does not run the pacer dry), a barge-in stops the encoding, and the
packets are the same as encoding it all at once.
"""

from __future__ import annotations

import numpy as np
from twisted.internet.task import Clock

from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamSettings
from txvoice.audio.output import ResponseEncoder
from txvoice.audio.workers import AudioWorkers
from txvoice.server.response import ENCODE_AHEAD_MS, ENCODE_SLICE_MS, Pacer, ResponseStream

OPUS = AudioFormat("opus", 48000, 1, 20)
PCM16K = AudioFormat("pcm_s16le", 16000, 1, 20)
SLICE = 16000 * ENCODE_SLICE_MS // 1000


class ManualWorkers:
    """Jobs wait until the test runs them, as on a busy audio thread."""

    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def submit(self, key, work, arg=None, deliver=None, fail=None) -> None:
        self.jobs.append((work, arg, deliver))

    def run_next(self) -> None:
        work, arg, deliver = self.jobs.pop(0)
        deliver(work(arg))


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.ended: list[dict] = []

    def event(self, event_type, data) -> None:
        pass

    def startResponse(self, text, fmt, metadata) -> None:
        pass

    def audio(self, packet: bytes) -> None:
        self.packets.append(packet)

    def endResponse(self, summary: dict) -> None:
        self.ended.append(summary)


def stream(workers, lead_ms: int = 10**9, waiting: bool = False) -> tuple[ResponseStream, Sink, Clock]:
    """
    A started response to an Opus client, with its collaborators given (no channel needed);
    ``waiting``: not activated when ready (another response is playing).
    """
    clock = Clock()
    sink = Sink()
    response = ResponseStream(
        OPUS, turn_number=1, sink=sink, settings=StreamSettings(response_lead_ms=lead_ms),
        pacer=Pacer(clock), submit=workers.submit, clock=clock,
        ready=(lambda s: None) if waiting else (lambda s: s.activate()), done=lambda s: None,
    )
    response.startResponse(None, PCM16K, {})  # what a pipeline sends: 16 kHz PCM, to encode as Opus
    return response, sink, clock


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(7)
    return (np.sin(2 * np.pi * 180 * t) * 6000 + rng.normal(0, 800, t.size)).astype(np.int16)


def test_the_first_packet_goes_out_before_the_rest_is_encoded() -> None:
    workers = ManualWorkers()
    response, sink, _ = stream(workers)
    response.audio(speech(1.2))
    response.endResponse({})
    assert len(workers.jobs) == 1 and len(workers.jobs[0][1]) == SLICE  # one slice at a worker
    workers.run_next()
    # Played while the rest waits (the resampler holds back a few ms of the first slice).
    assert 1 <= len(sink.packets) <= ENCODE_SLICE_MS // 20
    while workers.jobs:
        workers.run_next()
    assert len(sink.packets) == 60 and sink.ended and not sink.ended[0]["cancelled"]


def test_the_packets_are_those_of_encoding_it_all_at_once() -> None:
    pcm = speech(1.2)
    whole = ResponseEncoder(16000, OPUS)
    expected = [p for p, _ in whole.encode(pcm) + whole.flush()]
    response, sink, _ = stream(AudioWorkers(threads=0))
    for i in range(0, len(pcm), 4000):  # a pipeline's chunks need not fall on slices
        response.audio(pcm[i:i + 4000])
    response.endResponse({})
    assert sink.packets == expected


def test_small_chunks_are_encoded_together() -> None:
    workers = ManualWorkers()
    response, sink, _ = stream(workers)
    pcm = speech(0.5)
    for i in range(0, len(pcm), 320):  # 20 ms chunks arrive while the first is encoded
        response.audio(pcm[i:i + 320])
    assert [len(job[1]) for job in workers.jobs] == [320]
    workers.run_next()
    sizes = [len(job[1]) for job in workers.jobs]
    assert sizes[:-1] == [SLICE] * (len(sizes) - 1) and sizes[-1] <= SLICE  # the 20 ms chunks, 100 ms a job
    assert sum(sizes) == len(pcm) - 320


def test_a_barge_in_stops_the_encoding() -> None:
    workers = ManualWorkers()
    response, sink, _ = stream(workers, lead_ms=100)
    response.audio(speech(10.0))
    response.endResponse({})
    workers.run_next()
    sent = len(sink.packets)
    assert 1 <= sent <= ENCODE_SLICE_MS // 20
    at_workers = len(workers.jobs)
    assert at_workers <= (100 + ENCODE_AHEAD_MS) // ENCODE_SLICE_MS  # the window, not the 10 s
    response.cancel("barge_in")
    while workers.jobs:  # the slices already at a worker come back and are dropped
        workers.run_next()
        at_workers -= 1
    assert at_workers == 0  # nothing more was handed out after the cancel
    assert len(sink.packets) == sent
    assert sink.ended[0]["cancelled"] and sink.ended[0]["reason"] == "barge_in"


def test_after_the_first_slice_the_encoding_keeps_ahead_of_the_pacer() -> None:
    """A slow worker: what is encoded or at a worker stays lead + ENCODE_AHEAD_MS ahead of what was sent."""
    workers = ManualWorkers()
    response, sink, clock = stream(workers, lead_ms=100)
    response.pacer.startService()
    response.audio(speech(3.0))
    response.endResponse({})
    assert len(workers.jobs) == 1  # the first slice alone: it comes back soonest
    workers.run_next()
    window = (100 + ENCODE_AHEAD_MS) // ENCODE_SLICE_MS
    assert len(workers.jobs) == window  # 100 ms of it sent at once (the lead): the window is all open
    # Every 100 ms the worker returns what it was given in one batch (one round trip), and the
    # pacer never runs dry: the next packet is always there when it is due.
    for _ in range(40):
        jobs, workers.jobs = workers.jobs, []
        for work, arg, deliver in jobs:
            deliver(work(arg))
        for _ in range(10):
            clock.advance(0.01)
            due = (clock.seconds() * 1000.0 + 100) // 20  # packets the pacer may have sent by now
            assert len(sink.packets) >= min(due, 150) - 1, (clock.seconds(), len(sink.packets))
        assert len(workers.jobs) <= window
        if sink.ended:
            break
    assert sink.ended and not sink.ended[0]["cancelled"] and len(sink.packets) == 150
    response.pacer.stopService()


def test_a_response_waiting_its_turn_is_encoded_only_a_window_ahead() -> None:
    workers = ManualWorkers()
    response, sink, clock = stream(workers, lead_ms=100, waiting=True)  # another response is playing
    response.audio(speech(10.0))
    response.endResponse({})
    while workers.jobs:
        workers.run_next()
    assert response.queue and 350 <= sum(ms for _, ms in response.queue) <= 100 + ENCODE_AHEAD_MS + ENCODE_SLICE_MS
    assert response._to_encode  # the rest waits, as PCM, until it can be played


def test_a_long_response_with_inline_workers() -> None:
    # Without audio threads every job is delivered inline: a loop, not a recursion per slice.
    response, sink, _ = stream(AudioWorkers(threads=0))
    response.audio(np.zeros(16000 * 120, dtype=np.int16))  # 120 s: 1,200 slices
    response.endResponse({})
    assert len(sink.packets) == 6000 and sink.ended


def test_hurry_sends_the_rest_as_fast_as_it_is_encoded() -> None:
    """hurry(): nobody plays it live (a call queued for another node): no pacing, the clock stands still."""
    workers = ManualWorkers()
    response, sink, clock = stream(workers, lead_ms=100)
    response.pacer.startService()
    response.audio(speech(3.0))
    response.endResponse({})
    workers.run_next()
    paced = len(sink.packets)
    assert 0 < paced <= 100 // 20 + 1  # only the lead went out at once
    response.hurry()
    assert response.unpaced
    while workers.jobs:
        workers.run_next()  # each slice goes out as it comes back: not a packet waits for the clock
    assert clock.seconds() == 0
    assert len(sink.packets) == 150 and sink.ended and not sink.ended[0]["cancelled"]
    response.hurry()  # done: nothing changes
    assert len(sink.packets) == 150 and len(sink.ended) == 1
    response.pacer.stopService()


def test_hurry_before_a_response_plays_takes_effect_when_it_does() -> None:
    workers = ManualWorkers()
    response, sink, clock = stream(workers, lead_ms=100, waiting=True)  # another response is playing
    response.audio(speech(2.0))
    response.endResponse({})
    response.hurry()
    while workers.jobs:
        workers.run_next()
    assert not sink.packets  # not active: hurry sends nothing yet
    response.activate()
    while workers.jobs:
        workers.run_next()
    assert len(sink.packets) == 100 and sink.ended and clock.seconds() == 0
