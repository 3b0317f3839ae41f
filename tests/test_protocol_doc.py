"""doc/protocol.md must describe what the server does: every type, every error code, valid examples."""

from __future__ import annotations

import re
from pathlib import Path

from txvoice.protocol.envelope import decode_envelope
from txvoice.protocol.messages import CLIENT_TYPES, SERVER_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "doc" / "protocol.md").read_text()


def test_every_message_type_is_documented() -> None:
    for msg_type in set(CLIENT_TYPES) | SERVER_TYPES:
        assert f"`{msg_type}`" in DOC, msg_type


def test_every_error_code_the_code_raises_is_documented() -> None:
    codes = set()
    for path in (ROOT / "txvoice").rglob("*.py"):
        codes |= set(re.findall(r'code="([a-z_]+)"', path.read_text()))
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOC, flags=re.M))
    missing = sorted(c for c in codes if c not in documented)
    assert not missing, f"undocumented error codes: {missing}"


def test_client_examples_are_valid_messages() -> None:
    examples = re.findall(r"^→ (\{.*\})$", DOC, flags=re.M)
    assert len(examples) >= 10
    for example in examples:
        if "…" in example:
            continue
        env = decode_envelope(example)
        assert env.type in CLIENT_TYPES
