"""Finding engines by name through Twisted plugins: the defaults, third-party ones, unknown names."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import twisted.plugins
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from txvoice.engines.interfaces import IAgent, ISpeechToText, ISpeechToTextFactory, ITextToSpeech
from txvoice.engines.registry import EngineFactory, EngineNotFound, create_engine, engine_names, find_engine

FAKE_ENGINE = '''
from zope.interface import implementer
from txvoice.engines.interfaces import ITextToSpeech


@implementer(ITextToSpeech)
class SilentTTS:
    name = "silent"
    native_rate = 8000

    def __init__(self, options):
        self.options = options

    def synthesize(self, text, voice=None, rate=None, sample_rate=None, options=None):
        return iter(())
'''

FAKE_PLUGINS = '''
from txvoice.engines.registry import EngineFactory

silent = EngineFactory("tts", "{name}", "{module}:SilentTTS", "says nothing")
broken = EngineFactory("stt", "broken", "{module}:SilentTTS", "makes the wrong kind of engine")
'''


def test_default_engines_are_found():
    assert "pocketsphinx" in engine_names("stt")
    assert {"rules", "echo"} <= set(engine_names("agent"))
    assert "espeak" in engine_names("tts")
    factory = find_engine("stt", "pocketsphinx")
    assert verifyObject(ISpeechToTextFactory, factory) and IPlugin.providedBy(factory)
    assert factory.description


@pytest.mark.parametrize(("kind", "name", "iface"), [
    ("stt", "pocketsphinx", ISpeechToText),
    ("agent", "rules", IAgent),
    ("agent", "echo", IAgent),
    ("tts", "espeak", ITextToSpeech),
])
def test_default_engines_are_made(kind, name, iface):
    engine = create_engine(kind, name, {})
    assert iface.providedBy(engine) and engine.name == name


def test_options_reach_the_engine():
    assert create_engine("tts", "espeak", {"voice": "en-gb", "rate": "150"}).rate == 150
    assert create_engine("agent", "rules", {"timezone": "Europe/Paris"}).tz.key == "Europe/Paris"


def test_unknown_name_lists_what_there_is():
    with pytest.raises(EngineNotFound) as caught:
        find_engine("tts", "festival")
    error = caught.value
    assert error.code == "unknown_engine"
    assert "festival" in error.message and "espeak" in error.message
    assert "espeak" in error.details["available"]
    with pytest.raises(ValueError, match="kinds: agent, stt, tts"):
        engine_names("vision")


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package of engine plugins made for the test, importable from a temporary sys.path entry."""
    (tmp_path / "fake_engine_impl.py").write_text(FAKE_ENGINE)
    package = tmp_path / "fake_engine_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "more_engines.py").write_text(FAKE_PLUGINS.format(name="silent", module="fake_engine_impl"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("fake_engine_plugins")
    for name in [m for m in sys.modules if m.startswith(("fake_engine_plugins", "fake_engine_impl"))]:
        del sys.modules[name]


def test_engine_from_a_plugin_package(plugin_package):
    assert engine_names("tts", plugin_package) == ["silent"]
    engine = create_engine("tts", "silent", {"x": "1"}, package=plugin_package)
    assert ITextToSpeech.providedBy(engine) and engine.options == {"x": "1"}
    with pytest.raises(EngineNotFound, match="available: silent"):
        find_engine("tts", "espeak", plugin_package)


def test_engine_that_is_the_wrong_kind_is_refused(plugin_package):
    with pytest.raises(TypeError, match="does not provide ISpeechToText"):
        create_engine("stt", "broken", package=plugin_package)


def test_third_party_drop_in_joins_the_defaults(tmp_path, monkeypatch):
    """A package installing ``twisted/plugins/x.py`` elsewhere on sys.path is found by name."""
    (tmp_path / "fake_engine_impl.py").write_text(FAKE_ENGINE)
    dropins = tmp_path / "twisted" / "plugins"
    dropins.mkdir(parents=True)
    (dropins / "thirdparty_tts.py").write_text(FAKE_PLUGINS.format(name="quiet", module="fake_engine_impl"))
    monkeypatch.syspath_prepend(str(tmp_path))
    # twisted.plugins computes its __path__ at import; a package installed later joins it so.
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(dropins)])
    try:
        assert {"espeak", "quiet"} <= set(engine_names("tts"))
        assert create_engine("tts", "quiet").native_rate == 8000
    finally:
        for name in [m for m in sys.modules if m in ("twisted.plugins.thirdparty_tts", "fake_engine_impl")]:
            del sys.modules[name]


def test_engine_factory_is_lazy():
    factory = EngineFactory("agent", "lazy", "no_such_module_anywhere:Agent", "never imported")
    assert factory.name == "lazy" and "lazy" in repr(factory)
    with pytest.raises(ModuleNotFoundError):
        factory.create({})


def test_plugin_module_imports_nothing_heavy():
    code = textwrap.dedent("""
        import sys
        import twisted.plugins.txvoice_engines
        heavy = [m for m in ("pocketsphinx", "soxr", "numpy", "twisted.internet.reactor") if m in sys.modules]
        assert not heavy, heavy
    """)
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_root()))


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
