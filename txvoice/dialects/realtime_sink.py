"""
A call's turns in S4's messages: what the channel reports (``transcript``, processing stages,
voice activity, the reply's audio) becomes S4's ``transcript``, ``ai_response``,
``processing_status`` and ``audio_response``, sent through the call (live, or queued while the
call's connection is gone).
"""

from __future__ import annotations

import uuid
from typing import Any

from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.dialects.realtime_callsession import CallSession
from txvoice.pipeline.interfaces import IResponseSink

#: S4's pipeline stage names for txvoice's.
STAGES = {"stt": "speech_to_text", "agent": "ai_generation", "tts": "text_to_speech", "queued": "queued"}


def _stage(stage: object) -> object:
    """S4's name for a txvoice stage (others as they are)."""
    return STAGES.get(stage, stage) if isinstance(stage, str) else stage


def _latencies(latency_ms: dict[str, float]) -> dict[str, Any]:
    """S4's stage latencies (ms).  The agent recognizes intent and generates in one call: its time is aiGeneration."""
    return {
        "speechToText": latency_ms.get("stt"),
        "intentRecognition": None,
        "aiGeneration": latency_ms.get("agent"),
        "textToSpeech": latency_ms.get("tts"),
        "firstAudio": latency_ms.get("first_audio"),
        "queue": latency_ms.get("queue"),
        "total": latency_ms.get("total"),
    }


@implementer(IResponseSink)
class RealtimeSink:
    """A call's turns in S4's messages (through the call: live, or queued while it is offline)."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.response_id: str | None = None
        self.sent_bytes = 0

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        call = self.call
        if event_type == "transcript":
            final = bool(data.get("final"))
            call.send("transcript", {**data, "text": data.get("text", ""), "isFinal": final, "partial": not final})
        elif event_type == "ai_response":
            call.send("ai_response", dict(data))
        elif event_type == "processing_started":
            call.send("processing_status", {**data, "stage": "speech_to_text", "status": "started"})
        elif event_type == "processing_progress":
            call.send("processing_status", {**data, "stage": _stage(data.get("stage")), "status": "processing"})
        elif event_type == "processing_completed":
            latency_ms = dict(data.get("latency_ms") or {})
            call.send("processing_status", {"stage": "completed", "status": "completed", "text": data.get("text"),
                                            "transcript": data.get("transcript"), "audioMs": data.get("audio_ms"),
                                            "latency": _latencies(latency_ms), "latencyMs": latency_ms})
        elif event_type in ("processing_failed", "busy"):
            code = data.get("code", "processing_failed")
            call.send("processing_status", {"stage": _stage(data.get("stage")),
                                            "status": "failed", "code": code})
            if event_type == "processing_failed":
                call.send("error", {"code": code, "message": data.get("message", ""), "category": "processing"})
        else:  # vad, turn_start, turn_end, barge_in: the voice-activity side of processing
            status = data.get("event", event_type) if event_type == "vad" else event_type
            call.send("processing_status", {**data, "stage": "voice_activity", "status": status, "event": status})

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        self.response_id = "resp_" + uuid.uuid4().hex[:16]
        data: dict[str, Any] = {"responseId": self.response_id, "status": "start", "text": text_content}
        if audio_format is not None:
            data.update(format=audio_format.codec, sampleRate=audio_format.sample_rate,
                        channels=audio_format.channels, encoding="binary")
        self.call.send("audio_response", data)

    def audio(self, chunk: bytes) -> None:
        self.sent_bytes += len(chunk)
        self.call.write(chunk, True)

    def endResponse(self, summary: dict[str, Any]) -> None:
        self.call.send("audio_response", {"responseId": self.response_id, "status": "end", **summary})
