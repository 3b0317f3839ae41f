"""
PocketSphinx's decoding calls with the GIL released.

The ``pocketsphinx`` wheel's Cython binding keeps the GIL while it decodes: ``process_raw`` takes
~0.3 ms of C per 20 ms frame with a grammar, and with twenty speakers at once that was 43 % of
the time any thread held the GIL (py-spy ``--gil``, ``bench/bench_speech_lag.py``), every bit of
it time the reactor waited.  The wheel's extension module exports the C API (``ps_process_raw``,
``ps_end_utt``), and :class:`ctypes.CDLL` lets go of the GIL around a foreign call, so the audio
threads decode on the other core while the reactor runs.

The decoder's ``ps_decoder_t *`` is read from the Cython object, whose layout is checked before
it is used: ``Decoder`` is ``PyObject_HEAD, ps_decoder_t *_ps, Config _config`` and ``Config`` is
``PyObject_HEAD, vtable, ps_config_t *config``; the pointer is taken only when the object's second
field is its own ``config`` attribute and the decoder's first C field (``ps->config``) is that
config's pointer.  Anything else (another wheel, another layout) and :func:`native_decoder` returns
None: the caller keeps the binding's own methods.

:func:`new_decoder` makes a ``Decoder`` the same way the binding does (``ps_init`` on the config's
``ps_config_t *``; ``ps_init`` takes its own reference to the config) but with the GIL released:
loading a grammar decoder holds the thread ~15-25 ms in C, which under the binding was as long a
stall of every session's reactor, once per speaker beyond the warm pool.  The C decoder is then
put into an empty ``Decoder`` (``Decoder.__new__``: ``_ps`` NULL, ``_config`` None) with its config
(a new reference), exactly the two fields the binding's own ``__init__`` sets, so the object frees
it as one made by the binding does.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

__all__ = ["NativeDecoder", "native_decoder", "new_decoder"]

_POINTER = ctypes.sizeof(ctypes.c_void_p)
_HEAD = 2 * _POINTER  # PyObject_HEAD: refcount, type
_lib: Any = None
_lib_error: BaseException | None = None
_lib_lock = threading.Lock()


def _library() -> Any:
    """The extension module as a C library (loaded once; None when it lacks the symbols)."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is None and _lib_error is None:
            try:
                import pocketsphinx._pocketsphinx as ext

                lib = ctypes.CDLL(ext.__file__)
                lib.ps_process_raw.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                               ctypes.c_int]
                lib.ps_process_raw.restype = ctypes.c_int
                lib.ps_end_utt.argtypes = [ctypes.c_void_p]
                lib.ps_end_utt.restype = ctypes.c_int
                lib.ps_start_utt.argtypes = [ctypes.c_void_p]
                lib.ps_start_utt.restype = ctypes.c_int
                lib.ps_get_hyp.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)]
                lib.ps_get_hyp.restype = ctypes.c_char_p
                lib.ps_get_config.argtypes = [ctypes.c_void_p]
                lib.ps_get_config.restype = ctypes.c_void_p
                lib.ps_init.argtypes = [ctypes.c_void_p]
                lib.ps_init.restype = ctypes.c_void_p
                _lib = lib
            except (ImportError, OSError, AttributeError) as e:
                _lib_error = e
        return _lib


def _field(obj: object, index: int) -> int:
    """The ``index``-th pointer-sized field after ``obj``'s ``PyObject_HEAD`` (0 if NULL)."""
    return ctypes.c_void_p.from_address(id(obj) + _HEAD + index * _POINTER).value or 0


def _decoder_pointer(decoder: Any) -> int:
    """``decoder``'s ``ps_decoder_t *`` when its layout is the one checked above, else 0."""
    from pocketsphinx import Config, Decoder

    if type(decoder) is not Decoder or Decoder.__basicsize__ != _HEAD + 2 * _POINTER:
        return 0
    if Config.__basicsize__ != _HEAD + 2 * _POINTER:
        return 0
    config = decoder.config
    if type(config) is not Config or _field(decoder, 1) != id(config):
        return 0
    ps, ps_config = _field(decoder, 0), _field(config, 1)
    if not ps or not ps_config:
        return 0
    if ctypes.c_void_p.from_address(ps).value != ps_config:  # ps->config, the struct's first field
        return 0
    lib = _library()
    if lib is None or lib.ps_get_config(ps) != ps_config:
        return 0
    return ps


