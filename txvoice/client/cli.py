"""
``txvoice-client URL FILE.wav``: stream a WAV file to a txvoice server and save its spoken reply.

Prints transcripts and events as they arrive (``--json``: one JSON object per line on stdout),
shows progress on stderr, saves the reply audio as a WAV file (``--out``, default ``reply.wav``).
Exit status: 0 when the server answered, 1 on failure (no connection, server error, lost
connection, no answer in time), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Generator, Sequence, TextIO

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import react

from txvoice.client.backoff import Backoff
from txvoice.client.connection import VoiceClient
from txvoice.client.sources import WavSource
from txvoice.client.streaming import AudioStreamer, StreamResult

__all__ = ["build_parser", "main"]

MODES = ("push_to_talk", "voice_activity", "continuous")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="txvoice-client", description=__doc__.strip().split("\n\n")[0])
    ap.add_argument("url", help="server endpoint, e.g. ws://127.0.0.1:8765/")
    ap.add_argument("wav", help="16-bit PCM WAV file to stream")
    ap.add_argument("--codec", choices=("pcm", "opus"), default="pcm", help="audio codec on the wire (default pcm)")
    ap.add_argument("--mode", choices=MODES, default="push_to_talk", help="streaming mode (default push_to_talk)")
    ap.add_argument("--out", default="reply.wav", help="where to save the reply audio (default reply.wav)")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    ap.add_argument("--speed", type=float, default=1.0, help="1 = real time (default), 0 = as fast as possible")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer after the audio")
    ap.add_argument("--retries", type=int, default=2, help="reconnection attempts before giving up (default 2)")
    ap.add_argument("--token", help="bearer token for the upgrade")
    ap.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="stream option for voice_start (JSON value), e.g. --option silence_ms=600")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--verbose", action="store_true", help="log the client's connection events to stderr")
    return ap


def _options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--option wants KEY=VALUE, not {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


class Printer:
    """Text or JSON-lines output; progress goes to stderr (a live line on a terminal)."""

    def __init__(self, as_json: bool, quiet: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.out = out
        self.err = err
        self._last_progress = 0.0
        self._live = err.isatty() and not as_json

    def emit(self, kind: str, line: str, fields: dict[str, Any] | None = None) -> None:
        """One record: ``line`` as text, or ``fields`` plus ``"type": kind`` as a JSON line."""
        self._end_live()
        if self.as_json:
            self.out.write(json.dumps({**(fields or {}), "type": kind}, default=str) + "\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def error(self, line: str) -> None:
        self._end_live()
        if self.as_json:
            self.out.write(json.dumps({"type": "error", "message": line}) + "\n")
            self.out.flush()
        self.err.write(f"txvoice-client: {line}\n")
        self.err.flush()

    def progress(self, sent_ms: float, total_ms: float | None) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        last = total_ms is not None and sent_ms >= total_ms
        if not last and now - self._last_progress < (0.1 if self._live else 1.0):
            return
        self._last_progress = now
        total = f" / {total_ms / 1000:.2f}" if total_ms else ""
        pct = f" ({100 * sent_ms / total_ms:.0f}%)" if total_ms else ""
        if self.as_json:
            self.out.write(json.dumps({"type": "progress", "sent_ms": round(sent_ms, 1), "total_ms": total_ms}) + "\n")
            self.out.flush()
        elif self._live:
            self.err.write(f"\rsent {sent_ms / 1000:.2f}{total} s{pct}   ")
            self.err.flush()
        else:
            self.err.write(f"sent {sent_ms / 1000:.2f}{total} s{pct}\n")
            self.err.flush()

    def _end_live(self) -> None:
        if self._live and self._last_progress:
            self.err.write("\n")
            self._last_progress = 0.0


def _describe(kind: str, data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(json type, text line, json fields) for one streaming event."""
    if kind == "event":
        event = data.get("event_type", "?")
        if event == "vad":
            return "event", f"[vad] {data.get('event')} at {data.get('stream_time_ms')} ms", data
        if event == "turn_start":
            return "event", f"[turn] {data.get('turn')} starts at {data.get('stream_time_ms')} ms", data
        if event == "turn_end":
            return "event", (f"[turn] {data.get('turn')} ends ({data.get('reason')}) "
                             f"{data.get('start_ms')}-{data.get('end_ms')} ms"), data
        if event == "transcript":
            label = "transcript" if data.get("final", True) else "partial"
            return "transcript", f"[{label}] {data.get('text', data.get('transcript', ''))}", data
        if event == "ai_response":
            return "ai_response", f"[ai] {data.get('text', data.get('response', ''))}", data
        detail = {k: v for k, v in data.items() if k != "event_type"}
        return "event", f"[{event}] {json.dumps(detail, default=str)}", data
    if kind == "response":
        audio = data.get("audio") or {}
        fmt = f"{audio.get('codec')} {audio.get('sample_rate')} Hz" if audio else "no audio"
        text = f" text={data['text_content']!r}" if data.get("text_content") else ""
        return "response", f"[response] {data.get('response_id')} {fmt}{text}", data
    if kind == "response_end":
        state = "cancelled" if data.get("cancelled") else "complete"
        return "response_end", (f"[response] {data.get('response_id')} {state}: {data.get('received_chunks')} chunks, "
                                f"{data.get('received_ms')} ms"), data
    if kind == "error":
        return "server_error", f"[error] {data.get('code')}: {data.get('message')}", data
    return kind, f"[{kind}] {json.dumps(data, default=str)}", data


