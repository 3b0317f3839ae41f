/* txvoice demo page: wires VoiceWebSocketClient to the controls, the spectrum, the chat and the figures. */

import { VoiceWebSocketClient, supportsOpusEncoding } from "./txvoice-client.js";

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $("conn"), connLabel: $("conn-label"), banner: $("banner"),
  form: $("connect-form"), url: $("server-url"), connectBtn: $("connect-btn"),
  session: $("fact-session"), pipeline: $("fact-pipeline"), conversation: $("fact-conversation"), codecFact: $("fact-codec"),
  mode: $("mode"), codec: $("codec"), vad: $("vad"), convBtn: $("conv-btn"), stopPlayBtn: $("stop-play-btn"),
  record: $("record-btn"), recordLabel: $("record-label"), hint: $("record-hint"),
  meterFill: $("meter-fill"), meterPeak: $("meter-peak"),
  vadChip: $("vad-chip"), turnChip: $("turn-chip"), playChip: $("play-chip"),
  viz: $("viz"), chat: $("chat"), tips: $("chat-tips"), log: $("log"), clearLog: $("clear-log"),
  m: {
    rtt: $("m-rtt"), resp: $("m-resp"), first: $("m-first"), barge: $("m-barge"), up: $("m-up"), down: $("m-down"),
    frames: $("m-frames"), frame: $("m-frame"), jitter: $("m-jitter"), played: $("m-played"),
  },
};

const params = new URLSearchParams(location.search);
const defaultUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host || "localhost:8765"}/`;
ui.url.value = params.get("server") || localStorage.getItem("txvoice.url") || defaultUrl;
for (const [key, el] of [["mode", ui.mode], ["codec", ui.codec]]) {
  const v = params.get(key) || localStorage.getItem(`txvoice.${key}`);
  if (v && [...el.options].some((o) => o.value === v)) el.value = v;
}
if (!supportsOpusEncoding()) ui.codec.querySelector('option[value="auto"]').textContent = "Auto (PCM)";
else ui.codec.querySelector('option[value="auto"]').textContent = "Auto (Opus)";

let client = null;
let pipeline = null;
let userMsg = null; // the user bubble of the turn in progress
let replyMsgs = new Map(); // response_id -> assistant bubble
let lastReply = null;
let level = { db: -120, peak: -120, peakAt: 0 };
const counters = { lastBytesSent: 0, lastBytesReceived: 0, lastAt: performance.now(), up: 0, down: 0 };

/* ---------------------------------------------------------------- log */

const MAX_LOG = 400;
function log(text, cls = "") {
  const line = document.createElement("div");
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = new Date().toISOString().slice(11, 23);
  const body = document.createElement("span");
  body.className = cls;
  body.textContent = text;
  line.append(t, body);
  const stick = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 8;
  ui.log.append(line);
  while (ui.log.childElementCount > MAX_LOG) ui.log.firstElementChild.remove();
  if (stick) ui.log.scrollTop = ui.log.scrollHeight;
}
ui.clearLog.addEventListener("click", () => { ui.log.textContent = ""; });

function banner(text, kind = "error") {
  if (!text) { ui.banner.hidden = true; return; }
  ui.banner.textContent = text;
  ui.banner.className = `banner ${kind === "info" ? "info" : ""}`;
  ui.banner.hidden = false;
}

if (!window.isSecureContext) {
  banner(`The microphone needs a secure page: open this demo over https:// or at http://localhost (this page is ${location.origin}).`);
}

/* ---------------------------------------------------------------- chat */

function scrollChat() { ui.chat.scrollTop = ui.chat.scrollHeight; }

function addMsg(role, html, meta = "") {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.innerHTML = html;
  const m = document.createElement("div");
  m.className = "meta";
  m.textContent = meta;
  li.append(bubble, m);
  ui.chat.append(li);
  scrollChat();
  return { li, bubble, meta: m, text: null };
}

function note(text, cls = "") {
  const li = document.createElement("li");
  li.className = `note ${cls}`;
  li.textContent = text;
  ui.chat.append(li);
  scrollChat();
}

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const shortId = (id) => (id && id.length > 14 ? `${id.slice(0, 13)}…` : id);

function ensureUserMsg() {
  if (!userMsg) userMsg = addMsg("user", '<span class="pending dots">listening</span>', "");
  return userMsg;
}

