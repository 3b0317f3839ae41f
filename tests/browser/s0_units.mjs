// Deterministic checks of /static/s0/index.js in Node (node --test): a fake clock and a fake
// WebSocket stand in for the browser, so backoff, the circuit breaker, the queue and the ack
// bookkeeping are checked step by step.  Run by tests/browser/test_browser_s0.py.
import { test } from "node:test";
import assert from "node:assert/strict";

/* ---- fake clock ---- */
let clock = 0;
let timers = [];
let nextTimer = 1;
const schedule = (fn, ms, every) => { const id = nextTimer++; timers.push({ id, at: clock + Math.max(0, ms || 0), fn, every }); return id; };
globalThis.setTimeout = (fn, ms) => schedule(fn, ms, null);
globalThis.setInterval = (fn, ms) => schedule(fn, ms, Math.max(1, ms || 0));
globalThis.clearTimeout = globalThis.clearInterval = (id) => { timers = timers.filter((t) => t.id !== id); };
Object.defineProperty(globalThis, "performance", { value: { now: () => clock }, configurable: true, writable: true });
async function advance(ms) {
  const end = clock + ms;
  for (;;) {
    timers.sort((a, b) => a.at - b.at || a.id - b.id);
    const t = timers[0];
    if (!t || t.at > end) break;
    clock = t.at;
    if (t.every) t.at += t.every; else timers.shift();
    t.fn();
    await flushMicrotasks();
  }
  clock = end;
  await flushMicrotasks();
}
async function flushMicrotasks() { for (let i = 0; i < 20; i++) await Promise.resolve(); }

/* ---- fake WebSocket: each one is answered by the test ---- */
const sockets = [];
let serverUp = true;
class FakeWebSocket {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url, protocols) {
    this.url = url; this.protocols = protocols; this.readyState = 0; this.sent = []; this.bufferedAmount = 0;
    this.protocol = "txvoice.v1";
    sockets.push(this);
    setTimeout(() => (serverUp ? this._accept() : this._refuse()), 5);
  }
  _accept() {
    this.readyState = 1;
    this.onopen?.({});
    this.serverSend({ type: "connect", data: { status: "connected", session_id: `sess_${sockets.length}`, resume_token: `tok${sockets.length}`, config: { sample_rate: 16000 } } });
  }
  _refuse() { this.readyState = 3; this.onclose?.({ code: 1006, reason: "", wasClean: false, target: this }); }
  serverSend(env) { this.onmessage?.({ data: JSON.stringify({ message_id: "srv", timestamp: 0, conversation_id: null, ...env }), timeStamp: clock }); }
  send(payload) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(payload);
    if (typeof payload !== "string") return;
    const env = JSON.parse(payload);
    if (env.type === "connect") this.serverSend({ type: "connect", data: { status: "connected", session_id: "sess", reply_to: env.message_id } });
  }
  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason, wasClean: true, target: this }), 1);
  }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: "", wasClean: false, target: this }); }
  get texts() { return this.sent.filter((p) => typeof p === "string").map((p) => JSON.parse(p)); }
}
globalThis.WebSocket = FakeWebSocket;
globalThis.btoa = (s) => Buffer.from(s, "binary").toString("base64");

const s0 = await import(new URL("../../txvoice/static/s0/index.js", import.meta.url).href);
const { WebSocketService, MessageQueue, CircuitBreaker, LogLevel, getLogEntries, clearLogEntries, configureLogging, audioLoggers } = s0;

function reset() { sockets.length = 0; serverUp = true; timers = []; }
const last = () => sockets[sockets.length - 1];
const appTexts = (ws) => ws.texts.filter((m) => m.type !== "connect" && m.type !== "heartbeat");

test("MessageQueue: priority 1 first, first come first within a priority; full: the least urgent best-effort goes", () => {
  const q = new MessageQueue({ maxSize: 4 });
  q.enqueue({ id: "a", priority: 5, reliable: false });
  q.enqueue({ id: "b", priority: 1, reliable: true });
  q.enqueue({ id: "c", priority: 5, reliable: true });
  q.enqueue({ id: "d", priority: 1, reliable: false });
  const dropped = [];
  q.on("dropped", (item, reason) => dropped.push([item.id, reason]));
  assert.equal(q.enqueue({ id: "e", priority: 9, reliable: false }), false); // less urgent than every best-effort one
  assert.equal(q.enqueue({ id: "f", priority: 2, reliable: true }), true); // pushes out "a"
  assert.deepEqual(dropped, [["a", "queue_full"]]);
  assert.deepEqual(q.toArray().map((i) => i.id), ["b", "d", "f", "c"]);
  assert.equal(MessageQueue.clampPriority(0), 1);
  assert.equal(MessageQueue.clampPriority(99), 10);
});

