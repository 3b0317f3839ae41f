"""
Opus packets (RFC 6716) in and out, through libopus directly (see :mod:`._libopus`).

Each packet is decoded straight into a preallocated buffer and only the valid samples are copied
out; concealment of lost packets follows the client's sequence numbers.
"""

from __future__ import annotations

import ctypes

import numpy as np
from zope.interface import implementer

import txvoice.audio.codecs._libopus as _libopus
from txvoice.audio.codecs._libopus import OPUS_RATES, DecoderState, EncoderState, error_name, packet_samples
from txvoice.audio.codecs.pcm import PcmFramer, as_pcm, empty_pcm
from txvoice.audio.format import AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder
from txvoice.errors import AudioError, UnsupportedFormat

__all__ = ["OPUS_FRAME_DURATIONS_MS", "OpusDecoder", "OpusEncoder", "check_opus_rate", "invalid_packet"]

#: Frame durations an Opus encoder can produce (30 ms, allowed by AudioFormat, is not one).
OPUS_FRAME_DURATIONS_MS: frozenset[float] = frozenset({2.5, 5, 10, 20, 40, 60, 80, 100, 120})

#: Default bound on the audio synthesized for one sequence gap: a client that skips a million
#: sequence numbers must not make the server synthesize hours of audio.
DEFAULT_MAX_CONCEAL_MS = 1000


def check_opus_rate(rate: int) -> None:
    """Raise ``unsupported_sample_rate`` unless libopus runs at ``rate``."""
    if rate not in OPUS_RATES:
        raise UnsupportedFormat(
            f"Opus does not run at {rate} Hz; supported: {sorted(OPUS_RATES)}",
            code="unsupported_sample_rate",
        )


def _check_channels(channels: int) -> None:
    if channels not in (1, 2):
        raise UnsupportedFormat(f"channels must be 1 or 2, not {channels}", code="unsupported_channels")


def invalid_packet(result: int, size: int) -> AudioError:
    """The :class:`AudioError` for a packet libopus rejected with error ``result``."""
    name = error_name(result)
    return AudioError(f"invalid Opus packet of {size} bytes ({name})", code="invalid_opus_packet", opus_error=name)


