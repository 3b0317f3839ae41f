"""
Benchmark of the default speech engines, offline: STT real-time factor (grammar vs general model),
TTS time to first audio and real-time factor (espeak-ng process, and libespeak-ng through ctypes
for comparison), agent latency.  Prints a table; ``--json PATH`` also writes the numbers.

    .venv/bin/python bench/bench_engines.py [--repeat 3] [--json bench/results/engines.json]

Speech is made by the TTS engine itself (espeak-ng, resampled to 16 kHz); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer  # noqa: E402

from txvoice.engines.agent_echo import EchoAgent  # noqa: E402
from txvoice.engines.agent_rules import RulesAgent  # noqa: E402
from txvoice.engines.interfaces import AgentContext  # noqa: E402
from txvoice.engines.stt_pocketsphinx import GENERAL, GRAMMAR, PocketSphinxSTT  # noqa: E402
from txvoice.engines.tts_espeak import EspeakTTS  # noqa: E402

STT_PHRASES = [
    "what time is it", "repeat after me the weather is nice today", "good morning", "what did i just say",
    "say testing one two three", "what is the date today", "help", "thank you",
]
SHORT = "What time is it?"
LONG = ("Hello there. This is a longer answer with several sentences, so the first audio can leave before "
        "the rest is made. It goes on for a while. Here is the fourth sentence. And a fifth one to finish.")


def speech(tts: EspeakTTS, text: str, pad_ms: int = 100) -> np.ndarray:
    pcm = np.concatenate(list(tts.synthesize(text, sample_rate=16000)))
    pad = np.zeros(16 * pad_ms, dtype=np.int16)
    return np.concatenate([pad, pcm, pad])


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_stt(tts: EspeakTTS, repeat: int) -> list[dict[str, Any]]:
    stt = PocketSphinxSTT()
    agentPhrases = RulesAgent().phrases()
    audio = [(text, speech(tts, text)) for text in STT_PHRASES]
    rows = []
    for mode, kwargs in ((GRAMMAR, {"phrases": agentPhrases}), (GENERAL, {})):
        started = time.perf_counter()
        stt.startStream(**kwargs).cancel()  # loads the decoder
        load = time.perf_counter() - started
        audioSeconds = decodeSeconds = 0.0
        finals, exact, partials = [], 0, 0
        for _ in range(repeat):
            for text, pcm in audio:
                stream = stt.startStream(**kwargs)
                t0 = time.perf_counter()
                for i in range(0, len(pcm), 320):  # 20 ms frames
                    if stream.feed(pcm[i:i + 320]) is not None:
                        partials += 1
                t1 = time.perf_counter()
                result = stream.finish()
                finals.append(time.perf_counter() - t1)
                decodeSeconds += time.perf_counter() - t0
                audioSeconds += len(pcm) / 16000
                exact += result.text == text
        rows.append({
            "engine": f"pocketsphinx {mode}", "load_ms": load * 1000, "rtf": decodeSeconds / audioSeconds,
            "x_realtime": audioSeconds / decodeSeconds, "final_ms_median": statistics.median(finals) * 1000,
            "exact": f"{exact}/{len(audio) * repeat}", "partials_per_utt": partials / (len(audio) * repeat),
        })
    return rows


def bench_tts_process(tts: EspeakTTS, text: str, repeat: int) -> dict[str, Any]:
    ttfa, total, cpu, audio = [], [], [], 0.0
    for _ in range(repeat):
        c0 = cpu_children()
        synthesis = tts.synthesize(text)
        samples = sum(len(c) for c in synthesis)
        ttfa.append(synthesis.time_to_first_audio_ms)
        total.append((synthesis.finished_at - synthesis.started_at) * 1000)
        cpu.append((cpu_children() - c0) * 1000)
        audio = samples / synthesis.sample_rate
    return {"engine": "espeak-ng process", "text": "short" if text == SHORT else "long", "audio_s": audio,
            "ttfa_ms": statistics.median(ttfa), "total_ms": statistics.median(total),
            "cpu_ms": statistics.median(cpu), "rtf": statistics.median(total) / 1000 / audio}


def bench_tts_library(text: str, repeat: int) -> dict[str, Any] | None:
    """libespeak-ng in this process, synchronous mode with a callback: the alternative we did not pick."""
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    rate = lib.espeak_Initialize(2, 100, None, 0)  # AUDIO_OUTPUT_SYNCHRONOUS, 100 ms buffers
    callbackType = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    state: dict[str, Any] = {}

    def callback(wav, count, events):
        if count > 0:
            if state["first"] is None:
                state["first"] = time.perf_counter()
            state["samples"] += count
        return 0

    keep = callbackType(callback)
    lib.espeak_SetSynthCallback(keep)
    lib.espeak_SetVoiceByName(b"en-us")
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    data = text.encode() + b"\0"
    ttfa, total, cpu = [], [], []
    for _ in range(repeat):
        state.update(first=None, samples=0)
        c0, t0 = cpu_self(), time.perf_counter()
        lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
        lib.espeak_Synchronize()
        t1 = time.perf_counter()
        ttfa.append((state["first"] - t0) * 1000)
        total.append((t1 - t0) * 1000)
        cpu.append((cpu_self() - c0) * 1000)
    audio = state["samples"] / rate
    return {"engine": "libespeak-ng ctypes", "text": "short" if text == SHORT else "long", "audio_s": audio,
            "ttfa_ms": statistics.median(ttfa), "total_ms": statistics.median(total),
            "cpu_ms": statistics.median(cpu), "rtf": statistics.median(total) / 1000 / audio}


def bench_agents(repeat: int) -> list[dict[str, Any]]:
    rows = []
    for agent in (RulesAgent(), EchoAgent()):
        for text in ("hello", "what time is it", "repeat after me hello world", "book a flight"):
            times = []
            for _ in range(repeat * 50):
                t0 = time.perf_counter()
                replies: list[Any] = []
                defer.maybeDeferred(agent.respond, text, AgentContext(conversation_id="bench")).addCallback(replies.append)
                times.append(time.perf_counter() - t0)
                assert replies
            rows.append({"agent": agent.name, "text": text, "median_us": statistics.median(times) * 1e6,
                         "max_us": max(times) * 1e6})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) and r[k] < 1 else
              f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *map(line, cells)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    tts = EspeakTTS()
    results: dict[str, Any] = {}
    results["stt"] = bench_stt(tts, args.repeat)
    print("Speech-to-text (16 kHz espeak speech fed in 20 ms frames; rtf = decode time / audio time)")
    print(table(results["stt"]), end="\n\n")
    ttsRows = [bench_tts_process(tts, text, args.repeat * 3) for text in (SHORT, LONG)]
    ttsRows += [row for text in (SHORT, LONG) if (row := bench_tts_library(text, args.repeat * 3))]
    results["tts"] = ttsRows
    print("Text-to-speech (22050 Hz; ttfa = time to first audio chunk; cpu includes the child process)")
    print(table(ttsRows), end="\n\n")
    results["agent"] = bench_agents(args.repeat)
    print("Agents (respond() on the calling thread, until the reply is ready)")
    print(table(results["agent"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
