"""doc/dialects.md must describe S3's dialects as the code implements them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from txvoice.config import VoiceConfig
from txvoice.dialects.s3session import CLIENT_TYPES, SERVER_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "doc" / "dialects.md").read_text()


def test_every_s3_message_type_is_documented() -> None:
    for msg_type in CLIENT_TYPES + SERVER_TYPES:
        assert re.search(rf"^\| `{msg_type}` \|", DOC, flags=re.M), msg_type


def test_every_socketio_event_is_documented() -> None:
    code = (ROOT / "txvoice" / "dialects" / "socketio_voice.py").read_text()
    events = set(re.findall(r'"(voice:[a-z_]+)"', code))
    assert {"voice:start", "voice:audio_data", "voice:end", "voice:session_ready", "voice:error"} <= events
    for event in events | {f"voice:{t}" for t in SERVER_TYPES if t != "ready"}:
        assert f"`{event}`" in DOC, event


def test_every_s3_option_is_documented() -> None:
    for f in fields(VoiceConfig):
        if f.name.startswith(("voicews_", "socketio_")):
            assert f"`--{f.name.replace('_', '-')}`" in DOC, f.name
    assert f"`--max-connections-per-ip` is {VoiceConfig().max_connections_per_ip}" in DOC


def test_every_error_code_of_the_s3_dialects_is_documented() -> None:
    protocol = (ROOT / "doc" / "protocol.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", protocol, flags=re.M))
    for name in ("voicews.py", "socketio_voice.py", "s3session.py"):
        for code in re.findall(r'code="([a-z_]+)"', (ROOT / "txvoice" / "dialects" / name).read_text()):
            assert code in documented or f"`{code}`" in DOC, code


REALTIME = (ROOT / "doc" / "realtime.md").read_text()


def _section(doc: str, title: str) -> str:
    start = doc.index(f"## {title}")
    end = doc.find("\n## ", start + 1)
    return doc[start:end if end >= 0 else None]


def test_every_realtime_message_type_is_documented() -> None:
    """doc/realtime.md's tables name every type the S4 dialect handles and every type it sends."""
    from txvoice.dialects.realtime import RealtimeProtocol

    incoming = _section(REALTIME, "Client → server")
    for msg_type in RealtimeProtocol._handlers:
        assert re.search(rf"^\| `{msg_type}` \|", incoming, flags=re.M), msg_type
    code = "".join((ROOT / "txvoice" / "dialects" / name).read_text()
                   for name in ("realtime.py", "realtime_sink.py", "realtime_calls.py"))
    sent = set(re.findall(r'(?:sendS4|call\.send|\.send)\("([a-z_]+)"', code))
    assert {"connection_status", "transcript", "ai_response", "audio_response", "heartbeat"} <= sent
    outgoing = _section(REALTIME, "Server → client")
    for msg_type in sent:
        assert re.search(rf"^\| `{msg_type}` \|", outgoing, flags=re.M), msg_type


def test_every_realtime_error_and_close_code_is_documented() -> None:
    from txvoice.dialects import realtime

    errors = _section(REALTIME, "Error codes")
    code = "".join((ROOT / "txvoice" / "dialects" / name).read_text()
                   for name in ("realtime.py", "realtime_options.py", "realtime_calls.py"))
    for name in set(re.findall(r'code="([a-z_]+)"', code)):
        assert re.search(rf"^\| `{name}` \|", errors, flags=re.M), name
    closes = _section(REALTIME, "Close codes")
    from txvoice.session.appheartbeat import CLOSE_HEARTBEAT_MISSED

    for close in (realtime.CLOSE_TAKEN_OVER, CLOSE_HEARTBEAT_MISSED):
        assert f"| {close} |" in closes, close
        assert f"| {close} |" in (ROOT / "doc" / "protocol.md").read_text(), close


def test_every_realtime_option_is_documented() -> None:
    for f in fields(VoiceConfig):
        if f.name.startswith(("realtime_", "offline_queue_")) or f.name == "resume_ttl":
            assert f"`--{f.name.replace('_', '-')}`" in REALTIME, f.name