@implementer(IAudioDecoder)
class OpusDecoder:
    """
    Decodes one Opus packet per :meth:`decode` call at ``output_rate`` (``format.sample_rate``
    unless given).  An Opus stream decodes at any of libopus's rates whatever rate it was encoded
    at, so a consumer that wants 16 kHz asks for it here: libopus then skips the upper band and
    resamples internally, which costs far less than decoding at 48 kHz and resampling after.

    Returns a new array (a copy of the valid part of a reused buffer): the caller owns it.

    Packet-loss concealment: when ``sequence`` jumps from ``s`` to ``s + k`` (``k > 1``), the
    ``k - 1`` missing packets are synthesized before the packet, each as long as the packet,
    so the output keeps its length.  The last missing one comes from the packet's in-band FEC
    data when the sender included it (``fec=True``), the others from libopus concealment.  At
    most ``max_conceal_ms`` are synthesized per gap.  A packet that fails to decode does not
    advance the sequence, so it is concealed when the next one arrives.  Without ``sequence``
    there is no concealment.

    Errors: ``truncated_frame`` (empty packet), ``invalid_opus_packet`` (libopus rejects it).
    """

    def __init__(
        self,
        fmt: AudioFormat,
        *,
        output_rate: int | None = None,
        fec: bool = True,
        max_conceal_ms: int = DEFAULT_MAX_CONCEAL_MS,
    ) -> None:
        check_opus_rate(fmt.sample_rate)
        rate = fmt.sample_rate if output_rate is None else output_rate
        check_opus_rate(rate)
        _check_channels(fmt.channels)
        self.format = fmt
        self.output_rate = rate
        self.output_channels = fmt.channels
        self.fec = fec
        self._channels = fmt.channels
        self._state = DecoderState(rate, fmt.channels)
        self._max_samples = rate * _libopus.MAX_FRAME_MS // 1000
        self._max_conceal = rate * max_conceal_ms // 1000
        # The decode buffer is made by the first decode(): a stream on the native batch ingest
        # (txvoice.audio.native) decodes in C into the batch's buffer and never needs one.
        self._buffer: np.ndarray | None = None
        self._buffer_ptr: ctypes.c_void_p | None = None
        self._last_sequence: int | None = None

    def _make_buffer(self) -> tuple[np.ndarray, ctypes.c_void_p]:
        buffer = self._buffer = np.zeros(self._max_samples * self._channels, dtype=np.int16)
        pointer = self._buffer_ptr = ctypes.c_void_p(buffer.ctypes.data)
        return buffer, pointer

    def decode(self, data: bytes, sequence: int | None = None) -> np.ndarray:
        """Decode one packet, after concealing the packets a sequence gap says were lost."""
        if not isinstance(data, bytes):
            data = bytes(data)
        if not data:
            raise AudioError("empty Opus packet", code="truncated_frame")
        last = self._last_sequence
        if sequence is not None and last is not None and sequence - last > 1:
            pcm = self._decode_after_gap(data, sequence - last - 1)
        else:
            buffer, pointer = self._buffer, self._buffer_ptr
            if buffer is None or pointer is None:
                buffer, pointer = self._make_buffer()
            n = self._state.decode(data, pointer, self._max_samples)
            if n < 0:
                raise invalid_packet(n, len(data))
            pcm = buffer[: n * self._channels].copy()
        if sequence is not None:
            self._last_sequence = sequence
        return pcm

    def _decode_after_gap(self, data: bytes, missing: int) -> np.ndarray:
        # Check the packet first: concealment changes the decoder state, so it must only happen
        # when the packet will decode too.
        per_packet = packet_samples(data, self.output_rate)
        if per_packet < 0:
            raise invalid_packet(per_packet, len(data))
        parsed = self._state.validate(data)
        if parsed < 0:
            raise invalid_packet(parsed, len(data))
        if per_packet == 0:  # parses, but says no audio: not a packet we can place after a gap
            raise invalid_packet(_libopus.OPUS_INVALID_PACKET, len(data))
        concealed = min(missing, self._max_conceal // per_packet) * per_packet
        channels = self._channels
        out = np.empty((concealed + per_packet) * channels, dtype=np.int16)
        base = out.ctypes.data
        if concealed:
            if self.fec:
                # libopus runs concealment for all but the last packet duration, then FEC.
                n = self._state.decode(data, ctypes.c_void_p(base), concealed, fec=True)
            else:
                n = self._state.conceal(ctypes.c_void_p(base), concealed)
            if n != concealed:
                raise invalid_packet(n if n < 0 else _libopus.OPUS_INTERNAL_ERROR, len(data))
        n = self._state.decode(data, ctypes.c_void_p(base + concealed * channels * 2), per_packet)
        if n < 0:
            raise invalid_packet(n, len(data))
        return out[: (concealed + n) * channels]

    def flush(self) -> np.ndarray:
        """Opus keeps no PCM between packets: always empty."""
        return empty_pcm()


@implementer(IAudioEncoder)
class OpusEncoder:
    """
    Encodes PCM at ``format.sample_rate`` into Opus packets of exactly ``format.frame_duration_ms``.

    PCM is buffered until a frame is complete; :meth:`flush` zero-pads the last one.  Packets
    are encoded into one reused output buffer and copied out as ``bytes``.

    :param application: ``"voip"`` (speech, the default), ``"audio"`` or ``"restricted_lowdelay"``.
    :param bitrate: bits per second (500..512000), or ``None`` for libopus' default.
    :param fec: include in-band FEC so a receiver can recover a lost packet (set through the CTL
        directly: opuslib 3.0.1's ``inband_fec`` setter raises TypeError).
    """

    def __init__(
        self,
        fmt: AudioFormat,
        *,
        application: str = "voip",
        bitrate: int | None = None,
        complexity: int | None = None,
        fec: bool = False,
        packet_loss_perc: int = 0,
        dtx: bool = False,
    ) -> None:
        check_opus_rate(fmt.sample_rate)
        _check_channels(fmt.channels)
        if fmt.frame_duration_ms not in OPUS_FRAME_DURATIONS_MS:
            raise UnsupportedFormat(
                f"Opus cannot encode {fmt.frame_duration_ms} ms frames; supported: {sorted(OPUS_FRAME_DURATIONS_MS)}",
                code="unsupported_frame_duration",
            )
        if application not in _libopus.APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(_libopus.APPLICATIONS)}, not {application!r}")
        if bitrate is not None and not 500 <= bitrate <= 512000:
            raise ValueError(f"bitrate must be within 500..512000, not {bitrate}")
        if complexity is not None and not 0 <= complexity <= 10:
            raise ValueError(f"complexity must be within 0..10, not {complexity}")
        if not 0 <= packet_loss_perc <= 100:
            raise ValueError(f"packet_loss_perc must be within 0..100, not {packet_loss_perc}")
        self.format = fmt
        self.application = application
        self._state = EncoderState(fmt.sample_rate, fmt.channels, _libopus.APPLICATIONS[application])
        if bitrate is not None:
            self._state.set(_libopus.SET_BITRATE, bitrate)
        if complexity is not None:
            self._state.set(_libopus.SET_COMPLEXITY, complexity)
        self._state.set(_libopus.SET_INBAND_FEC, int(fec))
        self._state.set(_libopus.SET_PACKET_LOSS_PERC, packet_loss_perc)
        self._state.set(_libopus.SET_DTX, int(dtx))
        self._samples = fmt.samples_per_frame
        self._framer = PcmFramer(self._samples * fmt.channels)
        self._framer_ptr = ctypes.c_void_p(self._framer.buffer.ctypes.data)
        self._frame = np.zeros(self._samples * fmt.channels, dtype=np.int16)
        self._frame_ptr = ctypes.c_void_p(self._frame.ctypes.data)
        self._out = ctypes.create_string_buffer(_libopus.MAX_PACKET_BYTES)

    @property
    def bitrate(self) -> int:
        """The bitrate libopus is using (bits per second)."""
        return self._state.get(_libopus.GET_BITRATE)

    @property
    def fec(self) -> bool:
        """Whether in-band FEC is on."""
        return bool(self._state.get(_libopus.GET_INBAND_FEC))

    @property
    def lookahead(self) -> int:
        """Encoder delay in samples at ``format.sample_rate`` (a container's pre-skip)."""
        return self._state.get(_libopus.GET_LOOKAHEAD)

    def _encode(self, pcm_ptr: ctypes.c_void_p) -> bytes:
        n = self._state.encode(pcm_ptr, self._samples, self._out, _libopus.MAX_PACKET_BYTES)
        if n < 0:
            raise _libopus.OpusLibraryError("opus_encode", n)
        return ctypes.string_at(self._out, n)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Return the packets of the frames ``pcm`` completes."""
        packets = []
        framer_buffer = self._framer.buffer
        for frame in self._framer.frames(as_pcm(pcm)):
            if frame is framer_buffer:
                packets.append(self._encode(self._framer_ptr))
            else:
                self._frame[:] = frame
                packets.append(self._encode(self._frame_ptr))
        return packets

    def flush(self) -> list[bytes]:
        """Zero-pad the partial frame, if any, and return its packet."""
        if self._framer.take_padded() is None:
            return []
        return [self._encode(self._framer_ptr)]
