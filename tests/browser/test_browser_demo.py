"""
The demo page and its browser client in a real browser: Debian's Chromium driven by Playwright.

Chromium's fake microphone plays a WAV made at test time by espeak-ng (a phrase the rules agent
understands; no audio is committed).  Each test starts the real daemon, opens ``/``, clicks
Connect and the record button, and checks what went over the wire (every binary message sent is
one exact 20 ms frame: 640 bytes of PCM16 at 16 kHz, or one 20 ms Opus packet), the VAD and turn
events on the page, and the reply playing back; with the echo pipeline also Opus, barge-in and
reconnection; with the offline speech pipeline (``--pipeline speech``) the transcript and the
spoken answer.  The speech test saves ``doc/demo.png`` (the README's screenshot).

Chromium must be at /usr/bin/chromium (``scripts/setup-env.sh test`` installs it; this module
runs it when Chromium or Playwright is missing and fails if they still are).  Playwright is used
as a library only: never ``playwright install``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from daemons import ROOT, start_daemon
from signal_speech import write_wav

CHROMIUM = os.environ.get("TXVOICE_CHROMIUM", "/usr/bin/chromium")
PHRASE = "what time is it"
DOC_SHOT = ROOT / "doc" / "demo.png"


# ------------------------------------------------------------------------------------------ set-up


def _install() -> None:
    """Run the project's installer for the test environment (apt chromium, pip test extras)."""
    subprocess.run(["bash", str(ROOT / "scripts" / "setup-env.sh"), "test"], check=False, timeout=900)


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _install()
        importlib.invalidate_caches()
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            pytest.fail("the Python package 'playwright' is missing: it belongs in setup.py's test extras "
                        "(pip install playwright; never 'playwright install')")
    return sync_playwright


def _chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _install()
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium "
                    "(scripts/setup-env.sh test installs it)")
    return CHROMIUM


def _signal_speech():
    name = "txvoice_browser_signal_speech"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "audio" / "signal_speech.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> tuple[Path, float]:
    """The fake microphone's file: the phrase, 48 kHz mono, with silence around it; and its speech span (ms)."""
    from txvoice.engines.agent_rules import RulesAgent

    assert PHRASE in RulesAgent().phrases()
    signal = _signal_speech()
    rate = 48000
    pcm = signal.speak(PHRASE, rate, pad_ms=(700, 2500))
    start, end = signal.speech_span(pcm, rate)
    return write_wav(tmp_path_factory.mktemp("mic") / "speech.wav", pcm, rate), end - start


@pytest.fixture(scope="module")
def barge_wav(tmp_path_factory) -> Path:
    """Two utterances: the second starts while the echo of the first is playing (a barge-in)."""
    signal = _signal_speech()
    rate = 48000
    first = signal.speak(PHRASE, rate, pad_ms=(700, 0))
    second = signal.speak("what is the date", rate, pad_ms=(1200, 2500))
    pcm = np.concatenate([first, second])
    return write_wav(tmp_path_factory.mktemp("barge") / "barge.wav", pcm, rate)


# Records every WebSocket message the page sends and receives, below the client library.
WIRE_SPY = """
(() => {
  const wire = { sent: [], text: [], recv: [], recvBinary: 0 };
  window.__wire = wire;
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (typeof data === "string") {
      try { wire.text.push(JSON.parse(data)); } catch (e) { wire.text.push({ raw: data }); }
    } else {
      const b = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      wire.sent.push([b.length, b[0], Math.round(performance.now())]);
    }
    return send.call(this, data);
  };
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        if (typeof e.data === "string") {
          try { wire.recv.push(JSON.parse(e.data)); } catch (err) { wire.recv.push({ raw: e.data }); }  // e.g. Socket.IO's frames
        }
        else wire.recvBinary += e.data.byteLength;
      });
    }
  };
})();
"""

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


