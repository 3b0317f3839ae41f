"""
txvoice's default speech engines, as Twisted plugins (``twistd txvoice --stt/--agent/--tts NAME``).

Listing plugins imports this module, so it names each engine's maker as a string and nothing heavy
(PocketSphinx, numpy) is imported until an engine is made.  A third-party package adds engines the
same way, from its own ``twisted/plugins/`` module.
"""

from txvoice.engines.registry import EngineFactory

pocketsphinx = EngineFactory(
    "stt", "pocketsphinx", "txvoice.engines.stt_pocketsphinx:PocketSphinxSTT.fromOptions",
    "Offline PocketSphinx en-US: general language model, or a JSGF grammar / phrase list",
)
rules = EngineFactory(
    "agent", "rules", "txvoice.engines.agent_rules:RulesAgent.fromOptions",
    "Rule-based assistant: greeting, help, time and date (get_time tool), repeat after me, memory",
)
echo = EngineFactory(
    "agent", "echo", "txvoice.engines.agent_echo:EchoAgent.fromOptions",
    "Replies with the transcript",
)
espeak = EngineFactory(
    "tts", "espeak", "txvoice.engines.tts_espeak:EspeakTTS.fromOptions",
    "Offline espeak-ng synthesis, streamed from the espeak-ng process",
)
