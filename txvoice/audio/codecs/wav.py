"""
WAV: a RIFF header read incrementally from the start of the stream, then 16-bit PCM.

Clients stream a WAV "file" as it is written, so the header may be split across chunks and a
streaming writer leaves the sizes at 0 or 0xFFFFFFFF.  Chunks other than ``fmt `` and ``data``
(``LIST``, ``fact``, ``JUNK``...) are skipped without being buffered.
"""

from __future__ import annotations

import struct

import numpy as np
from zope.interface import implementer

from txvoice.audio.codecs.pcm import PcmDecoder, PcmEncoder, empty_pcm
from txvoice.audio.format import AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder
from txvoice.errors import AudioError, UnsupportedFormat

__all__ = ["WavDecoder", "WavEncoder", "wav_header", "STREAMING_SIZE"]

#: The RIFF and data size a streaming writer puts in the header: "until the end of the stream".
STREAMING_SIZE = 0xFFFFFFFF

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
#: SubFormat GUID tail shared by every KSDATAFORMAT_SUBTYPE_* (the first two bytes are the tag).
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

#: Largest non-data chunk accepted before ``data``: bigger means a corrupt header, and skipping
#: it would swallow the audio.
MAX_SKIPPED_CHUNK = 1 << 20
_MAX_FMT_CHUNK = 1024

_RIFF_PREFIX = b"RIFF"
_HEADER, _CHUNK_HEADER, _FMT, _SKIP, _DATA, _DONE = range(6)


def wav_header(sample_rate: int, channels: int, data_bytes: int | None = None) -> bytes:
    """
    A 44-byte canonical PCM WAV header; ``data_bytes=None`` writes the streaming size
    0xFFFFFFFF (length unknown).
    """
    if data_bytes is None:
        riff_size = data_size = STREAMING_SIZE
    else:
        data_size = data_bytes
        riff_size = min(36 + data_bytes + (data_bytes & 1), STREAMING_SIZE)
    block_align = 2 * channels
    return (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + struct.pack("<4sI", b"fmt ", 16)
        + struct.pack("<HHIIHH", WAVE_FORMAT_PCM, channels, sample_rate, sample_rate * block_align, block_align, 16)
        + struct.pack("<4sI", b"data", data_size)
    )


