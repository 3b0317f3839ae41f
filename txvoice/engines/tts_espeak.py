"""
Offline text-to-speech with Debian's ``espeak-ng`` command, streamed from its stdout pipe.

Why the command and not libespeak-ng through ctypes (numbers from ``bench/bench_engines.py``): the
library starts audio sooner (~0.1 ms against ~10 ms for a process) and uses about half the CPU, but
both are far below one 20 ms frame and a few ms of CPU per 10 s of speech.  The library is one
global, non-reentrant synthesizer per process, so every session would queue behind one lock; a
process per synthesis runs in parallel on every core, is cancelled by killing it, and cannot take the
server down when it fails.

The text goes to the process on stdin (never a shell, never argv, so it cannot be read as an
option) and is spoken as plain text: markup-looking input is read out, not interpreted, unless the
engine or the call asks for SSML.  Audio is read as it comes (espeak writes a clause at a time), so
the first chunk goes out long before a long text is done; the pipe's back-pressure pauses espeak
when nobody reads.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np
from twisted.logger import Logger
from zope.interface import implementer

from txvoice.engines.interfaces import ISynthesis, ITextToSpeech
from txvoice.engines.warm import WarmProcesses
from txvoice.errors import VoiceError

NATIVE_RATE = 22050
_VOICE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_+\-./]*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MIN_WPM, _MAX_WPM = 80, 500



def _piped(stream: "IO[bytes] | None") -> "IO[bytes]":
    """A pipe of a process started with ``subprocess.PIPE`` for it (so never None)."""
    assert stream is not None
    return stream

class SynthesisError(VoiceError):
    """The synthesizer failed (bad voice, missing program ...)."""

    code = "tts_failed"


class InvalidTTSOption(VoiceError):
    """A voice, rate or sample rate the engine does not accept."""

    code = "invalid_tts_option"


def _checkedRate(rate: int) -> int:
    rate = int(rate)
    if not _MIN_WPM <= rate <= _MAX_WPM:
        raise InvalidTTSOption(f"speech rate must be {_MIN_WPM}..{_MAX_WPM} words per minute, not {rate}")
    return rate


def _checkedVoice(voice: str) -> str:
    if not isinstance(voice, str) or not _VOICE.match(voice):
        raise InvalidTTSOption(f"invalid voice name {voice!r}")
    return voice


@implementer(ITextToSpeech)
class EspeakTTS:
    """
    espeak-ng synthesizer.  ``voice`` (e.g. ``en-us``), ``rate`` (words per minute), ``pitch`` and
    ``amplitude`` are defaults each call may override; ``sample_rate`` resamples the output (soxr).
    """

    name = "espeak"
    native_rate = NATIVE_RATE
    log = Logger()

    def __init__(
        self,
        *,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int | None = None,
        amplitude: int | None = None,
        word_gap: int | None = None,
        sample_rate: int | None = None,
        ssml: bool = False,
        chunk_ms: int = 50,
        executable: str = "espeak-ng",
        warm: int = 2,
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise SynthesisError(f"{executable} not found; install Debian's espeak-ng package")
        self.executable = path
        self.voice = _checkedVoice(voice)
        self.rate = _checkedRate(rate)
        self.pitch = pitch
        self.amplitude = amplitude
        self.word_gap = word_gap
        self.sample_rate = sample_rate
        self.ssml = ssml
        self.chunk_ms = chunk_ms
        #: espeak-ng processes started ahead per command line (txvoice.engines.warm); 0: none.
        self.warm = WarmProcesses(warm)

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> "EspeakTTS":
        """Make one from deployment options (strings are fine): voice, rate, pitch, amplitude, word_gap, sample_rate, ssml, chunk_ms, executable, warm."""
        o = {k: v for k, v in options.items() if v is not None}
        integer = lambda key: int(o[key]) if key in o else None  # noqa: E731
        return cls(
            voice=str(o.get("voice", "en-us")), rate=int(o.get("rate", 175)), pitch=integer("pitch"),
            amplitude=integer("amplitude"), word_gap=integer("word_gap"), sample_rate=integer("sample_rate"),
            ssml=str(o.get("ssml", "false")).lower() in ("1", "true", "yes", "on"),
            chunk_ms=int(o.get("chunk_ms", 50)), executable=str(o.get("executable", "espeak-ng")),
            warm=int(o.get("warm", 2)),
        )

    def voices(self, language: str | None = None) -> list[str]:
        """The voice names espeak-ng knows (blocking)."""
        arg = "--voices" if language is None else f"--voices={_checkedVoice(language)}"
        out = subprocess.run([self.executable, arg], capture_output=True, text=True, check=True).stdout
        return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]

    def synthesize(self, text: str, voice: str | None = None, rate: int | None = None,
                   sample_rate: int | None = None, options: Mapping[str, Any] | None = None) -> "EspeakSynthesis":
        options = dict(options or {})
        argv = [self.executable, "--stdout", "--stdin", "-b", "1",
                "-v", _checkedVoice(voice or self.voice), "-s", str(_checkedRate(rate or self.rate))]
        for flag, value in (("-p", options.get("pitch", self.pitch)), ("-a", options.get("amplitude", self.amplitude)),
                            ("-g", options.get("word_gap", self.word_gap))):
            if value is not None:
                argv += [flag, str(int(value))]
        if options.get("ssml", self.ssml):
            argv.append("-m")
        outRate = int(sample_rate or self.sample_rate or NATIVE_RATE)
        if not 8000 <= outRate <= 192000:
            raise InvalidTTSOption(f"unsupported output sample rate {outRate}")
        text = _CONTROL.sub(" ", text)
        return EspeakSynthesis(argv, text, outRate, self.chunk_ms, self.warm)


_COLD = WarmProcesses(0)  # a fresh process for every synthesis


@implementer(ISynthesis)
class EspeakSynthesis:
    """One espeak-ng process speaking one text; iterate it for ``numpy.int16`` chunks."""

    log = Logger()

    def __init__(self, argv: list[str], text: str, sample_rate: int, chunk_ms: int = 50,
                 warm: WarmProcesses | None = None) -> None:
        self.sample_rate = sample_rate
        self.text = text
        self.cancelled = False
        self.started_at = time.perf_counter()
        self.first_audio_at: float | None = None
        self.finished_at: float | None = None
        self.samples = 0
        self._readSize = max(512, NATIVE_RATE * 2 * chunk_ms // 1000)
        self._lock = threading.Lock()
        self._iterating = False
        self.process: subprocess.Popen[bytes] | None = None
        if not text.strip():
            self.finished_at = self.started_at
            return
        if warm is None:
            warm = _COLD
        self.process = process = warm.take(argv)
        stdin = _piped(process.stdin)
        try:
            stdin.write(text.encode("utf-8"))
            stdin.close()
        except BrokenPipeError:
            pass  # the process died at once; __iter__ reports why
        warm.refill(argv)  # the next one starts while this one speaks

    @property
    def time_to_first_audio_ms(self) -> float | None:
        return None if self.first_audio_at is None else (self.first_audio_at - self.started_at) * 1000

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.process is None or self.cancelled:
            return
        with self._lock:
            if self._iterating:
                raise RuntimeError("a synthesis can be iterated once")
            self._iterating = True
        try:
            yield from self._chunks()
        finally:
            self._reap()

    @property
    def _running(self) -> "subprocess.Popen[bytes]":
        """The espeak-ng process (there is one whenever the text was not empty)."""
        assert self.process is not None
        return self.process

    def _chunks(self) -> Iterator[np.ndarray]:
        fd = _piped(self._running.stdout).fileno()
        buffer = b""
        nativeRate = None
        while nativeRate is None:  # the WAV header, to the start of the data chunk
            data = os.read(fd, self._readSize)
            if not data or self.cancelled:
                self._failIfBroken()
                return
            buffer += data
            where = buffer.find(b"data", 12)
            if buffer[:4] != b"RIFF" and len(buffer) >= 4:
                raise SynthesisError("espeak-ng wrote something that is not WAV audio")
            if where >= 0 and len(buffer) >= where + 8:
                nativeRate = struct.unpack_from("<I", buffer, 24)[0]
                buffer = buffer[where + 8:]
        resampler = None
        if nativeRate != self.sample_rate:
            import soxr

            resampler = soxr.ResampleStream(nativeRate, self.sample_rate, 1, dtype="int16", quality="HQ")
        while not self.cancelled:
            even = len(buffer) - len(buffer) % 2
            if even:
                pcm = np.frombuffer(buffer[:even], dtype="<i2")
                buffer = buffer[even:]
                if resampler is not None:
                    pcm = resampler.resample_chunk(pcm)
                if len(pcm):
                    yield from self._emit(pcm)
            data = os.read(fd, self._readSize)
            if not data:
                break
            buffer += data
        if self.cancelled:
            return
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if len(tail):
                yield from self._emit(tail)
        self._failIfBroken()
        self.finished_at = time.perf_counter()
        self.log.debug(
            "spoke {chars} characters: {audio_ms} ms of audio, first after {ttfa_ms:.1f} ms, all in {elapsed_ms:.1f} ms",
            chars=len(self.text), audio_ms=self.samples * 1000 // self.sample_rate, ttfa_ms=self.time_to_first_audio_ms or 0.0,
            elapsed_ms=(self.finished_at - self.started_at) * 1000,
        )

    def _emit(self, pcm: np.ndarray) -> Iterator[np.ndarray]:
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        self.samples += len(pcm)
        yield pcm.astype(np.int16, copy=False)

    def _failIfBroken(self) -> None:
        if self.cancelled:
            return
        code = self._running.wait()
        if code != 0:
            err = _piped(self._running.stderr).read().decode("utf-8", "replace").strip()
            raise SynthesisError(f"espeak-ng failed ({code}): {err or 'no message'}", returncode=code)

    def _reap(self) -> None:
        process = self._running
        for pipe in (process.stdout, process.stderr):
            _piped(pipe).close()
        if process.poll() is None:
            process.kill()
        process.wait()

    def cancel(self) -> None:
        self.cancelled = True
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            process.kill()
        except ProcessLookupError:
            pass
        self.log.debug("cancelled synthesis pid {pid}", pid=process.pid)
        with self._lock:
            iterating = self._iterating
            self._iterating = True  # nobody iterates it from now on
        if not iterating:
            process.wait(timeout=1)
            for pipe in (process.stdout, process.stderr):
                _piped(pipe).close()