function setTips() {
  if (!pipeline || pipeline === "echo") {
    ui.tips.innerHTML = pipeline === "echo" ? "The <b>echo</b> pipeline plays each turn back to you." : "";
  } else {
    ui.tips.innerHTML = 'Try <q>hello</q>, <q>what time is it</q>, <q>what is the date</q> or <q>what can you do</q>.';
  }
}

/* ---------------------------------------------------------------- state display */

function setConn(state, label) {
  ui.conn.dataset.state = state;
  ui.connLabel.textContent = label;
}

function refreshControls() {
  const connected = client?.state === "connected";
  const busy = client && (client.state === "connecting" || client.state === "reconnecting");
  ui.connectBtn.textContent = connected || busy ? "Disconnect" : "Connect";
  ui.connectBtn.classList.toggle("danger", !!(connected || busy));
  ui.url.disabled = !!(connected || busy);
  ui.record.disabled = !connected;
  ui.convBtn.disabled = !connected;
  ui.convBtn.textContent = client?.conversationId ? "End conversation" : "Start conversation";
  ui.conversation.textContent = client?.conversationId || "–";
  const rec = !!client?.recording;
  ui.record.classList.toggle("on", rec);
  ui.record.setAttribute("aria-pressed", String(rec));
  ui.recordLabel.textContent = rec ? "Stop talking" : "Start talking";
  ui.mode.disabled = rec;
  ui.codec.disabled = rec;
  ui.vad.disabled = rec;
  ui.stopPlayBtn.disabled = !client?.isPlaying;
  const mode = ui.mode.value;
  if (!connected) ui.hint.innerHTML = busy ? "Connecting…" : "Connect to start.";
  else if (!rec) {
    ui.hint.innerHTML = mode === "push_to_talk"
      ? "Press to talk<small>press again (or release Space) to send the turn</small>"
      : "Press to start listening<small>turns end when you pause</small>";
  } else {
    ui.hint.innerHTML = mode === "push_to_talk"
      ? 'Talking<span class="dots"></span><small>press again to send</small>'
      : 'Listening<span class="dots"></span><small>speak; press again to stop</small>';
  }
}

function chip(el, text, cls = "") {
  el.textContent = text;
  el.className = `chip ${cls}`;
}

/** One log line for a server message. */
function describe(type, d) {
  if (type !== "status") {
    if (type === "error") return `error ${d.code}: ${d.message || ""}`;
    if (type === "voice_response") return `voice_response ${d.response_id}${d.audio ? ` (${d.audio.codec} ${d.audio.sample_rate} Hz)` : ""}`;
    if (type === "voice_stream_chunk") {
      return `voice_stream_chunk final${d.cancelled ? `, cancelled (${d.reason})` : d.duration_ms != null ? ` (${Math.round(d.duration_ms)} ms of audio)` : ""}`;
    }
    return `${type}${d.reply_to ? ` (reply to ${d.reply_to})` : ""}`;
  }
  const e = d.event_type;
  const q = (t) => `“${t}”`;
  switch (e) {
    case "turn_start": return `turn ${d.turn} started`;
    case "turn_end": return `turn ${d.turn} ended (${d.reason}, ${Math.round(d.duration_ms || 0)} ms)`;
    case "transcript": return `transcript ${d.final ? "final" : "partial"} ${q(d.text || "")}`;
    case "ai_response": return `ai_response ${q(d.text || "")}`;
    case "processing_started": return `processing started (${d.stt || d.stage || ""}${d.stt_mode ? ", " + d.stt_mode : ""})`;
    case "processing_progress": return `processing ${d.stage}${d.progress != null ? ` ${Math.round(d.progress * 100)}%` : ""}`;
    case "processing_completed": return `processing completed${d.latency_ms?.total != null ? ` (${Math.round(d.latency_ms.total)} ms)` : ""}`;
    case "processing_failed": return `processing failed: ${d.code} ${d.message || ""}`;
    case "barge_in": return `barge-in: reply ${d.response_id} stopped at ${d.played_ms} ms (${d.played_source})`;
    case "tool_call": return `tool call ${d.name}(${d.arguments ? JSON.stringify(d.arguments) : ""})`;
    case "tool_result": return `tool result ${d.name}${d.elapsed_ms != null ? ` (${d.elapsed_ms} ms)` : ""}`;
    default: return `status ${e}`;
  }
}

/* ---------------------------------------------------------------- client */

