"""What ``--redis URL`` (with ``--redis-password``, ``--redis-db``, ``--redis-prefix``) names."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from txvoice.config import VoiceConfig


@dataclass(frozen=True)
class RedisSettings:
    host: str
    port: int
    db: int
    password: str | None
    username: str | None
    tls: bool
    ca_file: str
    prefix: str
    pool_size: int
    timeout: float
    reconnect_max_delay: float
    session_ttl: float

    @property
    def address(self) -> str:
        """Where, for logs and /health (never the password)."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def parse_redis_settings(config: VoiceConfig) -> RedisSettings:
    """The settings of ``config.redis``; ValueError for a URL that is not redis:// or rediss://."""
    url = urlsplit(config.redis)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"--redis must be a redis:// or rediss:// URL, not {config.redis!r}")
    path = url.path.strip("/")
    if config.redis_db >= 0:
        db = config.redis_db
    elif path:
        if not path.isdigit():
            raise ValueError(f"--redis: the database must be a number, not {path!r}")
        db = int(path)
    else:
        db = 0
    password = config.redis_password or (unquote(url.password) if url.password else None)
    username = unquote(url.username) if url.username else None
    if config.redis_pool_size < 1 or config.redis_timeout <= 0 or config.redis_session_ttl <= 0:
        raise ValueError("--redis-pool-size, --redis-timeout and --redis-session-ttl must be positive")
    return RedisSettings(
        host=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        db=db,
        password=password,
        username=username or None,
        tls=url.scheme == "rediss",
        ca_file=config.redis_ca_file,
        prefix=config.redis_prefix,
        pool_size=config.redis_pool_size,
        timeout=config.redis_timeout,
        reconnect_max_delay=config.redis_reconnect_max_delay,
        session_ttl=config.redis_session_ttl,
    )
