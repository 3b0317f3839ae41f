"""
A minimal ctypes binding of libopus for the hot path.

``opuslib`` decodes through freshly allocated ctypes arrays and Python lists; here the decoder
writes straight into a caller-owned numpy buffer, and the encoder into a reused byte buffer.  The
library gets its own :class:`ctypes.CDLL` object, so the ``argtypes`` set below never clash with
the ones ``opuslib`` sets on its handle.  It is a :class:`ctypes.PyDLL`: calls keep the GIL.  A
20 ms decode takes ~25 µs; letting go of the GIL for it cost the audio thread up to a switch
interval (5 ms) to get it back whenever the reactor was busy (measured: 2.6 ms of wall time per
decode under load), while holding it costs the reactor at most the 25 µs.  Encoding is the
other way round: a 20 ms frame at 48 kHz takes ~0.45 ms of libopus, and with twenty replies at
once it was half of all the time any thread held the GIL (py-spy ``--gil``,
``bench/bench_speech_lag.py``), each call a stretch the reactor could not run.  So
``opus_encode`` alone goes through a second, GIL-releasing :class:`ctypes.CDLL` handle: replies
are encoded ahead of their playing, so the wait to get the GIL back costs nothing a client hears
(measured in pairs, 20 speakers: reactor lag p99 55/18 -> 8.8/7.4 ms, first audio p95 99/70 ->
57/38 ms).  Error codes are mapped to names here because
``str(opuslib.OpusError)`` raises in opuslib 3.0.1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref
from typing import Any

__all__ = [
    "APPLICATIONS",
    "MAX_FRAME_MS",
    "MAX_PACKET_BYTES",
    "OPUS_RATES",
    "OpusLibraryError",
    "DecoderState",
    "EncoderState",
    "error_name",
    "packet_samples",
    "version",
]

#: Sample rates libopus encodes and decodes at.
OPUS_RATES: frozenset[int] = frozenset({8000, 12000, 16000, 24000, 48000})

#: The longest packet duration Opus allows (RFC 6716, 3.2.5).
MAX_FRAME_MS = 120

#: Recommended upper bound for one encoded packet (opus_encode documentation).
MAX_PACKET_BYTES = 4000

OPUS_OK = 0
OPUS_BAD_ARG = -1
OPUS_BUFFER_TOO_SMALL = -2
OPUS_INTERNAL_ERROR = -3
OPUS_INVALID_PACKET = -4
OPUS_UNIMPLEMENTED = -5
OPUS_INVALID_STATE = -6
OPUS_ALLOC_FAIL = -7

_ERROR_NAMES: dict[int, str] = {
    OPUS_OK: "OPUS_OK",
    OPUS_BAD_ARG: "OPUS_BAD_ARG",
    OPUS_BUFFER_TOO_SMALL: "OPUS_BUFFER_TOO_SMALL",
    OPUS_INTERNAL_ERROR: "OPUS_INTERNAL_ERROR",
    OPUS_INVALID_PACKET: "OPUS_INVALID_PACKET",
    OPUS_UNIMPLEMENTED: "OPUS_UNIMPLEMENTED",
    OPUS_INVALID_STATE: "OPUS_INVALID_STATE",
    OPUS_ALLOC_FAIL: "OPUS_ALLOC_FAIL",
}

#: Application modes by the names txvoice accepts.
APPLICATIONS: dict[str, int] = {
    "voip": 2048,
    "audio": 2049,
    "restricted_lowdelay": 2051,
}

# CTL requests (opus_defines.h).
SET_BITRATE = 4002
GET_BITRATE = 4003
SET_VBR = 4006
SET_COMPLEXITY = 4010
SET_INBAND_FEC = 4012
GET_INBAND_FEC = 4013
SET_PACKET_LOSS_PERC = 4014
SET_DTX = 4016
SET_SIGNAL = 4024
GET_LOOKAHEAD = 4027
RESET_STATE = 4028
GET_LAST_PACKET_DURATION = 4039
SIGNAL_VOICE = 3001
BITRATE_AUTO = -1000


def error_name(code: int) -> str:
    """The ``OPUS_*`` name of a libopus error code (never raises)."""
    return _ERROR_NAMES.get(code, f"OPUS_ERROR_{code}")


class OpusLibraryError(RuntimeError):
    """libopus refused a call that txvoice made (a server bug, not client input)."""

    def __init__(self, function: str, code: int) -> None:
        super().__init__(f"{function} failed: {error_name(code)} ({code})")
        self.function = function
        self.code = code


def _load() -> ctypes.PyDLL:
    """Load libopus under a private, GIL-holding handle (Debian: libopus.so.0)."""
    for name in ("libopus.so.0", ctypes.util.find_library("opus")):
        if name:
            try:
                return ctypes.PyDLL(name)
            except OSError:
                continue
    raise ImportError("libopus not found (install libopus0)")


_lib = _load()
_c_int_p = ctypes.POINTER(ctypes.c_int)

_lib.opus_get_version_string.argtypes = ()
_lib.opus_get_version_string.restype = ctypes.c_char_p

_lib.opus_decoder_create.argtypes = (ctypes.c_int32, ctypes.c_int, _c_int_p)
_lib.opus_decoder_create.restype = ctypes.c_void_p
_lib.opus_decoder_destroy.argtypes = (ctypes.c_void_p,)
_lib.opus_decoder_destroy.restype = None
_opus_decode = _lib.opus_decode
_opus_decode.argtypes = (
    ctypes.c_void_p,  # OpusDecoder *st
    ctypes.c_char_p,  # const unsigned char *data (NULL for concealment)
    ctypes.c_int32,  # opus_int32 len
    ctypes.c_void_p,  # opus_int16 *pcm
    ctypes.c_int,  # int frame_size (per channel)
    ctypes.c_int,  # int decode_fec
)
_opus_decode.restype = ctypes.c_int
# opus_decoder_ctl / opus_encoder_ctl are variadic: no argtypes, every argument is passed as
# an explicit ctypes object.
_lib.opus_decoder_ctl.restype = ctypes.c_int
_lib.opus_encoder_ctl.restype = ctypes.c_int

_lib.opus_encoder_create.argtypes = (ctypes.c_int32, ctypes.c_int, ctypes.c_int, _c_int_p)
_lib.opus_encoder_create.restype = ctypes.c_void_p
_lib.opus_encoder_destroy.argtypes = (ctypes.c_void_p,)
_lib.opus_encoder_destroy.restype = None
#: The one GIL-releasing call (see above): the same library through a CDLL handle.
_released = ctypes.CDLL(_lib._name)
_opus_encode = _released.opus_encode
_opus_encode.argtypes = (
    ctypes.c_void_p,  # OpusEncoder *st
    ctypes.c_void_p,  # const opus_int16 *pcm
    ctypes.c_int,  # int frame_size (per channel)
    ctypes.c_void_p,  # unsigned char *data
    ctypes.c_int32,  # opus_int32 max_data_bytes
)
_opus_encode.restype = ctypes.c_int32

_opus_packet_get_nb_samples = _lib.opus_packet_get_nb_samples
_opus_packet_get_nb_samples.argtypes = (ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32)
_opus_packet_get_nb_samples.restype = ctypes.c_int

_opus_packet_parse = _lib.opus_packet_parse
_opus_packet_parse.argtypes = (
    ctypes.c_char_p,  # const unsigned char *data
    ctypes.c_int32,  # opus_int32 len
    ctypes.c_void_p,  # unsigned char *out_toc
    ctypes.c_void_p,  # const unsigned char *frames[48]
    ctypes.c_void_p,  # opus_int16 size[48]
    ctypes.c_void_p,  # int *payload_offset
)
_opus_packet_parse.restype = ctypes.c_int

# Scratch outputs of opus_packet_parse (only its return value is used), laid out in one buffer per
# decoder: toc at 0, frames[48] (pointers) at 8, size[48] (int16) at 392, payload_offset at 488.
_PARSE_SCRATCH_BYTES = 8 + 48 * 8 + 48 * 2 + 8


def version() -> str:
    """The libopus version string, e.g. ``libopus 1.3.1``."""
    return _lib.opus_get_version_string().decode("ascii", "replace")


def packet_samples(packet: bytes, rate: int) -> int:
    """
    Samples per channel that ``packet`` decodes to at ``rate``; a negative libopus error code
    when its TOC/frame count is invalid.
    """
    return _opus_packet_get_nb_samples(packet, len(packet), rate)


class DecoderState:
    """
    One ``OpusDecoder``, freed when this object is collected.

    :meth:`decode` and :meth:`conceal` write into the address the caller passes (a numpy buffer
    it keeps alive) and return samples per channel, or a negative libopus error code.
    """

    __slots__ = ("_st", "rate", "channels", "_parse_scratch", "__weakref__")

    def __init__(self, rate: int, channels: int) -> None:
        err = ctypes.c_int(0)
        st = _lib.opus_decoder_create(rate, channels, ctypes.byref(err))
        if err.value != OPUS_OK or not st:
            raise OpusLibraryError("opus_decoder_create", err.value or OPUS_ALLOC_FAIL)
        self._st = ctypes.c_void_p(st)
        self.rate = rate
        self.channels = channels
        self._parse_scratch: Any = None  # validate()'s, made on its first call (after a sequence gap only)
        weakref.finalize(self, _lib.opus_decoder_destroy, st)

    def decode(self, packet: bytes, out: ctypes.c_void_p, max_samples: int, fec: bool = False) -> int:
        """Decode ``packet`` (or its FEC data when ``fec``) into ``out``."""
        return _opus_decode(self._st, packet, len(packet), out, max_samples, 1 if fec else 0)

    def conceal(self, out: ctypes.c_void_p, samples: int) -> int:
        """Packet-loss concealment: synthesize exactly ``samples`` per channel into ``out``."""
        return _opus_decode(self._st, None, 0, out, samples, 0)

    def validate(self, packet: bytes) -> int:
        """Parse ``packet`` fully without decoding: frame count, or a negative error code."""
        scratch = self._parse_scratch
        if scratch is None:
            scratch = self._parse_scratch = ctypes.create_string_buffer(_PARSE_SCRATCH_BYTES)
        base = ctypes.addressof(scratch)
        return _opus_packet_parse(packet, len(packet), base, base + 8, base + 392, base + 488)

    def reset(self) -> None:
        """Forget the decoder history (a new, unrelated stream follows)."""
        _lib.opus_decoder_ctl(self._st, ctypes.c_int(RESET_STATE))


class EncoderState:
    """One ``OpusEncoder``, freed when this object is collected."""

    __slots__ = ("_st", "rate", "channels", "__weakref__")

    def __init__(self, rate: int, channels: int, application: int) -> None:
        err = ctypes.c_int(0)
        st = _lib.opus_encoder_create(rate, channels, application, ctypes.byref(err))
        if err.value != OPUS_OK or not st:
            raise OpusLibraryError("opus_encoder_create", err.value or OPUS_ALLOC_FAIL)
        self._st = ctypes.c_void_p(st)
        self.rate = rate
        self.channels = channels
        weakref.finalize(self, _lib.opus_encoder_destroy, st)

    def encode(self, pcm: ctypes.c_void_p, samples: int, out: "ctypes.c_void_p | ctypes.Array[ctypes.c_char]", max_bytes: int) -> int:
        """Encode ``samples`` per channel at ``pcm`` into ``out``: bytes written or an error code."""
        return _opus_encode(self._st, pcm, samples, out, max_bytes)

    def set(self, request: int, value: int) -> None:
        """Apply one ``OPUS_SET_*`` request (this is how FEC is enabled: opuslib's setter is broken)."""
        rc = _lib.opus_encoder_ctl(self._st, ctypes.c_int(request), ctypes.c_int32(value))
        if rc != OPUS_OK:
            raise OpusLibraryError(f"opus_encoder_ctl({request})", rc)

    def get(self, request: int) -> int:
        """Read one ``OPUS_GET_*`` value."""
        value = ctypes.c_int32(0)
        rc = _lib.opus_encoder_ctl(self._st, ctypes.c_int(request), ctypes.byref(value))
        if rc != OPUS_OK:
            raise OpusLibraryError(f"opus_encoder_ctl({request})", rc)
        return value.value
