"""The in-memory WebSocket harness the suite uses: it is the framework's own, in :mod:`txvoice.testing`."""

from txvoice.testing import HANDSHAKE, MemoryClient, MemoryTransport, client_frame, memory_server

__all__ = ["HANDSHAKE", "MemoryClient", "MemoryTransport", "client_frame", "memory_server"]
