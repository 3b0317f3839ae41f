"""
Streaming helper: send a source as paced 20 ms frames and collect what the server answers.

:class:`AudioStreamer` opens a voice stream (``voice_start``), sends the source in real time (one
binary message per frame: PCM, or Opus through txvoice's own encoder), closes it (``voice_end``)
and gathers everything that comes back for it: status events (VAD, turns, transcripts, AI
responses, barge-in), each ``voice_response`` with its audio decoded to PCM, and errors.  The
result can save the reply audio as a WAV file.

When is the answer complete?  The server sends no "stream done" marker, so: in push-to-talk the
single turn ends at ``voice_end`` and is done with its final ``voice_stream_chunk``; in the other
modes the stream is done once every turn that started has ended, every ended turn has had its
final chunk, and nothing more arrived for ``settle`` seconds.
"""

from __future__ import annotations

import base64
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from txvoice.audio.codecs import decoder_for, encoder_for
from txvoice.audio.format import CODEC_RATES, AudioFormat, canonical_codec
from txvoice.audio.resample import Resampler, resample_once
from txvoice.client.connection import PRIORITY_AUDIO, ClientError, VoiceClient
from txvoice.client.sources import IAudioSource, WavSource
from txvoice.logging import NamespaceLogger

__all__ = [
    "AudioStreamer",
    "FrameEncoder",
    "Response",
    "StreamInterrupted",
    "StreamResult",
    "save_wav",
    "stream_audio",
    "stream_wav",
]

#: Wire rate when the source's rate is not one the codec runs at.
_FALLBACK_RATE = {"pcm_s16le": 16000, "opus": 48000}


class StreamInterrupted(ClientError):
    """The connection was lost while the stream was running (the server drops the stream with it)."""


class FrameEncoder:
    """
    Turns source PCM into wire packets of exactly ``frame_ms``: raw PCM or Opus.

    The source's rate and channels are kept when the codec runs at that rate; otherwise the audio
    is downmixed and resampled to 16 kHz (PCM) or 48 kHz (Opus) with txvoice's resampler.
    """

    def __init__(self, codec: str, sample_rate: int, channels: int, frame_ms: float = 20.0, **options: Any) -> None:
        canonical = canonical_codec(codec)
        if canonical not in _FALLBACK_RATE:
            raise ValueError(f"the client streams pcm or opus, not {codec!r}")
        self.resampler: Resampler | None = None
        if sample_rate in CODEC_RATES[canonical]:
            rate, wire_channels = sample_rate, channels
        else:
            rate, wire_channels = _FALLBACK_RATE[canonical], 1
            # "LL" (as the server's ingest): with HQ, 20 ms chunks of a 44.1 kHz mic left up to 40 ms
            # (20.8 on average) unsent as 48 kHz Opus, 32 kHz up to 60 ms (41.3) as 16 kHz PCM; with LL
            # only the frame being filled (20 ms), for ~1.5 µs more a chunk (tests/client).
            self.resampler = Resampler(sample_rate, rate, channels, quality="LL")
        self.format = AudioFormat.validated(canonical, rate, wire_channels, frame_ms)
        self.encoder = encoder_for(self.format, **options)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        if self.resampler is not None:
            pcm = self.resampler.process(pcm).copy()
        return self.encoder.encode(pcm)

    def flush(self) -> list[bytes]:
        """The last packets (the last partial frame is padded with silence for Opus)."""
        packets = []
        if self.resampler is not None:
            packets += self.encoder.encode(self.resampler.flush().copy())
        return packets + self.encoder.flush()


@dataclass
class Response:
    """One ``voice_response`` and the audio that came with it, decoded to PCM."""

    response_id: str | None
    data: dict[str, Any]
    format: AudioFormat | None
    chunks: int = 0
    bytes: int = 0
    final: dict[str, Any] | None = None
    pcm: list[np.ndarray] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return bool(self.final and self.final.get("cancelled"))

    @property
    def samples(self) -> int:
        return sum(len(p) for p in self.pcm)

    @property
    def duration_ms(self) -> float:
        if self.format is None:
            return 0.0
        return 1000.0 * self.samples / self.format.channels / self.format.sample_rate


