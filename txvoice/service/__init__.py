"""The service hierarchy of a txvoice daemon (listening, heartbeat, reaper, audio workers)."""

from txvoice.service.voice import VoiceService, makeVoiceService

__all__ = ["VoiceService", "makeVoiceService"]