@inlineCallbacks
def run(reactor: Any, args: argparse.Namespace, printer: Printer) -> Generator[Deferred[Any], Any, int]:
    """Connect, stream, save; returns the exit status."""
    try:
        source = WavSource(args.wav)
    except (OSError, ValueError, EOFError) as e:
        printer.error(f"cannot read {args.wav}: {e}")
        return 1
    client = VoiceClient(args.url, reactor=reactor, token=args.token, compression=args.compression,
                         backoff=Backoff(max_attempts=args.retries), heartbeat_interval=10.0,
                         heartbeat_timeout=10.0)
    try:
        yield client.connect()
    except Exception as e:
        source.close()
        printer.error(f"cannot connect to {args.url}: {e}")
        return 1
    greeting = client.greeting or {}
    printer.emit("connected", f"connected to {args.url}: session {client.session_id} "
                 f"(pipeline {greeting.get('pipeline')})",
                 {"url": args.url, "session_id": client.session_id, "pipeline": greeting.get("pipeline")})

    def on_event(kind: str, data: dict[str, Any]) -> None:
        json_type, text, fields = _describe(kind, data)
        printer.emit(json_type, text, fields)

    streamer = AudioStreamer(client, source, codec=args.codec, mode=args.mode, speed=args.speed,
                             options=args.options, response_timeout=args.timeout, on_event=on_event,
                             on_progress=printer.progress)
    fmt = streamer.encoder.format
    printer.emit("stream", f"streaming {args.wav}: {fmt.codec} {fmt.sample_rate} Hz x{fmt.channels}, "
                 f"{fmt.frame_duration_ms:g} ms frames, {args.mode}",
                 {"file": args.wav, "format": fmt.as_dict(), "mode": args.mode, "duration_ms": source.duration_ms})
    status = 0
    try:
        result: StreamResult = yield streamer.run()
    except Exception as e:
        printer.error(f"stream failed: {e}")
        status = 1
    else:
        status = report(result, args, printer)
    try:
        yield client.close()
    except Exception:
        pass
    return status


def report(result: StreamResult, args: argparse.Namespace, printer: Printer) -> int:
    """Print the summary, save the reply audio; returns the exit status."""
    reply_ms = result.reply_ms
    saved = None
    if reply_ms > 0:
        saved = str(result.save_reply(args.out))
    summary = {
        "complete": result.complete,
        "frames_sent": result.frames_sent,
        "audio_ms_sent": round(result.audio_ms_sent, 1),
        "responses": len(result.responses),
        "reply_ms": round(reply_ms, 1),
        "reply_wav": saved,
        "transcripts": result.transcripts,
        "errors": len(result.errors),
    }
    lines = [f"sent {result.audio_ms_sent / 1000:.2f} s in {result.frames_sent} frames; "
             f"{len(result.responses)} response(s), {reply_ms / 1000:.2f} s of reply audio"]
    if saved:
        lines.append(f"saved reply to {saved}")
    for text in result.transcripts:
        lines.append(f"transcript: {text}")
    printer.emit("result", "\n".join(lines), summary)
    if not result.complete:
        printer.error(f"no complete answer within {args.timeout:g} s")
        return 1
    if not result.responses:
        printer.error("the server sent no response")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.options = _options(args.option)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    printer = Printer(args.json, args.quiet)
    if args.verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    outcome: list[int] = []

    def _main(reactor: Any) -> Deferred[None]:
        return run(reactor, args, printer).addCallback(outcome.append)

    try:
        react(_main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(main())
