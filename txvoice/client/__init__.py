"""
txvoice's Python client for the txvoice.v1 protocol (Twisted + Autobahn).

- :class:`VoiceClient` (:mod:`.connection`): reconnects with backoff and a circuit breaker,
  resumes the session, re-sends reliable messages until acknowledged, keeps a heartbeat.
- :class:`AudioStreamer`, :func:`stream_wav` (:mod:`.streaming`): paced 20 ms PCM/Opus frames
  out, events, transcripts and decoded reply audio in.
- ``txvoice-client URL FILE.wav`` (:mod:`.cli`).

S0/S1 names: ``WebSocketService`` and ``VoiceWebSocketClient`` are :class:`VoiceClient`.
"""

from txvoice.client.backoff import Backoff
from txvoice.client.breaker import BreakerState, CircuitBreaker, CircuitOpenError
from txvoice.client.connection import (
    PRIORITY_AUDIO,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    ClientClosed,
    ClientError,
    ClientStats,
    ConnectionFailed,
    ConnectionState,
    NotConnected,
    RequestTimeout,
    ServerError,
    VoiceClient,
)
from txvoice.client.protocol import IClientHandler, IVoiceLink, VoiceClientFactory, VoiceClientProtocol
from txvoice.client.queue import QueueFull, SendQueue
from txvoice.client.sources import ArraySource, IAudioSource, WavSource
from txvoice.client.streaming import AudioStreamer, StreamInterrupted, StreamResult, stream_audio, stream_wav

WebSocketService = VoiceClient
VoiceWebSocketClient = VoiceClient

__all__ = [
    "ArraySource",
    "AudioStreamer",
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "ConnectionFailed",
    "ConnectionState",
    "IAudioSource",
    "IClientHandler",
    "IVoiceLink",
    "NotConnected",
    "PRIORITY_AUDIO",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "QueueFull",
    "RequestTimeout",
    "SendQueue",
    "ServerError",
    "StreamInterrupted",
    "StreamResult",
    "VoiceClient",
    "VoiceClientFactory",
    "VoiceClientProtocol",
    "VoiceWebSocketClient",
    "WavSource",
    "WebSocketService",
    "stream_audio",
    "stream_wav",
]
