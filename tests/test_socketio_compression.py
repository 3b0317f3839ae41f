"""Socket.IO's WebSocket frames are deflated by the same rule as the raw dialects: by encoded size, not length."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from txvoice.dialects.socketio_voice import _EngineIOProtocol


def sent(message: str | bytes, threshold: int = 1024) -> list[tuple[bytes, bool, bool]]:
    """What ``sendFromPool`` hands Autobahn: (payload, binary, doNotCompress)."""
    protocol = _EngineIOProtocol()
    config = SimpleNamespace(compression_threshold=threshold)
    protocol.factory = SimpleNamespace(bridge=SimpleNamespace(server=SimpleNamespace(config=config)))  # type: ignore[assignment]
    protocol.state = protocol.STATE_OPEN
    calls: list[tuple[bytes, bool, bool]] = []

    def sendMessage(payload: bytes, isBinary: bool = False, **kw: Any) -> None:
        calls.append((payload, isBinary, kw["doNotCompress"]))

    protocol.sendMessage = sendMessage  # type: ignore[method-assign]
    protocol.sendFromPool(message)
    return calls


def test_small_text_is_sent_uncompressed_and_large_text_compressed() -> None:
    assert sent("4" + "x" * 100) == [(b"4" + b"x" * 100, False, True)]
    assert sent("4" + "x" * 2000)[0][2] is False


def test_the_threshold_counts_encoded_bytes_not_characters() -> None:
    text = "4" + "\u00e9" * 600  # 601 characters, 1201 bytes in UTF-8: over the 1024-byte threshold
    ((payload, binary, do_not_compress),) = sent(text)
    assert payload == text.encode("utf-8") and not binary
    assert do_not_compress is False


def test_binary_attachments_are_never_compressed() -> None:
    assert sent(b"\x00" * 5000) == [(b"\x00" * 5000, True, True)]
