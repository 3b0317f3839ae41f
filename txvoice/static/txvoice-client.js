/*
 * txvoice browser client (protocol txvoice.v1): a plain ES module, no build step, no dependencies.
 *
 *   import { VoiceWebSocketClient } from "/static/txvoice-client.js";
 *   const client = new VoiceWebSocketClient({ serverUrl: "ws://localhost:8765", sampleRate: 16000, enableVAD: true });
 *   client.on("voiceResponse", (r) => console.log(r.text_content));
 *   client.on("transcript", (t) => console.log("you said", t.text));
 *   await client.connect();
 *   const conversationId = await client.startConversation();
 *   await client.startVoiceRecording("voice_activity");   // or "push_to_talk", "continuous", "adaptive"
 *   ...
 *   await client.stopVoiceRecording();
 *
 * Capture: getUserMedia -> AudioWorklet (capture-worklet.js) that resamples and cuts exact 20 ms
 * frames -> PCM16 binary messages, or Opus packets from WebCodecs' AudioEncoder when the browser
 * has one (`codec: "auto"`, the default, prefers Opus).  Playback: response audio (PCM16, or Opus
 * decoded with WebCodecs' AudioDecoder) through a small jitter buffer into the same AudioContext;
 * `barge_in` stops it at once; the played position goes back to the server in `playback` messages.
 * Reconnection: exponential backoff with jitter, session resume with the greeting's resume_token,
 * reliable control messages re-sent until acknowledged, an open voice stream re-opened.
 *
 * Events (client.on(name, fn)): connected, disconnected, reconnecting, reconnected, stateChange,
 * message, status, vad, turnStart, turnEnd, bargeIn, transcript, aiResponse, processing,
 * voiceResponse, responseEnd, playbackStart, playbackEnd, recordingStart, recordingStop, level,
 * metrics, error.
 */

const WORKLET_URL = new URL("./capture-worklet.js", import.meta.url).href;

const DEFAULTS = {
  serverUrl: null, // default: this page's origin, ws(s)://host/
  sampleRate: 16000, // PCM capture rate on the wire (Opus always runs at 48 kHz)
  enableVAD: true,
  vadThreshold: null, // server default (0.5)
  silenceMs: null, // server default (500 ms)
  chunkSizeMs: 20, // PCM: frames (20 ms each) per binary message, rounded to a multiple of 20
  frameMs: 20,
  codec: "auto", // "auto" (Opus when WebCodecs can encode it, else PCM), "pcm", "opus"
  opusBitrate: 24000,
  outputCodec: "auto", // "auto" (Opus back when sending Opus and AudioDecoder exists), "pcm", "opus"
  outputSampleRate: 16000, // for PCM responses
  jitterBufferMs: 60,
  playbackReportMs: 200, // how often the played position goes to the server while a reply plays
  autoReconnect: true,
  maxReconnectAttempts: 5,
  reconnectBaseDelayMs: 500,
  reconnectMaxDelayMs: 10000,
  heartbeatIntervalMs: 15000,
  heartbeatTimeoutMs: 10000,
  requestTimeoutMs: 10000,
  authToken: null, // sent as ?token= on the upgrade
  userId: null,
  clientName: "txvoice-web/0.1",
  audioConstraints: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
};

/** Close codes after which reconnecting would not help (normal close, policy, idle/expired/token). */
const FINAL_CLOSE_CODES = new Set([1000, 1008, 4001, 4002, 4003]);

const MODES = {
  ptt: "push_to_talk", push_to_talk: "push_to_talk", pushToTalk: "push_to_talk",
  vad: "voice_activity", voice_activity: "voice_activity", voiceActivity: "voice_activity", adaptive: "voice_activity",
  continuous: "continuous",
};

class Emitter {
  constructor() { this._handlers = new Map(); }
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }
  off(name, fn) { this._handlers.get(name)?.delete(fn); }
  once(name, fn) {
    const off = this.on(name, (...a) => { off(); fn(...a); });
    return off;
  }
  emit(name, ...args) {
    for (const fn of [...(this._handlers.get(name) || [])]) {
      try { fn(...args); } catch (err) { console.error(`txvoice: '${name}' handler failed`, err); }
    }
  }
}

export class TxVoiceError extends Error {
  constructor(type, code, message, details = {}) {
    super(message);
    this.name = "TxVoiceError";
    this.type = type; // "websocket" | "audio" | "server" | "protocol" | "timeout"
    this.code = code;
    this.error_message = message;
    Object.assign(this, details);
  }
}

function now() { return performance.now(); }

export function supportsOpusEncoding() {
  return typeof AudioEncoder !== "undefined" && typeof AudioData !== "undefined";
}

export function supportsOpusDecoding() {
  return typeof AudioDecoder !== "undefined" && typeof EncodedAudioChunk !== "undefined";
}

