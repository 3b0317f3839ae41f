"""permessage-deflate at the configured zlib level (Autobahn has no option for it)."""

from __future__ import annotations

import zlib
from typing import Any

from autobahn.websocket.compress import PerMessageDeflate


def apply_compression_level(pmce: Any, level: int) -> None:
    """
    Make a negotiated permessage-deflate compress at zlib ``level`` (``--compression-level``):
    Autobahn always uses zlib's default (6); S3 asks for 1, the fastest, for real-time traffic.
    """
    if not isinstance(pmce, PerMessageDeflate) or not pmce._is_server:
        return

    def start_compress_message() -> None:
        if pmce._compressor is None or pmce.server_no_context_takeover:
            pmce._compressor = zlib.compressobj(level, zlib.DEFLATED, -pmce.server_max_window_bits, pmce.mem_level)

    # Autobahn has no hook for the level: its method is replaced on this one instance.
    pmce.start_compress_message = start_compress_message  # type: ignore[method-assign]
