/*
 * S0's browser API on txvoice: a plain ES module served by the daemon at /static/s0/index.js
 * (TypeScript declarations beside it, /static/s0/index.d.ts).  No build step, no dependencies.
 *
 *   import { WebSocketService, networkLoggers } from "/static/s0/index.js";
 *   const ws = new WebSocketService({ url: "ws://127.0.0.1:8765/", autoReconnect: true,
 *                                     maxReconnectAttempts: 5, reconnectDelay: 1000 });
 *   ws.connect().then(() => networkLoggers.websocket.info("Connected!"));
 *   ws.send(data, 1, true);   // high priority, reliable: re-sent until the server's `ack`
 *   ws.send(data, 5, false);  // low priority, best effort: dropped while offline
 *   ws.on("message", (event) => console.log(event.data));
 *
 * What S0's calls become in txvoice's native protocol (txvoice.v1, doc/protocol.md) is described
 * in doc/browser-s0.md.  Audio capture reuses the S1 client's AudioWorklet (../capture-worklet.js:
 * resampling to the server's rate and exact 20 ms frames); errors are the S1 client's TxVoiceError.
 */

import { TxVoiceError } from "../txvoice-client.js";

export { TxVoiceError };

const WORKLET_URL = new URL("../capture-worklet.js", import.meta.url).href;
const SUBPROTOCOL = "txvoice.v1";
const CLIENT_NAME = "txvoice-s0/0.1";

/** Client message types of txvoice.v1: an object with one of these `type`s is sent as that message. */
export const NATIVE_TYPES = Object.freeze([
  "connect", "disconnect", "ping", "pong", "heartbeat", "auth", "voice_start", "voice_chunk", "voice_end",
  "playback", "conversation_start", "conversation_end", "conversation_state", "status", "metrics", "error",
]);
const NATIVE = new Set(NATIVE_TYPES);

/** Close codes after which reconnecting would not help (normal close, policy, idle/expired/token). */
const FINAL_CLOSE_CODES = new Set([1000, 1008, 4001, 4002, 4003]);

const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

/* ------------------------------------------------------------------------------------------ */
/* Logging: S0's LogLevel / LogCategory and domain loggers, writing structured entries          */
/* ------------------------------------------------------------------------------------------ */

export const LogLevel = Object.freeze({ TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4, NONE: 5,
  0: "TRACE", 1: "DEBUG", 2: "INFO", 3: "WARN", 4: "ERROR", 5: "NONE" });

export const LogCategory = Object.freeze({
  WEBSOCKET: "websocket", CONNECTION: "connection", QUEUE: "queue", CIRCUIT: "circuit", HEARTBEAT: "heartbeat",
  AUDIO: "audio", PROCESSOR: "processor", RESAMPLER: "resampler", SESSION: "session", WORKLET: "worklet",
  WASM: "wasm",
});

const logState = {
  level: LogLevel.INFO,
  console: false,
  maxEntries: 2000,
  entries: [],
  sinks: new Set(),
  seq: 0,
};

function levelName(level) { return LogLevel[level] || String(level); }

function serializable(value, depth = 0) {
  if (value === null || value === undefined) return value ?? null;
  if (value instanceof Error) return { name: value.name, message: value.message, code: value.code, stack: value.stack };
  if (typeof value !== "object") return value;
  if (depth > 4) return "[…]";
  if (value instanceof ArrayBuffer) return { byteLength: value.byteLength };
  if (ArrayBuffer.isView(value)) return { type: value.constructor.name, length: value.length };
  if (typeof Event !== "undefined" && value instanceof Event) {
    return { type: value.type, code: value.code, reason: value.reason, wasClean: value.wasClean };
  }
  if (Array.isArray(value)) return value.slice(0, 50).map((v) => serializable(v, depth + 1));
  const out = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === "target" || typeof v === "function") continue;
    out[k] = serializable(v, depth + 1);
  }
  return out;
}

/** One named logger of a category; each call below its level is dropped, others become an entry. */
export class Logger {
  constructor(name, category = LogCategory.WEBSOCKET, options = {}) {
    this.name = name;
    this.category = category;
    this.level = options.level ?? null; // null: the global level
    this.enabled = options.enabled ?? true;
  }

  get effectiveLevel() { return this.level ?? logState.level; }

  setLevel(level) { this.level = level; return this; }

  isEnabled(level) { return this.enabled && level >= this.effectiveLevel && level < LogLevel.NONE; }

  log(level, message, ...args) {
    if (!this.isEnabled(level)) return null;
    let data = null;
    let error = null;
    for (const a of args) {
      if (a instanceof Error || (a && typeof a === "object" && "message" in a && "stack" in a)) error = serializable(a);
      else if (a && typeof a === "object" && !Array.isArray(a)) data = { ...(data || {}), ...serializable(a) };
      else if (a !== undefined) data = { ...(data || {}), args: [...((data && data.args) || []), serializable(a)] };
    }
    const entry = {
      seq: ++logState.seq,
      timestamp: Date.now(),
      time: new Date().toISOString(),
      level,
      levelName: levelName(level),
      category: this.category,
      logger: this.name,
      message: String(message),
      data,
      error,
    };
    logState.entries.push(entry);
    if (logState.entries.length > logState.maxEntries) logState.entries.splice(0, logState.entries.length - logState.maxEntries);
    for (const sink of [...logState.sinks]) {
      try { sink(entry); } catch { /* a sink must not break logging */ }
    }
    if (logState.console && typeof console !== "undefined") {
      const fn = level >= LogLevel.ERROR ? "error" : level >= LogLevel.WARN ? "warn" : level >= LogLevel.INFO ? "info" : "debug";
      console[fn](`[${entry.levelName}] ${this.name}: ${entry.message}`, ...(data ? [data] : []), ...(error ? [error] : []));
    }
    return entry;
  }

  trace(message, ...args) { return this.log(LogLevel.TRACE, message, ...args); }
  debug(message, ...args) { return this.log(LogLevel.DEBUG, message, ...args); }
  info(message, ...args) { return this.log(LogLevel.INFO, message, ...args); }
  warn(message, ...args) { return this.log(LogLevel.WARN, message, ...args); }
  error(message, ...args) { return this.log(LogLevel.ERROR, message, ...args); }
}

/** S0's AudioLogger: a Logger of an audio category. */
export class AudioLogger extends Logger {
  constructor(name, category = LogCategory.AUDIO, options = {}) { super(name, category, options); }
}

const loggers = new Map();

/** The logger of that name (made on first use). */
export function createLogger(name, category = LogCategory.WEBSOCKET, options = {}) {
  if (!loggers.has(name)) {
    const audio = [LogCategory.AUDIO, LogCategory.PROCESSOR, LogCategory.RESAMPLER, LogCategory.SESSION,
      LogCategory.WORKLET, LogCategory.WASM].includes(category);
    loggers.set(name, audio ? new AudioLogger(name, category, options) : new Logger(name, category, options));
  }
  return loggers.get(name);
}

