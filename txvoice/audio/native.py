"""
The native batch ingest's binding: one C call (``txvoice/audio/_native.c``) per batch of Opus chunks
from many streams decodes them, re-slices them into exact frames and classifies every frame, with
the GIL released once for the whole batch (a :class:`ctypes.CDLL` call) instead of the several
C calls per frame of the pure-Python path, each of which the audio thread may have to wait to
take the GIL back after (issue 26).

What runs in C is exactly what :class:`~txvoice.audio.codecs.opus.OpusDecoder`,
:class:`~txvoice.audio.frames.FrameAssembler`, :class:`~txvoice.audio.vad.WebRtcClassifier` (webrtcvad
and the :class:`~txvoice.audio.vad.SpectralGate`) and the fast onset's classifier
(:class:`~txvoice.audio.bargein.FastOnset`) do per frame; the decoder and webrtcvad states are
those Python objects' own (their pointers are borrowed), the gates' state lives in C.  The
hysteresis, the turns and the onset's run counting stay in Python, fed the decisions through
:class:`PresetDecisions`.  ``tests/audio/test_native_ingest.py`` holds both paths to the same
decoded PCM and the same decisions on the same audio.

The library is built by ``setup.py`` (an optional extension with no Python API: an install
without a compiler still works, on the pure-Python path) and found next to this module;
``TXVOICE_NATIVE_INGEST=0`` in the environment turns it off.  libopus and the WebRTC VAD are
reached through function pointers taken from the libopus txvoice already loaded and from
webrtcvad's own extension module, so nothing is vendored or linked.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from array import array
from pathlib import Path
from typing import Any, Sequence

import _webrtcvad
import numpy as np
from zope.interface import implementer

from txvoice.audio.codecs import _libopus
from txvoice.audio.vad import ISpeechClassifier, SpectralGate

__all__ = ["available", "NativeStream", "PresetDecisions", "Prepared", "run_batch", "INFO"]

#: int32 per item in the batch's info rows: error kind, opus code, samples decoded, pcm offset,
#: frames, voiced offset, onset offset, onset decisions.
INFO = 8
#: Error kinds (``_native.c``).
EMPTY_PACKET, INVALID_PACKET, ZERO_DURATION = 1, 2, 3
#: Sequence numbers are int64 in C; larger ones saturate (any gap that large is a full concealment anyway).
_SEQ_LIMIT = 2**62
#: Samples of room per item beyond its frames: a 60 ms packet at 16 kHz (longer ones and gaps retry).
_ROOM_PER_ITEM = 960
#: The shortest frame there is decisions for (10 ms at 8 kHz): the decision buffers' bound.
_SMALLEST_FRAME = 80

#: The C library's interface version (txv_abi): a library built from another _native.c is not used.
_ABI = 3

_P = ctypes.c_void_p
_I = ctypes.c_int
_D = ctypes.c_double
_I64 = ctypes.c_int64


def _load() -> ctypes.CDLL | None:
    if os.environ.get("TXVOICE_NATIVE_INGEST", "1") == "0":
        return None
    for path in sorted(Path(__file__).resolve().parent.glob("_native*.so")):
        try:
            return _bind(ctypes.CDLL(str(path)))
        except (OSError, AttributeError):  # not loadable, or built from another version of _native.c
            continue
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the library's functions and hand it libopus's and webrtcvad's."""
    lib.txv_abi.argtypes = ()
    lib.txv_abi.restype = _I
    if lib.txv_abi() != _ABI:
        raise AttributeError(f"txv_abi {lib.txv_abi()}, not {_ABI}")
    lib.txv_init.argtypes = (_P, _P, _P, _P)
    lib.txv_init.restype = _I
    lib.txv_plan_new.argtypes = (_I, _P)
    lib.txv_plan_new.restype = _P
    lib.txv_gate_new.argtypes = (_I, _I, _I, _D, _D, _D, _D, _D, _P)
    lib.txv_gate_new.restype = _P
    lib.txv_gate_free.argtypes = (_P,)
    lib.txv_gate_free.restype = None
    lib.txv_stream_new.argtypes = (_P, _I, _I, _I, _I, _I, _P, _P, _P, _P)
    lib.txv_stream_new.restype = _P
    lib.txv_stream_set_onset_vad.argtypes = (_P, _P)
    lib.txv_stream_set_onset_vad.restype = None
    lib.txv_stream_free.argtypes = (_P,)
    lib.txv_stream_free.restype = None
    lib.txv_batch.argtypes = (_P, _I, ctypes.c_char_p, _P, _I64, _P, _P, _I64, _P)
    lib.txv_batch.restype = _I
    vad = ctypes.CDLL(_webrtcvad.__file__)  # already loaded: the same handle

    def address(function: Any) -> int | None:
        return ctypes.cast(function, _P).value

    opus = _libopus._lib
    lib.txv_init(address(opus.opus_decode), address(opus.opus_packet_get_nb_samples),
                 address(opus.opus_packet_parse), address(vad.WebRtcVad_Process))
    return lib


