"""
S4's documented client flow, verbatim, in headless Chromium against a default daemon with a JWT key.

The four snippets of S4's "Client Integration" section run as the seed writes them (only its
``localhost:3002`` becomes this daemon's address and ``'your-jwt-token'`` a real JWT): the page
POSTs ``/auth/websocket``, opens ``/realtime/ws``, sends ``session_start``, records with
``MediaRecorder('audio/webm;codecs=opus').start(100)`` from Chromium's fake microphone (espeak-ng
speech made at test time) and gets ``transcript``, ``ai_response`` and binary audio, which it
plays through ``playAudioResponse`` (from ``/static/realtime-client.js``).  The server's
heartbeats (fast here) are answered by S4's own ``handleMessage``.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from daemons import ROOT
from rtsupport import start_rt_daemon, user_jwt


def _demo():
    name = "txvoice_browser_demo_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "browser" / "test_browser_demo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# --- S4's "Client Integration" snippets, verbatim (seed 004) -------------------------------------

S4_CONNECT = """
const ws = new WebSocket('ws://localhost:3002/realtime/ws');

ws.onopen = function() {
    console.log('Connected to realtime server');
};

ws.onmessage = function(event) {
    handleMessage(event);
};
"""

S4_AUTH_AND_START = """
// Get authentication token
const authResponse = await fetch('/auth/websocket', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
        token: 'your-jwt-token',
        userId: 'user-123',
        callId: 'call-456'
    })
});

const { sessionToken } = await authResponse.json();

// Start session
const sessionMessage = {
    type: 'session_start',
    callId: 'call-456',
    timestamp: Date.now(),
    data: {
        userId: 'user-123',
        callId: 'call-456',
        authToken: sessionToken
    }
};

ws.send(JSON.stringify(sessionMessage));
"""

S4_SEND_AUDIO = """
// Get audio stream
const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
        channelCount: 1,
        sampleRate: 16000,
        echoCancellation: true,
        noiseSuppression: true
    }
});

// Start recording
const mediaRecorder = new MediaRecorder(stream, {
    mimeType: 'audio/webm;codecs=opus'
});

mediaRecorder.ondataavailable = function(event) {
    if (event.data.size > 0) {
        // Send audio as binary data
        ws.send(event.data);
    }
};

mediaRecorder.start(100); // 100ms chunks
"""

S4_HANDLE = """
function handleMessage(event) {
    if (typeof event.data === 'string') {
        // JSON message
        const message = JSON.parse(event.data);
        
        switch (message.type) {
            case 'transcript':
                console.log('Transcript:', message.data.text);
                break;
                
            case 'ai_response':
                console.log('AI Response:', message.data.text);
                break;
                
            case 'heartbeat':
                // Respond to heartbeat
                ws.send(JSON.stringify({
                    type: 'heartbeat',
                    callId: '',
                    timestamp: Date.now(),
                    data: { pong: true }
                }));
                break;
        }
    } else {
        // Binary audio response
        playAudioResponse(event.data);
    }
}
"""

PHRASE = "what time is it"

# MediaRecorder hands Blobs to ws.send: record their sizes and the first one's leading bytes.
BLOB_SPY = """
(() => {
  window.__blobs = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (data instanceof Blob) {
      window.__blobs.push(data.size);
      if (window.__blobs.length === 1) data.slice(0, 4).arrayBuffer().then(b => { window.__firstBytes = Array.from(new Uint8Array(b)); });
    }
    return send.call(this, data);
  };
})();
"""


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory):
    from signal_speech import speak, write_wav

    pcm = speak(PHRASE, 48000, pad_ms=(700, 2500))
    return write_wav(tmp_path_factory.mktemp("rt-mic") / "speech.wav", pcm, 48000)


def test_s4_documented_flow_in_chromium(tmp_path, mic_wav):
    demo = _demo()
    daemon = start_rt_daemon(tmp_path, "--pipeline", "speech", "--stt-options", "pool_size=1",
                             "--realtime-heartbeat-interval", "0.5", "--realtime-heartbeat-timeout", "0.5")
    sync_playwright = demo._playwright()
    executable = demo._chromium()
    pw = sync_playwright().start()
    console: list[str] = []
    errors: list[str] = []
    try:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=[
            *demo.ARGS, "--disable-features=LocalNetworkAccessChecks",
            f"--use-file-for-fake-audio-capture={mic_wav}%noloop"])
        page = browser.new_page()
        page.add_init_script(demo.WIRE_SPY)
        page.add_init_script(BLOB_SPY)
        page.on("console", lambda m: console.append(m.text) if m.type != "error" else errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(f"{daemon.http}/static/realtime-client.html")
        host = f"127.0.0.1:{daemon.port}"
        page.add_script_tag(content=S4_HANDLE)
        page.add_script_tag(content=S4_CONNECT.replace("localhost:3002", host))
        page.wait_for_function("() => ws.readyState === WebSocket.OPEN", timeout=10_000)
        page.add_script_tag(type="module", content=(S4_AUTH_AND_START.replace("your-jwt-token", user_jwt())
                                                    + S4_SEND_AUDIO))
        page.wait_for_function(
            "() => window.__wire.recv.some(m => m.type === 'ai_response')", timeout=30_000, polling=100)
        page.wait_for_function("() => window.realtimePlayback.playedMs > 300", timeout=20_000, polling=100)
        wire = page.evaluate("() => window.__wire")
        recv = wire["recv"]
        started = [m for m in recv if m["type"] == "connection_status" and m["data"].get("status") == "session_started"]
        assert started and started[0]["data"]["callId"] == "call-456" and started[0]["data"]["userId"] == "user-123"
        finals = [m["data"]["text"] for m in recv if m["type"] == "transcript" and m["data"].get("isFinal")]
        assert PHRASE in finals, [m for m in recv if m["type"] == "transcript"]
        answer = next(m for m in recv if m["type"] == "ai_response")["data"]["text"]
        assert f"AI Response: {answer}" in console and f"Transcript: {PHRASE}" in console
        # Response audio arrived as Blobs (S4 keeps the default binaryType) and went to playAudioResponse.
        playback = page.evaluate("() => ({chunks: realtimePlayback.chunks, bytes: realtimePlayback.bytes})")
        assert playback["chunks"] >= 5 and playback["bytes"] >= 9600, playback  # >= 300 ms of PCM16 at 16 kHz
        # MediaRecorder's chunks went out as binary messages, the first one a WebM (EBML) header.
        blobs = page.evaluate("() => window.__blobs")
        assert len(blobs) >= 20 and all(size > 0 for size in blobs)
        assert page.evaluate("() => window.__firstBytes") == [0x1A, 0x45, 0xDF, 0xA3]
        # S4's handleMessage answered the server's heartbeats, and the connection stayed up.
        pongs = [m for m in wire["text"] if m.get("type") == "heartbeat" and m["data"].get("pong")]
        pings = [m for m in recv if m["type"] == "heartbeat" and m["data"].get("ping")]
        assert len(pings) >= 3 and len(pongs) >= len(pings) - 1
        assert page.evaluate("() => ws.readyState") == 1
        assert not errors, errors
        browser.close()
    finally:
        pw.stop()
        daemon.stop()
