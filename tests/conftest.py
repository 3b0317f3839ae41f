"""Fixtures shared by the suite: a real txvoice daemon on loopback."""

from __future__ import annotations

import pytest

from daemons import start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One daemon (echo pipeline, defaults) shared by a test module."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--echo-path", "/echo")
    yield d
    d.stop()
