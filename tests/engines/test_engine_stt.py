"""PocketSphinx speech-to-text on speech espeak-ng makes at test time."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from zope.interface.verify import verifyObject

from txvoice.engines.agent_rules import RulesAgent
from txvoice.engines.interfaces import IRecognitionStream, ISpeechToText, Transcript, VocabularyError
from txvoice.engines.stt_pocketsphinx import (
    GENERAL,
    GRAMMAR,
    PocketSphinxSTT,
    jsgf_words,
    normalize_phrase,
    phrases_to_jsgf,
)

AGENT_PHRASES = RulesAgent().phrases()


def recognize(stt, pcm, frames, **kwargs) -> tuple[list[Transcript], Transcript]:
    stream = stt.startStream(**kwargs)
    partials = [p for p in (stream.feed(f) for f in frames(pcm)) if p is not None]
    return partials, stream.finish()


def check_words(result: Transcript, audio_samples: int, rate: int = 16000) -> None:
    audio_ms = audio_samples * 1000 // rate
    assert result.audio_ms == audio_ms
    assert " ".join(w.word for w in result.words) == result.text
    previous_end = 0
    for w in result.words:
        assert 0 <= previous_end <= w.start_ms <= w.end_ms <= audio_ms, result.words
        assert w.confidence is None or 0.0 <= w.confidence <= 1.0
        previous_end = w.end_ms


def test_provides_interfaces(stt):
    assert verifyObject(ISpeechToText, stt)
    stream = stt.startStream(phrases=["hello"])
    assert verifyObject(IRecognitionStream, stream)
    stream.cancel()


@pytest.mark.parametrize("phrase", AGENT_PHRASES)
def test_agent_phrase_list_gives_exact_transcript(stt, speak, frames, phrase):
    pcm = speak(phrase)
    partials, result = recognize(stt, pcm, frames, phrases=AGENT_PHRASES)
    assert result.final and result.text == phrase
    check_words(result, len(pcm))
    # The words cover most of the speech (100 ms of silence each side).
    assert result.words[-1].end_ms - result.words[0].start_ms > 0.5 * (result.audio_ms - 200)
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0


def test_partials_come_while_feeding_and_are_rate_limited(stt, speak, frames):
    phrase = "repeat after me the weather is nice today"
    pcm = speak(phrase)
    stream = stt.startStream(phrases=AGENT_PHRASES, options={"partial_interval_ms": 250})
    seen: list[tuple[int, Transcript]] = []
    for i, frame in enumerate(frames(pcm)):
        partial = stream.feed(frame)
        if partial is not None:
            seen.append((i, partial))
    result = stream.finish()
    assert result.text == phrase
    assert len(seen) >= 2, seen
    assert all(not p.final and p.text and not p.words for _, p in seen)
    assert seen[0][1].audio_ms < result.audio_ms
    # 250 ms of 20 ms frames: at most one partial every 13 frames.
    gaps = [b[1].audio_ms - a[1].audio_ms for a, b in zip(seen, seen[1:])]
    assert all(gap >= 240 for gap in gaps), gaps
    # Early guesses may be wrong; later ones grow towards the final text.
    assert len([p for _, p in seen if phrase.startswith(p.text)]) >= 2


def test_general_model_returns_some_text(stt, speak, frames):
    pcm = speak("the weather is nice today")
    stream = stt.startStream()
    assert stream.mode == GENERAL
    for f in frames(pcm):
        stream.feed(f)
    result = stream.finish()
    assert result.final and result.text.strip()
    check_words(result, len(pcm))


def test_per_stream_jsgf_grammar(stt, speak, frames):
    grammar = """#JSGF V1.0;