function makeClient() {
  const c = new VoiceWebSocketClient({
    serverUrl: ui.url.value.trim(),
    sampleRate: 16000,
    enableVAD: ui.vad.checked,
    chunkSizeMs: 20,
    codec: ui.codec.value,
    autoReconnect: true,
    maxReconnectAttempts: 6,
    clientName: "txvoice-demo/0.1",
  });

  c.on("stateChange", ({ state }) => {
    const labels = { connected: "Connected", connecting: "Connecting…", reconnecting: "Reconnecting…", disconnected: "Disconnected" };
    setConn(state, labels[state] || state);
    refreshControls();
  });
  c.on("connected", (g) => {
    pipeline = g.pipeline;
    ui.session.textContent = g.session_id || "–";
    ui.session.title = g.session_id || "";
    ui.pipeline.textContent = `${g.pipeline || "?"} · ${g.server?.name || "txvoice"} ${g.server?.version || ""}`;
    setTips();
    log(`connected: ${g.session_id} (pipeline ${g.pipeline}, protocol ${g.protocol})`, "in");
    banner(null);
    refreshControls();
  });
  c.on("reconnecting", ({ attempt, delayMs }) => log(`reconnecting: attempt ${attempt} in ${delayMs} ms`, "warn"));
  c.on("reconnected", ({ resumed, sessionId, previousSessionId }) => {
    log(resumed ? `resumed ${previousSessionId} as ${sessionId}` : `new session ${sessionId} (could not resume)`, "warn");
    note(resumed ? "Reconnected · session resumed" : "Reconnected · new session");
  });
  c.on("disconnected", ({ code, reason, willReconnect }) => {
    log(`disconnected (${code}${reason ? " " + reason : ""})${willReconnect ? ", will reconnect" : ""}`, willReconnect ? "warn" : "");
    chip(ui.vadChip, "silence");
    refreshControls();
  });
  c.on("message", (env) => {
    if (env.type === "heartbeat" || env.type === "ack" || env.type === "pong") return;
    if (env.type === "status" && env.data.event_type === "vad") {
      log(`← vad ${env.data.event} @ ${env.data.stream_time_ms} ms`, "in");
      return;
    }
    const d = env.data || {};
    log(`← ${describe(env.type, d)}`, env.type === "error" || d.event_type === "processing_failed" ? "err" : "in");
  });
  c.on("error", (e) => {
    log(`error ${e.type}/${e.code}: ${e.message}`, "err");
    if (e.type === "audio" || e.code === "reconnect_failed" || e.code === "connection_lost") banner(`${e.message}`);
  });

  c.on("recordingStart", ({ mode, codec, sampleRate }) => {
    const label = codec === "opus" ? "Opus 48 kHz · 20 ms" : `PCM16 ${sampleRate / 1000} kHz · 20 ms`;
    ui.codecFact.textContent = label;
    log(`→ voice_start ${mode} ${label}`, "out");
    if (mode === "push_to_talk") ensureUserMsg();
    refreshControls();
  });
  c.on("recordingStop", ({ frames, server }) => {
    log(`→ voice_end: ${frames} frames captured${server ? `, server got ${server.frames} frames / ${server.bytes} bytes` : ""}`, "out");
    chip(ui.vadChip, "silence");
    level = { db: -120, peak: -120, peakAt: 0 };
    if (userMsg && userMsg.bubble.querySelector(".pending")) {
      // push-to-talk: the turn ends here; its transcript (if any) follows
      userMsg.bubble.innerHTML = '<span class="pending dots">thinking</span>';
    }
    refreshControls();
  });
  c.on("level", (l) => {
    level.db = l.db;
    const pk = 20 * Math.log10(Math.max(l.peak, 1e-6));
    if (pk > level.peak || performance.now() - level.peakAt > 1200) { level.peak = pk; level.peakAt = performance.now(); }
  });

  c.on("vad", (d) => {
    if (d.event === "speech_start") chip(ui.vadChip, "speech", "speech");
    else if (d.event === "speech_end") chip(ui.vadChip, "silence");
  });
  c.on("turnStart", (d) => {
    chip(ui.turnChip, `turn ${d.turn}`, "turn");
    ensureUserMsg();
  });
  c.on("turnEnd", (d) => {
    chip(ui.turnChip, `turn ${d.turn} ended (${d.reason})`);
    const m = ensureUserMsg();
    m.meta.textContent = `turn ${d.turn} · ${secs(d.duration_ms || 0)} · ${d.reason}`;
    if (m.bubble.querySelector(".pending")) m.bubble.innerHTML = '<span class="pending dots">thinking</span>';
    m.ended = true;
  });
  c.on("transcript", (t) => {
    if (!t.final && !t.text) return;
    const m = ensureUserMsg();
    m.bubble.textContent = t.text || "(nothing recognized)";
    m.bubble.classList.toggle("partial", !t.final);
    m.text = t.text;
    if (t.final) {
      userMsg = m.ended ? null : m;
      log(`transcript: “${t.text}”${t.confidence != null ? ` (confidence ${Number(t.confidence).toFixed(2)})` : ""}`, "in");
    }
  });
  c.on("aiResponse", (r) => {
    if (!r.text) return;
    lastReply = lastReply && !lastReply.text ? lastReply : addMsg("assistant", "", "");
    lastReply.bubble.textContent = r.text;
    lastReply.text = r.text;
  });
  c.on("processing", (d) => {
    if (d.event_type === "processing_completed" && d.latency_ms && lastReply) {
      const l = d.latency_ms;
      const parts = [["stt", l.stt], ["agent", l.agent], ["tts", l.tts]].filter(([, v]) => v != null);
      if (parts.length) lastReply.stages = parts.map(([k, v]) => `${k} ${Math.round(v)} ms`).join(" · ");
    }
    if (d.event_type === "processing_failed") note(`Could not answer: ${d.message || d.code}`, "warn");
  });
  c.on("voiceResponse", (r) => {
    if (userMsg && userMsg.bubble.querySelector(".pending")) {
      userMsg.bubble.innerHTML = pipeline === "echo" ? '<span class="pending">your voice, echoed</span>' : '<span class="pending">(no transcript)</span>';
    }
    if (userMsg && userMsg.ended) userMsg = null;
    const text = r.text_content;
    let m = lastReply && !lastReply.responseId && lastReply.text && (!text || text === lastReply.text) ? lastReply : null;
    if (!m) {
      m = addMsg("assistant", text ? esc(text) : '<span class="pending">audio reply</span>', "");
      m.text = text;
    }
    m.responseId = r.response_id;
    m.fmt = r.audio ? `${r.audio.codec === "pcm_s16le" ? "PCM" : r.audio.codec} ${r.audio.sample_rate / 1000} kHz` : "no audio";
    m.meta.textContent = `${m.fmt}${client.stats.responseLatencyMs != null ? ` · replied in ${client.stats.responseLatencyMs} ms` : ""}`;
    replyMsgs.set(r.response_id, m);
    lastReply = m;
  });
  c.on("playbackStart", ({ response_id }) => {
    chip(ui.playChip, "reply playing", "playing");
    const m = replyMsgs.get(response_id);
    if (m) m.li.classList.add("playing");
    refreshControls();
  });
  c.on("playbackEnd", ({ response_id, cancelled, reason, played_ms }) => {
    const m = replyMsgs.get(response_id);
    if (m) {
      m.li.classList.remove("playing");
      if (cancelled) m.li.classList.add("interrupted");
      m.meta.textContent = [m.fmt, cancelled ? `stopped at ${secs(played_ms)} (${reason.replace("_", "-")})` : `played ${secs(played_ms)}`,
        m.stages].filter(Boolean).join(" · ");
    }
    chip(ui.playChip, cancelled ? "reply stopped" : "reply idle", cancelled ? "barge" : "");
    log(`playback ${cancelled ? "stopped" : "finished"} at ${Math.round(played_ms)} ms`, cancelled ? "warn" : "");
    refreshControls();
  });
  c.on("bargeIn", (d) => {
    note(`Barge-in · reply stopped at ${secs(d.played_ms ?? d.client_played_ms ?? 0)}, detected in ${d.detection_delay_ms ?? "?"} ms`, "warn");
  });
  c.on("responseEnd", (d) => { if (d.cancelled) log(`response ${d.response_id} cancelled (${d.reason})`, "warn"); });
  return c;
}