@dataclass
class StreamResult:
    """What a stream sent and got back."""

    mode: str
    input_format: AudioFormat
    stream_id: str | None = None
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_dropped: int = 0  # best-effort frames the client could not send
    audio_ms_sent: float = 0.0
    voice_end: dict[str, Any] | None = None
    transcripts: list[str] = field(default_factory=list)
    ai_responses: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False

    def reply_audio(self) -> tuple[np.ndarray, int, int]:
        """All response audio, in order, as ``(int16 PCM, rate, channels)`` (the first response's format)."""
        formats = [r.format for r in self.responses if r.format is not None and r.pcm]
        if not formats:
            return np.zeros(0, dtype=np.int16), 16000, 1
        rate, channels = formats[0].sample_rate, formats[0].channels
        parts = []
        for r in self.responses:
            if r.format is None or not r.pcm:
                continue
            pcm = np.concatenate(r.pcm)
            if r.format.channels != channels:  # rare: make it mono, then back to stereo if needed
                pcm = pcm.reshape(-1, r.format.channels).mean(axis=1).astype(np.int16)
                if channels == 2:
                    pcm = np.repeat(pcm, 2)
            if r.format.sample_rate != rate:
                pcm = _resample(pcm, r.format.sample_rate, rate, channels)
            parts.append(pcm)
        return np.concatenate(parts), rate, channels

    @property
    def reply_ms(self) -> float:
        pcm, rate, channels = self.reply_audio()
        return 1000.0 * len(pcm) / channels / rate

    def save_reply(self, path: str | Path) -> Path:
        """Write the reply audio as a 16-bit PCM WAV file."""
        pcm, rate, channels = self.reply_audio()
        return save_wav(path, pcm, rate, channels)


def _resample(pcm: np.ndarray, in_rate: int, out_rate: int, channels: int) -> np.ndarray:
    if channels == 1:
        return resample_once(pcm, in_rate, out_rate)
    lanes = [resample_once(np.ascontiguousarray(pcm[c::channels]), in_rate, out_rate) for c in range(channels)]
    n = min(len(lane) for lane in lanes)
    return np.stack([lane[:n] for lane in lanes], axis=1).reshape(-1).astype(np.int16)


def save_wav(path: str | Path, pcm: np.ndarray, rate: int, channels: int = 1) -> Path:
    """Write int16 interleaved PCM as a WAV file."""
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return path