function defaultServerUrl() {
  if (typeof location === "undefined" || !/^https?:$/.test(location.protocol)) return "ws://localhost:8765/";
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/`;
}

/* ------------------------------------------------------------------------------------------ */
/* Playback: response audio -> jitter buffer -> scheduled AudioBufferSourceNodes               */
/* ------------------------------------------------------------------------------------------ */

class Player {
  constructor(client) {
    this.client = client;
    this.response = null; // the response whose audio is arriving
    this.timeline = []; // scheduled segments: {source, when, dur, pos, response}
    this.nextTime = 0;
    this.decoder = null;
    this.decoderFormat = null;
    this.timer = null;
    this.playing = null; // the response currently audible (or about to be)
  }

  get ctx() { return this.client.audioContext; }

  /** voice_response: a new response announced; its binary audio follows. */
  begin(data) {
    const fmt = data.audio || null;
    const r = {
      id: data.response_id, format: fmt, text: data.text_content ?? null,
      pending: [], pendingMs: 0, started: false, final: false, cancelled: false,
      receivedMs: 0, scheduledMs: 0, endTime: null, firstAudioAt: null, startedAt: null, frames: 0,
      lastReport: 0,
    };
    this.response = r;
    if (fmt && fmt.codec === "opus") this._ensureDecoder(fmt);
    return r;
  }

  /** One binary message of response audio. */
  audio(buffer) {
    const r = this.response;
    if (!r || r.cancelled || !r.format) return;
    r.frames += 1;
    if (r.firstAudioAt === null) r.firstAudioAt = now();
    const fmt = r.format;
    if (fmt.codec === "pcm_s16le") {
      const n = buffer.byteLength >> 1;
      const view = new DataView(buffer);
      const pcm = new Float32Array(n);
      for (let i = 0; i < n; i++) pcm[i] = view.getInt16(i * 2, true) / 32768;
      this._push(r, pcm, fmt.sample_rate);
    } else if (fmt.codec === "opus" && this.decoder) {
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: r.frames * 20000, data: buffer }));
    } else {
      this.client._error("audio", "unsupported_output_codec", `cannot play response audio in ${fmt.codec}`);
      r.cancelled = true;
    }
  }

  /** Final voice_stream_chunk: no more audio for this response. */
  end(data) {
    const r = this.response;
    if (!r || (data.response_id && r.id !== data.response_id)) return;
    r.final = true;
    if (data.cancelled) {
      this.stop(data.reason || "cancelled", r);
      return;
    }
    const finish = () => { this._drain(r, true); this._tick(); };
    if (this.decoder && r.format?.codec === "opus") this.decoder.flush().then(finish, finish);
    else finish();
  }

  _ensureDecoder(fmt) {
    const key = `${fmt.sample_rate}/${fmt.channels || 1}`;
    if (this.decoder && this.decoderFormat === key && this.decoder.state === "configured") return;
    if (!supportsOpusDecoding()) return;
    try { this.decoder?.close(); } catch { /* already closed */ }
    this.decoder = new AudioDecoder({
      output: (audioData) => {
        const n = audioData.numberOfFrames;
        const pcm = new Float32Array(n);
        audioData.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
        const rate = audioData.sampleRate;
        audioData.close();
        const r = this.response;
        if (r && !r.cancelled) this._push(r, pcm, rate);
      },
      error: (e) => this.client._error("audio", "opus_decode_failed", String(e && e.message || e)),
    });
    this.decoder.configure({ codec: "opus", sampleRate: fmt.sample_rate, numberOfChannels: fmt.channels || 1 });
    this.decoderFormat = key;
  }

  _push(r, pcm, rate) {
    if (!pcm.length) return;
    r.pending.push({ pcm, rate });
    const ms = (1000 * pcm.length) / rate;
    r.pendingMs += ms;
    r.receivedMs += ms;
    this._drain(r, false);
    this._ensureTimer();
  }

  /** Jitter buffer: hold the first `jitterBufferMs` of a response, then schedule back to back. */
  _drain(r, force) {
    const ctx = this.ctx;
    if (!ctx || r.cancelled) return;
    if (!r.started) {
      if (!force && r.pendingMs < this.client.options.jitterBufferMs) return;
      if (!r.pending.length) return;
      r.started = true;
      r.startedAt = now();
      const lead = 0.02;
      this.nextTime = Math.max(this.nextTime, ctx.currentTime + lead);
      this.client._onPlaybackStart(r);
    }
    while (r.pending.length) {
      const { pcm, rate } = r.pending.shift();
      r.pendingMs -= (1000 * pcm.length) / rate;
      const buffer = ctx.createBuffer(1, pcm.length, rate);
      buffer.copyToChannel(pcm, 0);
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(this.client._playbackInput());
      if (this.nextTime < ctx.currentTime + 0.005) {
        this.client.stats.underruns += 1;
        this.nextTime = ctx.currentTime + 0.02;
      }
      const when = this.nextTime;
      source.start(when);
      const dur = buffer.duration;
      this.timeline.push({ source, when, dur, pos: r.scheduledMs, response: r });
      r.scheduledMs += dur * 1000;
      this.nextTime = when + dur;
      r.endTime = this.nextTime;
    }
    r.pendingMs = Math.max(0, r.pendingMs);
  }

  /** Milliseconds of `r` played so far. */
  position(r) {
    const ctx = this.ctx;
    if (!ctx || !r) return 0;
    const t = ctx.currentTime;
    let pos = 0;
    for (const seg of this.timeline) {
      if (seg.response !== r || seg.when > t) continue;
      pos = Math.max(pos, seg.pos + Math.min(t - seg.when, seg.dur) * 1000);
    }
    return pos;
  }

  /** Played so far of the responses still on the timeline (not yet in stats.playedMs). */
  unaccountedMs() {
    let ms = 0;
    for (const r of new Set(this.timeline.map((s) => s.response))) if (!r.accounted) ms += this.position(r);
    return ms;
  }

  /** How much scheduled audio is still ahead of the speaker (ms). */
  bufferedMs() {
    const ctx = this.ctx;
    if (!ctx) return 0;
    return Math.max(0, (this.nextTime - ctx.currentTime) * 1000);
  }

  /** Stop now (barge-in, user interrupt); returns the played position in ms. */
  stop(reason, which = null) {
    const targets = new Set();
    if (which) targets.add(which);
    else {
      if (this.response) targets.add(this.response);
      for (const seg of this.timeline) targets.add(seg.response);
    }
    let played = 0;
    for (const r of targets) {
      const pos = this.position(r);
      if (r === which || r === this.response) played = pos;
      const wasAudible = r.started && !r.cancelled && !r.done;
      r.cancelled = true;
      r.pending = [];
      r.pendingMs = 0;
      for (const seg of this.timeline) {
        if (seg.response !== r) continue;
        try { seg.source.stop(); } catch { /* not started */ }
        seg.source.disconnect();
      }
      this.timeline = this.timeline.filter((seg) => seg.response !== r);
      if (wasAudible) {
        this.client._accountPlayed(r, pos);
        this.client._reportPlayback(r, pos, true);
        this.client._onPlaybackEnd(r, { cancelled: true, reason, played_ms: pos });
      }
    }
    if (!this.timeline.length && this.ctx) this.nextTime = this.ctx.currentTime;
    return played;
  }

  _ensureTimer() {
    if (this.timer === null) this.timer = setInterval(() => this._tick(), 50);
  }

  _tick() {
    const ctx = this.ctx;
    if (!ctx) return;
    const t = ctx.currentTime;
    const live = new Set(this.timeline.map((s) => s.response));
    for (const r of live) {
      const pos = this.position(r);
      if (now() - r.lastReport >= this.client.options.playbackReportMs) this.client._reportPlayback(r, pos, false);
      if (r.final && r.endTime !== null && t >= r.endTime && !r.pending.length) {
        r.done = true;
        this.timeline = this.timeline.filter((s) => s.response !== r);
        this.client._accountPlayed(r, r.scheduledMs);
        this.client._reportPlayback(r, r.scheduledMs, true);
        this.client._onPlaybackEnd(r, { cancelled: false, played_ms: r.scheduledMs });
      }
    }
    // Keep the timeline short: segments long finished are only needed for position().
    this.timeline = this.timeline.filter((s) => !(s.when + s.dur < t - 5 && s.response.final));
    if (!this.timeline.length && !(this.response && !this.response.final && !this.response.cancelled)) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  get active() {
    const r = this.response;
    return this.timeline.length > 0 || !!(r && r.started && !r.done && !r.cancelled);
  }

  close() {
    this.stop("closed");
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    try { this.decoder?.close(); } catch { /* closed */ }
    this.decoder = null;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* The client                                                                                   */
/* ------------------------------------------------------------------------------------------ */

export class VoiceWebSocketClient extends Emitter {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.serverUrl) this.options.serverUrl = defaultServerUrl();
    this.ws = null;
    this.state = "disconnected"; // disconnected | connecting | connected | reconnecting
    this.greeting = null;
    this.sessionId = null;
    this.resumeToken = null;
    this.conversationId = null;
    this.audioContext = null;
    this.recording = null; // {mode, codec, sampleRate, stream, node, ...}
    this.player = new Player(this);
    this.stats = this._freshStats();
    this._ids = 0;
    this._idPrefix = Math.random().toString(36).slice(2, 8);
    this._pending = new Map(); // message_id -> {resolve, reject, timer, type}
    this._reliable = new Map(); // message_id -> envelope, until acked
    this._reconnectAttempt = 0;
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._userClosed = false;
    this._turnEndAt = null;
    this._lastMessageAt = 0;
    this._outputGain = null;
  }

  // S1 property names
  get autoReconnect() { return this.options.autoReconnect; }
  set autoReconnect(v) { this.options.autoReconnect = !!v; }
  get maxReconnectAttempts() { return this.options.maxReconnectAttempts; }
  set maxReconnectAttempts(v) { this.options.maxReconnectAttempts = v; }
  get isConnected() { return this.state === "connected"; }
  get isRecording() { return !!this.recording; }
  get isPlaying() { return this.player.active; }

  _freshStats() {
    return {
      bytesSent: 0, bytesReceived: 0, messagesSent: 0, messagesReceived: 0,
      audioFramesSent: 0, audioBytesSent: 0, audioMessagesSent: 0, audioMessagesReceived: 0, audioBytesReceived: 0,
      frameSizes: {}, // bytes per binary message sent -> count
      frameDurationMs: null,
      capturedMs: 0,
      rttMs: null, responseLatencyMs: null, firstAudioLatencyMs: null, bargeInDelayMs: null,
      underruns: 0, playedMs: 0, responses: 0, turns: 0, reconnects: 0, errors: 0,
      codec: null, outputCodec: null,
    };
  }

  _setState(state) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this.emit("stateChange", { state, previous });
  }

  /* -------------------------------- connection -------------------------------- */

  /** Open the WebSocket and wait for the greeting; retries with backoff when autoReconnect is on. */
  async connect() {
    if (this.state === "connected") return this.greeting;
    this._userClosed = false;
    this._reconnectAttempt = 0;
    this._ensureAudioContext();
    this._setState("connecting");
    for (;;) {
      try {
        return await this._open(false);
      } catch (err) {
        if (this._userClosed) throw err;
        if (!this.options.autoReconnect || this._reconnectAttempt >= this.options.maxReconnectAttempts) {
          this._setState("disconnected");
          throw err;
        }
        const delay = this._backoff();
        this.emit("reconnecting", { attempt: this._reconnectAttempt, delayMs: delay, reason: err.message });
        await new Promise((resolve) => { this._reconnectTimer = setTimeout(resolve, delay); });
        if (this._userClosed) throw new TxVoiceError("websocket", "aborted", "connect aborted");
      }
    }
  }

  _backoff() {
    const o = this.options;
    const attempt = this._reconnectAttempt++;
    const base = Math.min(o.reconnectMaxDelayMs, o.reconnectBaseDelayMs * 2 ** attempt);
    return Math.round(base * (0.5 + Math.random() * 0.5));
  }

  _url() {
    let url = this.options.serverUrl;
    if (this.options.authToken) {
      const u = new URL(url);
      u.searchParams.set("token", this.options.authToken);
      url = u.href;
    }
    return url;
  }

  /** One connection attempt: resolves with the greeting (after resuming, when we can). */
  _open(resuming) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this._url(), ["txvoice.v1"]);
      } catch (err) {
        reject(new TxVoiceError("websocket", "bad_url", String(err.message || err)));
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let greeted = false;
      ws.onmessage = (event) => {
        if (!greeted && typeof event.data === "string") {
          let env;
          try { env = JSON.parse(event.data); } catch { env = null; }
          if (env && env.type === "connect" && !env.data?.reply_to) {
            greeted = true;
            this._countIn(event.data);
            this._afterGreeting(env, resuming).then(resolve, reject);
            return;
          }
        }
        this._onMessage(event);
      };
      ws.onerror = () => { /* onclose follows with the details */ };
      ws.onclose = (event) => {
        if (!greeted) {
          if (this.ws === ws) this.ws = null;
          reject(new TxVoiceError("websocket", "connect_failed",
            `could not connect to ${this.options.serverUrl} (close ${event.code}${event.reason ? ": " + event.reason : ""})`,
            { closeCode: event.code }));
          return;
        }
        this._onClose(ws, event);
      };
    });
  }

  async _afterGreeting(greeting, resuming) {
    const previousToken = this.resumeToken;
    this.greeting = greeting.data;
    this.sessionId = greeting.data.session_id;
    this.resumeToken = greeting.data.resume_token || null;
    this._lastMessageAt = now();
    let hello = greeting.data;
    // Say hello (names the client); on a reconnection, hand over the old session's resume token.
    const data = { client: this.options.clientName };
    if (this.options.userId) data.user_id = this.options.userId;
    if (resuming && previousToken) data.resume_token = previousToken;
    try {
      const reply = await this.request("connect", data);
      hello = reply.data;
      this.greeting = hello;
      this.sessionId = hello.session_id;
      this.resumeToken = hello.resume_token || this.resumeToken;
    } catch (err) {
      this._log("connect hello failed", err);
    }
    this._reconnectAttempt = 0;
    this._setState("connected");
    this._startHeartbeat();
    if (resuming) {
      this.stats.reconnects += 1;
      if (!hello.resumed) this.conversationId = null;
      for (const env of this._reliable.values()) this._sendJSON(env);
      this.emit("reconnected", { resumed: !!hello.resumed, sessionId: this.sessionId, previousSessionId: hello.previous_session_id || null, greeting: hello });
      if (this.recording) this._openStream(this.recording).catch((err) => this._error("audio", "stream_reopen_failed", err.message));
    }
    this.emit("connected", hello);
    return hello;
  }

  /**
   * Drop the connection and reconnect now, resuming the session (e.g. after a network change).
   * Also what the heartbeat does when the server has gone quiet.
   */
  reconnect(reason = "client reconnect") {
    const ws = this.ws;
    if (!ws) return false;
    ws._txvoiceReconnect = true;
    ws.close(4000, reason);
    return true;
  }

  _onClose(ws, event) {
    if (this.ws === ws) this.ws = null;
    this._stopHeartbeat();
    for (const [id, p] of this._pending) {
      if (p.reliable && this._reliable.has(id)) continue; // re-sent after reconnecting; its timer still runs
      clearTimeout(p.timer);
      p.reject(new TxVoiceError("websocket", "connection_closed", `connection closed before the answer to ${p.type}`));
      this._pending.delete(id);
    }
    if (this.recording) this.recording.streamReady = false;
    this.player.stop("disconnected"); // the server has dropped the response: so do we
    const reconnectable = ws._txvoiceReconnect || !FINAL_CLOSE_CODES.has(event.code);
    const willReconnect = !this._userClosed && this.options.autoReconnect && reconnectable
      && this._reconnectAttempt < this.options.maxReconnectAttempts;
    this.emit("disconnected", { code: event.code, reason: event.reason, wasClean: event.wasClean, willReconnect });
    if (willReconnect) {
      this._setState("reconnecting");
      this._scheduleReconnect();
    } else {
      this._setState("disconnected");
      if (!this._userClosed && event.code !== 1000) {
        this._error("websocket", "connection_lost", `connection closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
      }
      if (this.recording) this._teardownCapture();
    }
  }

  _scheduleReconnect() {
    const delay = this._backoff();
    this.emit("reconnecting", { attempt: this._reconnectAttempt, delayMs: delay });
    this._reconnectTimer = setTimeout(async () => {
      this._reconnectTimer = null;
      if (this._userClosed) return;
      try {
        await this._open(true);
      } catch (err) {
        if (this._userClosed) return;
        if (this._reconnectAttempt < this.options.maxReconnectAttempts) this._scheduleReconnect();
        else {
          this._setState("disconnected");
          if (this.recording) this._teardownCapture();
          this._error("websocket", "reconnect_failed", `gave up after ${this._reconnectAttempt} attempts: ${err.message}`);
        }
      }
    }, delay);
  }

  /** Close the connection (sends `disconnect`, stops recording and playback). */
  async disconnect(reason = "user left") {
    this._userClosed = true;
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (this.recording) {
      try { await this.stopVoiceRecording(); } catch { /* closing anyway */ }
    }
    this.player.stop("disconnected");
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      try { await this.request("disconnect", { reason }, { timeoutMs: 2000 }); } catch { /* closing anyway */ }
      ws.close(1000, "client disconnect");
    } else if (ws) {
      ws.close();
    }
    this._stopHeartbeat();
    this._reliable.clear();
    this.conversationId = null;
    this._setState("disconnected");
  }

  /* -------------------------------- messages -------------------------------- */

  _nextId() { return `${this._idPrefix}-${++this._ids}`; }

  _sendJSON(env) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    const text = JSON.stringify(env);
    ws.send(text);
    this.stats.messagesSent += 1;
    this.stats.bytesSent += text.length;
    return true;
  }

  /** Send a message; resolves with the server's answer (matched by reply_to), rejects on `error`. */
  request(type, data = {}, { reliable = false, timeoutMs = this.options.requestTimeoutMs } = {}) {
    const env = { type, data, message_id: this._nextId(), timestamp: Date.now() / 1000 };
    if (reliable) { env.reliable = true; this._reliable.set(env.message_id, env); }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(env.message_id);
        reject(new TxVoiceError("timeout", "timeout", `no answer to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(env.message_id, { resolve, reject, timer, type, reliable });
      if (!this._sendJSON(env) && !reliable) {
        clearTimeout(timer);
        this._pending.delete(env.message_id);
        reject(new TxVoiceError("websocket", "not_connected", `cannot send ${type}: not connected`));
      }
    });
  }

  /** Fire and forget. */
  send(type, data = {}) {
    return this._sendJSON({ type, data, message_id: this._nextId(), timestamp: Date.now() / 1000 });
  }

  _sendBinary(buffer) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(buffer);
    const n = buffer.byteLength;
    const s = this.stats;
    s.bytesSent += n;
    s.audioBytesSent += n;
    s.audioMessagesSent += 1;
    s.frameSizes[n] = (s.frameSizes[n] || 0) + 1;
    return true;
  }

  _countIn(text) {
    this.stats.messagesReceived += 1;
    this.stats.bytesReceived += text.length;
  }

  _onMessage(event) {
    this._lastMessageAt = now();
    if (typeof event.data !== "string") {
      const n = event.data.byteLength;
      this.stats.bytesReceived += n;
      this.stats.audioBytesReceived += n;
      this.stats.audioMessagesReceived += 1;
      this.player.audio(event.data);
      return;
    }
    this._countIn(event.data);
    let env;
    try { env = JSON.parse(event.data); } catch {
      this._error("protocol", "invalid_json", "the server sent a text message that is not JSON");
      return;
    }
    const data = env.data || {};
    if (env.conversation_id !== undefined) this.conversationId = env.conversation_id;
    this.emit("message", env);
    if (env.type === "ack") {
      this._reliable.delete(data.message_id);
      return;
    }
    const replyTo = data.reply_to || (env.type === "error" ? data.message_id : null);
    if (replyTo && this._pending.has(replyTo)) {
      const p = this._pending.get(replyTo);
      this._pending.delete(replyTo);
      clearTimeout(p.timer);
      if (env.type === "error") {
        this._reliable.delete(replyTo);
        p.reject(new TxVoiceError("server", data.code, data.message || data.error_message, { data }));
      } else {
        p.resolve(env);
      }
    }
    const handler = this[`_on_${env.type}`];
    if (handler) handler.call(this, data, env);
  }

  _on_error(data) {
    this._error("server", data.code, data.message || data.error_message || data.code, { data });
  }

  _on_disconnect(data) {
    if (data.reason === "server_shutdown") this._log("server shutting down");
  }

  _on_heartbeat(data) {
    const sent = this._heartbeatSent?.get(data.reply_to);
    if (sent !== undefined) {
      this.stats.rttMs = Math.round((now() - sent) * 10) / 10;
      this._heartbeatSent.delete(data.reply_to);
    }
  }

  _on_metrics(data) { this.emit("metrics", data); }

  _on_status(data) {
    this.emit("status", data);
    switch (data.event_type) {
      case "vad":
        this.emit("vad", data);
        break;
      case "turn_start":
        this.emit("turnStart", data);
        break;
      case "turn_end":
        this.stats.turns += 1;
        this._turnEndAt = now();
        this.emit("turnEnd", data);
        break;
      case "barge_in": {
        const played = this.player.stop("barge_in");
        this.stats.bargeInDelayMs = data.detection_delay_ms ?? null;
        this.emit("bargeIn", { ...data, client_played_ms: played });
        break;
      }
      case "transcript":
        this._transcript(data);
        break;
      case "ai_response":
        this._aiResponse(data);
        break;
      default:
        if (/^processing_/.test(data.event_type || "")) this.emit("processing", data);
    }
  }

  // S4 names, should a server send them as message types of their own
  _on_transcript(data) { this._transcript(data); }
  _on_ai_response(data) { this._aiResponse(data); }

  _transcript(data) {
    const text = data.text ?? data.transcript ?? data.content ?? "";
    this.emit("transcript", { ...data, text, final: data.final !== false && data.is_final !== false });
  }

  _aiResponse(data) {
    const text = data.text ?? data.response ?? data.content ?? "";
    this.emit("aiResponse", { ...data, text });
  }

  _on_voice_response(data) {
    this.stats.responses += 1;
    this.stats.outputCodec = data.audio ? `${data.audio.codec}/${data.audio.sample_rate}` : null;
    if (this._turnEndAt !== null) this.stats.responseLatencyMs = Math.round(now() - this._turnEndAt);
    const r = this.player.begin(data);
    r.turnEndAt = this._turnEndAt;
    this.emit("voiceResponse", data);
  }

  _on_voice_stream_chunk(data) {
    if (data.audio && this.player.response && !this.player.response.cancelled) {
      // base64 transport: decode and play like a binary message
      const bin = atob(data.audio);
      const buf = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
      this.player.audio(buf.buffer);
    }
    if (data.final) {
      this.player.end(data);
      this.emit("responseEnd", data);
    }
  }

  _on_conversation_start(data) { this.conversationId = data.conversation_id; }
  _on_conversation_end() { this.conversationId = null; }

  /* -------------------------------- heartbeat -------------------------------- */

  _startHeartbeat() {
    this._stopHeartbeat();
    this._heartbeatSent = new Map();
    const beat = () => {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      // Nothing heard for too long (half-open connection): close, and reconnect.
      if (now() - this._lastMessageAt > this.options.heartbeatIntervalMs + this.options.heartbeatTimeoutMs) {
        this._log("heartbeat timeout: reconnecting");
        this.reconnect("heartbeat timeout");
        return;
      }
      const id = this._nextId();
      this._heartbeatSent.set(id, now());
      if (this._heartbeatSent.size > 8) this._heartbeatSent.delete(this._heartbeatSent.keys().next().value);
      this._sendJSON({ type: "heartbeat", data: {}, message_id: id, timestamp: Date.now() / 1000 });
    };
    this._heartbeatFirst = setTimeout(beat, 300);
    this._heartbeatTimer = setInterval(beat, this.options.heartbeatIntervalMs);
  }

  _stopHeartbeat() {
    clearTimeout(this._heartbeatFirst);
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  /** One application round trip now (updates stats.rttMs). */
  async ping() {
    const t0 = now();
    await this.request("ping", {});
    this.stats.rttMs = Math.round((now() - t0) * 10) / 10;
    return this.stats.rttMs;
  }

  /* -------------------------------- conversations -------------------------------- */

  /** Start a conversation; resolves with its id.  Sent reliably (re-sent after a reconnection). */
  async startConversation(metadata = {}, conversationId = null) {
    const data = { metadata };
    if (conversationId) data.conversation_id = conversationId;
    const reply = await this.request("conversation_start", data, { reliable: true });
    this.conversationId = reply.data.conversation_id;
    return this.conversationId;
  }

  async endConversation() {
    if (!this.conversationId) return null;
    const reply = await this.request("conversation_end", { conversation_id: this.conversationId }, { reliable: true });
    this.conversationId = null;
    return reply.data;
  }

  async getConversationState() {
    return (await this.request("conversation_state", {})).data;
  }

  async getMetrics(subscribe = undefined) {
    const data = subscribe === undefined ? {} : { subscribe };
    return (await this.request("metrics", data)).data;
  }

  /* -------------------------------- audio -------------------------------- */

  _ensureAudioContext() {
    if (!this.audioContext) {
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) throw new TxVoiceError("audio", "no_web_audio", "this browser has no Web Audio API");
      this.audioContext = new AC({ latencyHint: "interactive" });
      this._workletReady = null;
    }
    if (this.audioContext.state === "suspended") this.audioContext.resume().catch(() => {});
    return this.audioContext;
  }

  /** Call from a user gesture (click) so that audio may play and the microphone may start. */
  unlockAudio() { return this._ensureAudioContext().resume(); }

  _playbackInput() {
    const ctx = this.audioContext;
    if (!this._outputGain) {
      this._outputGain = ctx.createGain();
      this.outputAnalyser = ctx.createAnalyser();
      this.outputAnalyser.fftSize = 1024;
      this.outputAnalyser.smoothingTimeConstant = 0.6;
      this.outputAnalyser.minDecibels = -90;
      this.outputAnalyser.maxDecibels = -10;
      this._outputGain.connect(this.outputAnalyser);
      this.outputAnalyser.connect(ctx.destination);
    }
    return this._outputGain;
  }

  async _chooseCodec() {
    const o = this.options;
    let codec = o.codec === "opus" || o.codec === "pcm" ? o.codec : "auto";
    if (codec !== "pcm" && supportsOpusEncoding()) {
      try {
        const support = await AudioEncoder.isConfigSupported(this._encoderConfig());
        if (support.supported) return "opus";
      } catch { /* fall back */ }
    }
    if (codec === "opus") this._log("Opus encoding unavailable: sending PCM");
    return "pcm";
  }

  _encoderConfig() {
    return {
      codec: "opus", sampleRate: 48000, numberOfChannels: 1, bitrate: this.options.opusBitrate,
      opus: { frameDuration: this.options.frameMs * 1000, application: "voip", usedtx: false },
    };
  }

  /**
   * The response format to ask for: PCM16 at `outputSampleRate`, or Opus (48 kHz) when we send
   * Opus and can decode it.  Nothing is declared when it is the input's format (the server's
   * default), so that the server passes its pipeline's audio through unchanged.
   */
  _outputOptions(codec, rate) {
    const o = this.options;
    let out = o.outputCodec;
    if (out === "auto") out = codec === "opus" && supportsOpusDecoding() ? "opus" : "pcm";
    if (out === "opus" && !supportsOpusDecoding()) out = "pcm";
    const wanted = out === "opus"
      ? { output_codec: "opus", output_sample_rate: 48000 }
      : { output_codec: "pcm_s16le", output_sample_rate: o.outputSampleRate };
    const input = { output_codec: codec === "opus" ? "opus" : "pcm_s16le", output_sample_rate: rate };
    if (wanted.output_codec === input.output_codec && wanted.output_sample_rate === input.output_sample_rate) return {};
    return wanted;
  }

  /**
   * Open the microphone and a voice stream.  `mode`: "push_to_talk" (a turn until
   * stopVoiceRecording), "voice_activity" / "adaptive" (the server cuts turns at silences) or
   * "continuous".  Resolves with the server's voice_start answer.
   */
  async startVoiceRecording(mode = "push_to_talk", options = {}) {
    if (this.recording) throw new TxVoiceError("audio", "already_recording", "already recording");
    if (this.state !== "connected") throw new TxVoiceError("websocket", "not_connected", "connect first");
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new TxVoiceError("audio", "insecure_context",
        "microphone access needs a secure page (https:// or http://localhost)");
    }
    const wireMode = MODES[mode] || mode;
    const ctx = this._ensureAudioContext();
    await ctx.resume();
    if (this.player.active) this.stopPlayback("interrupted"); // the user talks over the reply
    const codec = await this._chooseCodec();
    const rate = codec === "opus" ? 48000 : this.options.sampleRate;
    const rec = {
      mode: wireMode, codec, sampleRate: rate, options, streamReady: false, queue: [], stopping: false,
      frames: 0, startedAt: now(), encoder: null, stream: null, source: null, node: null, sink: null,
      framesPerMessage: codec === "pcm" ? Math.max(1, Math.round(this.options.chunkSizeMs / this.options.frameMs)) : 1,
      batch: [],
    };
    this.recording = rec;
    this.stats.codec = codec === "opus" ? "opus/48000" : `pcm_s16le/${rate}`;
    this.stats.frameDurationMs = this.options.frameMs;
    try {
      rec.stream = await navigator.mediaDevices.getUserMedia({ audio: this.options.audioConstraints, video: false });
      if (!this._workletReady) this._workletReady = ctx.audioWorklet.addModule(WORKLET_URL);
      await this._workletReady;
      if (codec === "opus") this._startEncoder(rec);
      rec.source = ctx.createMediaStreamSource(rec.stream);
      rec.node = new AudioWorkletNode(ctx, "txvoice-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { targetRate: rate, frameMs: this.options.frameMs, format: codec === "opus" ? "f32" : "pcm16" },
      });
      rec.node.port.onmessage = (e) => this._onCaptureMessage(rec, e.data);
      this.inputAnalyser = ctx.createAnalyser();
      this.inputAnalyser.fftSize = 1024;
      this.inputAnalyser.smoothingTimeConstant = 0.6;
      this.inputAnalyser.minDecibels = -90;
      this.inputAnalyser.maxDecibels = -10;
      rec.sink = ctx.createGain();
      rec.sink.gain.value = 0; // keeps the worklet pulled without making the microphone audible
      rec.source.connect(this.inputAnalyser);
      rec.source.connect(rec.node);
      rec.node.connect(rec.sink);
      rec.sink.connect(ctx.destination);
      const reply = await this._openStream(rec);
      rec.node.port.postMessage({ type: "start" });
      this.emit("recordingStart", { mode: wireMode, codec, sampleRate: rate, stream: reply.data });
      return reply.data;
    } catch (err) {
      this._teardownCapture();
      const e = err instanceof TxVoiceError ? err
        : new TxVoiceError("audio", err.name === "NotAllowedError" ? "microphone_denied" : "capture_failed",
          `${err.name || "Error"}: ${err.message || err}`);
      this._error(e.type, e.code, e.message);
      throw e;
    }
  }

  async _openStream(rec) {
    rec.streamReady = false;
    const o = this.options;
    const options = { enable_vad: o.enableVAD, ...this._outputOptions(rec.codec, rec.sampleRate), ...rec.options };
    if (o.vadThreshold !== null) options.vad_threshold = o.vadThreshold;
    if (o.silenceMs !== null) options.silence_ms = o.silenceMs;
    const reply = await this.request("voice_start", {
      codec: rec.codec === "opus" ? "opus" : "pcm_s16le", sample_rate: rec.sampleRate, channels: 1,
      frame_duration_ms: o.frameMs, mode: rec.mode, response_audio: "binary", options,
    });
    rec.streamId = reply.data.stream_id;
    rec.streamReady = true;
    for (const buf of rec.queue.splice(0)) this._sendBinary(buf);
    return reply;
  }

  _startEncoder(rec) {
    rec.encoder = new AudioEncoder({
      output: (chunk) => {
        const buf = new ArrayBuffer(chunk.byteLength);
        chunk.copyTo(buf);
        this._sendAudio(rec, buf);
      },
      error: (e) => this._error("audio", "opus_encode_failed", String(e && e.message || e)),
    });
    rec.encoder.configure(this._encoderConfig());
    rec.timestamp = 0;
  }

  _onCaptureMessage(rec, msg) {
    if (msg.type === "frame") {
      rec.frames += 1;
      this.stats.audioFramesSent += 1;
      this.stats.capturedMs += this.options.frameMs;
      const db = msg.rms > 0 ? 20 * Math.log10(msg.rms) : -120;
      this.emit("level", { rms: msg.rms, peak: msg.peak, db });
      if (rec.encoder) {
        const data = new Float32Array(msg.data);
        const audio = new AudioData({
          format: "f32", sampleRate: rec.sampleRate, numberOfChannels: 1, numberOfFrames: data.length,
          timestamp: rec.timestamp, data,
        });
        rec.timestamp += (1e6 * data.length) / rec.sampleRate;
        rec.encoder.encode(audio);
        audio.close();
      } else if (rec.framesPerMessage > 1) {
        rec.batch.push(new Uint8Array(msg.data));
        if (rec.batch.length >= rec.framesPerMessage) this._flushBatch(rec);
      } else {
        this._sendAudio(rec, msg.data);
      }
    } else if (msg.type === "stopped") {
      rec.onStopped?.();
    }
  }

  _flushBatch(rec) {
    if (!rec.batch.length) return;
    const total = rec.batch.reduce((n, b) => n + b.length, 0);
    const out = new Uint8Array(total);
    let off = 0;
    for (const b of rec.batch) { out.set(b, off); off += b.length; }
    rec.batch = [];
    this._sendAudio(rec, out.buffer);
  }

  _sendAudio(rec, buffer) {
    if (rec.streamReady) this._sendBinary(buffer);
    else if (rec.queue.length < 500) rec.queue.push(buffer); // until voice_start is answered (or we reconnect)
  }

  /** Stop the microphone and close the voice stream; resolves with the voice_end answer. */
  async stopVoiceRecording() {
    const rec = this.recording;
    if (!rec || rec.stopping) return null;
    rec.stopping = true;
    // Let the worklet post its last (zero-padded) frame, and the encoder its last packets.
    if (rec.node) {
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 300);
        rec.onStopped = () => { clearTimeout(t); resolve(); };
        rec.node.port.postMessage({ type: "stop" });
      });
    }
    this._flushBatch(rec);
    if (rec.encoder && rec.encoder.state === "configured") {
      try { await rec.encoder.flush(); } catch { /* closed */ }
    }
    this._teardownCapture();
    if (rec.mode === "push_to_talk") this._turnEndAt = now();
    let answer = null;
    if (this.state === "connected" && rec.streamReady) {
      try {
        answer = (await this.request("voice_end", { stream_id: rec.streamId })).data;
      } catch (err) {
        this._log("voice_end failed", err);
      }
    }
    this.emit("recordingStop", { mode: rec.mode, frames: rec.frames, durationMs: now() - rec.startedAt, server: answer });
    return answer;
  }

  _teardownCapture() {
    const rec = this.recording;
    if (!rec) return;
    this.recording = null;
    try { rec.node?.port.postMessage({ type: "close" }); } catch { /* gone */ }
    try { rec.source?.disconnect(); } catch { /* gone */ }
    try { rec.node?.disconnect(); } catch { /* gone */ }
    try { rec.sink?.disconnect(); } catch { /* gone */ }
    try { if (rec.encoder && rec.encoder.state !== "closed") rec.encoder.close(); } catch { /* gone */ }
    rec.stream?.getTracks().forEach((t) => t.stop());
    this.inputAnalyser = null;
  }

  /** Stop playing the current response now (the position is reported to the server). */
  stopPlayback(reason = "stopped") { return this.player.stop(reason); }

  _onPlaybackStart(r) {
    if (r.turnEndAt != null) this.stats.firstAudioLatencyMs = Math.round(now() - r.turnEndAt);
    this.emit("playbackStart", { response_id: r.id, text: r.text, format: r.format });
  }

  _onPlaybackEnd(r, info) {
    this.emit("playbackEnd", { response_id: r.id, text: r.text, ...info });
  }

  _accountPlayed(r, pos) {
    if (r.accounted) return;
    r.accounted = true;
    this.stats.playedMs += pos;
  }

  _reportPlayback(r, pos, force) {
    if (!r.id) return;
    if (!force && r.lastReportedPos === pos) return;
    r.lastReport = now();
    r.lastReportedPos = pos;
    this.send("playback", { response_id: r.id, position_ms: Math.round(pos) });
  }

  /* -------------------------------- misc -------------------------------- */

  _error(type, code, message, details = {}) {
    this.stats.errors += 1;
    const err = { type, code, message, error_message: message, ...details };
    this.emit("error", err);
  }

  _log(...args) {
    if (this.options.debug) console.debug("txvoice:", ...args);
  }

  /** A snapshot of the counters; `playedMs` includes what is playing now. */
  getStats() {
    return {
      ...this.stats, frameSizes: { ...this.stats.frameSizes }, jitterBufferMs: Math.round(this.player.bufferedMs()),
      playedMs: this.stats.playedMs + this.player.unaccountedMs(),
    };
  }

  /** Release everything (microphone, audio context, connection). */
  async close() {
    await this.disconnect();
    this.player.close();
    if (this.audioContext) await this.audioContext.close().catch(() => {});
    this.audioContext = null;
  }
}

export default VoiceWebSocketClient;
