"""
Server configuration: one dataclass, filled from defaults, ``TXVOICE_*`` environment variables
and ``twistd txvoice`` options, in that order of precedence (later wins).

Every field's metadata carries its help text, so the command line, the environment and the
documented table in ``doc/configuration.md`` come from one place.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, Field, dataclass, field, fields, replace
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
    voicews_path: str = _opt("/voice-ws", "URL path of the S3 raw voice WebSocket (VoiceStreamMessage JSON, binary 20 ms frames; JWT on the upgrade always required); off when empty.")
    voicews_allow_anonymous: bool = _opt(False, "Development only: serve --voicews-path and --socketio-path without a token when no JWT key is configured (S3 otherwise refuses everyone with 401).")
    voicews_compression: bool = _opt(True, "Negotiate permessage-deflate on --voicews-path and Socket.IO's WebSocket as S3 does (threshold --compression-threshold, level --compression-level), whatever --compression says.")
    socketio_path: str = _opt("/socket.io", "URL path of the S3 Socket.IO server (namespace /voice; polling and WebSocket transports); off when empty.")
    socketio_threads: int = _opt(64, "Threads serving Socket.IO (each long-poll request and each Socket.IO WebSocket holds one while open).")
    realtime_path: str = _opt("/realtime/ws", "URL path of the realtime dialect (S4: call sessions, session_start, binary audio, server heartbeats); off when empty.")
    realtime_heartbeat: bool = _opt(True, "Send S4 application heartbeats ({type: heartbeat}) on the realtime dialect; a client answers {data: {pong: true}}.")
    realtime_heartbeat_interval: float = _opt(30.0, "Seconds between application heartbeats (S4 heartbeat.interval; realtime dialect, and native with --native-heartbeat).")
    realtime_heartbeat_timeout: float = _opt(60.0, "Seconds a heartbeat may stay unanswered before it counts as missed (S4 heartbeat.timeout).")
    realtime_heartbeat_max_missed: int = _opt(3, "Missed heartbeats in a row after which the connection is closed with code 4004 (S4 heartbeat.maxMissed).")
    native_heartbeat: bool = _opt(False, "Also send application heartbeats on the native protocol (answered by {type: heartbeat, data: {pong: true}}; close 4004).")
    offline_queue_max_messages: int = _opt(200, "Messages kept per disconnected call session or user for delivery when it reconnects; the oldest are dropped first.")
    offline_queue_max_bytes: int = _opt(4194304, "Bytes kept per disconnected call session or user (response audio included); the oldest are dropped first.")
    offline_queue_max_age: float = _opt(300.0, "Seconds a message is kept for a disconnected call session or user.")
    echo_path: str = _opt("", "URL path of a plain echo WebSocket endpoint on the same stack (Autobahn testsuite); off when empty.")
    twilio_path: str = _opt("/twilio", "URL path of the Twilio Media Streams dialect (bidirectional <Connect><Stream>); its TwiML webhook is POST <path>/voice; off when empty (see doc/telephony.md).")
    twilio_auth_token: str = _opt("", "Twilio auth token the TwiML webhook checks X-Twilio-Signature with (403 on mismatch); unchecked when empty. Prefer TXVOICE_TWILIO_AUTH_TOKEN.")
    public_url: str = _opt("", "Public base URL of this daemon as callers reach it (e.g. https://voice.example.com behind a proxy): the URL Twilio signs and the stream URL the webhook names; empty: the request's own Host.")
    audiosocket: str = _opt("", "Twisted endpoint to listen on for Asterisk AudioSocket (TCP), e.g. tcp:9092:interface=127.0.0.1; off when empty (see doc/telephony.md).")
    barge_in_rule: str = _opt("fast", "When speech over a playing reply interrupts it: 'fast' (two consecutive voiced 10 ms frames when the VAD is not already in speech, ~20 ms) or 'frames3' (the turn VAD's speech start, three voiced 20 ms frames, ~41 ms; the rule before issue 27); see doc/configuration.md 'Barge-in'. A stream may choose with the option barge_in_rule.")
    pipeline: str = _opt("speech", "Voice pipeline answering turns: 'speech' (STT, agent, TTS) or 'echo' (the turn's own audio).")
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
    worker_nice: int = _opt(10, "Linux: run the audio worker and synthesis threads (and the espeak-ng processes they start) this much nicer than the reactor thread (a per-thread nice increment, no privilege needed), so on busy cores a waking reactor gets a CPU before them; 0 leaves them at the reactor's priority. See doc/configuration.md 'Worker priority'.")
    audio_batch_ms: float = _opt(0.0, "Hold audio chunks this long (ms) before handing them to the audio thread, so one thread hop carries more frames (each hop costs about as much as decoding a frame); 0 hands them over on the next reactor turn. Adds up to this much to every acknowledgement.")
    audio_inline_max: int = _opt(-1, "Run a batch of at most this many audio chunks on the reactor instead of handing it to the audio thread, when the thread is idle and every chunk is on the native ingest with no turn being fed (at low load a batch is about one chunk and the hop costs more than its work); 0 always hands over; -1 (auto): 64 when this process may run on one CPU only (the hop then buys no parallelism, only two wake-ups), else 0.")
    processes: int = _opt(1, "Server processes sharing the listening port, one per core (0: one per CPU this process may run on). Above 1 the listen description must be tcp: or tcp6:; each process keeps its own sessions, limits and metrics (see doc/operations.md).")
    gil_switch_interval_ms: float = _opt(0.0, "Python's thread switch interval (ms) while serving; 0 keeps Python's 5 ms. Shorter lets the reactor take the GIL back from audio threads sooner.")
    gc_freeze: bool = _opt(True, "Once started, take every object the process holds so far (modules, classes, settings: ~70,000 in the daemon) out of the garbage collector's full collections (gc.freeze), which then walk only what sessions allocate; each was a 25-40 ms reactor stall without it. Process-wide: turn off when embedding txvoice in a process that needs cycles among objects it already holds collected.")
    gc_thresholds: str = _opt("", "The garbage collector's three thresholds (gc.set_threshold), e.g. 700,2,10: generation 0 after that many net allocations, generation 1 after that many generation-0 collections, generation 2 after that many generation-1 ones; empty keeps Python's (700,10,10). Process-wide.")
    gc_pause_log_ms: float = _opt(0.0, "Time every garbage collection (gc.callbacks, ~1 us each) and log each one longer than this (ms) with its generation and thread, plus a per-generation summary at stop; 0 does not time them.")
    lean_poll: bool = _opt(True, "Dispatch epoll events without Twisted's per-event legacy log context (two dictionary copies and five calls per read or write); legacy twisted.python.log lines written while handling an event then carry system '-'. Only the stock epoll reactor is changed.")
    write_through: bool = _opt(True, "Send at once when a connection has nothing queued, instead of Twisted's buffer-and-register-for-writing (an acknowledgement leaves in the same reactor turn; see doc/operations.md).")
    # authentication
    auth_required: bool = _opt(False, "Require authentication: a token on the upgrade, or an in-protocol auth message first.")
    jwt_secret: str = _opt("", "HS256 secret for JWTs (the only algorithm allowed with it). Prefer TXVOICE_JWT_SECRET.")
    jwt_public_keys: str = _opt("", "Comma-separated PEM files of RS256/ES256 public keys for JWTs.")
    jwt_audience: str = _opt("", "Required JWT 'aud' (not checked when empty).")
    jwt_issuer: str = _opt("", "Required JWT 'iss' (not checked when empty).")
    jwt_tenant_claim: str = _opt("tenant", "JWT claim that names the session's tenant.")
    jwt_leeway: float = _opt(30.0, "Seconds of clock skew allowed on exp/nbf.")
    session_token_ttl: float = _opt(60.0, "Lifetime (s) of the single-use tokens POST /auth/websocket hands out.")
    session_tokens_per_user: int = _opt(20, "Unused session tokens (POST /auth/websocket) one user (and tenant) may hold at once; more get HTTP 429 too_many_session_tokens (0: only the store's cap of 100,000 in all).")
    auth_rate_limit: int = _opt(30, "POST /auth/websocket requests per minute from one client IP (IPv6: per /64), in bursts of as many; more get HTTP 429 with Retry-After (0: unlimited).")
    # admission and limits
    allowed_origins: str = _opt("", "Comma-separated allowed Origins (S4 ALLOWED_ORIGINS); empty allows all. Others get HTTP 403.")
    max_connections_per_ip: int = _opt(128, "Concurrent connections from one client IP (IPv6: per /64); more get HTTP 429 (0: unlimited). 128 lets the seeds' load tests (100 from one host) pass while one address holds at most an eighth of --max-connections.")
    trusted_proxies: str = _opt("", "Comma-separated CIDRs whose X-Forwarded-For is believed; 'unix' believes a proxy that connects over a UNIX socket listener.")
    rate_limit_window_ms: int = _opt(60000, "Window of the control-message rate limit (S4 RATE_LIMIT_WINDOW).")
    rate_limit_max_requests: int = _opt(1000, "Control (text) messages allowed per window (S4 RATE_LIMIT_MAX_REQUESTS).")
    rate_limit_strikes: int = _opt(50, "Rejected messages within a window after which the connection is closed with 1008.")
    max_audio_bytes_per_second: int = _opt(262144, "Sustained audio bytes per second per connection (bursts of 2 s allowed).")
    output_buffer_soft_limit: int = _opt(262144, "Bytes waiting for one client (send buffer, paced and queued response audio) above which its response audio and metrics pushes are dropped and it is told once (status output_congested); control replies, acks and errors are never dropped (0: off).")
    max_output_buffer: int = _opt(1048576, "Bytes waiting for one client above which the connection is closed with 4006 and its queued responses freed: what a slow or non-reading client can cost (0: unbounded).")
    heartbeat_max_missed: int = _opt(2, "Unanswered pings (each ping_timeout long) after which a peer is dropped.")
    # scale-out (doc/operations.md "Several nodes on Redis")
    redis: str = _opt("", "Redis URL (redis://[:password@]host:port/db or rediss:// for TLS) that several nodes share sessions, resume state, session tokens, conversations, offline queues and broadcasts through; also TXVOICE_REDIS_URL or REDIS_URL. Empty: everything stays in this process.")
    redis_password: str = _opt("", "Redis password (overrides the URL's). Prefer TXVOICE_REDIS_PASSWORD (or REDIS_PASSWORD).")
    redis_ca_file: str = _opt("", "PEM file of the certificate authority a rediss:// server's certificate is checked against (empty: the system's trust store).")
    redis_db: int = _opt(-1, "Redis database number (-1: the URL's path, else 0).")
    redis_prefix: str = _opt("txvoice:", "Prefix of every Redis key and channel, so that several deployments can share one Redis.")
    redis_pool_size: int = _opt(2, "Connections to Redis for commands (one more carries the pub/sub subscription).")
    redis_timeout: float = _opt(2.0, "Seconds a Redis command may take before it fails (and a connection attempt).")
    redis_reconnect_max_delay: float = _opt(5.0, "Longest wait (s) between attempts to reconnect to Redis (exponential backoff with jitter from 0.2 s).")
    redis_session_ttl: float = _opt(30.0, "Seconds a session's entry in the Redis registry lives unless its node refreshes it (every third of this): what a killed node leaves behind expires this long after.")
    redis_conversation_ttl: float = _opt(86400.0, "Seconds a conversation's shared state (start, turns, metadata) stays in Redis after its last change.")
    node_id: str = _opt("", "This node's name in the cluster (Redis registry, /health, broadcasts); empty: host name and process id.")
    # health, alerts, monitoring
    health_max_latency_ms: float = _opt(1000.0, "/health is degraded when the average turn latency exceeds this.")
    health_max_error_rate: float = _opt(0.05, "/health is degraded when the error rate (errors per message) exceeds this (S3).")
    reactor_lag_interval: float = _opt(0.25, "Seconds between the reactor-lag probe's timed calls (/health, txvoice_reactor_lag_seconds); shorter catches shorter stalls.")
    health_max_reactor_lag_ms: float = _opt(100.0, "/health is degraded when the reactor lag p99 exceeds this (unhealthy at 10x).")
    health_max_queue_depth: int = _opt(1000, "/health is degraded when the audio queue is deeper than this (unhealthy at 10x).")
    alert_max_latency_ms: float = _opt(1000.0, "performance_alert when the average latency crosses this (S1 max_latency_ms).")
    alert_max_error_rate: float = _opt(0.05, "performance_alert when the error rate crosses this (S1 max_error_rate).")
    alert_max_cpu_usage: float = _opt(80.0, "performance_alert when process CPU % crosses this (S1 max_cpu_usage).")
    metrics_interval: float = _opt(5.0, "Seconds between metrics pushes to clients subscribed with {type: metrics, subscribe: true}.")
    history_minutes: int = _opt(60, "Minutes of metrics history kept for the monitoring API.")
    # speech pipeline
    stt: str = _opt("pocketsphinx", "Speech-to-text engine of the speech pipeline (a plugin name; an unknown name lists the known ones).")
    agent: str = _opt("rules", "Agent answering transcripts in the speech pipeline (a plugin name, e.g. 'rules' or 'echo').")
    tts: str = _opt("espeak", "Text-to-speech engine of the speech pipeline (a plugin name).")
    stt_mode: str = _opt("grammar", "'grammar': recognize only the agent's phrases (exact, fast); 'general': open vocabulary. Streams may override it (options.stt_mode, options.phrase_list).")
    stt_options: str = _opt("", "Options of the STT engine, 'key=value,...'. PocketSphinx: pool_size (decoders loaded at start, default 8; with the general model set it to the speakers expected at once: loading one holds the GIL ~0.4 s), max_idle, phrases, grammar_file, partial_interval_ms, ps_<key>.")
    agent_options: str = _opt("", "Options of the agent, 'key=value,...' (e.g. 'timezone=Europe/Paris' for rules; 'site=FILE' gives rules S3's site description, see doc/dialects.md).")
    tts_options: str = _opt("", "Options of the TTS engine, 'key=value,...' (e.g. 'voice=en-gb,rate=160' for espeak).")
    processing_timeout_ms: int = _opt(5000, "Longest a turn may wait from its end to its first reply audio, then between two reply chunks (S4 PROCESSING_TIMEOUT); then processing_failed 'processing_timeout'.")
    max_concurrent_processing: int = _opt(10, "Turns the server processes at once (S4 MAX_CONCURRENT_PROCESSING); later ones wait.")
    max_queued_turns: int = _opt(50, "Turns that may wait for processing; beyond that a turn gets a 'busy' event (server_busy) and is dropped.")
    # logging
    log_levels: str = _opt("txvoice=info", "Log levels per namespace, e.g. 'txvoice.audio=debug,txvoice=info'.")
    log_format: str = _opt("text", "Log output: 'text' or 'json' (one JSON object per line).")
    debug: bool = _opt(False, "Debug mode: every txvoice namespace at debug level.")
    server_name: str = _opt("txvoice", "Server header and greeting name.")

    @classmethod
    def option_fields(cls) -> list[Field[Any]]:
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
        # S4's names (and TXVOICE_REDIS_URL) for the Redis settings, when TXVOICE_REDIS* are not set.
        for name, aliases in _ENV_ALIASES.items():
            if name not in changes:
                for alias in aliases:
                    if environ.get(alias):
                        changes[name] = environ[alias]
                        break
        return replace(config, **changes)

    @classmethod
    def from_file(cls, path: str, base: "VoiceConfig | None" = None) -> "VoiceConfig":
        """
        Apply a TOML file of settings (``listen = "tcp:9000"``, ``max_connections = 50``; keys are
        the option names with ``_`` or ``-``, optionally under a ``[txvoice]`` table).
        """
        import tomllib

        with open(path, "rb") as stream:
            data = tomllib.load(stream)
        if isinstance(data.get("txvoice"), dict):
            data = data["txvoice"]
        known = {item.name: item for item in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{path}: unknown setting {key!r}")
            f = known[name]
            expected = type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"{path}: {key} must be {expected.__name__}, not {type(value).__name__}")
            changes[name] = value
        return replace(base or cls(), **changes)

    def updated(self, **changes: Any) -> "VoiceConfig":
        return replace(self, **changes)


#: Other environment variables read for a setting when its TXVOICE_* variable is not set.
_ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "redis": ("TXVOICE_REDIS_URL", "REDIS_URL"),
    "redis_password": ("REDIS_PASSWORD",),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_value(f: Any, raw: str) -> Any:
    """Convert a string setting to the field's type, with a clear error."""
    default = f.default if f.default is not MISSING else None
    kind: type = type(default)
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


#: The configuration the running process was started with (set by ``twistd txvoice`` option
#: parsing), so that twistd's ``--logger`` factories, which twistd calls without arguments, read it.
_current: VoiceConfig | None = None


def set_current_config(config: VoiceConfig | None) -> None:
    """Remember ``config`` as this process's configuration (``None`` forgets it)."""
    global _current
    _current = config


def current_config() -> VoiceConfig:
    """This process's configuration: the one ``twistd txvoice`` parsed, else the ``TXVOICE_*`` environment's."""
    return _current if _current is not None else VoiceConfig.from_env()
