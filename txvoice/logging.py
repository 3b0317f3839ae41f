"""
Logging set-up: per-domain ``twisted.logger`` namespaces, levels per namespace prefix, JSON
lines for log shippers, and redaction of secrets.

Observer chain built by :func:`build_observer`::

    FilteringLogObserver(levels) -> RedactingObserver -> text or JSON-lines output

Filtering comes first so dropped debug events cost nothing more.  Redaction works twice: event
fields whose *key* looks secret (``token``, ``authorization``, ``password``, ``secret``, ...)
become ``"***"`` and string values are scrubbed of bearer tokens, JWTs and ``token=...``
pairs; then the final output line is scrubbed again, which also covers objects whose ``str()``
carries a secret and tracebacks.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any, Iterable, Mapping

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEvent,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

__all__ = [
    "NETWORK_WEBSOCKET",
    "NETWORK_HTTP",
    "AUDIO_PROCESSOR",
    "AUDIO_RESAMPLER",
    "AUDIO_VAD",
    "AUDIO_CODEC",
    "PIPELINE",
    "AUTH",
    "SESSION",
    "SECURITY",
    "MONITORING",
    "SERVICE",
    "NAMESPACES",
    "REDACTED",
    "get_logger",
    "NamespaceLogger",
    "parse_levels",
    "level_predicate",
    "is_sensitive_key",
    "redact_text",
    "redact_event",
    "RedactingObserver",
    "JSONLinesObserver",
    "build_observer",
    "start_logging",
]

NETWORK_WEBSOCKET = "txvoice.network.websocket"
NETWORK_HTTP = "txvoice.network.http"
AUDIO_PROCESSOR = "txvoice.audio.processor"
AUDIO_RESAMPLER = "txvoice.audio.resampler"
AUDIO_VAD = "txvoice.audio.vad"
AUDIO_CODEC = "txvoice.audio.codec"
PIPELINE = "txvoice.pipeline"
AUTH = "txvoice.auth"
SESSION = "txvoice.session"
SECURITY = "txvoice.security"
MONITORING = "txvoice.monitoring"
SERVICE = "txvoice.service"

NAMESPACES = (
    NETWORK_WEBSOCKET, NETWORK_HTTP, AUDIO_PROCESSOR, AUDIO_RESAMPLER, AUDIO_VAD, AUDIO_CODEC,
    PIPELINE, AUTH, SESSION, SECURITY, MONITORING, SERVICE,
)

REDACTED = "***"


def get_logger(namespace: str, source: Any = None) -> Logger:
    """A Logger in ``namespace`` (use the constants above so level settings find it)."""
    return Logger(namespace=namespace, source=source)


class NamespaceLogger(Logger):
    """
    A :class:`~twisted.logger.Logger` that keeps its ``namespace`` as a class attribute.

    Twisted's ``Logger.__get__`` names the logger after the class it is read from and drops the
    namespace it was given, so ``log = Logger(namespace="txvoice.session")`` on a class logged as
    ``txvoice.service.reaper.ReaperService``: neither the documented namespaces nor
    ``--log-levels`` for them applied.  This one only takes the source from the attribute access.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return self.__class__(self.namespace, owner if instance is None else instance, observer=self.observer)


# Levels ----------------------------------------------------------------------------------------

_LEVEL_NAMES = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def parse_levels(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """
    ``"txvoice.audio=debug,txvoice=info"`` -> ``{namespace: LogLevel}``.  A bare level
    (``"debug"``) or the key ``""``/``"*"`` sets the default for all other namespaces.
    """
    if not spec:
        return {}
    pairs: Iterable[tuple[str, Any]]
    if isinstance(spec, str):
        pairs = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            ns, sep, level = item.rpartition("=")
            pairs.append((ns.strip() if sep else "", level.strip()))
    else:
        pairs = spec.items()
    out: dict[str, Any] = {}
    for ns, level in pairs:
        if isinstance(level, str):
            try:
                level = _LEVEL_NAMES[level.lower()]
            except KeyError:
                raise ValueError(f"unknown log level {level!r} for {ns or 'default'!r}") from None
        out["" if ns in ("", "*") else ns] = level
    return out


def level_predicate(
    levels: str | Mapping[str, Any] | None = None,
    default: Any = LogLevel.info,
    debug: bool = False,
) -> LogLevelFilterPredicate:
    """A predicate with per-prefix levels; ``debug`` turns ``txvoice`` and below to debug."""
    parsed = parse_levels(levels)
    predicate = LogLevelFilterPredicate(defaultLogLevel=parsed.pop("", default))
    for ns, level in parsed.items():
        predicate.setLogLevelForNamespace(ns, level)
    if debug:
        predicate.setLogLevelForNamespace("txvoice", LogLevel.debug)
    return predicate


# Redaction -------------------------------------------------------------------------------------

_SENSITIVE_WORDS = frozenset({
    "token", "authorization", "password", "passwd", "pwd", "secret", "cookie", "jwt",
    "bearer", "credential", "credentials", "apikey", "passphrase",
})
_SENSITIVE_PAIRS = ("api_key", "private_key", "access_key", "secret_key", "set_cookie")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")

_KEYWORDS = r"(?:[a-z0-9_\-]*token|password|passwd|pwd|secret|api[_\-]?key|authorization|jwt)"
_TEXT_RULES = (
    # Authorization schemes: "Bearer abc.def", "Basic dXNlcjpw"
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1\2" + REDACTED),
    # JSON-ish '"token": "value"'
    (re.compile(r'(?i)("' + _KEYWORDS + r'"\s*:\s*")(?:[^"\\]|\\.)*(")'), r"\1" + REDACTED + r"\2"),
    # key=value in URLs, forms and log text: "?token=abc&x", "password=hunter2"
    (re.compile(r"(?i)(\b" + _KEYWORDS + r"=)(?!\*\*\*)[^&\s;,#\"'<>]+"), r"\1" + REDACTED),
    # Any JWT-shaped string (header.payload.signature, header starting with '{"')
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), REDACTED),
)