class AudioStreamer:
    """
    Streams one :class:`~txvoice.client.sources.IAudioSource` over a connected :class:`VoiceClient`.

    :param codec: ``"pcm"`` or ``"opus"``.
    :param mode: ``push_to_talk``, ``voice_activity`` or ``continuous``.
    :param speed: 1.0 sends in real time; 2.0 twice as fast; 0 as fast as possible.
    :param options: stream options passed in ``voice_start`` (``silence_ms``, ``enable_vad`` ...).
    :param response_timeout: seconds after ``voice_end`` to wait for the answer.
    :param settle: quiet seconds that end the wait in the VAD-driven modes.
    :param on_event: ``on_event(kind, data)`` for everything that arrives (``event`` (status
        events, transcripts included), ``response``, ``response_end``, ``error``).
    :param on_progress: ``on_progress(sent_ms, total_ms or None)`` after each frame period.
    """

    log = NamespaceLogger(namespace="txvoice.client.streaming")

    def __init__(
        self,
        client: VoiceClient,
        source: IAudioSource,
        *,
        codec: str = "pcm",
        mode: str = "push_to_talk",
        frame_ms: float = 20.0,
        speed: float = 1.0,
        options: dict[str, Any] | None = None,
        response_timeout: float = 30.0,
        settle: float = 1.0,
        priority: int = PRIORITY_AUDIO,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_progress: Callable[[float, float | None], None] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.client = client
        self.source = source
        self.mode = mode
        self.frame_ms = frame_ms
        self.speed = speed
        self.options = dict(options or {})
        self.response_timeout = response_timeout
        self.settle = settle
        self.priority = priority
        self.on_event = on_event
        self.on_progress = on_progress
        self.clock = clock if clock is not None else client.clock
        self.encoder = FrameEncoder(codec, source.sample_rate, source.channels, frame_ms)
        self.result = StreamResult(mode=mode, input_format=self.encoder.format)
        self._source_frame = max(1, int(round(source.sample_rate * frame_ms / 1000.0)))
        self._samples_read = 0
        self._current: Response | None = None
        self._decoder: Any = None
        self._turn_starts = 0
        self._turn_ends = 0
        self._finals = 0
        self._ended = False  # voice_end answered
        self._done: Deferred[StreamResult] | None = None  # waits for the answer, after voice_end
        self._pumped: Deferred[None] | None = None
        self._loop: LoopingCall | None = None
        self._failure: Exception | None = None
        self._settle_call: Any = None
        self._timeout_call: Any = None
        self._unsubscribe: list[Callable[[], None]] = []

    # running

    def run(self) -> Deferred[StreamResult]:
        """Stream the whole source; fires with the :class:`StreamResult`."""
        return self._run()

    @inlineCallbacks
    def _run(self) -> Generator[Deferred[Any], Any, StreamResult]:
        client = self.client
        self._unsubscribe += [client.on("message", self._onMessage), client.on("audio", self._onAudio),
                              client.on("close", self._onClose)]
        try:
            fmt = self.encoder.format
            start = {**fmt.as_dict(), "mode": self.mode, "response_audio": "binary"}
            if self.options:
                start["options"] = self.options
            answer = yield client.request("voice_start", start, priority=self.priority)
            self.result.stream_id = answer["data"].get("stream_id")
            self.log.info("streaming {codec} {rate} Hz x{channels} as {mode}", codec=fmt.codec,
                          rate=fmt.sample_rate, channels=fmt.channels, mode=self.mode)
            yield self._pump()
            end = yield client.request("voice_end", {}, priority=self.priority)
            self.result.voice_end = end["data"]
            self._ended = True
            self._done = Deferred()
            if self._failure is not None:
                raise self._failure
            self._timeout_call = self.clock.callLater(self.response_timeout, self._finish, False)
            self._check()
            result: StreamResult = yield self._done
            return result
        finally:
            for off in self._unsubscribe:
                off()
            self._unsubscribe.clear()
            for name in ("_settle_call", "_timeout_call"):
                call = getattr(self, name)
                if call is not None and call.active():
                    call.cancel()
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            self.source.close()

    def _pump(self) -> Deferred[None]:
        """Send the source, one frame per period (catching up after a late tick)."""
        self._pumped = finished = Deferred[None]()

        def tick(count: int) -> None:
            for _ in range(max(1, count) if self.speed else 50):
                pcm = self.source.read(self._source_frame)
                if pcm is None:
                    self._sendPackets(self.encoder.flush())
                    if self.on_progress is not None:
                        self.on_progress(self.sent_ms, self.source.duration_ms)
                    loop.stop()
                    return
                if not len(pcm):
                    break  # a live source with nothing yet
                self._samples_read += len(pcm) // self.source.channels
                self._sendPackets(self.encoder.encode(pcm))
            if self.on_progress is not None:
                self.on_progress(self.sent_ms, self.source.duration_ms)

        interval = self.frame_ms / 1000.0 / self.speed if self.speed else 0.0
        self._loop = loop = LoopingCall.withCount(tick)
        loop.clock = self.clock
        loop.start(interval, now=True).addCallbacks(
            lambda _: None if finished.called else finished.callback(None),
            lambda f: None if finished.called else finished.errback(f),
        )
        return finished

    def _fail(self, error: Exception) -> None:
        """End the stream with ``error`` wherever it is: pumping, or waiting for the answer."""
        if self._failure is not None:
            return
        self._failure = error
        if self._pumped is not None and not self._pumped.called:
            self._pumped.errback(error)  # before stopping the loop, whose end would fire it with success
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._done is not None and not self._done.called:
            self._done.errback(error)

    @property
    def sent_ms(self) -> float:
        rate: int = self.source.sample_rate  # IAudioSource attribute
        return 1000.0 * self._samples_read / rate

    def _sendPackets(self, packets: list[bytes]) -> None:
        for packet in packets:
            d = self.client.send(packet, self.priority)
            self.result.frames_sent += 1
            self.result.bytes_sent += len(packet)
            d.addCallback(self._countDrop)
        self.result.audio_ms_sent = self.sent_ms

    def _countDrop(self, sent: bool) -> None:
        if not sent:
            self.result.frames_dropped += 1

    # receiving

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, data)
            except Exception:
                self.log.failure("on_event failed")

    def _onMessage(self, env: dict[str, Any]) -> None:
        msg_type, data = env["type"], env["data"]
        if msg_type == "status":
            self._onStatus(data)
        elif msg_type == "voice_response":
            self._startResponse(data)
        elif msg_type == "voice_stream_chunk":
            if data.get("audio"):
                try:
                    self._onAudio(base64.b64decode(data["audio"]))
                except (ValueError, TypeError):
                    self.log.warn("undecodable base64 audio in voice_stream_chunk")
            if data.get("final"):
                self._endResponse(data)
        elif msg_type == "error":
            self.result.errors.append(data)
            self._emit("error", data)
        else:
            return
        self._check()

    def _onStatus(self, data: dict[str, Any]) -> None:
        kind = data.get("event_type")
        self.result.events.append(data)
        if kind == "turn_start":
            self._turn_starts += 1
        elif kind == "turn_end":
            self._turn_ends += 1
        elif kind == "transcript":
            text = data.get("text", data.get("transcript"))
            if isinstance(text, str) and data.get("final", True):  # partial hypotheses are only events
                self.result.transcripts.append(text)
        elif kind == "ai_response":
            text = data.get("text", data.get("response"))
            if isinstance(text, str):
                self.result.ai_responses.append(text)
        self._emit("event", data)

    def _startResponse(self, data: dict[str, Any]) -> None:
        audio = data.get("audio")
        fmt = None
        self._decoder = None
        if isinstance(audio, dict):
            try:
                fmt = AudioFormat.validated(audio.get("codec", "pcm_s16le"), int(audio.get("sample_rate", 16000)),
                                            int(audio.get("channels", 1)), float(audio.get("frame_duration_ms", 20)))
                self._decoder = decoder_for(fmt)
            except Exception as e:
                self.log.warn("cannot decode response audio {audio}: {error}", audio=audio, error=str(e))
        response = Response(data.get("response_id"), data, fmt)
        text = data.get("text_content")
        if text and (not self.result.ai_responses or self.result.ai_responses[-1] != text):
            self.result.ai_responses.append(str(text))  # unless an ai_response event already said it
        self.result.responses.append(response)
        self._current = response
        self._emit("response", data)

    def _onAudio(self, payload: bytes) -> None:
        response = self._current
        if response is None:
            return
        response.chunks += 1
        response.bytes += len(payload)
        if self._decoder is not None:
            try:
                pcm = self._decoder.decode(payload)
            except Exception as e:
                response.errors.append(str(e))
                return
            if len(pcm):
                response.pcm.append(np.array(pcm, dtype=np.int16, copy=True))

    def _endResponse(self, data: dict[str, Any]) -> None:
        response = self._current
        if response is None or (data.get("response_id") and data["response_id"] != response.response_id):
            return
        if self._decoder is not None:
            try:
                rest = self._decoder.flush()
                if len(rest):
                    response.pcm.append(np.array(rest, dtype=np.int16, copy=True))
            except Exception as e:
                response.errors.append(str(e))
        response.final = data
        self._current = None
        self._decoder = None
        self._finals += 1
        self._emit("response_end", {**data, "received_chunks": response.chunks,
                                    "received_ms": round(response.duration_ms, 1)})

    def _onClose(self, code: int | None, reason: str | None) -> None:
        self._fail(StreamInterrupted(f"connection lost during the stream ({code}: {reason})"))

    # completion

    def _check(self) -> None:
        """After each message: finish, (re)start the settle timer, or keep waiting."""
        if not self._ended or self._done is None or self._done.called:
            return
        answered = self._current is None and self._finals >= self._turn_ends
        if self.mode in ("push_to_talk", "ptt"):
            if answered and self._turn_ends >= 1 and self._finals >= 1:
                self._finish(True)
            return
        settle = self._settle_call
        if not answered or self._turn_starts > self._turn_ends:
            if settle is not None and settle.active():
                settle.cancel()
            return
        if settle is not None and settle.active():
            settle.reset(self.settle)
        else:
            self._settle_call = self.clock.callLater(self.settle, self._finish, True)

    def _finish(self, complete: bool) -> None:
        if self._done is None or self._done.called:
            return
        self.result.complete = complete
        if not complete:
            self.log.warn("no complete answer within {timeout}s of voice_end", timeout=self.response_timeout)
        self._done.callback(self.result)


def stream_audio(client: VoiceClient, source: IAudioSource, **kw: Any) -> Deferred[StreamResult]:
    """Stream ``source`` with an :class:`AudioStreamer`; fires with the :class:`StreamResult`."""
    return AudioStreamer(client, source, **kw).run()


def stream_wav(client: VoiceClient, path: str | Path, **kw: Any) -> Deferred[StreamResult]:
    """Stream a 16-bit PCM WAV file; fires with the :class:`StreamResult`."""
    return stream_audio(client, WavSource(path), **kw)