_lib = _load()
_capsule_pointer = ctypes.PyDLL(None).PyCapsule_GetPointer  # a private handle: argtypes of our own
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)
_capsule_pointer.restype = _P


def available() -> bool:
    """Whether the native batch ingest is built, loaded and not turned off."""
    return _lib is not None


def _vad_pointer(vad: Any) -> int:
    """The ``VadInst*`` inside a :class:`webrtcvad.Vad` (py-webrtcvad's capsule)."""
    pointer = _capsule_pointer(vad._vad, b"WebRtcVadPtr")
    if not pointer:
        raise RuntimeError("webrtcvad.Vad holds no VadInst")
    return int(pointer)


#: FFT plans (twiddles and window) by frame size, shared by all gates and never freed.
_plans: dict[tuple[int, bytes], int] = {}


def _plan(gate: SpectralGate) -> int:
    key = (gate.frame_size, gate._window.tobytes())
    plan = _plans.get(key)
    if plan is None:
        assert _lib is not None
        plan = _plans[key] = int(_lib.txv_plan_new(gate.frame_size, gate._window.ctypes.data) or 0)
        if not plan:
            del _plans[key]
            raise MemoryError(f"txv_plan_new({gate.frame_size}) failed")
    return plan


def _gate(gate: SpectralGate) -> int:
    """A C gate with ``gate``'s parameters and window, in ``gate``'s initial state."""
    assert _lib is not None
    params = gate.params
    # SpectralGate's own derived values, so both paths round them alike.
    pointer = _lib.txv_gate_new(
        len(gate._power), len(gate._ring), int(gate.skips), params.snr_db, params.max_flatness,
        params.min_level_db, gate._rise, gate._stationary_var, _plan(gate),
    )
    if not pointer:
        raise MemoryError("txv_gate_new failed")
    return int(pointer)


def _free(pointer: int, keep: object) -> None:
    """Finalizer: ``keep`` (the Python objects whose states C borrows) lives until here."""
    if _lib is not None:
        _lib.txv_stream_free(pointer)


class NativeStream:
    """
    One stream's C state: its Opus decoder's and webrtcvads' pointers (borrowed: the objects are
    kept alive with it), its gates and its partial frame.  Freed when collected.  With an onset
    gate and no ``onset_vad`` the onset's webrtcvad comes later (:meth:`set_onset_vad`, when a
    reply first plays): until then the onset only tracks its gate, which needs none (~1 KB a
    stream that never hears a reply).
    """

    __slots__ = ("pointer", "frame_size", "sub", "reserve", "onset_vad", "__weakref__")

    def __init__(self, decoder: Any, vad: Any, gate: SpectralGate, onset_vad: Any = None,
                 onset_gate: SpectralGate | None = None) -> None:
        if _lib is None:
            raise RuntimeError("the native ingest is not available")
        state = decoder._state
        self.frame_size = gate.frame_size
        self.sub = onset_gate.frame_size if onset_gate is not None else 0
        gates = (_gate(gate), _gate(onset_gate) if onset_gate is not None else None)
        pointer = _lib.txv_stream_new(
            state._st.value, decoder.output_rate, decoder._max_samples, decoder._max_conceal, int(decoder.fec),
            self.frame_size, _vad_pointer(vad), gates[0],
            _vad_pointer(onset_vad) if onset_vad is not None else None, gates[1],
        )
        if not pointer:
            raise MemoryError("txv_stream_new failed")
        self.pointer = int(pointer)
        #: The onset's webrtcvad.Vad, kept alive here (None: not handed over yet, or no onset).
        self.onset_vad = onset_vad
        #: Samples one item may need at the end of the batch's pcm (a longest packet, a frame pending).
        self.reserve = decoder._max_samples + self.frame_size
        weakref.finalize(self, _free, self.pointer, (decoder, state, vad))

    def set_onset_vad(self, vad: Any) -> None:
        """Hand C the onset's webrtcvad (a fresh one: it has classified nothing yet)."""
        assert _lib is not None and self.sub and self.onset_vad is None
        self.onset_vad = vad
        _lib.txv_stream_set_onset_vad(self.pointer, _vad_pointer(vad))


