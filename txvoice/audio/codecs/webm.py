"""
WebM/Opus as a browser's ``MediaRecorder`` streams it, demuxed incrementally.

With a timeslice, MediaRecorder delivers one WebM file in pieces: only the first carries the EBML
header and Tracks, no piece decodes alone, Clusters and SimpleBlocks are split anywhere, and the
Segment and Clusters have "unknown" sizes (they end where an element that cannot be their child
begins).  The reader here handles exactly that subset of Matroska: EBML header, Segment,
Tracks/TrackEntry (CodecID, CodecPrivate = OpusHead), Cluster, Timecode, SimpleBlock and
BlockGroup/Block (with any lacing).  Everything else is skipped by its size without being
buffered, and only one element body (a block, a CodecPrivate) is ever buffered at a time.  The
element tables and the byte-level readers are in :mod:`txvoice.audio.codecs.ebml`.

After a container error the reader resynchronizes on the next Cluster (or EBML header, if the
Tracks were never read), so a lost or corrupt chunk costs the audio up to the next Cluster.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import numpy as np
from zope.interface import implementer

import txvoice.audio.codecs._libopus as _libopus
from txvoice.audio.codecs._libopus import DecoderState
from txvoice.audio.codecs.ebml import (
    BLOCK,
    CLUSTER_MAGIC,
    CODEC_ID,
    CODEC_PRIVATE,
    DOC_TYPE,
    EBML,
    EBML_MAGIC,
    LEAVES,
    LEVEL1,
    MASTERS,
    MAX_SKIP,
    MAY_BE_UNKNOWN,
    SEGMENT,
    SIMPLE_BLOCK,
    TIMECODE,
    TOP_LEVEL,
    TRACK_ENTRY,
    TRACK_NUMBER,
    TRACK_TYPE,
    TRACKS,
    UNKNOWN_SIZE_CHILDREN,
    WebmError,
    block_packets,
    read_header,
    read_uint,
)
from txvoice.audio.codecs.opus import check_opus_rate, invalid_packet
from txvoice.audio.codecs.pcm import empty_pcm
from txvoice.audio.format import AudioFormat
from txvoice.audio.interfaces import IAudioDecoder
from txvoice.errors import AudioError, UnsupportedFormat

__all__ = ["OpusHead", "WebmDemuxer", "WebmOpusDecoder", "parse_opus_head"]


@dataclass(frozen=True, slots=True)
class OpusHead:
    """What the Opus identification header (RFC 7845, 5.1) in CodecPrivate says."""

    channels: int
    pre_skip: int
    input_rate: int
    output_gain: int = 0
    mapping_family: int = 0


def parse_opus_head(data: bytes) -> OpusHead:
    """Parse an ``OpusHead`` packet; raise ``invalid_webm`` or ``unsupported_channels``."""
    if len(data) < 19 or data[:8] != b"OpusHead":
        raise WebmError("CodecPrivate is not an OpusHead")
    version, channels, pre_skip, input_rate, gain, family = struct.unpack_from("<BBHIhB", data, 8)
    if version >> 4 != 0 or channels == 0:
        raise WebmError(f"unsupported OpusHead version {version} or {channels} channels")
    if channels > 2 or family > 1 or (family == 1 and (len(data) < 21 or data[19] != 1)):
        raise UnsupportedFormat(
            f"multistream Opus ({channels} channels, mapping family {family}) is not supported",
            code="unsupported_channels",
        )
    return OpusHead(channels, pre_skip, input_rate, gain, family)


@dataclass(slots=True)
class _Track:
    number: int = 0
    type: int = 0
    codec_id: str = ""
    codec_private: bytes = b""


class WebmDemuxer:
    """
    Reads a WebM stream chunk by chunk and returns the Opus packets of its first Opus track.

    :meth:`feed` returns the packets each chunk completes, in order, with an :class:`OpusHead`
    before the first packet of each stream (the start, or after a new EBML header): a decoder
    resets there.  On a container error it raises :class:`WebmError` (or
    :class:`UnsupportedFormat` for a stream with no usable Opus track) and resynchronizes; the
    packets read before the error are not lost but returned first by the next :meth:`feed`
    (or by :meth:`take_pending`).  :attr:`opus_head` is the current stream's header and
    :attr:`generation` counts the streams seen.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = 0  # parse position in _buf
        self._pos = 0  # stream offset of _buf[0]
        self._skip = 0
        self._stack: list[tuple[int, int | None]] = []  # (element id, end offset or None)
        self._resync: bytes | None = None  # magic to search for after an error
        self._pending: list[bytes | OpusHead] = []
        self._out: list[bytes | OpusHead] = []
        self._track: _Track | None = None
        self._doc_type = "matroska"
        self.track_number: int | None = None
        self.opus_head: OpusHead | None = None
        self.generation = 0
        self.errors = 0

    @property
    def in_element(self) -> bool:
        """True when the stream so far ends inside an element (a truncated stream if it ends now)."""
        return self._skip > 0 or self._off < len(self._buf)

    def take_pending(self) -> list[bytes | OpusHead]:
        """Return (and forget) the packets read before the error :meth:`feed` last raised."""
        packets, self._pending = self._pending, []
        return packets

    def feed(self, data: bytes) -> list[bytes | OpusHead]:
        """Read one chunk; return the Opus packets of the blocks it completes (and stream heads)."""
        packets, self._pending = self._pending, []
        self._out = packets
        self._buf += data
        error: AudioError | None = None
        while True:
            try:
                self._parse(packets)
                break
            except AudioError as e:
                self.errors += 1
                if error is None:
                    error = e
                self._start_resync()
        self._compact()
        if error is not None:
            self._pending = packets
            raise error
        return packets

    # -- parsing

    def _compact(self) -> None:
        if self._off:
            del self._buf[: self._off]
            self._pos += self._off
            self._off = 0

    def _start_resync(self) -> None:
        """Drop the element that failed and search for the next sync point after it."""
        self._skip = 0
        self._stack.clear()  # in place: _parse holds a reference
        self._resync = CLUSTER_MAGIC if self.track_number is not None else EBML_MAGIC
        if self._off < len(self._buf):
            self._off += 1

    def _do_resync(self) -> bool:
        buf = self._buf
        resync = self._resync or EBML_MAGIC
        candidates = [i for i in (buf.find(EBML_MAGIC, self._off), buf.find(resync, self._off)) if i >= 0]
        if not candidates:
            self._off = max(self._off, len(buf) - 3)
            return False
        self._off = min(candidates)
        if buf[self._off : self._off + 4] == CLUSTER_MAGIC:
            self._stack[:] = [(SEGMENT, None)]  # resume as inside an unknown-size Segment
        self._resync = None
        return True

    def _parse(self, packets: list[bytes | OpusHead]) -> None:
        buf = self._buf
        stack = self._stack
        while True:
            if self._skip:
                take = min(self._skip, len(buf) - self._off)
                self._off += take
                self._skip -= take
                if self._skip:
                    return
            if self._resync is not None and not self._do_resync():
                return
            offset = self._pos + self._off
            while stack and stack[-1][1] is not None and offset >= stack[-1][1]:
                self._close(stack.pop()[0])
            header = read_header(buf, self._off)
            if header is None:
                return
            element, size, header_len = header
            while stack and stack[-1][1] is None and element not in UNKNOWN_SIZE_CHILDREN[stack[-1][0]]:
                self._close(stack.pop()[0])
            if element in LEVEL1:
                while stack and stack[-1][0] != SEGMENT:
                    self._close(stack.pop()[0])
            parent = stack[-1][0] if stack else None
            parent_end = stack[-1][1] if stack else None
            if parent is None and element not in TOP_LEVEL:
                raise WebmError(f"unexpected element {element:#x} at top level (offset {offset})")
            body_start = offset + header_len
            if size is None:
                if element not in MAY_BE_UNKNOWN:
                    raise WebmError(f"element {element:#x} has an unknown size")
                end = parent_end  # an unknown size ends at its parent's end at the latest
            else:
                end = body_start + size
                if parent_end is not None and end > parent_end:
                    raise WebmError(f"element {element:#x} overruns its parent {parent:#x}")
            key = (parent, element)
            if key in MASTERS:
                if element == EBML:
                    self._open_stream()
                elif element == TRACK_ENTRY:
                    self._track = _Track()
                self._off += header_len
                stack.append((element, end))
                continue
            limit = LEAVES.get(key)
            if limit is None:
                if size is None or size > MAX_SKIP:
                    raise WebmError(f"cannot skip element {element:#x} of size {size}")
                self._off += header_len
                self._skip = size
                continue
            if size is None:  # only masters may have an unknown size, and they are handled above
                raise WebmError(f"element {element:#x} has an unknown size")
            if size > limit:
                raise WebmError(f"element {element:#x} of {size} bytes exceeds {limit}")
            if len(buf) - self._off < header_len + size:
                return
            body = bytes(buf[self._off + header_len : self._off + header_len + size])
            self._leaf(element, body, packets)
            self._off += header_len + size

    def _open_stream(self) -> None:
        """A new EBML header: a new stream (with its own Tracks) starts."""
        self._doc_type = "matroska"
        self._track = None
        self.track_number = None

    def _close(self, element: int) -> None:
        if element == EBML:
            if self._doc_type not in ("webm", "matroska"):
                raise WebmError(f"DocType {self._doc_type!r} is not WebM")
        elif element == TRACK_ENTRY:
            track, self._track = self._track, None
            if track is not None and track.codec_id == "A_OPUS" and self.track_number is None:
                self._select(track)
        elif element == TRACKS:
            if self.track_number is None:
                raise UnsupportedFormat("the WebM stream has no Opus audio track", code="unsupported_codec")

    def _select(self, track: _Track) -> None:
        if track.codec_private:
            head = parse_opus_head(track.codec_private)
        else:
            head = OpusHead(channels=2, pre_skip=0, input_rate=48000)  # no header: decode as is
        self.track_number = track.number
        self.opus_head = head
        self.generation += 1
        self._out.append(head)

    def _leaf(self, element: int, body: bytes, packets: list[bytes | OpusHead]) -> None:
        if element in (SIMPLE_BLOCK, BLOCK):
            if self.track_number is None:
                raise WebmError("block before the Tracks")
            packets.extend(block_packets(body, self.track_number))
        elif element == TIMECODE:
            pass  # timing comes from the packets themselves
        elif element == DOC_TYPE:
            self._doc_type = body.rstrip(b"\0").decode("ascii", "replace")
        elif self._track is not None:
            if element == TRACK_NUMBER:
                self._track.number = read_uint(body)
            elif element == TRACK_TYPE:
                self._track.type = read_uint(body)
            elif element == CODEC_ID:
                self._track.codec_id = body.rstrip(b"\0").decode("ascii", "replace")
            elif element == CODEC_PRIVATE:
                self._track.codec_private = body