grammar house;
public <command> = (open | close) the (door | window | garage) [please];
"""
    pcm = speak("close the window please")
    _, result = recognize(stt, pcm, frames, grammar=grammar)
    assert result.text == "close the window please"
    check_words(result, len(pcm))


def test_bytes_in_equals_array_in(stt, speak):
    pcm = speak("what time is it")
    a = stt.startStream(phrases=AGENT_PHRASES)
    b = stt.startStream(phrases=AGENT_PHRASES)
    for i in range(0, len(pcm), 480):
        a.feed(pcm[i:i + 480])
        b.feed(pcm[i:i + 480].tobytes())
    ra, rb = a.finish(), b.finish()
    assert ra.text == rb.text == "what time is it"
    assert [w.word for w in ra.words] == [w.word for w in rb.words]


def test_unknown_words_are_a_clear_error(stt):
    with pytest.raises(VocabularyError) as caught:
        stt.startStream(phrases=["hello there", "open the qwzxv door", "call 911"])
    assert caught.value.code == "unknown_words"
    assert caught.value.details["words"] == ["qwzxv", "911"]
    assert "qwzxv" in str(caught.value) and "911" in str(caught.value)
    assert stt.checkPhrases(["Hello, there!", "qwzxv"]) == ["qwzxv"]
    with pytest.raises(VocabularyError) as caught:
        stt.startStream(grammar="#JSGF V1.0;\ngrammar g;\npublic <a> = hello | zzqqx;\n")
    assert caught.value.details["words"] == ["zzqqx"]


def test_bad_grammar_and_empty_phrase_list(stt):
    with pytest.raises(VocabularyError) as caught:
        stt.startStream(grammar="this is not jsgf")
    assert caught.value.code == "invalid_grammar"
    with pytest.raises(VocabularyError) as caught:
        stt.startStream(phrases=["", "  ?! "])
    assert caught.value.code == "empty_phrase_list"


def test_deployment_phrases_are_the_default(speak, frames):
    stt = PocketSphinxSTT(phrases=["open the door", "close the door"], pool_size=1)
    pcm = speak("close the door")
    stream = stt.startStream()
    assert stream.mode == GRAMMAR
    for f in frames(pcm):
        stream.feed(f)
    assert stream.finish().text == "close the door"
    assert stt.startStream(options={"mode": "general"}).mode == GENERAL


def test_from_options_parses_strings(tmp_path):
    listing = tmp_path / "phrases.txt"
    listing.write_text("hello\nwhat time is it\n\n")
    stt = PocketSphinxSTT.fromOptions({"phrases_file": str(listing), "partial_interval_ms": "300", "ps_beam": "1e-60"})
    assert stt.default_grammar == phrases_to_jsgf(["hello", "what time is it"])
    assert stt.partial_interval_ms == 300 and stt.decoder_config == {"beam": "1e-60"}
    assert PocketSphinxSTT.fromOptions({"phrases": "a b|c"}).default_grammar == phrases_to_jsgf(["a b", "c"])
    sized = PocketSphinxSTT.fromOptions({"pool_size": "3", "max_idle": "5"})
    assert sized.pool_size == 3 and sized._pools[GRAMMAR]._keep == 5 and sized._pools[GENERAL]._keep == 3
    config = PocketSphinxSTT.fromOptions({"ps_fwdflat": "false", "ps_maxhmmpf": "2000"})._config({}, {})
    assert config["fwdflat"] is False and config["maxhmmpf"] == 2000


def test_cancel_returns_the_decoder_and_silences_the_stream(speak, frames):
    stt = PocketSphinxSTT(pool_size=1)
    pcm = speak("what time is it")
    stream = stt.startStream(phrases=AGENT_PHRASES)
    decoder = stream._decoder
    for f in frames(pcm)[:10]:
        stream.feed(f)
    stream.cancel()
    stream.cancel()
    assert stream.feed(pcm) is None
    assert stream.finish() == Transcript(text="", final=True, audio_ms=200)
    again = stt.startStream(phrases=AGENT_PHRASES)
    assert again._decoder is decoder  # reused from the pool, utterance ended
    for f in frames(pcm):
        again.feed(f)
    assert again.finish().text == "what time is it"


def test_cancel_from_another_thread_while_feeding(speak, frames):
    stt = PocketSphinxSTT(pool_size=1)
    pcm = np.tile(speak("what is the date"), 5)
    stream = stt.startStream(phrases=AGENT_PHRASES)
    fed = threading.Event()

    def feeder():
        for f in frames(pcm):
            stream.feed(f)
            fed.set()

    worker = threading.Thread(target=feeder)
    worker.start()
    fed.wait(5)
    stream.cancel()
    worker.join(10)
    assert stream._decoder is None
    assert len(stt._pools[GRAMMAR]._idle) == 1


def test_concurrent_streams_use_their_own_decoders(stt, speak, frames):
    one, two = speak("good morning"), speak("thank you")
    a = stt.startStream(phrases=AGENT_PHRASES)
    b = stt.startStream(phrases=AGENT_PHRASES)
    assert a._decoder is not b._decoder
    for fa, fb in zip(frames(one), frames(two)):
        a.feed(fa)
        b.feed(fb)
    for f in frames(two)[len(frames(one)):]:
        b.feed(f)
    for f in frames(one)[len(frames(two)):]:
        a.feed(f)
    assert (a.finish().text, b.finish().text) == ("good morning", "thank you")


def test_phrase_helpers():
    assert normalize_phrase("  What's the TIME,  please?! ") == "what's the time please"
    assert normalize_phrase("check-in") == "check in"
    jsgf = phrases_to_jsgf(["Hello!", "hello", "what time is it"])
    assert jsgf.count("hello") == 1
    assert jsgf_words(jsgf) == ["hello", "what", "time", "is", "it"]
    assert jsgf_words('#JSGF V1.0;\ngrammar g;\n// comment\npublic <a> = /2/ "big" dog {tag} | <b>;\n<b> = cat*;') == [
        "big", "dog", "cat"]


def test_grammars_are_cached_and_evicted_per_decoder(speak, frames):
    stt = PocketSphinxSTT(pool_size=1, max_grammars=1)
    doors = ["open the door", "close the door"]
    lights = ["turn on the light", "turn off the light"]
    for phrases, spoken in ((doors, "close the door"), (lights, "turn on the light"), (doors, "open the door")):
        stream = stt.startStream(phrases=phrases)
        for f in frames(speak(spoken)):
            stream.feed(f)
        assert stream.finish().text == spoken
    (decoder,) = stt._pools[GRAMMAR]._idle
    assert len(decoder.searches) == 1


def test_new_decoders_start_from_the_adapted_cepstral_mean(speak, frames):
    stt = PocketSphinxSTT(pool_size=1)
    first = stt.startStream(phrases=AGENT_PHRASES)
    prior = first._decoder.decoder.get_cmn()
    for f in frames(speak("what is the date today")):
        first.feed(f)
    first.finish()
    adapted = stt._cmn
    assert adapted is not None and adapted != prior
    busy = stt.startStream(phrases=AGENT_PHRASES)  # takes the pooled decoder
    fresh = stt.startStream(phrases=AGENT_PHRASES)  # so this one is new
    assert fresh._decoder is not busy._decoder
    assert fresh._decoder.decoder.get_cmn() == adapted
    busy.cancel()
    fresh.cancel()


# -- decoder loading: what holds the GIL, and how often ----------------------------------------


def counting(stt: PocketSphinxSTT) -> list[str]:
    """Record every decoder the engine loads (by mode) from now on."""
    made: list[str] = []
    for mode, pool in stt._pools.items():
        make = pool._make

        def counted(make=make, mode=mode):
            made.append(mode)
            return make()

        pool._make = counted
    return made


def test_warm_up_loads_the_pool_and_later_speakers_load_nothing(speak, frames):
    stt = PocketSphinxSTT(pool_size=3)
    made = counting(stt)
    stt.warmUp(phrases=AGENT_PHRASES)
    assert made == [GRAMMAR] * 3
    streams = [stt.startStream(phrases=AGENT_PHRASES) for _ in range(3)]
    assert made == [GRAMMAR] * 3  # three speakers at once: no load while they speak
    assert len({id(s._decoder) for s in streams}) == 3
    fourth = stt.startStream(phrases=AGENT_PHRASES)  # beyond the pool: one load, then kept
    assert made == [GRAMMAR] * 4
    for s in [*streams, fourth]:
        s.cancel()
    assert stt._pools[GRAMMAR].idle == 4
    stt.warmUp(phrases=AGENT_PHRASES)  # enough idle already
    assert made == [GRAMMAR] * 4
    for f in frames(speak("what time is it")):
        fourth.feed(f)  # cancelled: ignored
    assert recognize(stt, speak("what time is it"), frames, phrases=AGENT_PHRASES)[1].text == "what time is it"


def test_warm_up_of_the_general_model_and_of_a_bad_grammar():
    stt = PocketSphinxSTT(pool_size=1)
    made = counting(stt)
    stt.warmUp(options={"mode": "general"})
    assert made == [GENERAL]
    with pytest.raises(VocabularyError):
        stt.warmUp(grammar="#JSGF V1.0;\ngrammar g;\npublic <a> = hello | zzqqx;\n")
    assert stt._pools[GRAMMAR].idle == 1  # the decoders it loaded went back to the pool


def test_grammar_decoders_know_only_their_grammars_words(speak, frames):
    stt = PocketSphinxSTT(pool_size=1)
    doors = stt.startStream(phrases=["open the door", "close the door"])
    decoder = doors._decoder
    lookup = decoder.decoder.lookup_word
    assert lookup("door") is not None and lookup("window") is None
    assert lookup("the(2)") is not None  # alternate pronunciations come along
    doors.cancel()
    window = stt.startStream(phrases=["open the window"])
    assert window._decoder is decoder and lookup("window") is not None
    for f in frames(speak("open the window")):
        window.feed(f)
    assert window.finish().text == "open the window"


def test_lexicon_reads_alternates_and_comments(tmp_path):
    from txvoice.engines.stt_pocketsphinx import Lexicon

    path = tmp_path / "tiny.dict"
    path.write_text("read R IY D\nread(2) R EH D\nlive L IH V # a comment\nempty\n")
    lexicon = Lexicon(str(path))
    assert lexicon.pronunciations("read") == ["R IY D", "R EH D"]
    assert lexicon.pronunciations("live") == ["L IH V"]
    assert lexicon.pronunciations("empty") == [] and lexicon.unknown(["read", "empty", "x"]) == ["empty", "x"]
    assert lexicon.load() is lexicon.load()  # read once
