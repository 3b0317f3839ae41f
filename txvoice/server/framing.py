# FastFraming is a mixin over Autobahn's WebSocketProtocol: the attributes and methods it uses come
# from the class it is mixed into, which mypy cannot see from here.
# mypy: disable-error-code="attr-defined, misc, has-type"
"""
A fast lane through Autobahn's frame machinery for what a voice connection carries most: small,
whole, masked binary frames from the client, and plain writes to it.

Autobahn parses every frame through a general state machine: a header object, a new XOR masker,
``onFrameBegin`` / ``onMessageBegin`` / ``onMessageFrameBegin`` / ``onFrameData`` /
``onMessageFrameData`` / ``onFrameEnd`` / ``onMessageFrameEnd`` / ``onMessageEnd``, ten Python
calls and a join per 20 ms audio frame.  Its ``dataReceived`` and ``sendData`` format a debug log
call's arguments (``hltype``/``hlval``) on every read and write even when debug logging is off.
Measured per frame on the benchmark, those are a large share of what the server spends outside
the audio work.

:class:`FastFraming` is a mixin for a server-side ``WebSocketProtocol``.  Its ``processData``
takes a frame itself only when all of this holds; anything else (text, control frames,
fragments, compressed messages, frames not yet complete, anything above a size limit, any
violation of RFC 6455) goes to Autobahn's own ``processData`` untouched, which keeps every check
and error path it has:

- the connection is open, no frame or fragmented message is in progress;
- the frame is a final binary frame with no RSV bits, masked, with a 7- or 16-bit length
  (minimally encoded), wholly in the buffer;
- its payload is within ``maxFramePayloadSize``, ``maxMessagePayloadSize`` and the subclass's
  ``fastFrameLimit``;
- no frame/octet logging, timing tracking or "message" observer is on.

It then keeps Autobahn's traffic counters and auto-ping bookkeeping as Autobahn would and hands
the payload to ``onMessage(payload, True)``.

Writes can be *held* (:meth:`FastFraming.holdFrame`): a framed message waits in a list and goes
out with the next ``sendData`` or :meth:`FastFraming.writeHeld`, whichever comes first, in one
write.  Nothing written later can overtake it, so holding changes when bytes leave, never their
order.  The acknowledgements of an audio batch are held until its end (one ``send`` per session
and batch instead of one per frame).

These are fixes that belong in Autobahn; txvoice
carries them here (see doc/operations.md, "What txvoice carries for Twisted, Autobahn and
CPython").
"""

from __future__ import annotations

import numpy as np
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol

_OPEN = WebSocketProtocol.STATE_OPEN
_CONNECTING = (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING)
_FIN_BINARY = 0x82  # FIN, no RSV bits, opcode 2
#: Up to this size a payload is unmasked through one big-int XOR (~1-2 µs), above it with numpy.
_INT_UNMASK_LIMIT = 512


def unmask(payload: bytes, mask: bytes) -> bytes:
    """
    XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3).

    Autobahn's NVX masker (cffi, built into Autobahn's wheels and on by default: ``USES_NVX``; it
    serves Autobahn's own path here) is not faster at these sizes (2026-12-07, CPU µs per call for
    70 / 640 / 1920 bytes): this function 0.81 / 1.41 / 1.64, Autobahn's ``create_xor_masker(...)
    .process`` 3.21 / 3.25 / 3.46, NVX's C functions called directly 0.88 / 0.82 / 0.99 -- no gain
    for an Opus frame, ~0.6 µs for PCM.  Autobahn no longer looks for wsaccel.
    """
    n = len(payload)
    if not n:
        return payload
    key = (mask * ((n + 3) >> 2))[:n]
    if n <= _INT_UNMASK_LIMIT:
        return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return np.bitwise_xor(np.frombuffer(payload, np.uint8), np.frombuffer(key, np.uint8)).tobytes()


class FastFraming:
    """Mixin for ``WebSocketServerProtocol`` subclasses: the fast lane described above."""

    #: Payloads above this go through Autobahn's path (a subclass sets its soft message limit).
    fastFrameLimit: int = 65535
    #: Framed messages held for one write (holdFrame), or None.
    _held: list[bytes] | None = None

    def dataReceived(self, data: bytes) -> None:
        """Autobahn's, without formatting a debug log line's arguments on every read."""
        self._dataReceived(data)

    def processData(self) -> bool:
        data = self.data
        size = len(data)
        if (
            size < 6
            or data[0] != _FIN_BINARY
            or self.current_frame is not None
            or self.inside_message
            or self.state != _OPEN
            or self.logFrames
            or self.trackedTimings
        ):
            return super().processData()
        b1 = data[1]
        length = b1 & 0x7F
        if not b1 & 0x80 or length == 127:
            return super().processData()
        if length == 126:
            if size < 8:
                return super().processData()
            length = (data[2] << 8) | data[3]
            if length < 126:  # not minimally encoded: Autobahn fails the connection
                return super().processData()
            start = 8
        else:
            start = 6
        end = start + length
        if (
            end > size
            or length > self.fastFrameLimit
            or 0 < self.maxFramePayloadSize < length
            or 0 < self.maxMessagePayloadSize < length
        ):
            return super().processData()
        listeners = self._listeners
        if listeners and listeners.get("message"):
            return super().processData()
        payload = data[start:end]
        if self.applyMask:
            payload = unmask(payload, data[start - 4 : start])
        self.data = data[end:]
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self.fastMessage(payload)
        return end < size

    def fastMessage(self, payload: bytes) -> None:
        """A whole binary message taken by the fast lane (a subclass may reset per-message state)."""
        self.onMessage(payload, True)

    def holdFrame(self, frame: bytes) -> bool:
        """
        Hold a framed message for the next write; True when nothing was held before it (the
        caller then arranges for :meth:`writeHeld` to run soon).
        """
        held = self._held
        if held is None:
            self._held = [frame]
            return True
        held.append(frame)
        return False

    def writeHeld(self) -> None:
        """Write the held messages now (one write), if any."""
        if self._held:
            self.sendData(b"")

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's ``sendData`` without formatting a debug log line per write; held messages first."""
        held = self._held
        if held is not None:
            self._held = None
            data = b"".join(held) + data if data else b"".join(held)
        if chopsize or sync or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        state = self.state
        if state == _OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif state in _CONNECTING:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)


class PreparedText:
    """
    A text message a server sends often (an acknowledgement), framed once and written as is on
    any connection: server frames are not masked.  Never compressed (keep it short).
    """

    __slots__ = ("message", "size")

    def __init__(self, payload: bytes) -> None:
        payload.decode("utf-8")  # a text message must be UTF-8
        self.message = PreparedMessage(payload, False, False, True)
        self.size = len(payload)