/* ---------------------------------------------------------------- actions */

async function doConnect() {
  if (client && client.state !== "disconnected") {
    log("→ disconnect", "out");
    await client.disconnect();
    refreshControls();
    return;
  }
  localStorage.setItem("txvoice.url", ui.url.value.trim());
  if (client) await client.close().catch(() => {});
  client = makeClient();
  window.txvoiceDemo.client = client;
  client.unlockAudio().catch(() => {}); // inside the click: lets the reply play
  log(`→ connecting to ${client.options.serverUrl}`, "out");
  try {
    await client.connect();
  } catch (err) {
    log(`connect failed: ${err.message}`, "err");
    banner(err.message);
  }
  refreshControls();
}

async function toggleConversation() {
  if (!client) return;
  try {
    if (client.conversationId) {
      const id = client.conversationId;
      const end = await client.endConversation();
      note(`Conversation ${shortId(id)} ended${end?.turns != null ? ` · ${end.turns} turns` : ""}`);
    } else {
      const id = await client.startConversation({ page: "demo" });
      note(`Conversation ${shortId(id)} started`);
    }
  } catch (err) {
    log(`conversation: ${err.message}`, "err");
  }
  refreshControls();
}

let recordBusy = false;
async function toggleRecording() {
  if (!client || recordBusy) return;
  recordBusy = true;
  try {
    if (client.recording) {
      await client.stopVoiceRecording();
    } else {
      if (!client.conversationId) {
        const id = await client.startConversation({ page: "demo" });
        note(`Conversation ${shortId(id)} started`);
      }
      client.options.enableVAD = ui.vad.checked;
      client.options.codec = ui.codec.value;
      userMsg = null;
      await client.startVoiceRecording(ui.mode.value);
    }
  } catch (err) {
    log(`recording: ${err.message}`, "err");
  } finally {
    recordBusy = false;
    refreshControls();
  }
}