class Browser:
    """A headless Chromium with the fake microphone playing ``wav`` once."""

    def __init__(self, tmp_path: Path, wav: Path, extra_args: tuple[str, ...] = ()) -> None:
        sync_playwright = _playwright()
        executable = _chromium()
        self.pw = sync_playwright().start()
        profile = tmp_path / "chromium-profile"
        profile.mkdir()
        self.context = self.pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True,
            args=[*ARGS, *extra_args, f"--use-file-for-fake-audio-capture={wav}%noloop"],
            viewport={"width": 1280, "height": 800}, device_scale_factor=1,
        )
        self.context.set_default_timeout(30_000)

    def page(self, errors: list[str]):
        page = self.context.new_page()
        page.add_init_script(WIRE_SPY)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        return page

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self.pw.stop()


@pytest.fixture
def browser(tmp_path, speech_wav):
    b = Browser(tmp_path, speech_wav[0])
    yield b
    b.close()


# ------------------------------------------------------------------------------------------ helpers


def _wait(page, expression: str, timeout_s: float, what: str):
    try:
        return page.wait_for_function(expression, timeout=timeout_s * 1000, polling=100)
    except Exception as e:  # playwright's TimeoutError: say what we waited for, and show the page's log
        log = page.evaluate("() => document.getElementById('log').innerText")
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n--- page log ---\n{log}") from e


def _stats(page) -> dict:
    return page.evaluate("() => window.txvoiceDemo.client.getStats()")


def _wire(page) -> dict:
    return page.evaluate("() => window.__wire")


def _opus_frame_ms(toc: int) -> float:
    """Duration of one Opus frame from a packet's TOC byte (RFC 6716, 3.1)."""
    config = toc >> 3
    if config < 12:
        return (10, 20, 40, 60)[config % 4]
    if config < 16:
        return (10, 20)[config % 2]
    return (2.5, 5, 10, 20)[config % 4]


def _start(page, daemon, query: str) -> None:
    """Open the page, click Connect, then the record button."""
    page.goto(f"{daemon.http}/?{query}")
    page.click("#connect-btn")
    _wait(page, "() => document.getElementById('conn').dataset.state === 'connected'", 10, "the connection")
    page.click("#record-btn")
    _wait(page, "() => window.txvoiceDemo.client.recording && window.txvoiceDemo.client.recording.streamReady", 10,
          "the voice stream to open")


def _converse(page, daemon, query: str, while_playing=None) -> dict:
    """
    Open the page, connect, record one turn in voice-activity mode, wait for the reply to play
    (calling ``while_playing(page)`` once while it does), stop.
    """
    t0 = time.monotonic()
    _start(page, daemon, query)
    _wait(page, "() => window.__wire.recv.some(m => m.type === 'status' && m.data.event_type === 'turn_end')", 25,
          "the end of the first turn")
    _wait(page, "() => window.txvoiceDemo.client.isPlaying || window.txvoiceDemo.client.stats.playedMs > 0", 25,
          "the reply to start playing")
    if while_playing is not None:
        while_playing(page)
    _wait(page, "() => window.txvoiceDemo.client.stats.playedMs > 0 && !window.txvoiceDemo.client.isPlaying", 25,
          "the reply to play")
    page.click("#record-btn")  # stop: voice_end
    _wait(page, "() => window.__wire.recv.some(m => m.type === 'voice_end')", 10, "the voice_end answer")
    return {"seconds": time.monotonic() - t0}


