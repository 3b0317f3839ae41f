"""--audio-inline-max over a real socket: the same acks and turn events as the hop, in the same order."""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np
import pytest
from websockets.sync.client import connect

from daemons import start_daemon
from txvoice.audio import native


@pytest.fixture(scope="module")
def inline_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = start_daemon(tmp_path_factory.mktemp("inline"), "--audio-inline-max", "2", "--audio-threads", "1")
    yield d
    d.stop()


def _opus_speech() -> list[bytes]:
    from signal_speech import silence, speak

    from txvoice.audio.codecs.opus import OpusEncoder
    from txvoice.audio.format import AudioFormat

    audio = np.concatenate([silence(300, 48000), speak("Hello there.", 48000), silence(900, 48000)])
    return OpusEncoder(AudioFormat("opus", 48000, 1)).encode(audio)


def _session(port: int, packets: list[bytes], respond: bool) -> tuple[int, list[Any]]:
    url = f"ws://127.0.0.1:{port}/ws/audio?codec=opus&sample_rate=48000&channels=1" + ("&respond=1" if respond else "")
    with connect(url, open_timeout=5) as ws:
        json.loads(ws.recv(timeout=5))
        for packet in packets:
            ws.send(packet)
        acks, got = 0, []  # type: tuple[int, list[Any]]
        while acks < len(packets) or (respond and not any(m.get("status") == "response_end" for m in got)):
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes):
                continue  # the echoed reply's audio
            msg = json.loads(msg)
            if msg == {"status": "chunk_received"}:
                acks += 1
            else:
                got.append(msg)
        return acks, got


def _events(got: list[Any]) -> list[Any]:
    # Identifiers and timings of the reply differ from run to run; the detector's own times do not.
    return [m for m in got if m["status"] in ("vad", "turn_start", "turn_end")]


@pytest.mark.skipif(not native.available(), reason="the native ingest is not built")
@pytest.mark.parametrize("respond", [False, True])
def test_inline_batches_ack_and_report_turns_as_the_hop_does(daemon: Any, inline_daemon: Any, respond: bool) -> None:
    packets = _opus_speech()
    acks, hopped = _session(daemon.port, packets, respond)
    inline_acks, inline = _session(inline_daemon.port, packets, respond)
    assert acks == inline_acks == len(packets)
    assert _events(inline) == _events(hopped) and any(m["status"] == "turn_end" for m in inline)
    if respond:
        assert [m["status"] for m in inline if m["status"].startswith("response")] == ["response", "response_end"]


def _counter(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.skipif(not native.available(), reason="the native ingest is not built")
def test_the_default_runs_small_batches_inline_only_on_one_cpu(tmp_path: Any, daemon: Any) -> None:
    """--audio-inline-max -1 (the default): a daemon limited to one CPU runs them on the reactor, else it hops."""
    import os

    packets = _opus_speech()
    name = "txvoice_pool_inline_batches_total"
    if len(os.sched_getaffinity(0)) > 1:  # the shared daemon may use every CPU here: it hops
        before = _counter(daemon.port, name)
        assert _session(daemon.port, packets, False)[0] == len(packets)
        assert _counter(daemon.port, name) == before
    one_cpu = start_daemon(tmp_path, "--audio-threads", "1", twistd_prefix=("taskset", "-c", str(min(os.sched_getaffinity(0)))))
    try:
        acks, got = _session(one_cpu.port, packets, False)
        assert acks == len(packets) and any(m["status"] == "turn_end" for m in got)
        # The client sends all at once: a read may hold more than 64 chunks, and such a batch hops.
        assert _counter(one_cpu.port, name) > 0
    finally:
        one_cpu.stop()