def is_sensitive_key(key: str) -> bool:
    """True for field names that hold secrets (``token``, ``accessToken``, ``X-Api-Key``...)."""
    norm = _CAMEL.sub(r"\1_\2", key).lower()
    words = [w for w in _SPLIT.split(norm) if w]
    if any(w in _SENSITIVE_WORDS for w in words):
        return True
    joined = "_".join(words)
    return any(pair in joined for pair in _SENSITIVE_PAIRS)


def redact_text(text: str) -> str:
    """Scrub bearer/basic credentials, JWTs and ``secret=value`` pairs from free text."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        text = value.decode("latin-1")
        scrubbed = redact_text(text)
        return value if scrubbed == text else scrubbed.encode("latin-1")
    if depth <= 0:
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _key_sensitive(k) else _redact_value(v, depth - 1))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_value(v, depth - 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(v, depth - 1) for v in value)
    return value


def _key_sensitive(key: Any) -> bool:
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    return isinstance(key, str) and is_sensitive_key(key)


def redact_event(event: Mapping[str, Any], depth: int = 4) -> dict[str, Any]:
    """A copy of ``event`` with secret fields replaced and strings scrubbed (``log_*`` kept)."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_"):
            out[key] = redact_text(value) if key == "log_format" and isinstance(value, str) else value
        elif is_sensitive_key(key):
            out[key] = REDACTED if value is not None else None
        else:
            out[key] = _redact_value(value, depth)
    return out


@implementer(ILogObserver)
class RedactingObserver:
    """Pass a redacted copy of each event to ``observer``."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: Mapping[str, Any]) -> None:
        self._observer(redact_event(event))


class _RedactingFile:
    """File wrapper scrubbing every write (the last line of defence for text output)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, data: str) -> int:
        return self._stream.write(redact_text(data))

    def flush(self) -> None:
        self._stream.flush()


# JSON lines ------------------------------------------------------------------------------------

_RESERVED = frozenset({"time", "level", "namespace", "message", "error"})


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "name") and type(value).__name__ == "NamedConstant":
        return value.name
    return str(value)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    One flat JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``namespace``,
    ``message`` (the formatted text), ``error`` (failures), then the event's own fields.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: Mapping[str, Any]) -> None:
        level = event.get("log_level")
        when = event.get("log_time")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(when, tz=timezone.utc).isoformat()
            if isinstance(when, (int, float)) else None,
            "level": getattr(level, "name", None),
            "namespace": event.get("log_namespace"),
            "message": formatEvent(dict(event)),
        }
        failure = event.get("log_failure")
        if failure is not None:
            try:
                record["error"] = {
                    "type": failure.type.__name__ if failure.type else None,
                    "message": str(failure.value),
                    "traceback": failure.getTraceback(),
                }
            except Exception:
                record["error"] = {"message": "unformattable failure"}
        for key, value in event.items():
            if key.startswith("log_"):
                continue
            record[f"_{key}" if key in _RESERVED else key] = value
        try:
            line = json.dumps(record, default=_json_default, ensure_ascii=False)
        except (TypeError, ValueError):
            record = {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                      for k, v in record.items()}
            line = json.dumps(record, default=_json_default, ensure_ascii=False)
        self._stream.write(redact_text(line) + "\n")
        self._stream.flush()


# Assembly --------------------------------------------------------------------------------------


def build_observer(
    levels: str | Mapping[str, Any] | None = "txvoice=info",
    *,
    debug: bool = False,
    json_lines: bool = False,
    stream: IO[str] | None = None,
    default: Any = LogLevel.info,
) -> ILogObserver:
    """Filtering, redacting observer writing text or JSON lines to ``stream`` (stdout)."""
    out = stream if stream is not None else sys.stdout
    sink: ILogObserver
    if json_lines:
        sink = JSONLinesObserver(out)
    else:
        sink = textFileLogObserver(_RedactingFile(out))  # type: ignore[arg-type]
    return FilteringLogObserver(
        RedactingObserver(sink), [level_predicate(levels, default=default, debug=debug)]
    )


def start_logging(
    levels: str | Mapping[str, Any] | None = "txvoice=info",
    *,
    debug: bool = False,
    json_lines: bool = False,
    stream: IO[str] | None = None,
    redirect_stdio: bool = False,
    beginner: Any = None,
) -> ILogObserver:
    """Build the observer and begin global logging to it (call once, at process start)."""
    observer = build_observer(levels, debug=debug, json_lines=json_lines, stream=stream)
    (beginner or globalLogBeginner).beginLoggingTo([observer], redirectStandardIO=redirect_stdio)
    return observer


def twistd_observer() -> ILogObserver:
    """
    Observer factory for ``twistd --logger txvoice.logging.twistd_observer txvoice ...``: the
    levels, format and debug mode of the ``txvoice`` options (or ``TXVOICE_*`` variables), to stdout.
    """
    from txvoice.config import current_config

    config = current_config()
    return build_observer(config.log_levels, debug=config.debug, json_lines=config.log_format == "json")