test("CircuitBreaker: opens at the threshold, half-opens after resetTimeout, closes on success, reopens on a failed probe", async () => {
  reset();
  const cb = new CircuitBreaker({ failureThreshold: 3, resetTimeout: 1000 });
  const states = [];
  cb.on("stateChange", (e) => states.push(e.state));
  cb.recordFailure(); cb.recordFailure();
  assert.equal(cb.state, "closed");
  cb.recordFailure();
  assert.equal(cb.state, "open");
  assert.equal(cb.canAttempt(), false);
  await advance(999);
  assert.equal(cb.state, "open");
  await advance(1);
  assert.equal(cb.state, "half_open");
  cb.recordFailure();
  assert.equal(cb.state, "open");
  await advance(1000);
  assert.equal(cb.canAttempt(), true);
  cb.recordSuccess();
  assert.deepEqual(states, ["open", "half_open", "open", "half_open", "closed"]);
  cb.dispose();
});

test("send(): native objects as they are, payloads in a ping, binary as binary, reliable binary as voice_chunk", async () => {
  reset();
  const ws = new WebSocketService({ url: "ws://x/", heartbeatInterval: 0 });
  const done = ws.connect();
  await advance(10);
  await done;
  const sock = last();
  ws.send({ type: "conversation_start", data: { metadata: { a: 1 } } }, 1, true);
  ws.send('{"type":"status","data":{}}');
  ws.send({ text: "hi" });
  ws.send("plain");
  const buf = new Uint8Array([1, 2, 3]).buffer;
  ws.send(buf);
  ws.send(new Uint8Array([4, 5]), 2, true);
  const t = appTexts(sock);
  assert.equal(t[0].type, "conversation_start");
  assert.deepEqual(t[0].data, { metadata: { a: 1 } });
  assert.equal(t[0].reliable, true);
  assert.equal(t[1].type, "status");
  assert.deepEqual([t[2].type, t[2].data], ["ping", { payload: { text: "hi" } }]);
  assert.deepEqual(t[3].data, { payload: "plain" });
  assert.ok(sock.sent.includes(buf));
  assert.deepEqual([t[4].type, t[4].data.audio, t[4].reliable], ["voice_chunk", "BAU=", true]);
  assert.equal(ws.unacked.size, 2);
  sock.serverSend({ type: "ack", data: { message_id: t[0].message_id, duplicate: false } });
  sock.serverSend({ type: "error", data: { code: "no_active_stream", message_id: t[4].message_id } });
  assert.equal(ws.unacked.size, 0);
  ws.dispose();
});

test("offline: best-effort dropped, reliable kept and re-sent once after reconnecting, in priority order", async () => {
  reset();
  const ws = new WebSocketService({ url: "ws://x/", heartbeatInterval: 0, reconnectDelay: 100, reconnectJitter: 0 });
  const done = ws.connect();
  const early = ws.send({ n: "early" }, 5, false); // queued during the first connect()
  await advance(10);
  await done;
  assert.ok(early);
  assert.equal(appTexts(last())[0].data.payload.n, "early");
  const unackedBefore = ws.send({ n: "sent-not-acked" }, 5, true);
  const first = last();
  first.drop(1006);
  assert.equal(ws.state, "reconnecting");
  const drops = [];
  ws.on("messageDropped", (e) => drops.push(e.reason));
  assert.equal(ws.send({ n: "be" }, 1, false), null);
  assert.deepEqual(drops, ["offline"]);
  ws.send({ n: "low" }, 8, true);
  ws.send({ n: "high" }, 1, true);
  await advance(99);
  assert.equal(sockets.length, 1); // the backoff: 100 ms with no jitter
  await advance(20);
  assert.equal(sockets.length, 2);
  assert.equal(ws.state, "connected");
  const order = appTexts(last()).map((m) => m.data.payload.n);
  assert.deepEqual(order, ["high", "sent-not-acked", "low"]);
  assert.equal(appTexts(last())[1].message_id, unackedBefore); // the same id: the server de-duplicates
  ws.dispose();
});

