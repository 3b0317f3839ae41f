"""
Offline streaming speech-to-text with PocketSphinx 5 and the en-US model its wheel ships.

Two modes, chosen per stream:

* general: the wheel's n-gram language model; open vocabulary, rough on synthetic speech.
* grammar: a JSGF grammar, or a phrase list compiled to one on the fly (like vosk-server's
  ``phrase_list``); exact on in-grammar speech and far faster.  Grammar decoders run without the
  lattice best-path pass: with it, PocketSphinx 5.1 collapses an FSG result to its first word.

Decoders are not thread-safe, so each stream borrows one from a pool and gives it back when it
finishes or is cancelled.  Loading one took the GIL for as long through the binding -- every
session's reactor waited -- so the cost of a load mattered as much as its frequency; decoders are
now loaded with the GIL released (:func:`txvoice.engines._psnative.new_decoder`, with ``release_gil``)
and the rest still keeps the GIL time down:

* grammar decoders load no dictionary at all (~15 ms, ~5 MB each, against ~110 ms and ~27 MB with
  the 126k-word dictionary): the dictionary is read once into a shared :class:`Lexicon`, and a
  decoder is given the pronunciations of just the words its grammars use;
* ``pool_size`` decoders of the deployment's default mode are loaded at start (``warmUp``), and
  every grammar decoder made later is kept (up to ``max_idle``), so a burst of speakers loads a
  decoder once per extra speaker, not once per turn;
* general-model decoders still load the n-gram model (~0.4 s each): size ``pool_size`` to the
  speakers expected at once when streams use it.

A decoder keeps adapting its cepstral mean from one utterance to the next (PocketSphinx's own
behaviour) and new decoders start from the mean the last finished stream reached: a decoder still on
the model's prior recognized short or close phrases worse ("turn off" heard as "turn on").
Everything here runs on the audio worker pool.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from twisted.logger import Logger
from zope.interface import implementer

from txvoice.engines._psnative import NativeDecoder, native_decoder, new_decoder
from txvoice.engines.ps_lexicon import ALTERNATE as _ALTERNATE
from txvoice.engines.ps_lexicon import Lexicon
from txvoice.engines.interfaces import IRecognitionStream, ISpeechToText, Transcript, VocabularyError, Word

GENERAL = "general"
GRAMMAR = "grammar"

#: Wider than PocketSphinx's defaults (1e-48, 7e-29, 1e-48): a grammar search is small, and with the
#: defaults a decoder's first utterances (before its cepstral mean adapts) lost short phrases such as
#: "thanks" to pruning (2 of 33 agent phrases); these cost about 10% more decode time.
GRAMMAR_BEAMS: dict[str, float] = {"beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80}

_PUNCTUATION = re.compile(r"[^\w' ]+")
_FILLER = re.compile(r"^(<.*>|\[.*\]|\(NULL\)|\+.*\+)$")
# JSGF pieces that are not words: comments, header, rule names, tags, weights, operators.
_JSGF_NOT_WORDS = re.compile(
    r"//[^\n]*|/\*.*?\*/|#JSGF[^;]*;|\bgrammar\s+[\w.]+\s*;|\bimport\s+<[^>]*>\s*;|\bpublic\b|<[^>]*>|\{[^}]*\}"
    r"|/[\d.eE+-]+/|[=|()\[\];*+]",
    re.DOTALL,
)

_JSGF_SHAPE = re.compile(r"^\s*#JSGF\b.*\bpublic\s*<[^>]+>\s*=", re.DOTALL)


def normalize_phrase(phrase: str) -> str:
    """Lower-case ``phrase`` and drop punctuation, as the recognizer writes its transcripts."""
    return " ".join(_PUNCTUATION.sub(" ", phrase.lower().replace("-", " ")).split())


def phrases_to_jsgf(phrases: Sequence[str], name: str = "txvoice") -> str:
    """Compile a phrase list to a JSGF grammar that accepts exactly one of the phrases."""
    normalized = list(dict.fromkeys(p for p in (normalize_phrase(p) for p in phrases) if p))
    if not normalized:
        raise VocabularyError("the phrase list is empty", code="empty_phrase_list")
    return f"#JSGF V1.0;\ngrammar {name};\npublic <phrase> = " + "\n    | ".join(normalized) + " ;\n"


def jsgf_words(jsgf: str) -> list[str]:
    """The words a JSGF grammar uses (quoted tokens lose their quotes), in first-seen order."""
    text = _JSGF_NOT_WORDS.sub(" ", jsgf).replace('"', " ")
    return list(dict.fromkeys(w.lower() for w in text.split()))


def _default_model() -> dict[str, str]:
    from pocketsphinx import get_model_path

    return {
        "hmm": get_model_path("en-us/en-us"),
        "dict": get_model_path("en-us/cmudict-en-us.dict"),
        "lm": get_model_path("en-us/en-us.lm.bin"),
    }


class _Decoder:
    """A PocketSphinx decoder and, in grammar mode, the grammars already loaded into it (LRU)."""

    def __init__(self, decoder: Any, mode: str, release_gil: bool = True) -> None:
        self.decoder = decoder
        self.mode = mode
        #: process_raw / end_utt with the GIL released (txvoice.engines._psnative), when the binding allows.
        self.native: NativeDecoder | None = native_decoder(decoder) if release_gil else None
        self.searches: OrderedDict[str, None] = OrderedDict()
        self.words: set[str] = set()  # grammar mode: the words given to this decoder so far

    def process(self, data: bytes) -> None:
        native = self.native
        native.process_raw(data) if native is not None else self.decoder.process_raw(data, False, False)

    def partialText(self) -> str:
        native = self.native
        if native is not None:
            return native.hyp_text()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    def startUtterance(self) -> None:
        native = self.native
        native.start_utt() if native is not None else self.decoder.start_utt()

    def endUtterance(self) -> None:
        native = self.native
        native.end_utt() if native is not None else self.decoder.end_utt()

    def addWords(self, words: Sequence[str], lexicon: Lexicon) -> None:
        """Give the decoder the pronunciations of ``words`` it does not have yet (alternates as ``word(2)``...)."""
        for word in words:
            if word in self.words:
                continue
            for i, phones in enumerate(lexicon.pronunciations(word)):
                self.decoder.add_word(word if i == 0 else f"{word}({i + 1})", phones, False)
            self.words.add(word)

    def useGrammar(self, jsgf: str, limit: int, lexicon: Lexicon | None = None) -> None:
        """Activate ``jsgf`` (compiling it the first time), forgetting the least recently used beyond ``limit``."""
        key = "g" + hashlib.sha1(jsgf.encode()).hexdigest()[:16]
        if key in self.searches:
            self.searches.move_to_end(key)
        else:
            if lexicon is not None:
                self.addWords(jsgf_words(jsgf), lexicon)
            try:
                self.decoder.add_jsgf_string(key, jsgf)
            except ValueError as e:
                raise VocabularyError(f"the grammar does not parse as JSGF: {e}", code="invalid_grammar") from None
            self.searches[key] = None
        self.decoder.activate_search(key)
        while len(self.searches) > max(1, limit):  # never the active one: it is the most recent
            old, _ = self.searches.popitem(last=False)
            self.decoder.remove_search(old)


class _DecoderPool:
    """Idle decoders of one mode, so streams skip the model load; at most ``keep`` are kept idle."""

    @property
    def idle(self) -> int:
        return len(self._idle)

    def __init__(self, make: Callable[[], Any], mode: str, keep: int, release_gil: bool = True) -> None:
        self._make = make
        self._mode = mode
        self._keep = keep
        self._release_gil = release_gil
        self._idle: list[_Decoder] = []
        self._lock = threading.Lock()

    def acquire(self) -> _Decoder:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Decoder(self._make(), self._mode, self._release_gil)

    def release(self, decoder: _Decoder) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(decoder)


@implementer(ISpeechToText)
class PocketSphinxSTT:
    """
    PocketSphinx recognizer.  ``phrases`` / ``grammar`` (JSGF text) / ``grammar_file`` set the
    deployment's default constraint (none: general model); streams may pass their own.
    """

    name = "pocketsphinx"
    sample_rate = 16000
    log = Logger()

    def __init__(
        self,
        *,
        hmm: str | None = None,
        dict: str | None = None,  # noqa: A002 -- PocketSphinx's own name for it
        lm: str | None = None,
        phrases: Sequence[str] | None = None,
        grammar: str | None = None,
        partial_interval_ms: int = 250,
        pool_size: int = 8,
        max_idle: int = 64,
        max_grammars: int = 16,
        loglevel: str = "FATAL",
        decoder_config: Mapping[str, Any] | None = None,
        release_gil: bool = True,
    ) -> None:
        model = _default_model()
        self.hmm = hmm or model["hmm"]
        self.dict = dict or model["dict"]
        self.lm = lm or model["lm"]
        self.partial_interval_ms = partial_interval_ms
        self.max_grammars = max_grammars
        self.loglevel = loglevel
        self.decoder_config = {**(decoder_config or {})}
        self.pool_size = max(0, pool_size)
        self.lexicon = Lexicon(self.dict)
        self.release_gil = release_gil
        # General decoders are ~27 MB and more each: keep pool_size of them; grammar ones are ~5 MB.
        self._pools = {
            GENERAL: _DecoderPool(self._makeGeneral, GENERAL, self.pool_size, release_gil),
            GRAMMAR: _DecoderPool(self._makeGrammar, GRAMMAR, max(self.pool_size, max_idle), release_gil),
        }
        self._cmn: str | None = None
        self.default_grammar: str | None = None
        if phrases:
            self.default_grammar = phrases_to_jsgf(phrases)
        elif grammar:
            self.default_grammar = grammar

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> "PocketSphinxSTT":
        """
        Make one from deployment options (strings are fine): ``phrases`` (list, or ``|``-separated),
        ``phrases_file`` (one a line), ``grammar`` (JSGF), ``grammar_file``, ``partial_interval_ms``,
        ``pool_size`` (decoders loaded at start), ``max_idle`` (grammar decoders kept), ``max_grammars``, ``hmm``, ``dict``, ``lm``, ``loglevel``, ``release_gil`` (decode with the GIL released, default
        true; see :mod:`txvoice.engines._psnative`); ``ps_<key>`` sets
        the PocketSphinx config key ``<key>`` (e.g. ``ps_beam=1e-60``).
        """
        opts = {k: v for k, v in options.items() if v is not None}
        phrases = opts.get("phrases")
        if isinstance(phrases, str):
            phrases = [p for p in phrases.split("|") if p.strip()]
        if "phrases_file" in opts:
            phrases = [line for line in Path(opts["phrases_file"]).read_text().splitlines() if line.strip()]
        grammar = opts.get("grammar")
        if "grammar_file" in opts:
            grammar = Path(opts["grammar_file"]).read_text()
        decoder_config = {k[3:]: v for k, v in opts.items() if k.startswith("ps_")}
        return cls(
            hmm=opts.get("hmm"), dict=opts.get("dict"), lm=opts.get("lm"), phrases=phrases, grammar=grammar,
            partial_interval_ms=int(opts.get("partial_interval_ms", 250)), pool_size=int(opts.get("pool_size", 8)),
            max_idle=int(opts.get("max_idle", 64)), max_grammars=int(opts.get("max_grammars", 16)), loglevel=str(opts.get("loglevel", "FATAL")),
            decoder_config=decoder_config,
            release_gil=str(opts.get("release_gil", "true")).strip().lower() in ("1", "true", "yes", "on"),
        )

    # -- decoders ------------------------------------------------------------------------------

    def _config(self, defaults: Mapping[str, Any], forced: Mapping[str, Any]) -> Any:
        """The decoder config: the model, then ``defaults``, the deployment's ``ps_*`` keys, ``forced``."""
        from pocketsphinx import Config

        config = Config(hmm=self.hmm, dict=self.dict, lm=self.lm, loglevel=self.loglevel, samprate=self.sample_rate)
        for key, value in {**defaults, **self.decoder_config, **forced}.items():
            if isinstance(value, str) and isinstance(config[key], bool):  # "false" from a command line
                value = value.strip().lower() in ("1", "true", "yes", "on")
            config[key] = value
        return config

    def _load(self, config: Any) -> Any:
        """A decoder for ``config``: loaded with the GIL released (``release_gil``) when the binding allows."""
        from pocketsphinx import Decoder

        decoder = new_decoder(config) if self.release_gil else None
        return decoder if decoder is not None else Decoder(config)

    def _makeGeneral(self) -> Any:
        started = time.perf_counter()
        decoder = self._load(self._config({}, {}))
        self._inheritCMN(decoder)
        self.log.info("loaded general decoder in {elapsed_ms:.0f} ms", elapsed_ms=(time.perf_counter() - started) * 1000)
        return decoder

    def _makeGrammar(self) -> Any:
        started = time.perf_counter()
        # No n-gram model and no dictionary: useGrammar gives it the words of its grammars.
        decoder = self._load(self._config(GRAMMAR_BEAMS, {"lm": None, "dict": None, "bestpath": False}))
        self._inheritCMN(decoder)
        self.log.info("loaded grammar decoder in {elapsed_ms:.0f} ms", elapsed_ms=(time.perf_counter() - started) * 1000)
        return decoder

    def _inheritCMN(self, decoder: Any) -> None:
        """Start a new decoder from the cepstral mean the last finished stream adapted to, not the model's prior."""
        if self._cmn is not None:
            decoder.set_cmn(self._cmn)

    def _released(self, decoder: _Decoder) -> None:
        """Take back a stream's decoder, remembering its cepstral mean for decoders made later."""
        try:
            self._cmn = decoder.decoder.get_cmn(True)
        except Exception:
            self.log.failure("could not read the cepstral mean")
        self._pools[decoder.mode].release(decoder)

    def warmUp(self, phrases: Sequence[str] | None = None, grammar: str | None = None,
               options: Mapping[str, Any] | None = None) -> None:
        """
        Load the dictionary and ``pool_size`` decoders of the kind streams opened with these
        arguments use (their grammar compiled), so that many speakers at once load nothing.
        """
        jsgf, origin = self._constraint(phrases, grammar, options or {})
        self.lexicon.load()
        pool = self._pools[GENERAL if jsgf is None else GRAMMAR]
        decoders = [pool.acquire() for _ in range(max(1, self.pool_size) - pool.idle)]
        try:
            if jsgf is not None:
                self._checkGrammar(jsgf, origin)
                for decoder in decoders:
                    decoder.useGrammar(jsgf, self.max_grammars, self.lexicon)
        finally:
            for decoder in decoders:
                pool.release(decoder)
        self.log.info("{count} {mode} decoders ready", count=pool.idle, mode=GENERAL if jsgf is None else GRAMMAR)

    # -- vocabulary ------------------------------------------------------------------------------

    def checkPhrases(self, phrases: Sequence[str]) -> list[str]:
        return self.lexicon.unknown(list(dict.fromkeys(w for p in phrases for w in normalize_phrase(p).split())))

    def _checkGrammar(self, jsgf: str, origin: str) -> None:
        if not _JSGF_SHAPE.search(jsgf):
            raise VocabularyError(f"the {origin} is not a JSGF grammar (#JSGF header and a public rule)",
                                  code="invalid_grammar")
        unknown = self.lexicon.unknown(jsgf_words(jsgf))
        if unknown:
            raise VocabularyError(
                f"the {origin} uses words the recognizer does not know: {', '.join(unknown)}"
                " (spell numbers and symbols out as words)",
                words=unknown,
            )

    # -- streams ---------------------------------------------------------------------------------

    def _constraint(self, phrases: Sequence[str] | None, grammar: str | None,
                    options: Mapping[str, Any]) -> tuple[str | None, str]:
        """The JSGF a stream opened with these arguments uses (None: the general model), and its origin."""
        if phrases is not None:
            return phrases_to_jsgf(phrases), "phrase list"
        if grammar is not None:
            return grammar, "grammar"
        if options.get("mode") == GENERAL:
            return None, "general model"
        return self.default_grammar, "deployment grammar"

    def startStream(self, phrases: Sequence[str] | None = None, grammar: str | None = None,
                    options: Mapping[str, Any] | None = None) -> "PocketSphinxStream":
        options = dict(options or {})
        jsgf, origin = self._constraint(phrases, grammar, options)
        mode = GENERAL if jsgf is None else GRAMMAR
        if jsgf is not None:
            self._checkGrammar(jsgf, origin)  # before borrowing: a bad grammar costs no decoder
        pool = self._pools[mode]
        decoder = pool.acquire()
        try:
            if jsgf is not None:
                decoder.useGrammar(jsgf, self.max_grammars, self.lexicon)
            decoder.startUtterance()
        except BaseException:
            pool.release(decoder)
            raise
        interval = int(options.get("partial_interval_ms", self.partial_interval_ms))
        return PocketSphinxStream(decoder, self._released, self.sample_rate, interval)