class NativeDecoder:
    """
    One PocketSphinx ``Decoder``'s ``start_utt``, ``process_raw``, ``end_utt`` and the best
    hypothesis's text through the C API, the GIL released.  Holds the Python decoder, so the C one lives as long as this.  Not thread-safe (nor
    is the decoder): the caller serializes, as :class:`~txvoice.engines.stt_pocketsphinx.PocketSphinxStream` does.
    """

    __slots__ = ("decoder", "_ps", "_lib")

    def __init__(self, decoder: Any, ps: int, lib: Any) -> None:
        self.decoder = decoder
        self._ps = ps
        self._lib = lib

    def process_raw(self, data: bytes) -> int:
        """Decode 16-bit mono samples (``data``, whole samples): the frames searched; raise on an error."""
        n = self._lib.ps_process_raw(self._ps, data, len(data) // 2, 0, 0)
        if n < 0:
            raise RuntimeError(f"ps_process_raw failed ({n})")
        return int(n)

    def start_utt(self) -> None:
        """Start an utterance; raise on an error."""
        if self._lib.ps_start_utt(self._ps) < 0:
            raise RuntimeError("ps_start_utt failed")

    def hyp_text(self) -> str:
        """
        The best hypothesis so far, its text alone ("" for none): the binding's ``hyp()`` also
        computes the posterior probability (``ps_get_prob``), which a partial transcript does not
        use; with twenty speakers the partials' ``hyp()`` was 10 % of the GIL left after decoding
        went GIL-free.
        """
        text = self._lib.ps_get_hyp(self._ps, None)
        return text.decode("utf-8", "replace") if text else ""

    def end_utt(self) -> None:
        """End the utterance (the search's last frames); raise on an error."""
        if self._lib.ps_end_utt(self._ps) < 0:
            raise RuntimeError("ps_end_utt failed")


def native_decoder(decoder: Any) -> NativeDecoder | None:
    """``decoder``'s GIL-free calls, or None when the binding is not the layout this knows."""
    try:
        ps = _decoder_pointer(decoder)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return NativeDecoder(decoder, ps, _lib) if ps else None


def _layout_known() -> bool:
    """The binding's ``Decoder`` and ``Config`` are the two-field objects described above."""
    from pocketsphinx import Config, Decoder

    return bool(Decoder.__basicsize__ == _HEAD + 2 * _POINTER and Config.__basicsize__ == _HEAD + 2 * _POINTER)


def new_decoder(config: Any) -> Any:
    """
    ``Decoder(config)`` with the model loaded outside the GIL; None when the binding is not the
    layout this knows (the caller then makes it with ``Decoder(config)``).  Raises RuntimeError
    when PocketSphinx cannot load the configuration, as the binding does.
    """
    from pocketsphinx import Config, Decoder

    try:
        if type(config) is not Config or not _layout_known():
            return None
        lib = _library()
        ps_config = _field(config, 1)
        if lib is None or not ps_config:
            return None
        decoder = Decoder.__new__(Decoder)
        if _field(decoder, 0) or _field(decoder, 1) != id(None):
            return None
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    ps = lib.ps_init(ps_config)  # GIL released (ctypes.CDLL)
    if not ps:
        raise RuntimeError("Failed to initialize PocketSphinx")
    incref, decref = ctypes.pythonapi.Py_IncRef, ctypes.pythonapi.Py_DecRef
    incref(ctypes.py_object(config))
    base = id(decoder) + _HEAD
    ctypes.c_void_p.from_address(base).value = ps
    ctypes.c_void_p.from_address(base + _POINTER).value = id(config)
    decref(ctypes.py_object(None))  # the None the empty object held
    return decoder