@implementer(IAudioDecoder)
class WebmOpusDecoder:
    """
    Decodes the Opus track of a WebM stream (``webm_opus``) to PCM at ``output_rate``.

    Output has ``format.channels`` channels whatever the track has (libopus up/downmixes) and
    starts after the OpusHead pre-skip.  Each call returns a new array that the caller owns.
    ``sequence`` is ignored: chunks are pieces of a file, not packets.  Errors:
    ``invalid_webm``, ``unsupported_codec`` (no Opus track), ``unsupported_channels``
    (multistream), ``invalid_opus_packet``; audio decoded before an error in a chunk is returned
    by the next call.
    """

    def __init__(self, fmt: AudioFormat, *, output_rate: int = 48000) -> None:
        check_opus_rate(output_rate)
        self.format = fmt
        self.output_rate = output_rate
        self.output_channels = fmt.channels
        self.demuxer = WebmDemuxer()
        self._state: DecoderState | None = None
        self._max_packet = output_rate * _libopus.MAX_FRAME_MS // 1000
        self._buffer = np.zeros(0, dtype=np.int16)
        self._skip = 0
        self._carry = empty_pcm()
        self._grow(output_rate // 2)

    def _grow(self, samples: int) -> None:
        """Make the scratch buffer hold ``samples`` per channel (kept across calls)."""
        if len(self._buffer) < samples * self.output_channels:
            channels = self.output_channels
            grown = np.zeros(max(samples, 2 * len(self._buffer) // channels) * channels, np.int16)
            grown[: len(self._buffer)] = self._buffer
            self._buffer = grown

    def _configure(self, head: OpusHead) -> None:
        """A new stream starts: fresh decoder state, and its pre-skip to drop."""
        if self._state is None:
            self._state = DecoderState(self.output_rate, self.output_channels)
        else:
            self._state.reset()
        self._skip = head.pre_skip * self.output_rate // 48000

    def decode(self, data: bytes, sequence: int | None = None) -> np.ndarray:
        """Demux ``data`` and decode the packets it completes."""
        try:
            packets = self.demuxer.feed(data)
        except AudioError:
            self._carry = self._decode(self.demuxer.take_pending())
            raise
        return self._decode(packets)

    def _decode(self, packets: list[bytes | OpusHead]) -> np.ndarray:
        carry, self._carry = self._carry, empty_pcm()
        if not packets:
            return carry
        state = self._state
        channels = self.output_channels
        pos = len(carry) // channels
        self._grow(pos + self._max_packet)
        buffer = self._buffer
        buffer[: len(carry)] = carry
        base = buffer.ctypes.data
        capacity = len(buffer) // channels - self._max_packet
        error: AudioError | None = None
        for packet in packets:
            if isinstance(packet, OpusHead):
                self._configure(packet)
                state = self._state
                continue
            assert state is not None  # the demuxer sends an OpusHead before any packet
            if pos > capacity:
                self._grow(pos + self._max_packet)
                buffer = self._buffer
                base = buffer.ctypes.data
                capacity = len(buffer) // channels - self._max_packet
            n = state.decode(packet, ctypes.c_void_p(base + pos * channels * 2), self._max_packet)
            if n < 0:
                error = error or invalid_packet(n, len(packet))
                continue
            if self._skip:
                dropped = min(self._skip, n)
                self._skip -= dropped
                if dropped:
                    buffer[pos * channels : (pos + n - dropped) * channels] = buffer[
                        (pos + dropped) * channels : (pos + n) * channels
                    ]
                    n -= dropped
            pos += n
        pcm = buffer[: pos * channels].copy()
        if error is not None:
            self._carry = pcm
            raise error
        return pcm

    def flush(self) -> np.ndarray:
        """
        Return audio held back by an error; ``truncated_frame`` if the stream ended inside an
        element and no audio is left to return.
        """
        pcm = self._decode(self.demuxer.take_pending())
        truncated = self.demuxer.in_element
        self.demuxer = WebmDemuxer()
        if truncated and not len(pcm):
            raise AudioError("stream ended inside a WebM element", code="truncated_frame")
        return pcm