export const networkLoggers = Object.freeze({
  websocket: createLogger("network.websocket", LogCategory.WEBSOCKET),
  connection: createLogger("network.connection", LogCategory.CONNECTION),
  queue: createLogger("network.queue", LogCategory.QUEUE),
  circuit: createLogger("network.circuit", LogCategory.CIRCUIT),
  heartbeat: createLogger("network.heartbeat", LogCategory.HEARTBEAT),
});

export const audioLoggers = Object.freeze({
  processor: createLogger("audio.processor", LogCategory.PROCESSOR),
  resampler: createLogger("audio.resampler", LogCategory.RESAMPLER),
  session: createLogger("audio.session", LogCategory.SESSION),
  worklet: createLogger("audio.worklet", LogCategory.WORKLET),
  wasm: createLogger("audio.wasm", LogCategory.WASM),
});

/** The generic module logger (S0's `logger`). */
export const logger = createLogger("websocket", LogCategory.WEBSOCKET);

/**
 * Set logging up: `level` (a LogLevel; `debug: true` means TRACE), `console` (also print),
 * `maxEntries` (entries kept for getLogEntries), and S0's switches for the audio domain loggers:
 * `enableWasm`, `enableResampler`, `enableWorklet`, `enableProcessor` (default: on).
 */
export function configureLogging(options = {}) {
  if (options.debug) logState.level = LogLevel.TRACE;
  else if (options.level !== undefined) logState.level = options.level;
  if (options.console !== undefined) logState.console = !!options.console;
  if (options.maxEntries !== undefined) logState.maxEntries = Math.max(1, options.maxEntries | 0);
  const switches = { enableWasm: "wasm", enableResampler: "resampler", enableWorklet: "worklet", enableProcessor: "processor" };
  for (const [option, name] of Object.entries(switches)) {
    if (options[option] !== undefined) audioLoggers[name].enabled = !!options[option];
  }
  return { level: logState.level, console: logState.console, maxEntries: logState.maxEntries };
}

export function setLogLevel(level) { logState.level = level; }
export function getLogLevel() { return logState.level; }

/** The entries kept so far (oldest first), optionally only those at or above `minLevel` / of one category. */
export function getLogEntries(filter = {}) {
  const { minLevel = LogLevel.TRACE, category = null, logger: name = null } = filter;
  return logState.entries.filter((e) => e.level >= minLevel && (!category || e.category === category)
    && (!name || e.logger === name));
}

export function clearLogEntries() { logState.entries.length = 0; }

/** Call `fn(entry)` for every new entry (a demo page's log view); returns the unsubscribe function. */
export function onLogEntry(fn) {
  logState.sinks.add(fn);
  return () => logState.sinks.delete(fn);
}

/** S0's LoggerFactory, as an object. */
export const LoggerFactory = Object.freeze({
  createLogger, configure: configureLogging, getLogEntries, clearLogEntries, onLogEntry, networkLoggers, audioLoggers,
});

/* ------------------------------------------------------------------------------------------ */
/* EventEmitter                                                                                 */
/* ------------------------------------------------------------------------------------------ */

export class EventEmitter {
  constructor() { this._listeners = new Map(); }

  /** Listen; returns a function that removes the listener. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  addEventListener(event, listener) { return this.on(event, listener); }

  once(event, listener) {
    const off = this.on(event, (...args) => { off(); listener(...args); });
    return off;
  }

  off(event, listener) {
    const set = this._listeners.get(event);
    if (!set) return;
    set.delete(listener);
    if (!set.size) this._listeners.delete(event);
  }

  removeEventListener(event, listener) { this.off(event, listener); }

  removeAllListeners(event) {
    if (event === undefined) this._listeners.clear();
    else this._listeners.delete(event);
  }

  listenerCount(event) { return this._listeners.get(event)?.size || 0; }

  /** Call every listener of `event`; a listener that throws is logged and the others still run. */
  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return false;
    for (const fn of [...set]) {
      try { fn(...args); } catch (err) { logger.error(`'${event}' listener failed`, err); }
    }
    return true;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* MessageQueue: priorities 1 (highest) .. 10, FIFO within a priority                          */
/* ------------------------------------------------------------------------------------------ */

export const MessagePriority = Object.freeze({ HIGHEST: 1, HIGH: 2, NORMAL: 5, LOW: 8, LOWEST: 10 });

export class MessageQueue extends EventEmitter {
  constructor(options = {}) {
    super();
    this.maxSize = options.maxSize ?? 1000;
    this.items = []; // sorted: priority ascending, then seq ascending
    this._seq = 0;
  }

  get size() { return this.items.length; }
  isEmpty() { return this.items.length === 0; }

  static clampPriority(priority) {
    const p = Number.isFinite(priority) ? Math.round(priority) : MessagePriority.NORMAL;
    return Math.min(10, Math.max(1, p));
  }

  /**
   * Add a message ({id, priority, reliable, ...}); keeps its `seq` when it has one (a re-queued
   * reliable message keeps its place).  When full, the last best-effort message is dropped to make
   * room, or, if there is none, this one is refused (returns false, emits 'overflow').
   */
  enqueue(item) {
    item.priority = MessageQueue.clampPriority(item.priority);
    if (item.seq === undefined) item.seq = ++this._seq;
    if (item.enqueuedAt === undefined) item.enqueuedAt = now();
    if (this.items.length >= this.maxSize) {
      const victim = this._lastBestEffort();
      // Full: make room by dropping the least urgent best-effort message, unless this one is less urgent still.
      if (victim === -1 || (!item.reliable && !this._before(item, this.items[victim]))) {
        this.emit("overflow", item);
        return false;
      }
      const [dropped] = this.items.splice(victim, 1);
      this.emit("dropped", dropped, "queue_full");
    }
    let lo = 0, hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this._before(this.items[mid], item)) lo = mid + 1; else hi = mid;
    }
    this.items.splice(lo, 0, item);
    this.emit("enqueued", item);
    return true;
  }

  _before(a, b) { return a.priority < b.priority || (a.priority === b.priority && a.seq < b.seq); }

  _lastBestEffort() {
    for (let i = this.items.length - 1; i >= 0; i--) if (!this.items[i].reliable) return i;
    return -1;
  }

  /** The next message to send (highest priority, oldest first), removed. */
  dequeue() { return this.items.shift() ?? null; }
  peek() { return this.items[0] ?? null; }
  has(id) { return this.items.some((i) => i.id === id); }

  remove(id) {
    const i = this.items.findIndex((x) => x.id === id);
    if (i === -1) return null;
    return this.items.splice(i, 1)[0];
  }

  /** Remove and return the best-effort messages (the connection is gone: they are not kept). */
  dropBestEffort() {
    const dropped = this.items.filter((i) => !i.reliable);
    this.items = this.items.filter((i) => i.reliable);
    return dropped;
  }

  clear() { const all = this.items; this.items = []; return all; }
  toArray() { return [...this.items]; }
}

/* ------------------------------------------------------------------------------------------ */
/* CircuitBreaker: closed -> open after N failed connections -> half_open after resetTimeout    */
/* ------------------------------------------------------------------------------------------ */

