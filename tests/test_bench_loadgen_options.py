"""
The load generator's options for turn-based protocols (bench/loadgen.c): a subprotocol it insists
on, extra request headers, its own greeting text, start messages sent after the greeting and before
any audio (``{i}`` replaced per session) with a reply awaited, ``--mode none`` (no answer per frame)
with ping probes timed from the intended send time, and ``--count-match``.  Against an independent
server (the ``websockets`` library) that records what each connection sent, in order; then, through
``bench/bench_voicews.py``, against the daemon's native endpoint and ``/voice-ws``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from benchscripts import loaded, stall_once_sending

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "Bearer loadgen-test-token"


@pytest.fixture(scope="module")
def bench():
    for module in loaded("run.py", "txvoice_bench_run_options"):
        module.build_loadgen()
        yield module


class Recorder:
    """A turn-based server: greeting, a reply to ``start`` messages, no answer per binary frame."""

    def __init__(self, *, subprotocol: str | None = "txvoice.v1", start_reply: str | None = '{"type":"started"}',
                 turns_at: tuple[int, ...] = ()) -> None:
        self.subprotocol = subprotocol
        self.start_reply = start_reply
        # A text "turn!" after these binary frames (not after the last: a ping behind the last frame is
        # answered by the library before the handler gets to that frame, and the generator leaves then).
        self.turns_at = turns_at
        self.connections: list[dict[str, Any]] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != TOKEN:
            return conn.respond(401, "no token\n")
        return None

    def select(self, conn: ServerConnection, offered: list[str]) -> str | None:
        return self.subprotocol if self.subprotocol in offered else None

    async def handler(self, ws: ServerConnection) -> None:
        record: dict[str, Any] = {"path": ws.request.path, "headers": Headers(ws.request.headers),
                                  "subprotocol": ws.subprotocol, "messages": [], "binary": 0}
        self.connections.append(record)
        await ws.send('{"type":"hello","greet":"welcome"}')
        async for msg in ws:
            if isinstance(msg, str):
                record["messages"].append((record["binary"], msg))
                if msg.startswith('{"type":"start"') and self.start_reply:
                    await ws.send(self.start_reply)
            else:
                record["binary"] += 1
                if record["binary"] in self.turns_at:
                    await ws.send('{"type":"turn!"}')

    async def main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self.handler, "127.0.0.1", 0, process_request=self.check, select_subprotocol=self.select,
                         compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def __enter__(self) -> "Recorder":
        self._thread = threading.Thread(target=asyncio.run, args=(self.main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


def loadgen(bench, port: int, tmp_path: Path, *extra: str, sessions: int = 3, duration: float = 1.0,
            start: list[str] | None = None) -> subprocess.Popen:
    args = [str(bench.LOADGEN), "--port", str(port), "--frames", str(bench.make_payloads()["pcm16k"]),
            "--path", "/voice?x=1", "--sessions", str(sessions), "--duration", str(duration), "--warmup", "0.2",
            "--drain", "1", "--mode", "none", "--greeting-match", '"greet":"welcome"']
    if start is not None:
        f = tmp_path / "start.msgs"
        f.write_text("".join(line + "\n" for line in start))
        args += ["--start-file", str(f)]
    return subprocess.Popen(args + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(gen: subprocess.Popen) -> dict[str, Any]:
    out, err = gen.communicate(timeout=30)
    assert gen.returncode == 0, err
    return json.loads(out)


def test_start_messages_go_after_the_greeting_before_audio_with_the_session_index(bench, tmp_path: Path) -> None:
    with Recorder(turns_at=(10, 20, 30, 40)) as server:
        g = result(loadgen(bench, server.port, tmp_path, "--subprotocol", "txvoice.v1", "--header",
                           f"Authorization: {TOKEN}", "--header", "X-Bench: {i}", "--start-reply", '"started"',
                           "--probe-every", "5", "--count-match", '"turn!"',
                           start=['{"type":"start","id":"s{i}"}', '{"type":"second","n":{i}}']))
    assert g["connected"] == 3 and g["start_failed"] == 0 and g["start_messages"] == 2, g
    assert g["subprotocol"] == "txvoice.v1" and g["mode"] == "none"
    assert g["frames_sent"] == 3 * 50 and g["frames_lost"] == 0 and g["frames_acked"] == 0
    assert sorted(c["subprotocol"] for c in server.connections) == ["txvoice.v1"] * 3
    for c in server.connections:
        assert c["path"] == "/voice?x=1" and c["headers"]["Authorization"] == TOKEN
        assert c["headers"]["X-Bench"] == "{i}"  # substitution is for the start messages only
        (at0, first), (at1, second) = c["messages"]
        assert at0 == at1 == 0, "a start message came after audio"
        i = json.loads(first)["id"][1:]
        assert first == f'{{"type":"start","id":"s{i}"}}' and second == f'{{"type":"second","n":{i}}}'
        assert c["binary"] == 50
    assert sorted(json.loads(c["messages"][0][1])["id"] for c in server.connections) == ["s0", "s1", "s2"]
    # One probe per 5 frames, each answered (the library pongs), none lost; the server's texts counted.
    assert g["probes_sent"] == g["probes_answered"] == 3 * 10 and g["probes_lost"] == 0
    assert g["probe_latency_us"]["count"] > 0 and g["probe_latency_us"]["p50"] < 100_000
    assert g["matched_messages"] == 3 * 4 and g["server_errors"] == 0


def test_a_subprotocol_the_server_does_not_select_fails_the_handshake(bench, tmp_path: Path) -> None:
    with Recorder(subprotocol=None) as server:
        g = result(loadgen(bench, server.port, tmp_path, "--subprotocol", "txvoice.v1", "--header",
                           f"Authorization: {TOKEN}"))
    assert g["connected"] == 0 and g["handshake_failed"] == 3 and g["frames_sent"] == 0
    assert "subprotocol" in g["first_error"]


def test_a_missing_header_is_the_servers_401(bench, tmp_path: Path) -> None:
    with Recorder() as server:
        g = result(loadgen(bench, server.port, tmp_path, "--subprotocol", "txvoice.v1"))
    assert g["connected"] == 0 and g["first_http_status"] == 401 and not server.connections


def test_a_start_message_never_answered_fails_the_session(bench, tmp_path: Path) -> None:
    with Recorder(start_reply=None) as server:
        g = result(loadgen(bench, server.port, tmp_path, "--header", f"Authorization: {TOKEN}", "--start-reply",
                           '"started"', "--connect-timeout", "1.5", start=['{"type":"start"}']))
    assert g["connected"] == 0 and g["start_failed"] == 3 and g["frames_sent"] == 0
    assert all(c["binary"] == 0 for c in server.connections), "audio went out before the start was answered"


def test_a_refused_start_message_fails_at_once(bench, tmp_path: Path) -> None:
    with Recorder(start_reply='{"type":"error","code":"nope"}') as server:
        g = result(loadgen(bench, server.port, tmp_path, "--header", f"Authorization: {TOKEN}", "--start-reply",
                           '"started"', start=['{"type":"start"}']))
    assert g["connected"] == 0 and g["start_failed"] == 3 and "nope" in g["first_error"]


def test_probes_count_from_the_intended_send_time_when_the_generator_stalls(bench, tmp_path: Path) -> None:
    with Recorder() as server:
        gen = loadgen(bench, server.port, tmp_path, "--header", f"Authorization: {TOKEN}", "--probe-every", "1",
                      sessions=2, duration=2.0)
        stall_once_sending(gen)
        g = result(gen)
    assert g["probes_sent"] == g["probes_answered"] == 2 * 100 and g["probes_lost"] == 0
    assert g["probe_latency_us"]["max"] >= 250_000, g["probe_latency_us"]  # the stall is in the latency ...
    assert g["probe_latency_from_send_us"]["p99"] < 250_000, g["probe_latency_from_send_us"]  # ... not from the send


@pytest.mark.slow
def test_bench_voicews_drives_native_and_voicews_with_their_start_messages(tmp_path: Path) -> None:
    out = tmp_path / "voicews.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_voicews.py"), "--ns", "3", "--reps", "1", "--duration", "3",
           "--codecs", "opus", "--probe-every", "5", "--steal-retries", "0", "--out", str(out), "--md", str(tmp_path / "v.md")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = {r["endpoint"]: r for r in doc["runs"]}
    assert set(rows) == {"native", "voicews"}
    for r in rows.values():
        assert r["clean"] and not r["error"] and r["start_failed"] == 0 and r["connected"] == 3, r
        assert r["latency_source"] == "probes" and r["probes_sent"] == 3 * 30 and r["probes_lost"] == 0
        assert r["cpu_us_per_frame_sent"] > 0 and r["frames_sent"] == 3 * 150
    assert doc["summary"]["ratio/opus@3"] is not None
    assert "| opus | 3 | `voicews` |" in (tmp_path / "v.md").read_text()
