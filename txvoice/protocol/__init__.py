"""
The native txvoice protocol, version 1 (``txvoice.v1``): JSON control messages in the envelope
``{type, data, message_id, timestamp, conversation_id}`` and binary audio frames.

This package only parses, validates and builds messages; it knows nothing about sockets.
"""

from txvoice.protocol.envelope import Envelope, decode_envelope, encode_envelope
from txvoice.protocol.messages import CLIENT_TYPES, SERVER_TYPES, SUBPROTOCOL

__all__ = ["Envelope", "decode_envelope", "encode_envelope", "CLIENT_TYPES", "SERVER_TYPES", "SUBPROTOCOL"]