export const CircuitState = Object.freeze({ CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open" });

export class CircuitBreaker extends EventEmitter {
  constructor(options = {}) {
    super();
    this.failureThreshold = options.failureThreshold ?? 3;
    this.resetTimeout = options.resetTimeout ?? 15000;
    this.enabled = options.enabled ?? true;
    this.state = CircuitState.CLOSED;
    this.failures = 0;
    this.openedAt = null;
    this._timer = null;
  }

  /** May a connection be attempted now? (An open breaker whose time is up turns half-open.) */
  canAttempt() {
    if (!this.enabled || this.state === CircuitState.CLOSED) return true;
    if (this.state === CircuitState.OPEN && now() - this.openedAt >= this.resetTimeout) this._set(CircuitState.HALF_OPEN);
    return this.state === CircuitState.HALF_OPEN;
  }

  /** Milliseconds until an open breaker lets one attempt through (0 when it does now). */
  remainingMs() {
    if (this.state !== CircuitState.OPEN) return 0;
    return Math.max(0, this.resetTimeout - (now() - this.openedAt));
  }

  recordSuccess() {
    this.failures = 0;
    if (this.state !== CircuitState.CLOSED) this._set(CircuitState.CLOSED);
  }

  recordFailure(reason = null) {
    if (!this.enabled) return;
    this.failures += 1;
    if (this.state === CircuitState.HALF_OPEN || (this.state === CircuitState.CLOSED && this.failures >= this.failureThreshold)) {
      this.openedAt = now();
      this._set(CircuitState.OPEN, reason);
    }
  }

  reset() { this.failures = 0; this._set(CircuitState.CLOSED); }

  _set(state, reason = null) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    clearTimeout(this._timer);
    this._timer = null;
    if (state === CircuitState.OPEN) {
      // Turn half-open on time, so that the state change is seen even if nobody asks.
      this._timer = setTimeout(() => { this._timer = null; this.canAttempt(); }, this.resetTimeout);
    }
    networkLoggers.circuit.log(state === CircuitState.OPEN ? LogLevel.WARN : LogLevel.INFO, `Circuit breaker ${state}`,
      { state, previous, failures: this.failures, resetTimeout: this.resetTimeout, reason });
    this.emit("stateChange", { state, previous, failures: this.failures, resetTimeout: this.resetTimeout, reason });
  }

  dispose() { clearTimeout(this._timer); this._timer = null; }
}

/* ------------------------------------------------------------------------------------------ */
/* ConnectionManager: one WebSocket at a time, resolved at the server's greeting               */
/* ------------------------------------------------------------------------------------------ */

export const ConnectionState = Object.freeze({
  DISCONNECTED: "disconnected", CONNECTING: "connecting", CONNECTED: "connected",
  RECONNECTING: "reconnecting", DISCONNECTING: "disconnecting", FAILED: "failed",
});

function defaultUrl() {
  if (typeof location === "undefined" || !/^https?:$/.test(location.protocol)) return "ws://localhost:8765/";
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/`;
}

export class ConnectionManager extends EventEmitter {
  constructor(options = {}) {
    super();
    this.url = options.url || defaultUrl();
    this.protocols = options.protocols ?? [SUBPROTOCOL];
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.authToken = options.authToken ?? null;
    this.socket = null;
    this.greeting = null;
    this.connectedAt = null;
  }

  get isOpen() { return !!this.socket && this.socket.readyState === WebSocket.OPEN && this.greeting !== null; }
  get bufferedAmount() { return this.socket ? this.socket.bufferedAmount : 0; }

  _url() {
    if (!this.authToken) return this.url;
    const u = new URL(this.url);
    u.searchParams.set("token", this.authToken);
    return u.href;
  }

  /** Open a WebSocket; resolves with the greeting's data, rejects if it closes or times out first. */
  open() {
    this.close(4000, "replaced");
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(this._url(), this.protocols);
      } catch (err) {
        reject(new TxVoiceError("websocket", "bad_url", String(err && err.message || err)));
        return;
      }
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      this.greeting = null;
      networkLoggers.connection.debug("Opening WebSocket", { url: this.url, protocols: this.protocols });
      const timer = setTimeout(() => {
        networkLoggers.connection.warn("Connection timed out", { url: this.url, timeoutMs: this.connectTimeout });
        try { socket.close(4000, "connect timeout"); } catch { /* closing anyway */ }
        settle(new TxVoiceError("websocket", "connect_timeout", `no greeting from ${this.url} within ${this.connectTimeout} ms`));
      }, this.connectTimeout);
      let settled = false;
      const settle = (err, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err); else resolve(value);
      };
      socket.onopen = () => this.emit("open", { target: socket });
      socket.onerror = (event) => this.emit("error", event);
      socket.onmessage = (event) => {
        if (this.socket !== socket) return;
        if (this.greeting === null && typeof event.data === "string") {
          let env = null;
          try { env = JSON.parse(event.data); } catch { /* not JSON */ }
          if (env && env.type === "connect" && !(env.data && env.data.reply_to)) {
            this.greeting = env.data || {};
            this.connectedAt = now();
            networkLoggers.connection.info("Greeting received", { sessionId: this.greeting.session_id,
              protocol: socket.protocol, sampleRate: this.greeting.config && this.greeting.config.sample_rate });
            this.emit("message", event, env);
            settle(null, this.greeting);
            return;
          }
        }
        this.emit("message", event, null);
      };
      socket.onclose = (event) => {
        const greeted = this.greeting !== null;
        if (this.socket === socket) this.socket = null;
        if (!greeted) {
          settle(new TxVoiceError("websocket", "connect_failed",
            `could not connect to ${this.url} (close ${event.code}${event.reason ? ": " + event.reason : ""})`,
            { closeCode: event.code }));
        }
        this.emit("close", event, greeted, socket);
      };
    });
  }

  /** Send a string or binary now; false when not open. */
  send(payload) {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(payload);
    return true;
  }

  close(code = 1000, reason = "") {
    const socket = this.socket;
    if (!socket) return;
    if (code === 4000) socket._s0Replaced = reason === "replaced";
    try { socket.close(code, reason); } catch { /* closed */ }
  }
}

/* ------------------------------------------------------------------------------------------ */
/* WebSocketService                                                                             */
/* ------------------------------------------------------------------------------------------ */

export const DEFAULT_OPTIONS = Object.freeze({
  url: null, // default: this page's origin, ws(s)://host/
  protocols: [SUBPROTOCOL],
  autoReconnect: true,
  maxReconnectAttempts: 5,
  reconnectDelay: 1000, // first retry; doubles each time, with jitter
  maxReconnectDelay: 30000,
  reconnectJitter: 0.5, // each delay is drawn from [delay * (1 - jitter), delay]
  connectTimeout: 10000,
  heartbeatInterval: 15000, // 0: no heartbeat
  heartbeatTimeout: 10000,
  ackTimeout: 10000, // a reliable message not acknowledged by then is sent again (the server de-duplicates)
  bestEffortTimeout: 5000, // a best-effort message waiting longer than this is dropped
  maxQueueSize: 1000,
  maxBufferedAmount: 1 << 20, // backpressure: stop writing while the socket holds this much
  requestTimeout: 10000,
  resumeSession: true,
  clientName: CLIENT_NAME,
  authToken: null,
  circuitBreaker: { failureThreshold: 3, resetTimeout: 15000, enabled: true },
});

/** What `send(data)` puts in the envelope: a native message, or an application payload carried by `ping`. */
function toEnvelope(data) {
  let value = data;
  if (typeof value === "string") {
    try {
      const parsed = JSON.parse(value);
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed) && NATIVE.has(parsed.type)) value = parsed;
    } catch { /* a plain string: an application payload */ }
  }
  if (value && typeof value === "object" && !Array.isArray(value) && typeof value.type === "string" && NATIVE.has(value.type)) {
    const env = { type: value.type, data: value.data && typeof value.data === "object" ? { ...value.data } : {} };
    if (typeof value.message_id === "string") env.message_id = value.message_id;
    if (value.conversation_id !== undefined) env.conversation_id = value.conversation_id;
    return env;
  }
  // No such message in txvoice.v1: the payload travels in a ping, which the server echoes in its pong.
  return { type: "ping", data: { payload: value === undefined ? null : value } };
}

function isBinary(data) {
  return data instanceof ArrayBuffer || ArrayBuffer.isView(data) || (typeof Blob !== "undefined" && data instanceof Blob);
}

function toBase64(buffer) {
  const bytes = buffer instanceof ArrayBuffer ? new Uint8Array(buffer) : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export class WebSocketService extends EventEmitter {
  constructor(options = {}) {
    super();
    const cb = { ...DEFAULT_OPTIONS.circuitBreaker, ...(options.circuitBreaker || {}) };
    this.options = { ...DEFAULT_OPTIONS, ...options, circuitBreaker: cb };
    if (!this.options.url) this.options.url = defaultUrl();
    this.log = networkLoggers.websocket;
    this.state = ConnectionState.DISCONNECTED;
    this.connection = new ConnectionManager({
      url: this.options.url, protocols: this.options.protocols, connectTimeout: this.options.connectTimeout,
      authToken: this.options.authToken,
    });
    this.queue = new MessageQueue({ maxSize: this.options.maxQueueSize });
    this.queue.on("dropped", (item, reason) => this._dropped(item, reason));
    this.circuitBreaker = new CircuitBreaker(cb);
    this.circuitBreaker.on("stateChange", (e) => this._onCircuit(e));
    this.unacked = new Map(); // id -> item: reliable messages sent, not yet acknowledged
    this.greeting = null;
    this.sessionId = null;
    this.resumeToken = null;
    this.reconnectAttempts = 0;
    this.stats = { sent: 0, received: 0, dropped: 0, acked: 0, resent: 0, duplicates: 0, reconnects: 0,
      failures: 0, bytesSent: 0, bytesReceived: 0, rttMs: null };
    this._ids = 0;
    this._idPrefix = `s0-${Math.random().toString(36).slice(2, 8)}`;
    this._pending = new Map(); // message_id -> {resolve, reject, timer, type}
    this._userClosed = false;
    this._everConnected = false;
    this._reconnectTimer = null;
    this._flushTimer = null;
    this._heartbeatTimer = null;
    this._ackTimer = null;
    this._lastMessageAt = 0;
    this._heartbeats = new Map();
    this._connectWaiters = [];
    this.connection.on("message", (event, greetingEnv) => this._onMessage(event, greetingEnv));
    this.connection.on("close", (event, greeted) => this._onClose(event, greeted));
    this.connection.on("error", (event) => this.emit("error", { type: "websocket", code: "socket_error", message: "WebSocket error", event, target: this }));
  }

  get url() { return this.options.url; }
  get isConnected() { return this.state === ConnectionState.CONNECTED; }
  get circuitState() { return this.circuitBreaker.state; }
  getState() { return this.state; }
  getConnectionState() { return this.state; }
  getCircuitState() { return this.circuitBreaker.state; }
  getQueueSize() { return this.queue.size; }
  getStats() { return { ...this.stats, queued: this.queue.size, unacked: this.unacked.size, state: this.state, circuit: this.circuitBreaker.state }; }

  _setState(state, extra = {}) {
    if (this.state === state && state !== ConnectionState.RECONNECTING) return;
    const previous = this.state;
    this.state = state;
    const event = { state, previous, ...extra, target: this };
    this.log.debug("Connection state", { state, previous, ...extra });
    this.emit("stateChange", event);
    this.emit(state, event);
  }

  _nextId() { return `${this._idPrefix}-${++this._ids}`; }

  /* -------------------------------- connecting -------------------------------- */

  /**
   * Connect; resolves once the server has greeted (and the session is resumed, when it can be).
   * With autoReconnect, a failed attempt is retried (backoff with jitter) up to
   * maxReconnectAttempts before it rejects; an open circuit breaker rejects at once.
   */
  connect() {
    if (this.state === ConnectionState.CONNECTED) return Promise.resolve();
    const waiter = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (this.state === ConnectionState.CONNECTING || this.state === ConnectionState.RECONNECTING) return waiter;
    this._userClosed = false;
    this.reconnectAttempts = 0;
    if (!this.circuitBreaker.canAttempt()) {
      const err = new TxVoiceError("websocket", "circuit_open",
        `circuit breaker open: no connection attempts for ${Math.round(this.circuitBreaker.remainingMs())} ms`);
      this.log.warn("Connect refused: circuit breaker open", { remainingMs: Math.round(this.circuitBreaker.remainingMs()) });
      this._settleConnect(err);
      return waiter;
    }
    this._setState(ConnectionState.CONNECTING, { attempt: 1 });
    this.log.info("Connecting", { url: this.options.url });
    this._attempt();
    return waiter;
  }

  _settleConnect(err) {
    const waiters = this._connectWaiters.splice(0);
    for (const w of waiters) (err ? w.reject(err) : w.resolve());
  }

  async _attempt() {
    this._reconnectTimer = null;
    if (this._userClosed) return;
    let greeting;
    try {
      greeting = await this.connection.open();
    } catch (err) {
      if (this._userClosed) return;
      this.stats.failures += 1;
      this.log.warn("Connection attempt failed", { attempt: this.reconnectAttempts + 1, code: err.code, message: err.message });
      this.circuitBreaker.recordFailure(err.code);
      this._dropBestEffort("offline");
      this._retry(err);
      return;
    }
    await this._afterGreeting(greeting);
  }

  async _afterGreeting(greeting) {
    const resuming = this._everConnected;
    const previousToken = this.resumeToken;
    this.greeting = greeting;
    this.sessionId = greeting.session_id;
    this.resumeToken = greeting.resume_token || null;
    this._lastMessageAt = now();
    // Hello: names the client and, after a reconnection, hands over the old session's resume token
    // (its acknowledged reliable ids come with it, so re-sends are de-duplicated by the server).
    const hello = { client: this.options.clientName };
    if (resuming && previousToken && this.options.resumeSession) hello.resume_token = previousToken;
    try {
      const reply = await this._request("connect", hello, this.options.requestTimeout);
      this.greeting = reply.data;
      this.sessionId = reply.data.session_id;
      this.resumeToken = reply.data.resume_token || this.resumeToken;
    } catch (err) {
      if (!this.connection.isOpen) return; // closed meanwhile: _onClose decides what next
      this.log.warn("Hello not answered", { message: err.message });
    }
    this.circuitBreaker.recordSuccess();
    const attempts = this.reconnectAttempts;
    this.reconnectAttempts = 0;
    this._everConnected = true;
    // Reliable messages sent on the old connection and never acknowledged go again, in their places.
    let resent = 0;
    for (const item of this.unacked.values()) {
      if (!this.queue.has(item.id)) { this.queue.enqueue(item); resent += 1; }
    }
    this._setState(ConnectionState.CONNECTED, { sessionId: this.sessionId, resumed: !!this.greeting.resumed });
    this.log.info(resuming ? "Reconnected" : "Connected", { url: this.options.url, sessionId: this.sessionId,
      resumed: !!this.greeting.resumed, attempts, queued: this.queue.size, resent });
    this._startHeartbeat();
    this._startAckTimer();
    this.emit("open", { type: "open", target: this, greeting: this.greeting });
    if (resuming) {
      this.stats.reconnects += 1;
      this.emit("reconnected", { type: "reconnected", target: this, greeting: this.greeting, resumed: !!this.greeting.resumed, attempts });
    }
    this.emit("connected", { type: "connected", target: this, greeting: this.greeting });
    this._settleConnect(null);
    this._flush();
  }

  _backoff(attempt) {
    const o = this.options;
    const base = Math.min(o.maxReconnectDelay, o.reconnectDelay * 2 ** Math.max(0, attempt - 1));
    const jitter = Math.min(1, Math.max(0, o.reconnectJitter));
    return Math.round(base * (1 - jitter * Math.random()));
  }

  /** After a failed attempt or a lost connection: wait (backoff, or the open breaker), then try again. */
  _retry(lastError) {
    const o = this.options;
    if (this._userClosed) return;
    if (!o.autoReconnect || this.reconnectAttempts >= o.maxReconnectAttempts) {
      const err = lastError instanceof TxVoiceError ? lastError
        : new TxVoiceError("websocket", "connect_failed", String(lastError && lastError.message || lastError));
      if (o.autoReconnect) {
        this.log.error("Giving up reconnecting", { attempts: this.reconnectAttempts, message: err.message });
        this.emit("reconnectFailed", { type: "reconnectFailed", target: this, attempts: this.reconnectAttempts, error: err });
      }
      this._setState(o.autoReconnect ? ConnectionState.FAILED : ConnectionState.DISCONNECTED, { error: err.message });
      this._dropBestEffort("offline");
      this._settleConnect(err);
      return;
    }
    this.reconnectAttempts += 1;
    const attempt = this.reconnectAttempts;
    let delay = this._backoff(attempt);
    const waitBreaker = this.circuitBreaker.remainingMs();
    if (waitBreaker > delay) delay = Math.ceil(waitBreaker) + 10;
    const initial = !this._everConnected;
    // The first connect() keeps its CONNECTING state through its retries; a lost connection is RECONNECTING.
    if (initial) this.emit("reconnecting", { type: "reconnecting", attempt, delay, target: this, initial: true });
    else this._setState(ConnectionState.RECONNECTING, { attempt, delay, circuit: this.circuitBreaker.state });
    this.log.info("Reconnecting", { attempt, maxAttempts: o.maxReconnectAttempts, delayMs: delay, circuit: this.circuitBreaker.state });
    this._reconnectTimer = setTimeout(() => {
      if (!this.circuitBreaker.canAttempt()) {
        // Still open (its clock and ours differ by a few ms): wait for it, not counted as an attempt.
        this.reconnectAttempts -= 1;
        this._retry(lastError);
        return;
      }
      this._attempt();
    }, delay);
  }

  _onClose(event, greeted) {
    if (event.target && event.target._s0Replaced) return; // an old socket that open() replaced
    this._stopHeartbeat();
    clearInterval(this._ackTimer);
    this._ackTimer = null;
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new TxVoiceError("websocket", "connection_closed", `connection closed before the answer to ${p.type}`));
      this._pending.delete(id);
    }
    if (!greeted) return; // a failed attempt: _attempt() handles it
    const closeEvent = { type: "close", code: event.code, reason: event.reason, wasClean: event.wasClean, target: this };
    const reconnect = !this._userClosed && this.options.autoReconnect
      && (!FINAL_CLOSE_CODES.has(event.code) || (event.target && event.target._s0Reconnect));
    closeEvent.willReconnect = reconnect;
    this.log.log(this._userClosed ? LogLevel.INFO : LogLevel.WARN, "Connection closed",
      { code: event.code, reason: event.reason, wasClean: event.wasClean, willReconnect: reconnect,
        unacked: this.unacked.size, queued: this.queue.size });
    this._dropBestEffort("offline");
    this.emit("close", closeEvent);
    if (this._userClosed) {
      this._setState(ConnectionState.DISCONNECTED, { code: event.code });
      return;
    }
    if (!reconnect) {
      this._setState(ConnectionState.DISCONNECTED, { code: event.code, reason: event.reason });
      return;
    }
    this.reconnectAttempts = 0;
    this._retry(new TxVoiceError("websocket", "connection_lost", `connection closed (${event.code})`));
  }

  /** Drop the connection and reconnect now (the session is resumed). */
  reconnect(reason = "client reconnect") {
    const socket = this.connection.socket;
    if (!socket) return false;
    socket._s0Reconnect = true;
    socket.close(4000, reason);
    return true;
  }

  /** Close: says `disconnect` to the server, stops reconnecting; reliable messages not yet acknowledged are kept for a later connect(). */
  async disconnect(code = 1000, reason = "client disconnect") {
    this._userClosed = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._settleConnect(new TxVoiceError("websocket", "aborted", "disconnected before the connection was made"));
    if (this.connection.isOpen) {
      this._setState(ConnectionState.DISCONNECTING);
      try { await this._request("disconnect", { reason }, 2000); } catch { /* closing anyway */ }
    }
    this.connection.close(code, reason);
    this._stopHeartbeat();
    this._dropBestEffort("disconnected");
    this._setState(ConnectionState.DISCONNECTED, { code });
  }

  close(code, reason) { return this.disconnect(code, reason); }

  /* -------------------------------- sending -------------------------------- */

  /**
   * Send `data` with `priority` (1 highest .. 10 lowest, default 5).  `reliable`: kept and re-sent
   * (after a reconnection, or when not acknowledged within ackTimeout) until the server's `ack`;
   * otherwise best effort: sent when connected (or once the first connect() succeeds), dropped
   * while offline.  Returns the message id, or null when the message was dropped.
   */
  send(data, priority = MessagePriority.NORMAL, reliable = false) {
    const id = this._nextId();
    const item = { id, priority, reliable: !!reliable, createdAt: now(), sendCount: 0 };
    if (isBinary(data)) {
      if (reliable) {
        // Binary frames have no id or ack in txvoice.v1: a reliable one goes as a voice_chunk (base64).
        if (typeof Blob !== "undefined" && data instanceof Blob) throw new TxVoiceError("protocol", "unsupported", "reliable Blob: pass an ArrayBuffer");
        item.envelope = { type: "voice_chunk", data: { audio: toBase64(data) } };
      } else {
        item.binary = data;
      }
    } else {
      item.envelope = toEnvelope(data);
    }
    if (item.envelope) {
      item.envelope.message_id = item.envelope.message_id || id;
      item.id = item.envelope.message_id;
      if (item.reliable) item.envelope.reliable = true;
    }
    if (!item.reliable && !this._acceptsBestEffort()) {
      this._dropped(item, "offline");
      return null;
    }
    if (!this.queue.enqueue(item)) {
      this._dropped(item, "queue_full");
      return null;
    }
    if (item.reliable) this.unacked.set(item.id, item);
    this.log.trace("Message queued", { id: item.id, priority: item.priority, reliable: item.reliable,
      type: item.envelope ? item.envelope.type : "binary", queued: this.queue.size });
    this._flush();
    return item.id;
  }

  /** Send a native message and resolve with the server's answer to it (matched by reply_to). */
  request(type, data = {}, options = {}) {
    const { priority = MessagePriority.HIGHEST, reliable = false, timeout = this.options.requestTimeout } = options;
    const id = this._nextId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new TxVoiceError("timeout", "timeout", `no answer to ${type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, type });
      const sent = this.send({ type, data, message_id: id }, priority, reliable);
      if (sent === null) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new TxVoiceError("websocket", "not_connected", `cannot send ${type}: offline`));
      }
    });
  }

  /** A request written at once, around the queue (the hello, the goodbye). */
  _request(type, data, timeout) {
    const id = this._nextId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this._pending.delete(id); reject(new TxVoiceError("timeout", "timeout", `no answer to ${type}`)); }, timeout);
      this._pending.set(id, { resolve, reject, timer, type });
      if (!this._write(JSON.stringify({ type, data, message_id: id, timestamp: Date.now() / 1000 }))) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new TxVoiceError("websocket", "not_connected", `cannot send ${type}`));
      }
    });
  }

  _acceptsBestEffort() {
    if (this.state === ConnectionState.CONNECTED) return true;
    // The first connect() in progress: its messages wait for it (bounded by bestEffortTimeout).
    return this.state === ConnectionState.CONNECTING && !this._everConnected && this.circuitBreaker.state !== CircuitState.OPEN;
  }

  _write(payload) {
    if (!this.connection.send(payload)) return false;
    this.stats.sent += 1;
    this.stats.bytesSent += typeof payload === "string" ? payload.length : payload.byteLength ?? payload.size ?? 0;
    return true;
  }

  /** Write queued messages, highest priority first, while connected and the socket is not backed up. */
  _flush() {
    if (this._flushTimer !== null || this.state !== ConnectionState.CONNECTED) return;
    const o = this.options;
    while (!this.queue.isEmpty()) {
      if (this.connection.bufferedAmount > o.maxBufferedAmount) {
        this._flushTimer = setTimeout(() => { this._flushTimer = null; this._flush(); }, 20);
        return;
      }
      const item = this.queue.dequeue();
      if (!item.reliable && now() - item.createdAt > o.bestEffortTimeout) {
        this._dropped(item, "expired");
        continue;
      }
      if (item.reliable && !this.unacked.has(item.id)) continue; // acknowledged meanwhile
      let payload;
      if (item.binary) payload = item.binary;
      else {
        item.envelope.timestamp = Date.now() / 1000;
        payload = JSON.stringify(item.envelope);
      }
      if (!this._write(payload)) {
        if (item.reliable) this.queue.enqueue(item); else this._dropped(item, "offline");
        return;
      }
      item.sendCount += 1;
      item.lastSentAt = now();
      if (item.sendCount > 1) this.stats.resent += 1;
      this.log.trace("Message sent", { id: item.id, priority: item.priority, reliable: item.reliable,
        type: item.envelope ? item.envelope.type : "binary", attempt: item.sendCount });
    }
  }

  _dropped(item, reason) {
    this.stats.dropped += 1;
    this.unacked.delete(item.id);
    this.log.debug("Message dropped", { id: item.id, priority: item.priority, reason,
      type: item.envelope ? item.envelope.type : "binary" });
    this.emit("messageDropped", { type: "messageDropped", id: item.id, priority: item.priority, reason, target: this });
  }

  _dropBestEffort(reason) {
    for (const item of this.queue.dropBestEffort()) this._dropped(item, reason);
  }

  _startAckTimer() {
    clearInterval(this._ackTimer);
    const every = Math.max(100, Math.min(1000, this.options.ackTimeout / 4));
    this._ackTimer = setInterval(() => {
      if (this.state !== ConnectionState.CONNECTED) return;
      const t = now();
      let again = 0;
      for (const item of this.unacked.values()) {
        if (item.lastSentAt !== undefined && t - item.lastSentAt > this.options.ackTimeout && !this.queue.has(item.id)) {
          this.queue.enqueue(item);
          again += 1;
        }
      }
      if (again) {
        this.log.warn("Re-sending unacknowledged reliable messages", { count: again });
        this._flush();
      }
    }, every);
  }

  /* -------------------------------- receiving -------------------------------- */

  _onMessage(event, greetingEnv) {
    this._lastMessageAt = now();
    this.stats.received += 1;
    if (typeof event.data !== "string") {
      this.stats.bytesReceived += event.data.byteLength;
      this.emit("message", { type: "message", binary: true, data: event.data, raw: event.data, envelope: null,
        messageType: "binary", target: this, timeStamp: event.timeStamp });
      return;
    }
    this.stats.bytesReceived += event.data.length;
    let env = greetingEnv;
    if (!env) {
      try { env = JSON.parse(event.data); } catch {
        this.log.error("Server sent a text message that is not JSON", { size: event.data.length });
        return;
      }
    }
    const data = env.data || {};
    this.log.trace("Message received", { type: env.type, size: event.data.length, replyTo: data.reply_to });
    if (env.type === "ack") {
      const item = this.unacked.get(data.message_id);
      this.unacked.delete(data.message_id);
      this.queue.remove(data.message_id);
      this.stats.acked += 1;
      if (data.duplicate) this.stats.duplicates += 1;
      this.log.debug("Reliable message acknowledged", { id: data.message_id, duplicate: !!data.duplicate,
        attempts: item ? item.sendCount : null });
      this.emit("ack", { type: "ack", id: data.message_id, duplicate: !!data.duplicate, target: this });
    } else if (env.type === "heartbeat") {
      const sent = this._heartbeats.get(data.reply_to);
      if (sent !== undefined) {
        this._heartbeats.delete(data.reply_to);
        this.stats.rttMs = Math.round((now() - sent) * 10) / 10;
        networkLoggers.heartbeat.trace("Heartbeat answered", { rttMs: this.stats.rttMs });
        this.emit("heartbeat", { type: "heartbeat", rttMs: this.stats.rttMs, serverTime: data.server_time, target: this });
      }
    } else if (env.type === "error") {
      const failed = data.message_id;
      if (failed && this.unacked.has(failed)) {
        this.unacked.delete(failed);
        this.queue.remove(failed);
        this.log.warn("Reliable message refused by the server", { id: failed, code: data.code, message: data.message });
        this.emit("messageFailed", { type: "messageFailed", id: failed, code: data.code, message: data.message, target: this });
      }
      this.log.warn("Server error", { code: data.code, message: data.message, id: failed });
    } else if (env.type === "disconnect" && data.reason === "server_shutdown") {
      this.log.info("Server shutting down", { message: data.message });
    }
    const replyTo = data.reply_to || (env.type === "error" ? data.message_id : null);
    if (replyTo && this._pending.has(replyTo)) {
      const p = this._pending.get(replyTo);
      this._pending.delete(replyTo);
      clearTimeout(p.timer);
      if (env.type === "error") p.reject(new TxVoiceError("server", data.code, data.message || data.code, { data }));
      else p.resolve(env);
    }
    const message = { type: "message", binary: false, data: env, raw: event.data, envelope: env, messageType: env.type,
      payload: env.type === "pong" && data.payload !== undefined ? data.payload : undefined, target: this,
      timeStamp: event.timeStamp };
    this.emit("message", message);
    this.emit(`message:${env.type}`, message);
  }

  /* -------------------------------- heartbeat -------------------------------- */

  _startHeartbeat() {
    this._stopHeartbeat();
    const { heartbeatInterval, heartbeatTimeout } = this.options;
    if (!heartbeatInterval) return;
    this._heartbeatTimer = setInterval(() => {
      if (this.state !== ConnectionState.CONNECTED) return;
      if (now() - this._lastMessageAt > heartbeatInterval + heartbeatTimeout) {
        networkLoggers.heartbeat.warn("Heartbeat timeout: reconnecting", { silentMs: Math.round(now() - this._lastMessageAt) });
        this.emit("heartbeatTimeout", { type: "heartbeatTimeout", target: this });
        this.reconnect("heartbeat timeout");
        return;
      }
      const id = this._nextId();
      this._heartbeats.set(id, now());
      if (this._heartbeats.size > 8) this._heartbeats.delete(this._heartbeats.keys().next().value);
      this._write(JSON.stringify({ type: "heartbeat", data: {}, message_id: id, timestamp: Date.now() / 1000 }));
    }, heartbeatInterval);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  /* -------------------------------- circuit -------------------------------- */

  _onCircuit(e) {
    const event = { type: "circuitStateChange", ...e, target: this };
    this.emit("circuitStateChange", event);
    const names = { open: "circuitOpen", half_open: "circuitHalfOpen", closed: "circuitClosed" };
    this.emit(names[e.state], event);
    if (e.state === CircuitState.OPEN) this._dropBestEffort("circuit_open");
  }

  /** Release timers and the socket. */
  dispose() {
    this._userClosed = true;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._flushTimer);
    clearInterval(this._ackTimer);
    this._stopHeartbeat();
    this.circuitBreaker.dispose();
    this.connection.close(1000, "disposed");
    this.removeAllListeners();
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Audio streaming: getUserMedia -> AudioWorklet (resample, 20 ms frames) -> binary frames      */
/* ------------------------------------------------------------------------------------------ */

export const AudioStreamingState = Object.freeze({
  IDLE: "idle", STARTING: "starting", STREAMING: "streaming", STOPPING: "stopping", STOPPED: "stopped", ERROR: "error",
});

export const DEFAULT_AUDIO_OPTIONS = Object.freeze({
  sampleRate: null, // the wire rate; default: the server's (greeting config.sample_rate)
  frameDurationMs: 20,
  channels: 1,
  mode: "voice_activity", // txvoice streaming mode: voice_activity, push_to_talk, continuous
  enableVAD: true,
  streamOptions: {}, // passed in voice_start options (silence_ms, phrase_list, ...)
  framePriority: 3,
  controlPriority: 1,
  audioConstraints: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  mediaStream: null, // a MediaStream to use instead of the microphone
});

/**
 * S0's streaming processor: captures the microphone through an AudioWorklet, resamples to the
 * server's rate, streams 20 ms PCM16 frames over a WebSocketService and reports what the server
 * says back (VAD, turns, transcripts, answers, response audio) as events.
 */
export class StreamingAudioProcessor extends EventEmitter {
  constructor(options = {}) {
    super();
    const processing = { ...DEFAULT_AUDIO_OPTIONS, ...(options.processingOptions || {}) };
    this.options = { ...options, processingOptions: processing };
    this.state = AudioStreamingState.IDLE;
    this.service = options.webSocketService || new WebSocketService({ url: options.serverUrl, ...(options.websocketOptions || {}) });
    this.audioContext = null;
    this.stream = null;
    this.node = null;
    this.source = null;
    this.sink = null;
    this.streamId = null;
    this.streamOpen = false;
    this.frames = 0;
    this.droppedFrames = 0;
    this.transcripts = [];
    this.sampleRate = null;
    this._offs = [
      this.service.on("message", (e) => this._onServerMessage(e)),
      this.service.on("reconnected", () => this._reopen()),
      this.service.on("close", () => { this.streamOpen = false; }),
    ];
    const lo = options.loggerOptions || {};
    configureLogging({ ...lo, debug: !!options.debug, level: options.debug ? LogLevel.TRACE : lo.level });
    audioLoggers.processor.info("Audio processor initialized", { serverUrl: this.service.url, debug: !!options.debug,
      level: levelName(getLogLevel()), mode: processing.mode, frameDurationMs: processing.frameDurationMs });
    if (lo.enableWasm) audioLoggers.wasm.info("No WASM module: resampling runs in the AudioWorklet (JavaScript)");
  }

  getState() { return this.state; }
  get isStreaming() { return this.state === AudioStreamingState.STREAMING; }

  _setState(state, extra = {}) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    audioLoggers.session.debug("Audio streaming state", { state, previous, ...extra });
    this.emit("stateChange", { state, previous, ...extra, target: this });
    this.emit(state, { state, previous, ...extra, target: this });
  }

  /** Connect (if needed), open the microphone and the voice stream, and stream frames. */
  async start() {
    if (this.state === AudioStreamingState.STREAMING || this.state === AudioStreamingState.STARTING) return;
    const p = this.options.processingOptions;
    this._setState(AudioStreamingState.STARTING);
    try {
      audioLoggers.session.info("Starting audio session", { serverUrl: this.service.url });
      if (!this.service.isConnected) await this.service.connect();
      const serverRate = this.service.greeting && this.service.greeting.config && this.service.greeting.config.sample_rate;
      this.sampleRate = p.sampleRate || serverRate || 16000;
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) throw new TxVoiceError("audio", "no_web_audio", "this browser has no Web Audio API");
      this.audioContext = new AC({ latencyHint: "interactive" });
      await this.audioContext.resume().catch(() => {});
      this.stream = p.mediaStream || await navigator.mediaDevices.getUserMedia({ audio: p.audioConstraints, video: false });
      const track = this.stream.getAudioTracks()[0];
      audioLoggers.session.debug("Microphone open", { label: track && track.label, settings: track && track.getSettings ? track.getSettings() : null });
      await this.audioContext.audioWorklet.addModule(WORKLET_URL);
      audioLoggers.worklet.debug("AudioWorklet module loaded", { url: WORKLET_URL });
      const frameSamples = Math.round((this.sampleRate * p.frameDurationMs) / 1000);
      audioLoggers.resampler.info("Resampling capture to the server rate", { inputRate: this.audioContext.sampleRate,
        outputRate: this.sampleRate, frameDurationMs: p.frameDurationMs, frameSamples, frameBytes: frameSamples * 2 });
      this.source = this.audioContext.createMediaStreamSource(this.stream);
      this.node = new AudioWorkletNode(this.audioContext, "txvoice-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { targetRate: this.sampleRate, frameMs: p.frameDurationMs, format: "pcm16" },
      });
      this.node.port.onmessage = (e) => this._onWorklet(e.data);
      this.sink = this.audioContext.createGain();
      this.sink.gain.value = 0; // keeps the worklet pulled without making the microphone audible
      this.source.connect(this.node);
      this.node.connect(this.sink);
      this.sink.connect(this.audioContext.destination);
      await this._openStream();
      this.node.port.postMessage({ type: "start" });
      this._setState(AudioStreamingState.STREAMING, { streamId: this.streamId, sampleRate: this.sampleRate });
      audioLoggers.session.info("Audio session started", { streamId: this.streamId, sampleRate: this.sampleRate,
        contextRate: this.audioContext.sampleRate, mode: p.mode });
    } catch (err) {
      audioLoggers.session.error("Failed to start the audio session", err);
      this._teardown();
      this._setState(AudioStreamingState.ERROR, { error: err.message });
      this.emit("error", err);
      throw err;
    }
  }

  async _openStream() {
    const p = this.options.processingOptions;
    const reply = await this.service.request("voice_start", {
      codec: "pcm_s16le", sample_rate: this.sampleRate, channels: 1, frame_duration_ms: p.frameDurationMs,
      mode: p.mode, response_audio: "binary", options: { enable_vad: p.enableVAD, ...(p.streamOptions || {}) },
    }, { priority: p.controlPriority });
    this.streamId = reply.data.stream_id;
    this.streamOpen = true;
    audioLoggers.session.debug("Voice stream open", { streamId: this.streamId, format: reply.data.format });
    return reply.data;
  }

  _reopen() {
    if (this.state !== AudioStreamingState.STREAMING) return;
    audioLoggers.session.info("Reconnected: reopening the voice stream");
    this._openStream().catch((err) => audioLoggers.session.error("Could not reopen the voice stream", err));
  }

  _onWorklet(msg) {
    if (msg.type === "stopped") { this._onStopped?.(); return; }
    if (msg.type !== "frame") return;
    if (!this.streamOpen) {
      this.droppedFrames += 1;
      audioLoggers.processor.trace("Frame dropped: no open stream", { seq: msg.seq });
      return;
    }
    const id = this.service.send(msg.data, this.options.processingOptions.framePriority, false);
    if (id === null) { this.droppedFrames += 1; return; }
    this.frames += 1;
    audioLoggers.resampler.trace("Frame resampled", { seq: msg.seq, samples: msg.samples, outputRate: this.sampleRate });
    audioLoggers.processor.trace("Frame streamed", { seq: msg.seq, bytes: msg.data.byteLength, rms: Math.round(msg.rms * 1e4) / 1e4 });
    this.emit("frame", { seq: msg.seq, bytes: msg.data.byteLength, samples: msg.samples, rms: msg.rms, peak: msg.peak });
  }

  _onServerMessage(e) {
    if (e.binary) { this.emit("audio", e.data); return; }
    const env = e.envelope;
    const data = env.data || {};
    if (env.type === "status") {
      this.emit("status", data);
      if (data.event_type === "vad") {
        audioLoggers.processor.debug(`VAD ${data.event}`, { streamTimeMs: data.stream_time_ms });
        this.emit("vad", data);
      } else if (data.event_type === "turn_end") {
        audioLoggers.session.debug("Turn ended", { turn: data.turn, reason: data.reason, durationMs: data.duration_ms });
        this.emit("turnEnd", data);
      } else if (data.event_type === "transcript") {
        if (data.final) {
          this.transcripts.push(data.text);
          audioLoggers.session.info("Transcript", { text: data.text, confidence: data.confidence });
        }
        this.emit("transcript", { ...data, text: data.text ?? "", final: data.final !== false });
      } else if (data.event_type === "ai_response") {
        audioLoggers.session.info("Answer", { text: data.text });
        this.emit("aiResponse", data);
      }
    } else if (env.type === "voice_response") {
      this.emit("response", data);
    } else if (env.type === "voice_stream_chunk" && data.final) {
      this.emit("responseEnd", data);
    }
  }

  /** Stop capturing and close the voice stream; resolves with the server's voice_end answer (or null). */
  async stop() {
    if (this.state !== AudioStreamingState.STREAMING) { this._teardown(); return null; }
    this._setState(AudioStreamingState.STOPPING);
    if (this.node) {
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 300);
        this._onStopped = () => { clearTimeout(t); resolve(); };
        this.node.port.postMessage({ type: "stop" });
      });
    }
    this._teardown();
    let answer = null;
    if (this.streamOpen && this.service.isConnected) {
      try {
        answer = (await this.service.request("voice_end", { stream_id: this.streamId }, { priority: this.options.processingOptions.controlPriority })).data;
      } catch (err) {
        audioLoggers.session.warn("voice_end not answered", err);
      }
    }
    this.streamOpen = false;
    audioLoggers.session.info("Audio session stopped", { frames: this.frames, droppedFrames: this.droppedFrames, server: answer });
    this._setState(AudioStreamingState.STOPPED, { frames: this.frames });
    return answer;
  }

  _teardown() {
    try { this.node && this.node.port.postMessage({ type: "close" }); } catch { /* gone */ }
    for (const n of [this.source, this.node, this.sink]) { try { n && n.disconnect(); } catch { /* gone */ } }
    if (this.stream && !this.options.processingOptions.mediaStream) this.stream.getTracks().forEach((t) => t.stop());
    this.source = this.node = this.sink = null;
    this.stream = null;
    if (this.audioContext) { this.audioContext.close().catch(() => {}); this.audioContext = null; }
  }

  /** Stop, disconnect and release everything. */
  async destroy() {
    await this.stop();
    for (const off of this._offs) off();
    if (!this.options.webSocketService) await this.service.disconnect();
  }

  getStats() { return { frames: this.frames, droppedFrames: this.droppedFrames, sampleRate: this.sampleRate, state: this.state, streamId: this.streamId }; }
}

/** S0's entry point: a StreamingAudioProcessor (not started: call `start()`). */
export function createAudioStreaming(options = {}) {
  return new StreamingAudioProcessor(options);
}

/** S0's AudioStreamingBridge name for the same thing. */
export { StreamingAudioProcessor as AudioStreamingBridge };

export default WebSocketService;
