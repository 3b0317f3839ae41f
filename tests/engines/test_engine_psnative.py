"""PocketSphinx decoding with the GIL released (txvoice.engines._psnative) on the wheel's real decoder."""

from __future__ import annotations

import gc
import sys
import threading
import time

import numpy as np

from txvoice.engines._psnative import NativeDecoder, native_decoder, new_decoder
from txvoice.engines.agent_rules import RulesAgent
from txvoice.engines.stt_pocketsphinx import PocketSphinxSTT

AGENT_PHRASES = RulesAgent().phrases()


def test_the_wheels_decoder_has_the_layout_and_streams_use_it() -> None:
    stt = PocketSphinxSTT(phrases=AGENT_PHRASES, pool_size=1)
    stream = stt.startStream()
    try:
        assert isinstance(stream._decoder.native, NativeDecoder)
    finally:
        stream.cancel()
    off = PocketSphinxSTT.fromOptions({"phrases": "good morning|thank you", "pool_size": "1", "release_gil": "false"})
    stream = off.startStream()
    try:
        assert stream._decoder.native is None
    finally:
        stream.cancel()


def test_anything_but_a_pocketsphinx_decoder_is_refused() -> None:
    class Decoder:  # same name, not the binding's class
        config = object()

    assert native_decoder(Decoder()) is None
    assert native_decoder(object()) is None
    assert native_decoder(None) is None


def test_the_same_transcripts_and_words_with_and_without_the_gil(speak, frames) -> None:
    pcm = speak("repeat after me hello world")
    results = []
    for release in (True, False):
        stt = PocketSphinxSTT(phrases=AGENT_PHRASES, pool_size=1, release_gil=release)
        stream = stt.startStream()
        assert (stream._decoder.native is not None) is release
        partials = [p.text for p in (stream.feed(f) for f in frames(pcm)) if p is not None]
        final = stream.finish()
        results.append((partials, final.text, [(w.word, w.start_ms, w.end_ms) for w in final.words]))
    assert results[0] == results[1]
    assert results[0][1] == "repeat after me hello world"


def test_another_thread_runs_while_a_frame_decodes(speak) -> None:
    """One long process_raw (many seconds of speech in one call): a Python thread keeps running during it."""
    stt = PocketSphinxSTT(phrases=AGENT_PHRASES, pool_size=1)
    stream = stt.startStream()
    native = stream._decoder.native
    assert native is not None
    data = np.tile(speak("what is the date today"), 6).astype("<i2").tobytes()
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    thread = threading.Thread(target=tick)
    thread.start()
    try:
        time.sleep(0.02)
        began = time.perf_counter()
        with stream._use:
            native.process_raw(data)
        ended = time.perf_counter()
    finally:
        stop.set()
        thread.join()
        stream.cancel()
    took = ended - began
    during = [t for t in ticks if began <= t <= ended]
    # With the GIL held for the call the thread would not tick at all until it returned.
    assert took > 0.02, took
    assert len(during) >= 5, (len(during), took)
    gaps = np.diff([began, *during, ended])
    assert gaps.max() < took / 2, (gaps.max(), took)


def _ticks_during(load) -> tuple[int, float]:
    """How often a Python thread ran while ``load()`` ran on this one (forced GIL switches off), and how long it took."""
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0002)

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=tick)
    thread.start()
    try:
        time.sleep(0.02)
        sys.setswitchinterval(10.0)  # only a released GIL lets the thread in
        began = time.perf_counter()
        load()
        ended = time.perf_counter()
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()
    return len([t for t in ticks if began <= t <= ended]), ended - began


def test_a_grammar_decoder_loads_with_the_gil_released() -> None:
    """Loading a decoder (~10-25 ms of C) lets the other threads run: through the binding it did not."""
    stt = PocketSphinxSTT(phrases=AGENT_PHRASES, pool_size=1)
    decoders: list = []
    ticks, took = _ticks_during(lambda: decoders.extend(stt._makeGrammar() for _ in range(3)))
    assert ticks >= 20, (ticks, took)  # ~100 here: one every ~0.3 ms of the ~30 ms
    assert all(native_decoder(d) is not None for d in decoders)
    held = PocketSphinxSTT(phrases=AGENT_PHRASES, pool_size=1, release_gil=False)
    ticks, took = _ticks_during(lambda: decoders.extend(held._makeGrammar() for _ in range(3)))
    assert ticks < 20, (ticks, took)  # 3-5 here (between the loads): the binding holds the GIL through each


def test_a_decoder_made_without_the_gil_holds_and_frees_its_config_as_the_bindings_do() -> None:
    from pocketsphinx import Config

    config = Config(lm=None, dict=None, loglevel="FATAL")
    before = sys.getrefcount(config)
    decoders = [new_decoder(config) for _ in range(5)]
    assert all(d is not None and d.config is config for d in decoders)
    assert sys.getrefcount(config) == before + 5
    del decoders
    gc.collect()
    assert sys.getrefcount(config) == before
    assert new_decoder(object()) is None