ui.form.addEventListener("submit", (e) => { e.preventDefault(); doConnect(); });
ui.convBtn.addEventListener("click", toggleConversation);
ui.record.addEventListener("click", toggleRecording);
ui.stopPlayBtn.addEventListener("click", () => { client?.stopPlayback("stopped"); refreshControls(); });
ui.mode.addEventListener("change", () => { localStorage.setItem("txvoice.mode", ui.mode.value); refreshControls(); });
ui.codec.addEventListener("change", () => localStorage.setItem("txvoice.codec", ui.codec.value));

// Hold Space to talk (push-to-talk), release to send.
const typing = (el) => el && (el.tagName === "INPUT" || el.tagName === "SELECT" || el.tagName === "TEXTAREA");
let spaceHeld = false;
document.addEventListener("keydown", (e) => {
  if (e.code !== "Space" || e.repeat || typing(document.activeElement) || document.activeElement === ui.record) return;
  if (!client || client.state !== "connected" || ui.mode.value !== "push_to_talk" || client.recording) return;
  e.preventDefault();
  spaceHeld = true;
  toggleRecording();
});
document.addEventListener("keyup", (e) => {
  if (e.code !== "Space" || !spaceHeld) return;
  spaceHeld = false;
  if (client?.recording) toggleRecording();
});

/* ---------------------------------------------------------------- figures */

function fmtMs(v) { return v == null ? "–" : `${Math.round(v)}<small>ms</small>`; }
function fmtKbps(v) { return `${v < 10 ? v.toFixed(1) : Math.round(v)}<small>kbit/s</small>`; }

function updateFigures() {
  if (!client) return;
  const s = client.getStats();
  const t = performance.now();
  const dt = (t - counters.lastAt) / 1000;
  if (dt > 0) {
    const up = (8 * (s.bytesSent - counters.lastBytesSent)) / 1000 / dt;
    const down = (8 * (s.bytesReceived - counters.lastBytesReceived)) / 1000 / dt;
    counters.up = counters.up * 0.5 + up * 0.5;
    counters.down = counters.down * 0.5 + down * 0.5;
  }
  counters.lastBytesSent = s.bytesSent;
  counters.lastBytesReceived = s.bytesReceived;
  counters.lastAt = t;
  ui.m.rtt.innerHTML = fmtMs(s.rttMs);
  ui.m.resp.innerHTML = fmtMs(s.responseLatencyMs);
  ui.m.first.innerHTML = fmtMs(s.firstAudioLatencyMs);
  ui.m.barge.innerHTML = fmtMs(s.bargeInDelayMs);
  ui.m.up.innerHTML = fmtKbps(counters.up);
  ui.m.down.innerHTML = fmtKbps(counters.down);
  ui.m.frames.innerHTML = `${s.audioMessagesSent}`;
  const sizes = Object.keys(s.frameSizes).map(Number);
  if (!sizes.length) ui.m.frame.innerHTML = "–";
  else if (sizes.length === 1) ui.m.frame.innerHTML = `${sizes[0]}<small>B / ${s.frameDurationMs} ms</small>`;
  else {
    const total = Object.entries(s.frameSizes).reduce((a, [k, n]) => a + Number(k) * n, 0);
    ui.m.frame.innerHTML = `${Math.round(total / s.audioMessagesSent)}<small>B avg / ${s.frameDurationMs} ms</small>`;
  }
  ui.m.jitter.innerHTML = `${s.jitterBufferMs}<small>ms${s.underruns ? ` · ${s.underruns} gaps` : ""}</small>`;
  ui.m.played.innerHTML = `${(s.playedMs / 1000).toFixed(1)}<small>s</small>`;
  ui.stopPlayBtn.disabled = !client.isPlaying;
}
setInterval(updateFigures, 250);

