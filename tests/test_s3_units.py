"""S3 dialect pieces without a network: deflate level, the heartbeat's echoed payload, formats, the sink."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflate
from twisted.internet.task import Clock

from txvoice.dialects.s3session import DEFAULT_FORMAT, format_from_metadata
from txvoice.dialects.voicews import VoiceWSProtocol
from txvoice.errors import VoiceError
from txvoice.server.compression import apply_compression_level
from txvoice.session.session import Session

TEXT = b'{"type":"transcription","data":"' + b"the weather is nice today " * 80 + b'"}'


def compressed(pmce) -> bytes:
    pmce.start_compress_message()
    return pmce.compress_message_data(TEXT) + pmce.end_compress_message()


@pytest.mark.parametrize("level", [1, 9])
def test_compression_level_is_applied(level) -> None:
    # Autobahn alone compresses at zlib's default level: the option changes the output.
    default = compressed(PerMessageDeflate(True, False, False, 15, 15, 8))
    leveled = PerMessageDeflate(True, False, False, 15, 15, 8)
    apply_compression_level(leveled, level)
    got = compressed(leveled)
    assert zlib.decompressobj(-15).decompress(got + b"\x00\x00\xff\xff") == TEXT
    ref = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
    assert got == (ref.compress(TEXT) + ref.flush(zlib.Z_SYNC_FLUSH))[:-4]
    if level == 1:
        assert got != default


def _protocol(monkeypatch) -> tuple[VoiceWSProtocol, list]:
    sent: list = []
    monkeypatch.setattr(WebSocketServerProtocol, "sendPing", lambda self, payload=None: sent.append(payload))
    proto = VoiceWSProtocol()
    proto.factory = SimpleNamespace(voice=SimpleNamespace(clock=Clock()))
    proto.session = Session(peer="test")
    return proto, sent


def test_heartbeat_ping_payload_is_fresh_and_must_be_echoed(monkeypatch) -> None:
    proto, sent = _protocol(monkeypatch)
    attributes = proto.session.attributes
    proto.sendPing(b"txvoice-hb")
    proto.sendPing(b"txvoice-hb")
    assert len(sent) == 2 and sent[0] != sent[1] and b"txvoice-hb" not in sent
    attributes.update(ping_sent=1.0, missed_pings=1)
    proto.onPong(sent[0])  # an old ping's payload: not proof of life
    assert attributes["missed_pings"] == 1 and "ping_sent" in attributes
    proto.onPong(sent[1])
    assert attributes["missed_pings"] == 0 and "ping_sent" not in attributes


def test_voice_start_formats() -> None:
    assert format_from_metadata(None) == DEFAULT_FORMAT
    opus = format_from_metadata({"codec": "opus", "sampleRate": 48000, "channels": 1})
    assert (opus.codec, opus.sample_rate, opus.channels) == ("opus", 48000, 1)
    assert format_from_metadata({"encoding": "pcm", "sampleRate": 16000}).sample_rate == 16000
    for bad in ({"codec": "mp9"}, {"sampleRate": -1}, {"channels": 7}, "x"):
        with pytest.raises(VoiceError):
            format_from_metadata(bad)  # type: ignore[arg-type]