test("backoff: doubles from reconnectDelay, capped, jitter takes up to its share off", async () => {
  const ws = new WebSocketService({ url: "ws://x/", reconnectDelay: 1000, maxReconnectDelay: 5000, reconnectJitter: 0.5 });
  const random = Math.random;
  try {
    Math.random = () => 0;
    assert.deepEqual([1, 2, 3, 4].map((n) => ws._backoff(n)), [1000, 2000, 4000, 5000]);
    Math.random = () => 0.999999;
    assert.deepEqual([1, 2, 3].map((n) => ws._backoff(n)), [500, 1000, 2000]);
  } finally {
    Math.random = random;
  }
});

test("the breaker inside the service: 3 refused attempts open it, no attempt while open, recovery closes it", async () => {
  reset();
  const ws = new WebSocketService({ url: "ws://x/", heartbeatInterval: 0, reconnectDelay: 50, reconnectJitter: 0,
    maxReconnectAttempts: 10, circuitBreaker: { failureThreshold: 3, resetTimeout: 1000 } });
  const circuit = [];
  ws.on("circuitStateChange", (e) => circuit.push([e.state, Math.round(clock)]));
  const done = ws.connect();
  await advance(10);
  await done;
  serverUp = false;
  last().drop(1006);
  await advance(50 + 5 + 100 + 5 + 200 + 5); // three attempts, each refused
  assert.deepEqual(circuit.map((c) => c[0]), ["open"]);
  const made = sockets.length;
  assert.equal(ws.send({ n: "x" }, 1, false), null);
  await advance(900);
  assert.equal(sockets.length, made); // nothing while open
  serverUp = true;
  await advance(200);
  assert.deepEqual(circuit.map((c) => c[0]), ["open", "half_open", "closed"]);
  assert.equal(ws.state, "connected");
  assert.ok(circuit[1][1] - circuit[0][1] >= 1000);
  ws.dispose();
});

test("maxReconnectAttempts: then 'failed' and reconnectFailed; connect() rejects", async () => {
  reset();
  serverUp = false;
  const ws = new WebSocketService({ url: "ws://x/", maxReconnectAttempts: 2, reconnectDelay: 10, reconnectJitter: 0, circuitBreaker: { enabled: false } });
  let failed = null;
  ws.on("reconnectFailed", (e) => { failed = e.attempts; });
  const done = ws.connect().then(() => "resolved", (e) => e.code);
  await advance(200);
  assert.equal(await done, "connect_failed");
  assert.equal(failed, 2);
  assert.equal(ws.state, "failed");
  assert.equal(sockets.length, 3);
});

test("heartbeat: sent every interval; silence beyond interval + timeout reconnects", async () => {
  reset();
  const ws = new WebSocketService({ url: "ws://x/", heartbeatInterval: 1000, heartbeatTimeout: 500, reconnectDelay: 10, reconnectJitter: 0 });
  let timeouts = 0;
  ws.on("heartbeatTimeout", () => { timeouts += 1; });
  const done = ws.connect();
  await advance(10);
  await done;
  const sock = last();
  await advance(1000);
  assert.equal(sock.texts.filter((m) => m.type === "heartbeat").length, 1);
  await advance(1000);
  assert.equal(timeouts, 1);
  await advance(50);
  assert.equal(sockets.length, 2);
  assert.equal(ws.state, "connected");
  ws.dispose();
});

test("loggers: structured entries; debug means TRACE; S0's enable switches", () => {
  clearLogEntries();
  configureLogging({ level: LogLevel.INFO });
  s0.networkLoggers.websocket.debug("hidden");
  s0.networkLoggers.websocket.error("Connection failed:", new Error("boom"));
  s0.audioLoggers.session.info("Initializing WASM module", { step: 1 });
  let entries = getLogEntries();
  assert.equal(entries.length, 2);
  assert.deepEqual([entries[0].levelName, entries[0].logger, entries[0].category, entries[0].error.message],
    ["ERROR", "network.websocket", "websocket", "boom"]);
  assert.deepEqual(entries[1].data, { step: 1 });
  configureLogging({ debug: true, level: LogLevel.DEBUG, enableResampler: false });
  assert.equal(s0.getLogLevel(), LogLevel.TRACE);
  audioLoggers.processor.trace("t");
  audioLoggers.resampler.info("off");
  entries = getLogEntries({ minLevel: LogLevel.TRACE });
  assert.equal(entries.at(-1).message, "t");
  assert.ok(!entries.some((e) => e.message === "off"));
  configureLogging({ level: LogLevel.INFO, enableResampler: true });
});
