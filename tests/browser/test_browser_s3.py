"""
Seed S3's browser client in headless Chromium against a default daemon with a JWT key.

The page loads ``socket.io-client`` from its npm package (``dist/socket.io.min.js`` from the suite's
Node cache, installed by ``tests/nodejs.py``), connects to the ``/voice`` namespace with
``auth: {token}`` and sends ``voice:start``; on ``voice:session_ready`` it opens
``/voice-ws?token=<JWT>&sessionId=<id>`` (joining that session: one session, two transports) and
an AudioWorklet cuts Chromium's fake microphone (espeak-ng speech, made at test time) into 20 ms
frames of 48 kHz 16-bit PCM, 1920 bytes each, sent as binary messages with no ``voice_start``
(S3's default format).  The offline speech pipeline answers: ``transcription``, ``navigation``
and ``audio_response`` with binary audio on the raw socket, the JSON messages on Socket.IO too.

The page and the Socket.IO bundle are served under the daemon's own origin by the
browser's request routing (``/s3-test/``): the daemon serves no S3 page, and one origin keeps
the page's Socket.IO polling free of CORS.
"""

from __future__ import annotations

import json
import time

import pytest

from daemons import start_daemon
from nodejs import node_cache
from signal_speech import write_wav
from test_browser_demo import Browser, _signal_speech
from test_s3_dialect import SECRET, token

pytestmark = pytest.mark.slow

PHRASE = "go to the pricing page"
FRAME_BYTES = 1920  # 20 ms of 48 kHz 16-bit mono PCM

# The capture worklet: the microphone's samples as 20 ms Int16 frames, posted to the page.
WORKLET = """
class S3Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);  // 20 ms
    this.frame = new Int16Array(this.size);
    this.n = 0;
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      for (let i = 0; i < input.length; i++) {
        const s = Math.max(-1, Math.min(1, input[i]));
        this.frame[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
        if (this.n === this.size) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(this.size);
          this.n = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor('s3-capture', S3Capture);
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>S3 voice client</title>
<script src="/s3-test/socket.io.min.js"></script></head>
<body><pre id="log"></pre>
<script>
window.s3 = { events: [], raw: [], audioBytes: 0, audioChunks: 0, audioAfterFinal: 0, framesSent: [], problems: [] };
const TOKEN = %(token)s;
const WORKLET = %(worklet)s;
const log = (line) => { document.getElementById('log').textContent += line + '\\n'; };

const socket = io(location.origin + '/voice', { auth: { token: TOKEN } });
socket.onAny((event, arg) => { s3.events.push({ event, arg: arg instanceof ArrayBuffer ? arg.byteLength : arg }); log('socket.io ' + event); });
socket.on('connect_error', (e) => s3.problems.push('connect_error: ' + e.message));
socket.on('connect', () => socket.emit('voice:start', { siteId: 'test-site', locale: 'en-US' },
                                       (ack) => { s3.startAck = ack; }));
socket.on('voice:session_ready', (data) => {
  s3.sessionId = data.sessionId;
  s3.engine = socket.io.engine.transport.name;
  startAudio(data.sessionId).catch((e) => s3.problems.push('audio: ' + e));
});

async function startAudio(sessionId) {
  const ws = new WebSocket(`ws://${location.host}/voice-ws?token=${encodeURIComponent(TOKEN)}&sessionId=${sessionId}`);
  ws.binaryType = 'arraybuffer';
  window.voiceWs = ws;
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') {
      const m = JSON.parse(e.data);
      s3.raw.push(m);
      log('voice-ws ' + m.type + ' ' + JSON.stringify(m.data));
    } else {
      s3.audioBytes += e.data.byteLength;
      s3.audioChunks += 1;
      if (s3.raw.some((m) => m.type === 'audio_response' && m.metadata.final)) s3.audioAfterFinal += 1;
    }
  };
  ws.onclose = (e) => { s3.closed = e.code; };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => setTimeout(() => reject(new Error(`voice-ws failed (close ${s3.closed})`)), 100); });
  const stream = await navigator.mediaDevices.getUserMedia({ audio: {
    channelCount: 1, sampleRate: 48000, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const ctx = new AudioContext({ sampleRate: 48000 });
  // From a Blob: a worklet's module request does not pass through the test's request routing.
  await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: 'text/javascript' })));
  const node = new AudioWorkletNode(ctx, 's3-capture');
  node.port.onmessage = (e) => {
    if (ws.readyState === WebSocket.OPEN) { ws.send(e.data); s3.framesSent.push(e.data.byteLength); }
  };
  ctx.createMediaStreamSource(stream).connect(node);
  node.connect(ctx.destination);  // the worklet outputs silence; being pulled keeps it running
  s3.contextRate = ctx.sampleRate;
  window.capture = { ctx, stream };
}
</script></body></html>
"""


@pytest.fixture(scope="module")
def pricing_wav(tmp_path_factory):
    pcm = _signal_speech().speak("Go to the pricing page.", 48000, pad_ms=(700, 2500))
    return write_wav(tmp_path_factory.mktemp("s3-mic") / "pricing.wav", pcm, 48000)


