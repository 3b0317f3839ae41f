/*
 * txvoice realtime dialect (seed S4) test client: S4's own flow, as its documentation writes it.
 *
 *   POST /auth/websocket {token, userId, callId} -> {sessionToken}
 *   ws://HOST/realtime/ws, session_start {userId, callId, authToken}
 *   MediaRecorder('audio/webm;codecs=opus').start(100), each chunk sent as a binary message
 *   transcript / ai_response / audio_response + binary audio / processing_status / heartbeat
 *
 * Also defines the global playAudioResponse(data) that S4's handleMessage calls for binary
 * messages: the server's response audio is PCM16 mono (16 kHz unless session_start asked
 * otherwise), played gap-free through one AudioContext.  Reconnection follows S4's
 * updateReconnectionConfig: maxAttempts, baseDelay, maxDelay, backoffFactor (exponential
 * backoff); a reconnect exchanges a new session token and resends session_start for the same
 * call, so the server hands over what it queued meanwhile.
 */
(function () {
  "use strict";

  // ---------------------------------------------------------------- playback (S4's playAudioResponse)

  const playback = { chunks: 0, bytes: 0, playedMs: 0, sampleRate: 16000, ctx: null, next: 0, playing: 0 };
  window.realtimePlayback = playback;

  function audioContext() {
    if (!playback.ctx) playback.ctx = new AudioContext();
    if (playback.ctx.state === "suspended") playback.ctx.resume();
    return playback.ctx;
  }

  /** Play one binary response chunk (Blob or ArrayBuffer of PCM16 little-endian mono). */
  async function playAudioResponse(data) {
    const buf = data instanceof Blob ? await data.arrayBuffer() : data;
    const samples = new Int16Array(buf, 0, Math.floor(buf.byteLength / 2));
    if (!samples.length) return;
    const ctx = audioContext();
    const audio = ctx.createBuffer(1, samples.length, playback.sampleRate);
    const out = audio.getChannelData(0);
    for (let i = 0; i < samples.length; i++) out[i] = samples[i] / 32768;
    const source = ctx.createBufferSource();
    source.buffer = audio;
    source.connect(ctx.destination);
    const at = Math.max(ctx.currentTime + 0.02, playback.next);
    source.start(at);
    playback.next = at + audio.duration;
    playback.chunks += 1;
    playback.bytes += buf.byteLength;
    playback.playing += 1;
    source.onended = () => { playback.playing -= 1; playback.playedMs += audio.duration * 1000; };
  }
  window.playAudioResponse = playAudioResponse;

  // ---------------------------------------------------------------- the client

  const envelope = (type, callId, data) => JSON.stringify({ type, callId: callId || "", timestamp: Date.now(), data: data || {} });

  class RealtimeClient {
    constructor(options) {
      this.url = options.url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/realtime/ws`;
      this.jwt = options.jwt;
      this.userId = options.userId;
      this.callId = options.callId;
      this.reconnection = Object.assign({ enabled: true, maxAttempts: 5, baseDelay: 1000, maxDelay: 30000, backoffFactor: 2.0 },
        options.reconnection || {});
      this.on = options.on || {};
      this.ws = null;
      this.attempts = 0;
      this.sessionActive = false;
      this.wantSession = false;
      this.closedByUser = false;
      this.stats = { bytesSent: 0, bytesReceived: 0, heartbeatsAnswered: 0, reconnects: 0, startedAt: Date.now() };
    }

    /** S4's updateReconnectionConfig. */
    updateReconnectionConfig(config) { Object.assign(this.reconnection, config); }

    /** The delay before reconnection attempt n (1-based): baseDelay * backoffFactor^(n-1), at most maxDelay. */
    backoffDelay(n) {
      const r = this.reconnection;
      return Math.min(r.maxDelay, r.baseDelay * Math.pow(r.backoffFactor, n - 1));
    }

    connect() {
      this.closedByUser = false;
      return new Promise((resolve, reject) => {
        const ws = this.ws = new WebSocket(this.url);
        ws.onopen = () => { this.attempts = 0; this._emit("open"); resolve(); if (this.wantSession) this.startSession(); };
        ws.onmessage = (event) => this._message(event);
        ws.onerror = () => this._emit("log", "WebSocket error");
        ws.onclose = (event) => {
          this.sessionActive = false;
          this._emit("close", event);
          if (ws.readyState !== WebSocket.OPEN) reject(new Error(`closed ${event.code}`));
          if (!this.closedByUser) this._reconnect();
        };
      });
    }

    _reconnect() {
      const r = this.reconnection;
      if (!r.enabled || this.attempts >= r.maxAttempts) { this._emit("log", "not reconnecting"); return; }
      this.attempts += 1;
      const delay = this.backoffDelay(this.attempts);
      this._emit("log", `reconnecting in ${delay} ms (attempt ${this.attempts}/${r.maxAttempts})`);
      setTimeout(() => { this.stats.reconnects += 1; this.connect().catch(() => {}); }, delay);
    }

    disconnect() {
      this.closedByUser = true;
      this.wantSession = false;
      this.stopRecording();
      if (this.ws) this.ws.close(1000, "client disconnect");
    }

    async sessionToken() {
      const response = await fetch("/auth/websocket", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: this.jwt, userId: this.userId, callId: this.callId }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(`token exchange failed: ${JSON.stringify(body)}`);
      return body.sessionToken;
    }

    async startSession(options) {
      this.wantSession = true;
      let authToken = this.jwt;
      try { authToken = await this.sessionToken(); } catch (e) { this._emit("log", String(e)); }
      this.send("session_start", Object.assign({ userId: this.userId, callId: this.callId, authToken }, options || {}));
    }

    endSession() {
      this.wantSession = false;
      this.stopRecording();
      this.send("session_end", {});
    }

    send(type, data) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      const text = envelope(type, this.callId, data);
      this.stats.bytesSent += text.length;
      this.ws.send(text);
      return true;
    }

    async startRecording() {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, sampleRate: 16000, echoCancellation: true, noiseSuppression: true },
      });
      this.stream = stream;
      this.recorder = new MediaRecorder(stream, { mimeType: "audio/webm;codecs=opus" });
      this.recorder.ondataavailable = (event) => {
        if (event.data.size > 0 && this.ws && this.ws.readyState === WebSocket.OPEN) {
          this.stats.bytesSent += event.data.size;
          this.ws.send(event.data);
        }
      };
      this.recorder.start(100);
      this._emit("recording", stream);
    }

    stopRecording() {
      if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
      if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
      this.recorder = null;
      this.stream = null;
    }

    _message(event) {
      if (typeof event.data !== "string") {
        this.stats.bytesReceived += event.data.size || event.data.byteLength || 0;
        playAudioResponse(event.data);
        return;
      }
      this.stats.bytesReceived += event.data.length;
      const message = JSON.parse(event.data);
      const data = message.data || {};
      switch (message.type) {
        case "heartbeat":
          if (data.ping) {
            // Respond to heartbeat (S4's handler).
            this.ws.send(JSON.stringify({ type: "heartbeat", callId: "", timestamp: Date.now(), data: { pong: true } }));
            this.stats.heartbeatsAnswered += 1;
          }
          break;
        case "connection_status":
          if (data.status === "session_started") this.sessionActive = true;
          if (data.status === "session_ended") this.sessionActive = false;
          break;
        case "audio_response":
          if (data.status === "start" && data.sampleRate) playback.sampleRate = data.sampleRate;
          break;
      }
      this._emit("message", message);
    }

    _emit(name, value) { if (this.on[name]) this.on[name](value); }
  }
  window.RealtimeClient = RealtimeClient;

  // ---------------------------------------------------------------- the page

  const $ = (id) => document.getElementById(id);

  const RealtimeClientPage = {
    client: null,
    log(text, cls) {
      const line = document.createElement("div");
      line.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
      if (cls) line.className = cls;
      $("rt-log").appendChild(line);
      $("rt-log").scrollTop = 1e9;
    },
    say(who, text) {
      const line = document.createElement("div");
      line.className = who;
      line.textContent = `${who === "user" ? "You" : "AI"}: ${text}`;
      $("conversation").appendChild(line);
    },
    state(s) { $("conn").dataset.state = s; $("conn-label").textContent = s; },
    make() {
      const page = this;
      return new RealtimeClient({
        jwt: $("jwt").value, userId: $("user-id").value, callId: $("call-id").value,
        reconnection: {
          maxAttempts: Number($("max-attempts").value), baseDelay: Number($("base-delay").value),
          maxDelay: Number($("max-delay").value), backoffFactor: Number($("backoff-factor").value),
        },
        on: {
          open() { page.state("connected"); page.log("connected"); },
          close(e) { page.state("disconnected"); page.log(`closed ${e.code} ${e.reason}`); },
          log(t) { page.log(t); },
          recording(stream) { page.visualize(stream); },
          message(m) { page.onMessage(m); },
        },
      });
    },
    onMessage(m) {
      const d = m.data || {};
      if (m.type === "transcript" && d.isFinal) this.say("user", d.text);
      else if (m.type === "ai_response") this.say("ai", d.text);
      else if (m.type === "error") this.log(`error ${d.code}: ${d.message}`, "err");
      else if (m.type === "processing_status" && d.latency) {
        const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);
        $("m-latency").textContent = ms(d.latency.total);
        $("m-stt").textContent = ms(d.latency.speechToText);
        $("m-ai").textContent = ms(d.latency.aiGeneration);
        $("m-tts").textContent = ms(d.latency.textToSpeech);
      }
      if (m.type !== "heartbeat" && m.type !== "processing_status") this.log(`${m.type} ${JSON.stringify(d).slice(0, 160)}`);
      const s = this.client.stats;
      $("m-sent").textContent = `${s.bytesSent} B`;
      $("m-recv").textContent = `${s.bytesReceived} B`;
      $("m-rate").textContent = `${Math.round((s.bytesSent + s.bytesReceived) / Math.max(1, (Date.now() - s.startedAt) / 1000))} B/s`;
      $("m-hb").textContent = String(s.heartbeatsAnswered);
      $("m-reconnects").textContent = String(s.reconnects);
    },
    visualize(stream) {
      const ctx = audioContext();
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      ctx.createMediaStreamSource(stream).connect(analyser);
      const wave = new Uint8Array(analyser.fftSize), freq = new Uint8Array(analyser.frequencyBinCount);
      const draw = () => {
        if (!this.client || !this.client.stream) return;
        analyser.getByteTimeDomainData(wave);
        analyser.getByteFrequencyData(freq);
        const w = $("waveform").getContext("2d"), f = $("frequency").getContext("2d");
        w.clearRect(0, 0, 600, 90); f.clearRect(0, 0, 600, 90);
        w.strokeStyle = "#2dd4bf"; w.beginPath();
        for (let i = 0; i < wave.length; i++) w.lineTo((i / wave.length) * 600, (wave[i] / 255) * 90);
        w.stroke();
        f.fillStyle = "#60a5fa";
        for (let i = 0; i < freq.length; i += 4) f.fillRect((i / freq.length) * 600, 90 - (freq[i] / 255) * 90, 2, 90);
        requestAnimationFrame(draw);
      };
      draw();
    },
    init() {
      $("connect-btn").onclick = () => { this.client = this.make(); this.client.connect().catch((e) => this.log(String(e), "err")); };
      $("disconnect-btn").onclick = () => this.client && this.client.disconnect();
      $("start-btn").onclick = () => this.client && this.client.startSession();
      $("end-btn").onclick = () => this.client && this.client.endSession();
      $("record-btn").onclick = () => {
        if (!this.client) return;
        if (this.client.recorder) { this.client.stopRecording(); $("record-btn").textContent = "Record"; }
        else { this.client.startRecording().then(() => { $("record-btn").textContent = "Stop"; }); }
      };
    },
  };
  window.RealtimeClientPage = RealtimeClientPage;
})();
