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
