#!/usr/bin/env python3
"""
Turn latency with the echo pipeline: the framework's own overhead on a turn, and barge-in delay.

    .venv/bin/python bench/turns.py        # K=20 turns per mode; Opus and PCM 16 kHz; 0 and 50 background sessions
    .venv/bin/python bench/turns.py --k 5 --background 0 --codecs opus --json /tmp/turns.json

``bench/run.py`` runs it after the throughput part (``--turns-k``, ``--turns-background``,
``--turns-codecs``) and puts its result in ``latest.json`` / ``latest.md``.  It
starts txvoice as run.py does (``twistd -n --pidfile= txvoice --listen tcp:PORT:interface=127.0.0.1
--audio-threads 1 --pipeline echo``, pinned with ``taskset -c 0``; this client pins itself to the
generator's core), optionally starts M background sessions of the C generator streaming Opus to
``/ws/audio``, and drives one native-protocol session (``txvoice.v1`` at ``/``, the ``websockets``
library on asyncio) that streams espeak-ng speech in real time, as 20 ms Opus packets (48 kHz) or
PCM 16 kHz frames (``--codecs``), each combination on a fresh server:

* **push-to-talk** (``mode: push_to_talk``): ``voice_start``, the utterance, ``voice_end`` at the
  next 20 ms tick.  *Explicit end -> first reply frame*: ``voice_end`` sent -> the first binary
  frame of the echo reply (the reply's ``voice_response`` announcement is timed too).
* **voice activity** (``mode: voice_activity``, ``silence_ms`` 300): one stream, speech then
  silence, the server cuts the turn after ``silence_ms`` of silence.  *End of speech -> first
  reply frame, net of silence_ms*: from sending the packet that completes ``silence_ms`` after the
  last voiced frame (the ``turn_end`` event's ``end_ms``; = last voiced frame sent + silence_ms, the
  packets going out in real time) -> the first binary frame of the reply.
* **barge-in**, in both modes: 200 ms after a reply's first frame arrives, the next utterance
  starts (in push-to-talk a new ``voice_start``) and talks over the reply.  *First voiced frame ->
  barge_in*: from sending the packet holding the first voiced frame (the ``barge_in`` event's
  ``stream_time_ms`` / 20 ms) -> the ``barge_in`` status event received; the reply must then close
  cancelled (``reason: barge_in``).  The server's own ``detection_delay_ms`` is kept beside it.

Each mode runs K+1 turns (the first has no reply to interrupt); p50 / p95 / max over the turns.
Times are ``time.perf_counter()`` on this client, taken right before each send and right after
each receive.  Every server listens on 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as bench  # noqa: E402  (the runner's helpers: servers, pinning, the generator)

FRAME_S = 0.020
UTTERANCE = "Hello there."
LEAD_MS = 100  # silence before each utterance, so its first voiced frame is inside the stream
BARGE_AFTER_S = 0.200  # how much of a reply plays before the next utterance talks over it
WAIT_S = 5.0  # longest wait for any one answer


# ------------------------------------------------------------------------------------ audio


def speech_pcm(text: str, rate: int) -> np.ndarray:
    """espeak-ng speech at ``rate``, trailing silence trimmed (40 ms kept), LEAD_MS of silence before."""
    import soxr

    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        src_rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    pcm = soxr.resample(pcm, src_rate, rate, quality="HQ").astype(np.int16)
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > 300)[0]
    pcm = pcm[: int(loud[-1]) + rate * 40 // 1000] if len(loud) else pcm
    return np.concatenate([np.zeros(rate * LEAD_MS // 1000, dtype=np.int16), pcm])


class Audio:
    """The utterance and silence as 20 ms packets of the client's codec."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        rate = 48000 if codec == "opus" else 16000
        self.start = ({"codec": "opus", "sample_rate": 48000, "channels": 1, "frame_duration_ms": 20} if codec == "opus"
                      else {"codec": "pcm_s16le", "sample_rate": 16000, "channels": 1, "frame_duration_ms": 20})
        n = rate // 50
        pcm = speech_pcm(UTTERANCE, rate)
        pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % n, dtype=np.int16)])
        frames = [pcm[i:i + n] for i in range(0, len(pcm), n)]
        #: The first packet that sounds at all (any sample beyond +-300): the utterance's true onset,
        #: whatever the server's detector dates the speech to.
        self.onset = next(i for i, f in enumerate(frames) if np.abs(f.astype(np.int32)).max() > 300)
        quiet = [np.zeros(n, dtype=np.int16)] * 50
        if codec == "opus":
            import opuslib

            enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
            enc.bitrate = 24000
            self.speech = [enc.encode(f.tobytes(), n) for f in frames]
            self.silence = [enc.encode(f.tobytes(), n) for f in quiet]
        else:
            self.speech = [f.tobytes() for f in frames]
            self.silence = [f.tobytes() for f in quiet]
        self.speech_ms = len(self.speech) * 20