def _common_checks(page, errors: list[str], speech_ms: float | None) -> dict:
    wire = _wire(page)
    stats = _stats(page)
    recv = wire["recv"]
    events = [m["data"] for m in recv if m["type"] == "status"]
    kinds = [(e.get("event_type"), e.get("event")) for e in events]
    assert ("vad", "speech_start") in kinds and ("vad", "speech_end") in kinds, kinds
    turn_end = next(e for e in events if e.get("event_type") == "turn_end")
    assert ("turn_start", None) in kinds
    assert turn_end["reason"] == "silence", turn_end
    if speech_ms is not None:
        # The turn is the phrase: loosely (the fake microphone delivers in bursts under load).
        assert 0.5 * speech_ms <= turn_end["duration_ms"] <= 2.0 * speech_ms + 1500, (turn_end, speech_ms)

    # The page shows them.
    chat = page.inner_text("#chat")
    assert "turn 1" in chat and "silence" in chat, chat
    assert re.match(r"turn \d+ ended", page.inner_text("#turn-chip")), page.inner_text("#turn-chip")
    log = page.inner_text("#log")
    assert "vad speech_start" in log and "vad speech_end" in log and "turn 1 ended (silence" in log, log

    # The server counted what the wire carried.
    end = next(m["data"] for m in recv if m["type"] == "voice_end")
    sent_bytes = sum(n for n, _, _ in wire["sent"])
    assert end["bytes"] == sent_bytes, (end, sent_bytes)

    # The reply played, and its position was reported.
    assert stats["playedMs"] > 300, stats
    reports = [m["data"] for m in wire["text"] if m.get("type") == "playback"]
    assert reports and max(r["position_ms"] for r in reports) > 300, reports
    assert all(r.get("response_id", "").startswith("resp_") for r in reports), reports
    response = next(m["data"] for m in recv if m["type"] == "voice_response")
    assert response["audio"] is not None
    assert any(m["type"] == "voice_stream_chunk" and m["data"].get("final") for m in recv)
    assert not [m for m in recv if m["type"] == "error"], [m for m in recv if m["type"] == "error"]
    assert not errors, errors
    return {"wire": wire, "stats": stats, "turn_end": turn_end, "response": response, "voice_end": end}


def _desktop_shot(tmp_path: Path):
    """Screenshot the page at desktop width while the reply plays (the spectrum shows it)."""
    def shoot(page):
        # Into the reply (the echo starts with the turn's 300 ms of padding), while it still plays.
        try:
            page.wait_for_function("() => window.txvoiceDemo.client.getStats().playedMs > 700 || "
                                   "(window.txvoiceDemo.client.stats.playedMs > 0 && !window.txvoiceDemo.client.isPlaying)",
                                   timeout=10_000, polling=20)
        except Exception:
            pass
        page.screenshot(path=str(tmp_path / "demo-desktop.png"))
    return shoot