@implementer(IAudioDecoder)
class WavDecoder:
    """
    Decodes a WAV stream into its PCM.

    The header must be 16-bit PCM (``WAVE_FORMAT_PCM`` or the PCM subtype of
    ``WAVE_FORMAT_EXTENSIBLE``) with the declared rate and channels.  Errors:
    ``invalid_wav_header`` (not RIFF/WAVE, malformed or oversized chunk, ``data`` before
    ``fmt ``), ``unsupported_wav_encoding`` (not 16-bit PCM), ``wav_format_mismatch`` (rate or
    channels differ from the declared format).  After a header error the decoder starts over:
    the next chunk may begin a new, valid WAV stream.  Bytes after a ``data`` chunk of known size
    are ignored.  PCM is returned as :class:`PcmDecoder` returns it.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.output_rate = fmt.sample_rate
        self.output_channels = fmt.channels
        self._reset()

    def _reset(self) -> None:
        self._state = _HEADER
        self._buf = bytearray()
        self._chunk_size = 0
        self._skip = 0
        self._data_left: int | None = None
        self._have_fmt = False
        self._pcm = PcmDecoder(self.format)

    @property
    def header_done(self) -> bool:
        """True once the ``data`` chunk has started."""
        return self._state in (_DATA, _DONE)

    def decode(self, data: bytes, sequence: int | None = None) -> np.ndarray:
        """Consume header bytes until ``data`` starts, then decode PCM."""
        if self._state == _DATA and self._data_left is None:
            return self._pcm.decode(data)
        if self._state == _DONE:
            return empty_pcm()
        try:
            return self._feed(data)
        except AudioError:
            self._reset()
            raise

    def _feed(self, data: bytes) -> np.ndarray:
        view = memoryview(data)
        while True:
            if self._state == _DATA:
                return self._data(view)
            if self._state == _DONE:
                return empty_pcm()
            if self._state == _SKIP:
                take = min(self._skip, len(view))
                self._skip -= take
                view = view[take:]
                if self._skip:
                    return empty_pcm()
                self._state = _CHUNK_HEADER
                continue
            need = {_HEADER: 12, _CHUNK_HEADER: 8, _FMT: self._chunk_size}[self._state]
            take = min(need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if self._state == _HEADER:
                self._check_riff_prefix()
            if len(self._buf) < need:
                return empty_pcm()
            block, self._buf = bytes(self._buf), bytearray()
            if self._state == _HEADER:
                self._riff(block)
            elif self._state == _CHUNK_HEADER:
                self._chunk(block)
            else:
                self._fmt(block)

    def _check_riff_prefix(self) -> None:
        head = bytes(self._buf[:4])
        if head != _RIFF_PREFIX[: len(head)]:
            raise AudioError(f"not a RIFF stream (starts with {head!r})", code="invalid_wav_header")

    def _riff(self, block: bytes) -> None:
        if block[8:12] != b"WAVE":
            raise AudioError(f"RIFF form is {block[8:12]!r}, not 'WAVE'", code="invalid_wav_header")
        self._state = _CHUNK_HEADER

    def _chunk(self, block: bytes) -> None:
        chunk_id, size = struct.unpack("<4sI", block)
        if chunk_id == b"data":
            if not self._have_fmt:
                raise AudioError("'data' chunk before 'fmt ' chunk", code="invalid_wav_header")
            self._state = _DATA
            self._data_left = None if size in (0, STREAMING_SIZE) else size
        elif chunk_id == b"fmt ":
            if self._have_fmt:
                raise AudioError("duplicate 'fmt ' chunk", code="invalid_wav_header")
            if not 16 <= size <= _MAX_FMT_CHUNK:
                raise AudioError(f"'fmt ' chunk of {size} bytes", code="invalid_wav_header")
            self._state = _FMT
            self._chunk_size = size + (size & 1)
        else:
            if size > MAX_SKIPPED_CHUNK:
                raise AudioError(
                    f"{chunk_id!r} chunk of {size} bytes before 'data'", code="invalid_wav_header", chunk=repr(chunk_id)
                )
            self._state = _SKIP
            self._skip = size + (size & 1)  # chunks are word-aligned

    def _fmt(self, block: bytes) -> None:
        tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", block)
        if tag == WAVE_FORMAT_EXTENSIBLE:
            if len(block) < 40 or block[26:40] != _GUID_TAIL:
                raise AudioError("malformed WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk", code="invalid_wav_header")
            tag = struct.unpack_from("<H", block, 24)[0]
        if tag != WAVE_FORMAT_PCM or bits != 16:
            raise UnsupportedFormat(
                f"WAV encoding is format tag {tag:#06x} with {bits} bits; only 16-bit PCM is supported",
                code="unsupported_wav_encoding",
                format_tag=tag,
                bits_per_sample=bits,
            )
        if channels == 0 or block_align != 2 * channels:
            raise AudioError(f"block_align {block_align} does not match {channels} channels", code="invalid_wav_header")
        if rate != self.format.sample_rate or channels != self.format.channels:
            raise AudioError(
                f"WAV header says {rate} Hz, {channels} channel(s); the stream was declared as "
                f"{self.format.sample_rate} Hz, {self.format.channels} channel(s)",
                code="wav_format_mismatch",
                sample_rate=rate,
                channels=channels,
            )
        self._have_fmt = True
        self._state = _CHUNK_HEADER

    def _data(self, view: memoryview) -> np.ndarray:
        if self._data_left is not None:
            if len(view) >= self._data_left:
                view = view[: self._data_left]
                self._state = _DONE
            self._data_left -= len(view)
        return self._pcm.decode(bytes(view))

    def flush(self) -> np.ndarray:
        """End of stream: ``truncated_frame`` if it ended inside the header or inside a frame."""
        in_header = not self.header_done and (self._buf or self._state != _HEADER)
        pcm = self._pcm
        self._reset()
        if in_header:
            raise AudioError("stream ended inside the WAV header", code="truncated_frame")
        return pcm.flush()


@implementer(IAudioEncoder)
class WavEncoder:
    """
    Encodes a streaming WAV: a header with unknown (0xFFFFFFFF) sizes before the first packet,
    then PCM packets of exactly ``format.frame_duration_ms``.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._pcm = PcmEncoder(fmt)
        self._header: bytes | None = wav_header(fmt.sample_rate, fmt.channels)

    def _with_header(self, packets: list[bytes]) -> list[bytes]:
        if self._header is not None and packets:
            packets[0] = self._header + packets[0]
            self._header = None
        return packets

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Return the complete packets ``pcm`` yields (the first carries the header)."""
        return self._with_header(self._pcm.encode(pcm))

    def flush(self) -> list[bytes]:
        """Return the partial last packet; a stream with no audio still gets its header."""
        packets = self._with_header(self._pcm.flush())
        if self._header is not None:
            packets, self._header = [self._header], None
        return packets