# ------------------------------------------------------------------------------------ the client


def is_event(msg: Any, kind: str) -> bool:
    return isinstance(msg, dict) and msg.get("type") == "status" and msg.get("data", {}).get("event_type") == kind


def is_type(msg: Any, kind: str) -> bool:
    return isinstance(msg, dict) and msg.get("type") == kind


def is_final(msg: Any) -> bool:
    return is_type(msg, "voice_stream_chunk") and bool(msg["data"].get("final"))


class Client:
    """One native-protocol session; every message received is kept with its arrival time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.log: list[tuple[float, Any]] = []
        self.arrived = asyncio.Event()
        self.closed = False
        self.ids = 0

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, subprotocols=["txvoice.v1"], compression=None, max_size=None,
                                ping_interval=None, proxy=None, open_timeout=10, close_timeout=2)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        _, greeting = await self.wait(lambda m: is_type(m, "connect"), 0)
        self.greeting = greeting["data"]

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                t = time.perf_counter()
                self.log.append((t, raw if isinstance(raw, bytes) else json.loads(raw)))
                self.arrived.set()
        except Exception:
            pass
        self.closed = True
        self.arrived.set()

    async def wait(self, predicate, since: int, timeout: float = WAIT_S) -> tuple[float, Any]:
        """The first message from log index ``since`` on that ``predicate`` accepts (waits for it)."""
        deadline = time.perf_counter() + timeout
        i = since
        while True:
            while i < len(self.log):
                t, msg = self.log[i]
                i += 1
                if predicate(msg):
                    return t, msg
            if self.closed:
                raise ConnectionError("the server closed the connection")
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("no answer within %.1f s" % timeout)
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    def find(self, predicate, since: int, until: int | None = None) -> tuple[float, Any] | None:
        for t, msg in self.log[since:until]:
            if predicate(msg):
                return t, msg
        return None

    async def send_json(self, kind: str, data: dict | None = None) -> float:
        self.ids += 1
        body = json.dumps({"type": kind, "data": data or {}, "message_id": f"b{self.ids}"})
        t = time.perf_counter()
        await self.ws.send(body)
        return t

    async def send_at(self, when: float, payload: bytes | str) -> float:
        """Send ``payload`` (bytes: binary, str: text) at ``when`` (perf_counter s); the actual send time."""
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # a little late at times: every figure uses the actual send time
        t = time.perf_counter()
        await self.ws.send(payload)
        return t

    async def close(self) -> None:
        try:
            await self.ws.close()
        except Exception:
            pass
        self.reader.cancel()


def barge_in_of(client: Client, since: int, sent: dict[int, float], onset: int | None = None) -> dict[str, Any] | None:
    """
    The barge-in seen since log index ``since``: client delay from the send of the frame the server
    dated the speech to, and (``onset``: the key in ``sent`` of the utterance's first sounding
    packet) from that packet's send, which does not depend on the detector's own dating.
    """
    got = client.find(lambda m: is_event(m, "barge_in"), since)
    if got is None:
        return None
    t, msg = got
    info = msg["data"]
    frame = int(info["stream_time_ms"] // 20)
    if frame not in sent:
        return {"error": f"barge_in dated to frame {frame}, not one of this utterance's"}
    return {"delay_ms": (t - sent[frame]) * 1000.0,
            "from_onset_ms": (t - sent[onset]) * 1000.0 if onset in sent else None, "server_delay_ms": info.get("detection_delay_ms"),
            "played_ms": info.get("played_ms"), "response_id": info.get("response_id"), "frame": frame}


async def reply_after(client: Client, since: int) -> tuple[float, float, str]:
    """(voice_response arrival, first binary frame arrival, response id) of the next reply from ``since``."""
    t_resp, announce = await client.wait(lambda m: is_type(m, "voice_response"), since)
    index = next(i for i in range(since, len(client.log)) if client.log[i][1] is announce)
    t_first, _ = await client.wait(lambda m: isinstance(m, bytes), index + 1)
    return t_resp, t_first, announce["data"].get("response_id")


async def cancelled_ok(client: Client, since: int, response_id: str | None) -> bool:
    """Did the interrupted reply close cancelled by the barge-in?"""
    _, final = await client.wait(lambda m: is_final(m) and m["data"].get("response_id") == response_id, since)
    return bool(final["data"].get("cancelled")) and final["data"].get("reason") == "barge_in"


async def record_barge_in(out: dict[str, list], client: Client, since: int, sent: dict[int, float],
                          previous: str, turn: int, onset: int | None = None) -> None:
    """Time the barge-in of ``turn`` over reply ``previous`` into ``out``, or say what went wrong."""
    b = barge_in_of(client, since, sent, onset)
    if b is None or "error" in b:
        out["errors"].append(f"turn {turn}: " + (b["error"] if b else "no barge_in while the reply played"))
        return
    if b["response_id"] != previous or not await cancelled_ok(client, since, previous):
        out["errors"].append(f"turn {turn}: the barge-in did not cancel the reply {previous}")
    out["barge_in_ms"].append(b["delay_ms"])
    out.setdefault("barge_in_from_onset_ms", []).append(b["from_onset_ms"])
    out["barge_in_server_ms"].append(b["server_delay_ms"])


async def push_to_talk(client: Client, audio: Audio, turns: int) -> dict[str, list]:
    out: dict[str, list] = {"end_to_first_frame_ms": [], "end_to_voice_response_ms": [], "barge_in_ms": [],
                            "barge_in_server_ms": [], "errors": []}
    previous: str | None = None
    next_start = time.perf_counter()
    for turn in range(turns):
        mark = len(client.log)
        await client.send_at(next_start, json.dumps({"type": "voice_start", "message_id": f"p{turn}",
                                                     "data": {**audio.start, "mode": "push_to_talk"}}))
        t0 = time.perf_counter()
        sent = {}
        for i, packet in enumerate(audio.speech):
            sent[i] = await client.send_at(t0 + i * FRAME_S, packet)
        t_end = await client.send_at(t0 + len(audio.speech) * FRAME_S,
                                     json.dumps({"type": "voice_end", "message_id": f"e{turn}", "data": {}}))
        end_index = len(client.log)
        if previous is not None:
            await record_barge_in(out, client, mark, sent, previous, turn, audio.onset)
        try:
            t_resp, t_first, previous = await reply_after(client, end_index)
        except (TimeoutError, ConnectionError) as e:
            out["errors"].append(f"turn {turn}: no reply ({e})")
            previous, next_start = None, time.perf_counter()
            continue
        out["end_to_voice_response_ms"].append((t_resp - t_end) * 1000.0)
        out["end_to_first_frame_ms"].append((t_first - t_end) * 1000.0)
        next_start = t_first + BARGE_AFTER_S
    return out


async def voice_activity(client: Client, audio: Audio, turns: int, silence_ms: int) -> dict[str, list]:
    out: dict[str, list] = {"end_to_first_frame_ms": [], "end_to_voice_response_ms": [],
                            "last_voiced_to_first_frame_minus_silence_ms": [], "barge_in_ms": [],
                            "barge_in_server_ms": [], "errors": []}
    await client.send_json("voice_start", {**audio.start, "mode": "voice_activity",
                                           "options": {"silence_ms": silence_ms, "prefix_padding_ms": 300}})
    sent: dict[int, float] = {}
    t0 = time.perf_counter() + FRAME_S
    frame = 0
    quiet = 0

    async def send(packet: bytes) -> None:
        nonlocal frame
        sent[frame] = await client.send_at(t0 + frame * FRAME_S, packet)
        frame += 1

    previous: str | None = None
    for turn in range(turns):
        mark = len(client.log)
        first_frame = frame
        for packet in audio.speech:
            await send(packet)
        utterance = {i: sent[i] for i in range(first_frame, frame)}
        if previous is not None:
            await record_barge_in(out, client, mark, utterance, previous, turn, first_frame + audio.onset)
        # Silence, in real time, until this turn's reply has played BARGE_AFTER_S (or a timeout).
        deadline = time.perf_counter() + silence_ms / 1000.0 + WAIT_S
        turn_end = reply = None
        while time.perf_counter() < deadline:
            await send(audio.silence[quiet % len(audio.silence)])
            quiet += 1
            if turn_end is None:
                turn_end = client.find(lambda m: is_event(m, "turn_end"), mark)
            if turn_end is not None and reply is None:
                announce = client.find(lambda m: is_type(m, "voice_response"), mark)
                if announce is not None:
                    idx = next(i for i in range(mark, len(client.log)) if client.log[i][1] is announce[1])
                    first = client.find(lambda m: isinstance(m, bytes), idx + 1)
                    if first is not None:
                        reply = (announce[0], first[0], announce[1]["data"].get("response_id"))
            if reply is not None and time.perf_counter() >= reply[1] + BARGE_AFTER_S:
                break
        if turn_end is None or reply is None:
            out["errors"].append(f"turn {turn}: " + ("no turn_end" if turn_end is None else "no reply"))
            previous = None
            continue
        info = turn_end[1]["data"]
        t_resp, t_first, previous = reply
        if info.get("reason") != "silence":
            out["errors"].append(f"turn {turn}: turn ended by {info.get('reason')}, not silence")
        trigger = round(info["end_ms"] / 20) - 1  # the packet whose arrival completed silence_ms
        if trigger < first_frame + len(audio.speech) or trigger not in sent:
            out["errors"].append(f"turn {turn}: the turn ended inside the utterance (end_ms {info['end_ms']})")
            continue
        last_voiced = client.find(lambda m: is_event(m, "vad") and m["data"].get("event") == "speech_end", mark)
        out["end_to_voice_response_ms"].append((t_resp - sent[trigger]) * 1000.0)
        out["end_to_first_frame_ms"].append((t_first - sent[trigger]) * 1000.0)
        if last_voiced is not None:
            lv = round(last_voiced[1]["data"]["stream_time_ms"] / 20) - 1
            out["last_voiced_to_first_frame_minus_silence_ms"].append((t_first - sent[lv]) * 1000.0 - silence_ms)
    return out


async def drive(url: str, audio: Audio, turns: int, silence_ms: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    client = Client(url)
    await client.open()
    try:
        result["push_to_talk"] = await push_to_talk(client, audio, turns)
    finally:
        await client.close()
    client = Client(url)  # a fresh session: no reply of the last push-to-talk turn still playing
    await client.open()
    try:
        result["voice_activity"] = await voice_activity(client, audio, turns, silence_ms)
    finally:
        await client.close()
    return result


# ------------------------------------------------------------------------------------ one measurement


def stats(values: list[float]) -> dict[str, Any]:
    vs = sorted(v for v in values if v is not None)
    if not vs:
        return {"n": 0, "p50": None, "p95": None, "max": None}

    def rank(q: float) -> float:
        return round(vs[min(len(vs), max(1, math.ceil(q * len(vs)))) - 1], 2)

    return {"n": len(vs), "p50": rank(0.5), "p95": rank(0.95), "max": round(vs[-1], 2)}


def monitoring(port: int) -> dict[str, Any]:
    with bench.LOCAL.open(f"http://127.0.0.1:{port}/monitoring", timeout=5) as r:
        return json.loads(r.read())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Options added to the server's command line (``--server-arg``), e.g. ``--barge-in-rule fast``.
SERVER_ARGS: list[str] = []


def server_spec() -> Any:
    if not SERVER_ARGS:
        return bench.SERVERS["txvoice"]
    return bench.ServerSpec("txvoice " + " ".join(SERVER_ARGS), bench._txvoice_cmd(SERVER_ARGS), env=bench._txvoice_env,
                            about="txvoice " + " ".join(SERVER_ARGS))


def measure(k: int, background: int, silence_ms: int, codec: str, audio: Audio) -> dict[str, Any]:
    """txvoice started fresh, ``background`` generator sessions, then the turns; the record."""
    spec = server_spec()
    record: dict[str, Any] = {"background_sessions": background, "k": k, "codec": codec, "silence_ms": silence_ms}
    server = bench.Server(spec, background + 8, f"turns-{codec}-bg{background}")
    gen = None
    try:
        server.wait_ready()
        if background:
            payload, path = bench.WORKLOADS["opus"]
            # Long enough for the turns (bounded): it is stopped as soon as they are done.
            estimate = (k + 1) * (2 * audio.speech_ms / 1000.0 + silence_ms / 1000.0 + 2 * BARGE_AFTER_S + 0.2) + 10.0
            cmd = bench.pinned(bench.GEN_CPU) + [
                str(bench.LOADGEN), "--port", str(server.port), "--path", path,
                "--frames", str(bench.PAYLOADS / payload), "--sessions", str(background),
                "--duration", str(round(estimate * 1.5 + 5, 1)), "--mode", "ack", "--greeting", "--warmup", "0",
                "--drain", "1", "--connect-timeout", str(10.0 + 0.01 * background),
            ]
            gen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            ready = threading.Event()

            def watch() -> None:
                for line in gen.stderr:
                    if line.startswith("PHASE send"):
                        ready.set()
                ready.set()

            threading.Thread(target=watch, daemon=True).start()
            if not ready.wait(30 + 0.02 * background) or gen.poll() is not None:
                raise RuntimeError("the background generator did not start sending")
            time.sleep(1.0)  # let the background settle into its rhythm
        t = time.perf_counter()
        raw = asyncio.run(drive(f"ws://127.0.0.1:{server.port}/", audio, k + 1, silence_ms))
        record["elapsed_s"] = round(time.perf_counter() - t, 1)
        if background:
            m = monitoring(server.port)
            record["background_check"] = {"active_connections": m.get("active_connections"),
                                          "messages_per_second_in": m.get("messages_per_second_in")}
            if gen.poll() is not None:
                record.setdefault("errors", []).append("the background generator stopped before the turns were done")
        ptt, vad = raw["push_to_talk"], raw["voice_activity"]
        record["explicit_end_to_first_frame_ms"] = stats(ptt["end_to_first_frame_ms"])
        record["explicit_end_to_voice_response_ms"] = stats(ptt["end_to_voice_response_ms"])
        record["vad_end_to_first_frame_ms"] = stats(vad["end_to_first_frame_ms"])
        record["vad_end_to_voice_response_ms"] = stats(vad["end_to_voice_response_ms"])
        record["vad_last_voiced_to_first_frame_minus_silence_ms"] = stats(vad["last_voiced_to_first_frame_minus_silence_ms"])
        record["barge_in_ms"] = stats(ptt["barge_in_ms"] + vad["barge_in_ms"])
        record["barge_in_from_onset_ms"] = stats(ptt.get("barge_in_from_onset_ms", []) + vad.get("barge_in_from_onset_ms", []))
        record["barge_in_server_detection_ms"] = stats(ptt["barge_in_server_ms"] + vad["barge_in_server_ms"])
        record["samples"] = raw
        errors = [f"push_to_talk {e}" for e in ptt["errors"]] + [f"voice_activity {e}" for e in vad["errors"]]
        if errors:
            record.setdefault("errors", []).extend(errors)
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        if gen is not None and gen.poll() is None:
            gen.terminate()  # our own generator, by its PID
            try:
                gen.wait(5)
            except subprocess.TimeoutExpired:
                gen.kill()
                gen.wait(5)
        server.stop()
    record["server_log"] = str(server.log_path.relative_to(bench.ROOT))
    return record


FIGURES = ["explicit_end_to_first_frame_ms", "vad_end_to_first_frame_ms", "barge_in_ms"]


def problems(result: dict[str, Any]) -> list[str]:
    """What is missing or wrong in a turns result (empty: every figure is there)."""
    out = []
    runs = result.get("runs") or []
    if not runs:
        out.append("turns: no measurement")
    for r in runs:
        tag = f"turns ({r['codec']}, background {r['background_sessions']})"
        if "error" in r:
            out.append(f"{tag}: {r['error']}")
            continue
        for e in r.get("errors", []):
            out.append(f"{tag}: {e}")
        for key in FIGURES:
            if not (r.get(key) or {}).get("n"):
                out.append(f"{tag}: no {key}")
    return out


def describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"

    def s(key: str) -> str:
        v = r[key]
        return f"{bench.fmt(v['p50'])}/{bench.fmt(v['p95'])}/{bench.fmt(v['max'])} (n={v['n']})"

    return (f"explicit end -> first frame {s('explicit_end_to_first_frame_ms')}, VAD end -> first frame "
            f"{s('vad_end_to_first_frame_ms')}, barge-in {s('barge_in_ms')} (from the first sounding packet "
            f"{s('barge_in_from_onset_ms')}) ms p50/p95/max"
            + (f"; {len(r['errors'])} problem(s): {r['errors'][0]}" if r.get("errors") else ""))


def run_all(k: int, backgrounds: list[int], silence_ms: int, codecs: list[str],
            false_barge_s: float = 0.0, speakers: int = 0, speakers_s: float = 65.0) -> dict[str, Any]:
    bench.build_loadgen()
    bench.make_payloads()
    bench.raise_fd_limit(max(backgrounds + [0]) + 256)
    audios = {codec: Audio(codec) for codec in codecs}
    result: dict[str, Any] = {
        "config": {"k": k, "turns_per_mode": k + 1, "background_sessions": backgrounds, "codecs": codecs,
                   "formats": {c: a.start for c, a in audios.items()}, "silence_ms": silence_ms,
                   "utterance": UTTERANCE, "utterance_ms": audios[codecs[0]].speech_ms, "lead_silence_ms": LEAD_MS,
                   "barge_after_ms": BARGE_AFTER_S * 1000, "server": bench.SERVERS["txvoice"].about,
                   "server_cpu": bench.SERVER_CPU, "client_cpu": bench.GEN_CPU if bench.PINNING else None},
        "runs": [],
    }
    for m in backgrounds:
        for codec in codecs:
            r = measure(k, m, silence_ms, codec, audios[codec])
            log(f"  [turns] {codec:6s} background {m:<4d} {describe(r)}")
            result["runs"].append(r)
    if false_barge_s:
        import false_barge

        fb = false_barge.measure(bench, SERVER_ARGS, false_barge_s, Client, is_event, is_type, is_final, "turns")
        log(f"  [turns] false barge-in corpus: {false_barge.describe(fb)}")
        result["false_barge_in"] = fb
    if speakers:
        result["speakers"] = speakers_run(speakers, speakers_s)
        log(f"  [turns] {speakers} speakers: {describe_speakers(result['speakers'])}")
    return result


def speakers_run(n: int, duration: float) -> dict[str, Any]:
    """bench/bench_speech_lag.py: ``n`` speech-pipeline sessions ending their turns together (its JSON)."""
    out = bench.BUILD / "speakers-last.json"
    out.unlink(missing_ok=True)
    cmd = [bench.PY, str(BENCH / "bench_speech_lag.py"), "--sessions", str(n), "--duration", str(duration),
           "--json", str(out), *([] if not SERVER_ARGS else ["--", *SERVER_ARGS])]
    try:
        subprocess.run(cmd, cwd=str(bench.ROOT), timeout=duration + 120, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": "bench_speech_lag.py timed out"}
    if not out.exists():
        return {"error": "bench_speech_lag.py wrote nothing"}
    return json.loads(out.read_text(encoding="utf-8"))


def describe_speakers(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    fa = (r.get("stage_latency_ms") or {}).get("first_audio") or {}
    return (f"first audio {fa.get('median')}/{fa.get('p95')}/{fa.get('max')} ms p50/p95/max, reactor lag p99 "
            f"{r['reactor_lag_ms_final']['p99']} ms, {r['transcripts_exact']}/{r['completed']} exact, "
            f"{len(r['failures'])} failures; steal {r.get('steal')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="txvoice turn latency and barge-in delay with the echo pipeline",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--k", type=int, default=20, help="turns measured per mode (K+1 are run) [20]")
    p.add_argument("--background", default="0,50", help="background generator sessions, one measurement each [0,50]")
    p.add_argument("--silence-ms", type=int, default=300, help="voice_activity end-of-turn silence [300]")
    p.add_argument("--codecs", default="opus,pcm16k",
                   help="the client's audio, one measurement each: opus (48 kHz), pcm16k [opus,pcm16k]")
    p.add_argument("--json", default=None, help="write the result here (else to stdout)")
    p.add_argument("--false-barge", type=float, default=3.0, metavar="SECONDS",
                   help="play each false-barge-in corpus item (bench/barge_corpus.py) this long over a reply; 0: skip [3]")
    p.add_argument("--speakers", type=int, default=20,
                   help="also run bench/bench_speech_lag.py with this many speech sessions ending turns together; 0: skip [20]")
    p.add_argument("--speakers-duration", type=float, default=65.0, help="its seconds of load [65]")
    p.add_argument("--server-arg", action="append", default=[],
                   help="add to the server's command line, e.g. --server-arg=--barge-in-rule --server-arg=fast")
    p.add_argument("--quick", action="store_true", help="exit non-zero unless every figure was produced")
    a = p.parse_args(argv)
    backgrounds = [int(x) for x in a.background.split(",") if x.strip()]
    codecs = [c.strip() for c in a.codecs.split(",") if c.strip()]
    if not codecs or any(c not in ("opus", "pcm16k") for c in codecs):
        p.error("codecs are opus and pcm16k")
    if not 1 <= a.k <= 200 or any(not 0 <= m <= 2000 for m in backgrounds) or not 200 <= a.silence_ms <= 2000:
        p.error("bounded runs only: 1 <= k <= 200, 0 <= background <= 2000, 200 <= silence-ms <= 2000")
    if bench.PINNING:
        os.sched_setaffinity(0, {int(bench.GEN_CPU)})  # the client beside the generator, off the server's core
    SERVER_ARGS[:] = a.server_arg
    if not 0 <= a.false_barge <= 30 or not 0 <= a.speakers <= 100 or not 10 <= a.speakers_duration <= 300:
        p.error("bounded runs only: 0 <= false-barge <= 30 s an item, 0 <= speakers <= 100, 10 <= speakers-duration <= 300")
    result = run_all(a.k, backgrounds, a.silence_ms, codecs, a.false_barge, a.speakers, a.speakers_duration)
    bad = result["problems"] = problems(result)
    text = json.dumps(result, indent=1, default=str) + "\n"
    if a.json:
        Path(a.json).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if bad:
        log("turns: " + "; ".join(bad))
    return 1 if bad and a.quick else 0


if __name__ == "__main__":
    sys.exit(main())