def _screenshots(page, tmp_path: Path, doc: bool) -> None:
    """
    Phone width (the layout must not scroll sideways); the desktop shot goes to doc/demo.png when
    ``TXVOICE_UPDATE_DEMO_SHOT=1`` (a test run does not rewrite tracked files otherwise).
    """
    desktop = tmp_path / "demo-desktop.png"
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the phone layout scrolls sideways by {overflow}px"
    page.screenshot(path=str(tmp_path / "demo-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    if doc and os.environ.get("TXVOICE_UPDATE_DEMO_SHOT") == "1":
        DOC_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(desktop, DOC_SHOT)


# ------------------------------------------------------------------------------------------ tests


def test_browser_demo_page_served(tmp_path):
    """The page and its modules come from the daemon itself (no CDN), as the right types."""
    import urllib.request

    daemon = start_daemon(tmp_path)
    try:
        with urllib.request.urlopen(f"{daemon.http}/") as r:
            html = r.read().decode()
            assert r.headers["content-type"].startswith("text/html")
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            with urllib.request.urlopen(f"{daemon.http}{asset}") as r:
                kind = r.headers["content-type"]
                assert ("javascript" in kind) if asset.endswith(".js") else ("css" in kind), (asset, kind)
        for module in ("txvoice-client.js", "capture-worklet.js", "demo.js"):
            with urllib.request.urlopen(f"{daemon.http}/static/{module}") as r:
                assert "javascript" in r.headers["content-type"]
        remote = re.findall(r'(?:src|href)="(?!/|data:|#)([^"]*)"', html)
        assert not remote, f"the page must load nothing from elsewhere: {remote}"
    finally:
        daemon.stop()


def test_browser_echo_pcm_frames_vad_and_playback(tmp_path, browser, speech_wav):
    """PCM16: every binary message is one 20 ms frame (640 bytes); VAD/turn events shown; the echo plays."""
    speech_ms = speech_wav[1]
    daemon = start_daemon(tmp_path, "--pipeline", "echo")
    errors: list[str] = []
    try:
        page = browser.page(errors)
        timing = _converse(page, daemon, "codec=pcm&mode=voice_activity", _desktop_shot(tmp_path))
        r = _common_checks(page, errors, speech_ms)
        sizes = {n for n, _, _ in r["wire"]["sent"]}
        assert sizes == {640}, f"binary message sizes {sorted(sizes)}: want exact 20 ms PCM16 frames of 640 bytes"
        frames = len(r["wire"]["sent"])
        start = next(m["data"] for m in r["wire"]["text"] if m.get("type") == "voice_start")
        assert (start["codec"], start["sample_rate"], start["frame_duration_ms"]) == ("pcm_s16le", 16000, 20), start
        assert start["options"].get("output_codec", "pcm_s16le") == "pcm_s16le", start
        # Speech duration, loosely: the stream holds the whole phrase.
        assert frames * 20 >= 0.8 * speech_ms, (frames, speech_ms)
        assert r["stats"]["frameSizes"] == {"640": frames}
        assert r["response"]["audio"]["codec"] == "pcm_s16le"
        assert page.inner_text("#m-frame").startswith("640")
        _screenshots(page, tmp_path, doc=False)

        # Reconnection: drop the socket; the client comes back (after its backoff), resumes the session, keeps the conversation.
        conversation = page.evaluate("() => window.txvoiceDemo.client.conversationId")
        assert conversation
        page.evaluate("() => window.txvoiceDemo.client.reconnect('test drop')")
        _wait(page, "() => window.__wire.recv.some(m => m.type === 'connect' && m.data.resumed === true)", 15,
              "the session to resume")
        _wait(page, "() => document.getElementById('conn').dataset.state === 'connected'", 5, "the connection")
        assert page.evaluate("() => window.txvoiceDemo.client.conversationId") == conversation
        assert "session resumed" in page.inner_text("#chat")
        assert not errors, errors
        print(f"\necho/pcm: {frames} frames, turn {r['turn_end']['duration_ms']} ms (speech {speech_ms:.0f} ms), "
              f"played {r['stats']['playedMs']:.0f} ms, first audio {r['stats']['firstAudioLatencyMs']} ms, "
              f"{timing['seconds']:.1f}s")
    finally:
        daemon.stop()


def test_browser_echo_opus_barge_in(tmp_path, barge_wav):
    """
    Opus through WebCodecs (one 20 ms packet per binary message; the Opus reply decoded and
    played), and a barge-in: the second utterance starts while the echo of the first plays, so
    the server sends barge_in, the page stops the reply at once and reports where it stopped.
    """
    browser = Browser(tmp_path, barge_wav)
    daemon = start_daemon(tmp_path, "--pipeline", "echo")
    errors: list[str] = []
    try:
        page = browser.page(errors)
        _start(page, daemon, "codec=opus&mode=voice_activity")
        _wait(page, "() => window.__wire.recv.some(m => m.type === 'status' && m.data.event_type === 'barge_in')", 25,
              "a barge-in")
        _wait(page, "() => window.__wire.recv.filter(m => m.type === 'voice_stream_chunk' && m.data.final).length >= 2 "
                    "&& !window.txvoiceDemo.client.isPlaying && window.__wire.recv.filter(m => m.type === 'status' "
                    "&& m.data.event_type === 'turn_end').length >= 2", 25, "the second turn's reply to play")
        page.click("#record-btn")
        _wait(page, "() => window.__wire.recv.some(m => m.type === 'voice_end')", 10, "the voice_end answer")
        r = _common_checks(page, errors, None)
        wire, recv = r["wire"], r["wire"]["recv"]

        start = next(m["data"] for m in wire["text"] if m.get("type") == "voice_start")
        assert (start["codec"], start["sample_rate"], start["frame_duration_ms"]) == ("opus", 48000, 20), start
        packets = wire["sent"]
        durations = {_opus_frame_ms(toc) for _, toc, _ in packets}
        codes = {toc & 3 for _, toc, _ in packets}
        assert durations == {20} and codes == {0}, (durations, codes)  # one 20 ms frame per packet
        sizes = [n for n, _, _ in packets]
        assert 10 <= sum(sizes) / len(sizes) <= 250, sizes  # ~24 kbit/s voice, less in silence
        responses = [m["data"] for m in recv if m["type"] == "voice_response"]
        assert [x["audio"]["codec"] for x in responses] == ["opus", "opus"], responses

        barge = next(m["data"] for m in recv if m["type"] == "status" and m["data"]["event_type"] == "barge_in")
        first = responses[0]["response_id"]
        assert barge["response_id"] == first, (barge, first)
        assert barge["played_source"] == "client" and 0 < barge["played_ms"], barge
        final = next(m["data"] for m in recv if m["type"] == "voice_stream_chunk" and m["data"].get("final")
                     and m["data"]["response_id"] == first)
        assert final["cancelled"] and final["reason"] == "barge_in", final
        # The client stopped the first reply where it was, and said so.
        reports = [m["data"] for m in wire["text"] if m.get("type") == "playback" and m["data"]["response_id"] == first]
        stopped_at = reports[-1]["position_ms"]
        assert 0 < stopped_at < final.get("duration_ms", 1e9) + 100 and stopped_at < 1600, (reports, final)
        bubble = page.locator("#chat .msg.assistant").first
        assert "interrupted" in bubble.get_attribute("class")
        assert "barge-in" in bubble.inner_text(), bubble.inner_text()
        assert "Barge-in" in page.inner_text("#chat")
        second_reports = [m["data"] for m in wire["text"] if m.get("type") == "playback"
                          and m["data"]["response_id"] == responses[1]["response_id"]]
        assert second_reports and max(x["position_ms"] for x in second_reports) > 500, second_reports
        print(f"\necho/opus: {len(packets)} packets, mean {sum(sizes) / len(sizes):.0f} bytes; barge-in after "
              f"{barge['played_ms']} ms played ({barge.get('detection_delay_ms')} ms to detect), client stopped at "
              f"{stopped_at} ms")
    finally:
        daemon.stop()
        browser.close()


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def test_browser_speech_assistant(tmp_path, browser, speech_wav):
    """
    With the offline speech pipeline (PocketSphinx constrained to the rules agent's phrases, the
    rules agent, espeak-ng): the transcript and the answer show, and the answer plays.  Saves
    doc/demo.png with ``TXVOICE_UPDATE_DEMO_SHOT=1``.
    """
    daemon = start_daemon(tmp_path, "--pipeline", "speech", timeout=60)
    errors: list[str] = []
    try:
        page = browser.page(errors)
        _converse(page, daemon, "codec=pcm&mode=voice_activity", _desktop_shot(tmp_path))
        _wait(page, "() => document.querySelector('#chat .msg.assistant .bubble')?.innerText.trim().length > 0", 10,
              "the reply's text")
        r = _common_checks(page, errors, speech_wav[1])
        assert {n for n, _, _ in r["wire"]["sent"]} == {640}
        user = page.inner_text("#chat .msg.user .bubble")
        assert _normalize(user) == PHRASE, f"transcript shown: {user!r}"
        reply = page.inner_text("#chat .msg.assistant .bubble")
        assert re.search(r"\d", reply), f"the time, spoken: {reply!r}"
        assert r["stats"]["playedMs"] > 500
        _screenshots(page, tmp_path, doc=True)
        print(f"\nspeech: heard {user!r}, answered {reply!r}, played {r['stats']['playedMs']:.0f} ms")
    finally:
        daemon.stop()