@implementer(ISpeechClassifier)
class PresetDecisions:
    """
    A classifier that hands out the decisions a batch already made, one per ``classify`` call:
    the turn detector's (and the fast onset's) classifier on the native path.
    """

    __slots__ = ("sample_rate", "frame_size", "decisions", "pos", "gate")

    def __init__(self, sample_rate: int, frame_size: int) -> None:
        self.sample_rate = sample_rate
        self.frame_size = frame_size
        self.decisions: bytes = b""
        self.pos = 0
        #: The onset tracks its gate while idle: that is done in C, so the call is a no-op here.
        self.gate = self

    def classify(self, frame: object) -> bool:
        pos = self.pos
        self.pos = pos + 1
        return self.decisions[pos] == 1

    def track(self, frame: object) -> None:
        """The gate's level tracking, done in C."""

    def reset(self) -> None:
        """Nothing: the C state starts fresh with its stream."""


#: One item's outcome: its info row, and the batch's pcm, 20 ms and 10 ms decisions its offsets index.
Prepared = tuple[list[int], np.ndarray, bytes, bytes]


class _Scratch(threading.local):
    """A worker thread's reused outputs of the batch call (the pcm is new for each call)."""

    def __init__(self) -> None:
        self.size = 0
        self.grow(64)

    def grow(self, items: int) -> None:
        self.size = items
        self.info = array("i", bytes(4 * INFO * items))
        self.info_address = self.info.buffer_info()[0]
        self.decisions = 0
        self.need(items * (_ROOM_PER_ITEM + 2400) // 160)

    def need(self, decisions: int) -> None:
        if decisions > self.decisions:
            self.decisions = decisions
            self.voiced = ctypes.create_string_buffer(decisions)
            self.onset = ctypes.create_string_buffer(decisions)


_scratch = _Scratch()

#: ctypes array types of the batch's PCM buffers, by size.  ``create_string_buffer(n)`` makes a new
#: ``c_char * n`` type for every size it has not seen (ctypes caches them only weakly), and each
#: such type is cyclic garbage the collector frees later, with the GIL held, together with its
#: descriptors: a few types each batch while 20 speakers talk.  Sizes rounded up to a power of
#: two (at least 4 KiB) give a handful of types, kept for the process's life.
_BUFFER_TYPES: dict[int, Any] = {}


def pcm_buffer(nbytes: int) -> Any:
    """A zeroed ctypes buffer of at least ``nbytes`` bytes, of one of a few kept types."""
    size = 1 << max(12, (nbytes - 1).bit_length())
    kind = _BUFFER_TYPES.get(size)
    if kind is None:
        kind = _BUFFER_TYPES[size] = ctypes.c_char * size
    return kind()


def run_batch(streams: Sequence[NativeStream], packets: Sequence[bytes], sequences: Sequence[int | None],
              onset_active: Sequence[bool]) -> list[Prepared]:
    """
    Decode and classify one batch of chunks (item ``i``: ``packets[i]`` of ``streams[i]``, in
    order) in one C call, the GIL released; one :data:`Prepared` per item.
    """
    assert _lib is not None
    count = len(streams)
    flat: list[int] = []
    reserve = 0
    for stream, packet, sequence, active in zip(streams, packets, sequences, onset_active):
        if sequence is None:
            flat += (stream.pointer, len(packet), 0, 2 if active else 0)
        else:
            flat += (stream.pointer, len(packet), max(-_SEQ_LIMIT, min(_SEQ_LIMIT, sequence)), 3 if active else 1)
        if stream.reserve > reserve:
            reserve = stream.reserve
    items = array("q", flat)
    base = items.buffer_info()[0]
    blob = b"".join(packets)
    scratch = _scratch
    if count > scratch.size:
        scratch.grow(count)
    room = count * _ROOM_PER_ITEM + reserve
    results: list[Prepared] = []
    start = 0
    while start < count:
        # A ctypes buffer, not np.empty: its address costs nothing to read (numpy's ~1 µs).
        memory = pcm_buffer(room * 2)
        pcm = np.frombuffer(memoryview(memory), dtype=np.int16)
        if room // _SMALLEST_FRAME + 1 > scratch.decisions:
            scratch.need(room // _SMALLEST_FRAME + 1)
        voiced, onset = scratch.voiced, scratch.onset
        done = _lib.txv_batch(
            base + start * 32, count - start, blob, ctypes.addressof(memory), room, voiced, onset,
            scratch.decisions, scratch.info_address,
        )
        if done == -3:
            raise MemoryError("txv_batch: no memory for a stream's partial frame")
        if done < 0:
            raise RuntimeError("txv_batch: decisions overflowed their buffer")
        if done:
            rows = scratch.info[:done * INFO].tolist()
            voiced_bytes, onset_bytes = voiced.raw, onset.raw
            for k in range(0, done * INFO, INFO):
                results.append((rows[k:k + INFO], pcm, voiced_bytes, onset_bytes))
            start += done
            if start < count:
                blob = b"".join(packets[start:])
        else:
            room *= 4  # one item needs more (a long gap's concealment): make room and go on
    return results
