"""
False barge-ins per minute: the corpus of :mod:`barge_corpus` played at a real client while a
reply plays (``bench/turns.py --false-barge``; here for its own module since turns.py is full).

For each corpus item a fresh native-protocol session (PCM 16 kHz, ``voice_activity``,
``silence_ms`` 1000 so the utterance is one turn, the echo pipeline) streams the item from its
first frame (the room a microphone hears all along: 1 s of it alone, then a long utterance over
it, then it alone; babble, which the VAD hears as speech, has the turn cut at ``max_turn_ms``
right after the utterance), waits for the echoed reply's first frame and goes on sending the item for
``seconds`` while the reply plays.  The
``echo -20 dB`` item is the reply itself as the client receives it, 20 dB down and 40 ms late
(played back from the first reply frame's arrival at real time).  A ``barge_in`` status event
during the item is a false trigger; it stops the reply, so each item counts at most one and its
exposure ends there.  Triggers per minute = triggers / summed exposure (time the item was heard
over a playing reply).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np

import barge_corpus as corpus

FRAME = 320  # 20 ms at 16 kHz
FRAME_S = 0.020
#: About 4.5 s of speech, so its echoed reply outlasts a 3 s corpus item.
LONG_UTTERANCE = "The weather today is sunny with a light breeze from the west and it will stay warm tonight."
#: Long enough that the utterance is one turn (espeak-ng pauses between phrases).
SILENCE_MS = 1000
BED_LEAD_S = 1.0


async def one_item(url: str, speech: np.ndarray, item: np.ndarray, kind: str, seconds: float, client_cls, is_event, is_type,
                   is_final) -> dict[str, Any]:
    """Play ``item`` over the reply to ``speech`` on a fresh session; what happened."""
    client = client_cls(url)
    await client.open()
    try:
        await client.send_json("voice_start", {"codec": "pcm_s16le", "sample_rate": 16000, "channels": 1,
                                               "frame_duration_ms": 20, "mode": "voice_activity",
                                               "options": {"silence_ms": SILENCE_MS, "prefix_padding_ms": 300,
                                                           # Babble keeps the VAD hearing speech: cut the turn
                                                           # after the utterance all the same.
                                                           "max_turn_ms": round((BED_LEAD_S + len(speech) / 16000) * 1000) + 400}})
        t0 = time.perf_counter() + FRAME_S
        tick = 0

        async def send(samples: np.ndarray) -> float:
            nonlocal tick
            t = await client.send_at(t0 + tick * FRAME_S, samples.astype("<i2").tobytes())
            tick += 1
            return t

        # The item plays from the stream's start (a microphone hears its room all along): a second
        # of it alone, the utterance over it, then it alone until the reply comes and while it plays.
        bed_at = 0
        lead = int(BED_LEAD_S * 16000)

        def bed(n: int) -> np.ndarray:
            nonlocal bed_at
            out = np.zeros(n, dtype=np.float64) if kind == "echo" else item[bed_at:bed_at + n].astype(np.float64)
            bed_at += n
            return out

        pcm = np.concatenate([np.zeros(lead, dtype=np.int16), speech,
                              np.zeros((-(lead + len(speech))) % FRAME, dtype=np.int16)])
        for i in range(0, len(pcm), FRAME):
            await send(corpus.to_int16(pcm[i:i + FRAME] + bed(FRAME)))
        mark = len(client.log)
        deadline = time.perf_counter() + 5.0 + SILENCE_MS / 1000.0
        first = None
        while first is None and time.perf_counter() < deadline:
            await send(corpus.to_int16(bed(FRAME)))
            got = client.find(lambda m: is_type(m, "voice_response"), mark)
            if got is not None:
                idx = next(i for i in range(mark, len(client.log)) if client.log[i][1] is got[1])
                first_frame = client.find(lambda m: isinstance(m, bytes), idx + 1)
                if first_frame is not None:
                    first = (idx, first_frame[0], got[1]["data"].get("response_id"))
        if client.find(lambda m: is_event(m, "barge_in"), mark) is not None:
            return {"error": "a barge-in before the reply played (the utterance was cut into turns)"}
        if first is None:
            return {"error": "no reply to play the item over"}
        idx, t_first, response_id = first
        start = len(client.log)
        t_item = None
        triggered = ended = False
        t_stop = None
        for _ in range(int(seconds / FRAME_S)):
            frame = bed(FRAME)
            if kind == "echo":
                # What the client has played of the reply by now, 40 ms late, 20 dB down.
                reply = b"".join(m for _, m in client.log[idx + 1:] if isinstance(m, bytes))
                played = np.frombuffer(reply[: len(reply) // 2 * 2], dtype="<i2")
                at = int((time.perf_counter() - t_first - 0.040) * 16000)
                seg = played[max(0, at):max(0, at) + FRAME].astype(np.float64)
                frame[: len(seg)] += seg * 0.1
            t = await send(corpus.to_int16(frame))
            if t_item is None:
                t_item = t
            if client.find(lambda m: is_event(m, "barge_in"), start) is not None:
                triggered, t_stop = True, time.perf_counter()
                break
            if client.find(lambda m: is_final(m) and m["data"].get("response_id") == response_id, start) is not None:
                ended, t_stop = True, time.perf_counter()
                break
        if t_stop is None:
            t_stop = time.perf_counter()
        await asyncio.sleep(0.1)
        triggered = triggered or client.find(lambda m: is_event(m, "barge_in"), start) is not None
        return {"triggered": triggered, "reply_ended": ended, "exposure_s": round(t_stop - (t_item or t_stop), 3)}
    finally:
        await client.close()


async def run(url: str, seconds: float, client_cls, is_event, is_type, is_final) -> dict[str, Any]:
    speech = corpus.espeak(LONG_UTTERANCE)
    items = []
    # Each item long enough to run under the lead, the utterance, the wait and the measured part.
    bed_s = BED_LEAD_S + len(speech) / 16000 + SILENCE_MS / 1000.0 + 6.0 + seconds
    for name, kind, level, samples in corpus.clips(bed_s):
        r = await one_item(url, speech, samples, kind, seconds, client_cls, is_event, is_type, is_final)
        items.append({"name": name, **r})
    ok = [r for r in items if "error" not in r]
    triggers = sum(bool(r["triggered"]) for r in ok)
    exposure = sum(r["exposure_s"] for r in ok)
    return {"items": items, "triggers": triggers, "exposure_s": round(exposure, 2),
            "per_minute": round(triggers / (exposure / 60.0), 2) if exposure else None,
            "errors": [f"{r['name']}: {r['error']}" for r in items if "error" in r]}


def measure(bench, rule_args: list[str], seconds: float, client_cls, is_event, is_type, is_final,
            label: str) -> dict[str, Any]:
    """A fresh txvoice (``rule_args`` added to run.py's command), the corpus over its replies."""
    spec = bench.SERVERS["txvoice"]
    if rule_args:
        spec = bench.ServerSpec(f"txvoice{'-'.join([''] + rule_args)}", bench._txvoice_cmd(rule_args),
                                env=bench._txvoice_env, about=" ".join(rule_args))
    server = bench.Server(spec, 8, f"false-barge-{label}")
    before = bench.cpu_ticks()
    try:
        server.wait_ready()
        record = asyncio.run(run(f"ws://127.0.0.1:{server.port}/", seconds, client_cls, is_event, is_type, is_final))
    except Exception as e:
        record = {"error": f"{type(e).__name__}: {e}"}
    finally:
        server.stop()
    after = bench.cpu_ticks()
    record["steal"] = {cpu: round((after[cpu][0] - before[cpu][0]) / max(1, after[cpu][1] - before[cpu][1]), 3)
                       for cpu in after if cpu in before}
    record["server_args"] = rule_args
    return record


def describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    hits = ", ".join(i["name"] for i in r["items"] if i.get("triggered")) or "none"
    return (f"{r['triggers']} false barge-in(s) in {r['exposure_s']} s over playing replies "
            f"({r['per_minute']}/min; on: {hits}); steal {json.dumps(r['steal'])}")
