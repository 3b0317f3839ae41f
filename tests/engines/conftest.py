"""Fixtures of the engine tests: espeak-ng speech, and engines loaded once per session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _loadSpeech():
    # tests/audio has a module called ``speech`` too: load ours under a name of its own.
    name = "txvoice_engine_tests_speech"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("speech.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


speech = _loadSpeech()


@pytest.fixture(scope="session")
def speak():
    """``speak(text, rate=16000, ...) -> numpy.int16`` speech made by espeak-ng."""
    return speech.speak


@pytest.fixture(scope="session")
def frames():
    return speech.frames


@pytest.fixture(scope="session")
def stt():
    from txvoice.engines.stt_pocketsphinx import PocketSphinxSTT

    return PocketSphinxSTT()


@pytest.fixture(scope="session")
def tts():
    from txvoice.engines.tts_espeak import EspeakTTS

    return EspeakTTS()
