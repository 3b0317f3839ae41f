"""The dialect registry: dialects are found by name as plugins, mounted by path, and clash loudly."""

from __future__ import annotations

import types

import pytest
from twisted.python.usage import UsageError
from twisted.web.resource import Resource

from txvoice.config import VoiceConfig
from txvoice.dialects.registry import DialectFactory, DialectPathClash, dialect_factories, mount_dialects


def test_builtin_dialects_are_plugins():
    names = set(dialect_factories())
    assert {"native", "vocal", "echo"} <= names


def test_mounts_by_path_and_skips_dialects_that_are_off():
    from twisted.internet.testing import MemoryReactorClock

    from txvoice.audio.workers import AudioWorkers
    from txvoice.pipeline.echo import EchoPipeline
    from txvoice.server.context import VoiceServer

    reactor = MemoryReactorClock()
    config = VoiceConfig(path="/n", vocal_path="/v", echo_path="", pipeline="echo")
    server = VoiceServer(config, EchoPipeline(), AudioWorkers(reactor, threads=1), reactor)
    mounted = mount_dialects(server)
    assert "/n" in mounted and "/v" in mounted and "" not in mounted


def _fake_endpoints(server):
    return {server.config.path: Resource()}


def test_two_dialects_on_one_path_is_an_error(monkeypatch):
    module = types.ModuleType("fake_dialects")
    module.a = DialectFactory("zz-a", f"{__name__}:_fake_endpoints")  # type: ignore[attr-defined]
    module.b = DialectFactory("zz-b", f"{__name__}:_fake_endpoints")  # type: ignore[attr-defined]
    server = types.SimpleNamespace(config=VoiceConfig(path="/same"))
    import twisted.plugin

    monkeypatch.setattr(twisted.plugin, "getPlugins", lambda iface, package=None: [module.a, module.b])
    with pytest.raises(DialectPathClash) as e:
        mount_dialects(server)  # type: ignore[arg-type]
    assert "zz-a" in e.value.message and "zz-b" in e.value.message


def test_daemon_reports_a_clash_as_a_usage_error():
    from txvoice.service.voice import makeVoiceService

    with pytest.raises(UsageError, match="both want the path"):
        makeVoiceService(VoiceConfig(path="/ws/audio", vocal_path="/ws/audio", pipeline="echo"))