def _serve(page, daemon) -> None:
    """``/s3-test/`` on the daemon's origin: the page and socket.io-client's own bundle."""
    bundle = node_cache() / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
    assert bundle.is_file(), bundle
    files = {
        "/s3-test/": ("text/html", (PAGE % {"token": json.dumps(token()), "worklet": json.dumps(WORKLET)}).encode()),
        "/s3-test/socket.io.min.js": ("text/javascript", bundle.read_bytes()),
    }

    def handle(route) -> None:
        path = "/" + route.request.url.split("/", 3)[3].split("?")[0]
        kind, body = files.get(path, ("text/plain", b""))
        route.fulfill(status=200 if path in files else 404, content_type=kind, body=body)

    page.route(f"{daemon.http}/s3-test/**", handle)


def _wait(page, expression: str, timeout_s: float, what: str, errors: list[str]) -> None:
    try:
        page.wait_for_function(expression, timeout=timeout_s * 1000, polling=100)
    except Exception as e:
        state = page.evaluate("() => ({problems: s3.problems, frames: s3.framesSent.length, raw: s3.raw.map(m => m.type),"
                              " events: s3.events.map(e => e.event), log: document.getElementById('log').textContent})")
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {state}; page errors {errors}") from e


def test_s3_socketio_and_worklet_frames_in_chromium(tmp_path, pricing_wav) -> None:
    daemon = start_daemon(tmp_path, "--pipeline", "speech", env={"TXVOICE_JWT_SECRET": SECRET}, timeout=60)
    # A routed page has no address space of its own: Chromium would block its sockets to 127.0.0.1.
    browser = Browser(tmp_path, pricing_wav, extra_args=("--disable-features=LocalNetworkAccessChecks",))
    errors: list[str] = []
    try:
        page = browser.page(errors)
        _serve(page, daemon)
        page.goto(f"{daemon.http}/s3-test/")
        _wait(page, "() => s3.sessionId && window.voiceWs && window.capture", 15, "voice:session_ready and the capture", errors)
        _wait(page, "() => s3.raw.some(m => m.type === 'audio_response' && m.metadata.final)", 45, "the spoken answer", errors)
        time.sleep(0.3)  # anything still in flight after the final message would be counted below
        s3 = page.evaluate("() => s3")
        wire = page.evaluate("() => window.__wire")

        # Socket.IO: authenticated by auth.token, voice:start answered (event and ack) with the session id.
        session_id = s3["sessionId"]
        assert session_id.startswith("sess_"), s3
        assert s3["startAck"] == {"ok": True, "sessionId": session_id, "joined": False, "transports": ["socketio"]}
        assert s3["engine"] in ("polling", "websocket")
        # The raw socket joined that session.
        raw = s3["raw"]
        ready = raw[0]
        assert ready["type"] == "ready" and ready["metadata"]["sessionId"] == session_id
        assert ready["metadata"]["joined"] is True and ready["metadata"]["sampleRate"] == 48000

        # The worklet's frames: 20 ms of 48 kHz 16-bit PCM each, as binary messages, nothing else on the wire.
        assert s3["contextRate"] == 48000
        assert len(s3["framesSent"]) >= 100 and set(s3["framesSent"]) == {FRAME_BYTES}, s3["framesSent"][:10]
        binary_sizes = {n for n, _, _ in wire["sent"]}
        assert binary_sizes == {FRAME_BYTES}, binary_sizes

        # What the offline pipeline made of them, on the raw socket.
        kinds = [m["type"] for m in raw]
        final = next((m for m in raw if m["type"] == "transcription" and m["metadata"]["final"]), None)
        assert final is not None and final["data"] == PHRASE, [(m["type"], m["data"]) for m in raw]
        assert final["metadata"]["audioEndMs"] > final["metadata"]["audioStartMs"] >= 0
        navigation = next(m for m in raw if m["type"] == "navigation")
        assert navigation["metadata"]["page"] == "pricing" and navigation["data"] == "/pricing"
        start = next(m for m in raw if m["type"] == "audio_response")
        assert start["metadata"]["streaming"] is True and "Pricing" in start["data"], start
        assert kinds.index("transcription") < kinds.index("audio_response")
        vads = [m["metadata"]["vadActive"] for m in raw if m["type"] == "vad"]
        assert True in vads, vads
        # The answer's audio: 48 kHz PCM (the input's format), over half a second of it, none after `final`.
        assert start["metadata"]["sampleRate"] == 48000 and start["metadata"]["codec"] == "pcm_s16le", start
        assert s3["audioBytes"] > 48000 and s3["audioChunks"] >= 5, (s3["audioBytes"], s3["audioChunks"])
        assert s3["audioAfterFinal"] == 0
        sequences = [m["metadata"]["sequence"] for m in raw]
        assert sequences == sorted(sequences) and all(m["metadata"]["sessionId"] == session_id for m in raw)

        # Socket.IO got the same JSON messages (one sequence), but not the audio: the raw socket carries it.
        events = s3["events"]
        by_event = {e["event"]: e["arg"] for e in reversed(events)}
        assert by_event["voice:session_ready"]["sessionId"] == session_id
        sio_final = next(e["arg"] for e in events if e["event"] == "voice:transcription" and e["arg"]["metadata"]["final"])
        assert sio_final == final
        assert by_event["voice:navigation"]["metadata"]["page"] == "pricing"
        assert not [e for e in events if e["event"] in ("voice:audio_data", "voice:error")], events
        assert not s3["problems"] and not errors, (s3["problems"], errors)
        print(f"\nS3 in Chromium: {len(s3['framesSent'])} frames of {FRAME_BYTES} bytes via {s3['engine']}, "
              f"heard {final['data']!r}, {s3['audioBytes']} bytes of audio back in {s3['audioChunks']} messages")
    finally:
        browser.close()
        daemon.stop()
