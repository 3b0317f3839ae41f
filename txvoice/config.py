"""
Server configuration: one dataclass, filled from defaults, ``TXVOICE_*`` environment variables
and ``twistd txvoice`` options, in that order of precedence (later wins).

Every field's metadata carries its help text, so the command line, the environment and the
documented table in ``doc/configuration.md`` come from one place.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Mapping

ENV_PREFIX = "TXVOICE_"


def _opt(default: Any, help: str, short: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "short": short})


@dataclass(frozen=True)
class VoiceConfig:
    """All settings of a txvoice server."""

    listen: str = _opt("tcp:8765:interface=127.0.0.1", "Twisted endpoint description to listen on (ssl:... gives wss).", "l")
    path: str = _opt("/", "URL path of the native protocol (txvoice.v1) WebSocket endpoint.", "p")
    vocal_path: str = _opt("/ws/audio", "URL path of the Vocal dialect (S2: binary chunks, one ack each); off when empty.")
    echo_path: str = _opt("", "URL path of a plain echo WebSocket endpoint on the same stack (Autobahn testsuite); off when empty.")
    pipeline: str = _opt("echo", "Voice pipeline answering turns.")
    max_connections: int = _opt(1000, "Total concurrent WebSocket connections; more are refused with HTTP 503.")
    max_message_size: int = _opt(1048576, "Largest message (bytes) accepted; larger ones get an error 'message_too_large'.")
    max_message_hard_limit: int = _opt(16777216, "Messages above this size fail the connection with close code 1009.")
    ping_interval: float = _opt(30.0, "Seconds between WebSocket pings to each peer (0 disables the heartbeat).")
    ping_timeout: float = _opt(10.0, "Seconds a peer may take to answer a ping before it is dropped.")
    idle_timeout: float = _opt(300.0, "Seconds without any message before a session is closed (0 disables).")
    max_session_age: float = _opt(0.0, "Seconds after which any session is closed (0: unlimited).")
    reaper_interval: float = _opt(5.0, "Seconds between sweeps for idle or expired sessions.")
    open_handshake_timeout: float = _opt(10.0, "Seconds a client may take to complete the WebSocket opening handshake.")
    shutdown_timeout: float = _opt(5.0, "Seconds to wait for sessions to close on shutdown before dropping them.")
    resume_ttl: float = _opt(120.0, "Seconds a dropped session can be resumed with its resume_token (0 disables).")
    compression: bool = _opt(False, "Negotiate permessage-deflate (JSON above the threshold is compressed, audio never).")
    compression_threshold: int = _opt(1024, "Smallest JSON message (bytes) that is compressed when deflate is negotiated.")
    compression_level: int = _opt(1, "zlib level for permessage-deflate (1 = fastest).")
    audio_threads: int = _opt(2, "Threads in the audio worker pool.")
    server_name: str = _opt("txvoice", "Server header and greeting name.")

    @classmethod
    def option_fields(cls) -> list:
        return [f for f in fields(cls)]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base: "VoiceConfig | None" = None) -> "VoiceConfig":
        """Apply ``TXVOICE_<FIELD>`` variables on top of ``base`` (defaults when None)."""
        environ = os.environ if environ is None else environ
        config = base or cls()
        changes: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                changes[f.name] = parse_value(f, raw)
        return replace(config, **changes)

    def updated(self, **changes: Any) -> "VoiceConfig":
        return replace(self, **changes)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_value(f: Any, raw: str) -> Any:
    """Convert a string setting to the field's type, with a clear error."""
    default = f.default if f.default is not MISSING else None
    kind = type(default)
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()}/--{f.name.replace('_', '-')}: cannot read {raw!r} as {kind.__name__}") from None
    return raw


def config_table() -> str:
    """The Markdown table of every setting (used to write and to check doc/configuration.md)."""
    rows = ["| option | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(VoiceConfig):
        default = f.default
        shown = "(empty)" if default == "" else str(default).lower() if isinstance(default, bool) else str(default)
        rows.append(
            f"| `--{f.name.replace('_', '-')}` | `{ENV_PREFIX}{f.name.upper()}` | `{shown}` | {f.metadata['help']} |"
        )
    return "\n".join(rows) + "\n"