@implementer(IRecognitionStream)
class PocketSphinxStream:
    """One utterance on a borrowed decoder; gives the decoder back on finish or cancel."""

    log = Logger()

    def __init__(self, decoder: _Decoder, release: Callable[[_Decoder], None], sample_rate: int,
                 partial_interval_ms: int) -> None:
        self.sample_rate = sample_rate
        self.mode = decoder.mode
        self._decoder: _Decoder | None = decoder
        self._release = release
        self._partialEvery = max(1, sample_rate * partial_interval_ms // 1000) if partial_interval_ms > 0 else 0
        self._samples = 0
        self._sinceMark = 0
        self._lastPartial = ""
        self._cancelled = False
        self._use = threading.Lock()
        config = decoder.decoder.config
        self._msPerFrame = 1000.0 / int(config["frate"])

    @property
    def audio_ms(self) -> int:
        return self._samples * 1000 // self.sample_rate

    def feed(self, pcm: Any) -> Transcript | None:
        data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
        with self._use:
            if self._decoder is None:
                return None
            try:
                self._decoder.process(data)
            except BaseException:
                self._close(broken=True)
                raise
            n = len(data) // 2
            self._samples += n
            self._sinceMark += n
            partial = None
            if self._partialEvery and self._sinceMark >= self._partialEvery:
                self._sinceMark = 0
                text = " ".join(self._decoder.partialText().split())
                if text and text != self._lastPartial:
                    self._lastPartial = text
                    partial = Transcript(text=text, final=False, audio_ms=self.audio_ms)
            if self._cancelled:
                self._close()
                return None
            return partial

    def finish(self) -> Transcript:
        with self._use:
            if self._decoder is None:
                return Transcript(text="", final=True, audio_ms=self.audio_ms)
            started = time.perf_counter()
            decoder = self._decoder.decoder
            try:
                self._decoder.endUtterance()
                hyp = decoder.hyp()
                words = self._words(decoder.seg() or ()) if hyp is not None else []
            except BaseException:
                self._close(broken=True, ended=False)
                raise
            self._close(ended=True)
        text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
        scores = [w.confidence for w in words if w.confidence is not None]
        confidence = round(sum(scores) / len(scores), 4) if scores else None
        self.log.debug(
            "final {mode} transcript {text!r} for {audio_ms} ms of audio in {elapsed_ms:.1f} ms",
            mode=self.mode, text=text, audio_ms=self.audio_ms, elapsed_ms=(time.perf_counter() - started) * 1000,
        )
        return Transcript(text=text, final=True, audio_ms=self.audio_ms, words=tuple(words), confidence=confidence)

    def _words(self, segments: Any) -> list[Word]:
        words = []
        limit = self.audio_ms
        for seg in segments:
            if _FILLER.match(seg.word):
                continue
            start = min(limit, round(seg.start_frame * self._msPerFrame))
            end = min(limit, max(start, round((seg.end_frame + 1) * self._msPerFrame)))
            prob = float(seg.prob)
            words.append(Word(_ALTERNATE.sub("", seg.word), start, end, round(min(max(prob, 0.0), 1.0), 4)))
        return words

    def cancel(self) -> None:
        self._cancelled = True
        if self._use.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._use.release()
        # else a worker is inside feed/finish and closes the stream on its way out.

    def _close(self, broken: bool = False, ended: bool = False) -> None:
        """Give the decoder back (not if it failed), ending its utterance first; call with ``_use`` held."""
        decoder, self._decoder = self._decoder, None
        if decoder is None:
            return
        if not ended and not broken:
            try:
                decoder.decoder.end_utt()
            except Exception:
                self.log.failure("could not end an abandoned utterance", mode=self.mode)
                return
        if not broken:
            self._release(decoder)
