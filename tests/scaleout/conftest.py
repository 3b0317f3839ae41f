"""Fixtures of the scale-out tests: a real redis-server of their own (fails loudly when missing)."""

from __future__ import annotations

import pytest

from redisd import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server on a free 127.0.0.1 port, no persistence; stopped after the test."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory):
    """One redis-server for a module's tests (each test uses its own --redis-prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