/* ---------------------------------------------------------------- spectrum */

const viz = ui.viz;
const g = viz.getContext("2d");
let spectrumIn = null, spectrumOut = null;
function resizeViz() {
  const dpr = Math.min(window.devicePixelRatio || 1, 2);
  const w = Math.max(1, Math.round(viz.clientWidth * dpr));
  const h = Math.max(1, Math.round(viz.clientHeight * dpr));
  if (viz.width !== w || viz.height !== h) { viz.width = w; viz.height = h; }
}
const BARS = 48;
function bands(analyser, buf, rate) {
  analyser.getByteFrequencyData(buf);
  const out = new Float32Array(BARS);
  const nyq = rate / 2;
  const lo = 80, hi = Math.min(8000, nyq);
  for (let b = 0; b < BARS; b++) {
    const f0 = lo * (hi / lo) ** (b / BARS), f1 = lo * (hi / lo) ** ((b + 1) / BARS);
    const i0 = Math.floor((f0 / nyq) * buf.length), i1 = Math.max(i0 + 1, Math.ceil((f1 / nyq) * buf.length));
    let sum = 0, n = 0;
    for (let i = i0; i < i1 && i < buf.length; i++) { sum += buf[i]; n++; }
    out[b] = n ? sum / n / 255 : 0;
  }
  return out;
}
function draw() {
  resizeViz();
  const W = viz.width, H = viz.height;
  g.clearRect(0, 0, W, H);
  const mid = H / 2;
  const ctx = client?.audioContext;
  let inBands = null, outBands = null;
  if (client?.inputAnalyser) {
    spectrumIn ||= new Uint8Array(client.inputAnalyser.frequencyBinCount);
    inBands = bands(client.inputAnalyser, spectrumIn, ctx.sampleRate);
  }
  if (client?.outputAnalyser && client.isPlaying) {
    spectrumOut ||= new Uint8Array(client.outputAnalyser.frequencyBinCount);
    outBands = bands(client.outputAnalyser, spectrumOut, ctx.sampleRate);
  }
  const slot = W / BARS, bw = Math.max(1, slot * 0.62);
  // baseline
  g.fillStyle = "rgba(141,154,184,0.18)";
  g.fillRect(0, mid - 0.5, W, 1);
  for (let b = 0; b < BARS; b++) {
    const x = b * slot + (slot - bw) / 2;
    if (inBands && inBands[b] > 0.01) {
      const h = inBands[b] * (mid - 4);
      g.fillStyle = "rgba(45,212,191,0.9)";
      g.fillRect(x, mid - h, bw, h);
    }
    if (outBands && outBands[b] > 0.01) {
      const h = outBands[b] * (mid - 4);
      g.fillStyle = "rgba(251,191,36,0.9)";
      g.fillRect(x, mid, bw, h);
    }
  }
  // level meter and the record button's halo
  const pct = Math.max(0, Math.min(100, ((level.db + 60) / 60) * 100));
  ui.meterFill.style.width = `${client?.recording ? pct : 0}%`;
  ui.meterPeak.style.left = `${client?.recording ? Math.max(0, Math.min(99.5, ((level.peak + 60) / 60) * 100)) : 0}%`;
  ui.record.style.setProperty("--level", client?.recording ? (pct / 100).toFixed(2) : "0");
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);

window.txvoiceDemo = { client: null, ui, log };
refreshControls();
setTips();
log(`demo ready · Opus encoding ${supportsOpusEncoding() ? "available" : "unavailable"} · secure context ${window.isSecureContext}`);
if (params.get("autoconnect") === "1") doConnect();
