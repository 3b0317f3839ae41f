"""
The EBML layer of WebM: the Matroska element IDs and structure the WebM reader knows, and the
readers of element headers, variable-size integers and (laced) block frames.

Kept apart from :mod:`txvoice.audio.codecs.webm` so the demuxer there reads as the state machine
it is; everything here is a table or a pure function of bytes.  Errors are :class:`WebmError`
(``invalid_webm``).
"""

from __future__ import annotations

from txvoice.errors import AudioError

__all__ = ["WebmError", "block_packets", "read_header", "read_uint", "read_vint"]

# Element IDs (with their length marker bits, as Matroska writes them).
EBML = 0x1A45DFA3
DOC_TYPE = 0x4282
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
CUES = 0x1C53BB6B
CHAPTERS = 0x1043A770
TAGS = 0x1254C367
ATTACHMENTS = 0x1941A469
VOID = 0xEC
CRC32 = 0xBF

TOP_LEVEL = frozenset({EBML, SEGMENT, VOID, CRC32})
#: Elements that only exist directly in a Segment: one of them ends any open Cluster,
#: BlockGroup or Tracks, whatever size that element claimed.
LEVEL1 = frozenset({SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, CHAPTERS, TAGS, ATTACHMENTS})
#: Children that may follow inside an unknown-size element; any other ID ends it.
UNKNOWN_SIZE_CHILDREN: dict[int, frozenset[int]] = {
    SEGMENT: frozenset({SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, CHAPTERS, TAGS, ATTACHMENTS, VOID, CRC32}),
    # ... and Position, PrevSize, SilentTracks, EncryptedBlock.
    CLUSTER: frozenset({TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP, VOID, CRC32, 0xA7, 0xAB, 0x5854, 0xAF}),
}
#: (parent, child) pairs the reader descends into.
MASTERS = frozenset(
    {
        (None, EBML),
        (None, SEGMENT),
        (SEGMENT, TRACKS),
        (TRACKS, TRACK_ENTRY),
        (SEGMENT, CLUSTER),
        (CLUSTER, BLOCK_GROUP),
    }
)
#: (parent, child) leaves the reader buffers and reads, with the largest body it accepts.
LEAVES: dict[tuple[int | None, int], int] = {
    (EBML, DOC_TYPE): 64,
    (TRACK_ENTRY, TRACK_NUMBER): 8,
    (TRACK_ENTRY, TRACK_TYPE): 8,
    (TRACK_ENTRY, CODEC_ID): 64,
    (TRACK_ENTRY, CODEC_PRIVATE): 64 * 1024,
    (CLUSTER, TIMECODE): 8,
    (CLUSTER, SIMPLE_BLOCK): 256 * 1024,
    (BLOCK_GROUP, BLOCK): 256 * 1024,
}
#: Elements that may have an unknown size.
MAY_BE_UNKNOWN = frozenset({SEGMENT, CLUSTER})
#: Largest element skipped: beyond, the stream is garbage (or it would swallow the audio).
MAX_SKIP = 64 * 1024 * 1024

CLUSTER_MAGIC = CLUSTER.to_bytes(4, "big")
EBML_MAGIC = EBML.to_bytes(4, "big")


class WebmError(AudioError):
    """The WebM container is malformed (``invalid_webm``)."""

    code = "invalid_webm"


def read_uint(body: bytes) -> int:
    """The big-endian unsigned integer that is an element's body."""
    return int.from_bytes(body, "big")


def read_header(buf: bytearray, off: int) -> tuple[int, int | None, int] | None:
    """(id, size or None if unknown, header length) of the element at ``off``; None if incomplete."""
    avail = len(buf) - off
    if avail < 2:
        return None
    first = buf[off]
    id_len = 9 - first.bit_length()
    if first == 0 or id_len > 4:
        raise WebmError(f"invalid element ID byte {first:#04x}")
    if avail < id_len + 1:
        return None
    element = int.from_bytes(buf[off : off + id_len], "big")
    first = buf[off + id_len]
    size_len = 9 - first.bit_length()
    if first == 0:
        raise WebmError("invalid element size")
    if avail < id_len + size_len:
        return None
    size = first & (0xFF >> size_len)
    for i in range(off + id_len + 1, off + id_len + size_len):
        size = (size << 8) | buf[i]
    if size == (1 << (7 * size_len)) - 1:
        return element, None, id_len + size_len
    return element, size, id_len + size_len


def read_vint(body: bytes, off: int) -> tuple[int, int]:
    """(value, length) of the EBML variable-size integer at ``off`` of a complete block."""
    if off >= len(body) or body[off] == 0:
        raise WebmError("invalid variable-size integer in block")
    length = 9 - body[off].bit_length()
    if off + length > len(body):
        raise WebmError("truncated block header")
    value = body[off] & (0xFF >> length)
    for i in range(off + 1, off + length):
        value = (value << 8) | body[i]
    return value, length


def block_packets(body: bytes, track_number: int) -> list[bytes]:
    """The frames of a (Simple)Block of ``track_number`` (none for another track's block)."""
    packets: list[bytes] = []
    track, n = read_vint(body, 0)
    if track != track_number:
        return packets
    pos = n + 3  # timecode (int16) and flags
    if pos > len(body):
        raise WebmError("truncated block header")
    lacing = (body[n + 2] >> 1) & 3
    if lacing == 0:
        if pos < len(body):
            packets.append(body[pos:])
        return packets
    if pos >= len(body):
        raise WebmError("truncated lacing header")
    count = body[pos] + 1
    pos += 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph
        for _ in range(count - 1):
            size = 0
            while True:
                if pos >= len(body):
                    raise WebmError("truncated Xiph lacing")
                byte = body[pos]
                pos += 1
                size += byte
                if byte != 255:
                    break
            sizes.append(size)
    elif lacing == 3:  # fixed
        rest = len(body) - pos
        if rest % count:
            raise WebmError("fixed lacing does not divide the block")
        sizes = [rest // count] * (count - 1)
    else:  # EBML
        size, length = read_vint(body, pos)
        pos += length
        sizes.append(size)
        for _ in range(count - 2):
            raw, length = read_vint(body, pos)
            pos += length
            size += raw - ((1 << (7 * length - 1)) - 1)
            if size < 0:
                raise WebmError("negative EBML lace size")
            sizes.append(size)
    last = len(body) - pos - sum(sizes)
    if last < 0:
        raise WebmError("lace sizes overrun the block")
    sizes.append(last)
    for size in sizes:
        if size:
            packets.append(body[pos : pos + size])
        pos += size
    return packets
