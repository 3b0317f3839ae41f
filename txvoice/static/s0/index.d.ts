/**
 * TypeScript declarations for txvoice's S0 browser module (`/static/s0/index.js`).
 * The mapping of S0's calls onto txvoice.v1 is described in doc/browser-s0.md.
 */

/* ------------------------------------------------------------------ errors */

export declare class TxVoiceError extends Error {
  constructor(type: string, code: string, message: string, details?: Record<string, unknown>);
  /** "websocket" | "audio" | "server" | "protocol" | "timeout" */
  type: string;
  code: string;
  error_message: string;
  [extra: string]: unknown;
}

/** Client message types of txvoice.v1: an object with one of these `type`s is sent as that message. */
export declare const NATIVE_TYPES: readonly NativeClientType[];
export type NativeClientType =
  | "connect" | "disconnect" | "ping" | "pong" | "heartbeat" | "auth" | "voice_start" | "voice_chunk" | "voice_end"
  | "playback" | "conversation_start" | "conversation_end" | "conversation_state" | "status" | "metrics" | "error";

/* ------------------------------------------------------------------ logging */

export declare enum LogLevel {
  TRACE = 0,
  DEBUG = 1,
  INFO = 2,
  WARN = 3,
  ERROR = 4,
  NONE = 5,
}

export declare enum LogCategory {
  WEBSOCKET = "websocket",
  CONNECTION = "connection",
  QUEUE = "queue",
  CIRCUIT = "circuit",
  HEARTBEAT = "heartbeat",
  AUDIO = "audio",
  PROCESSOR = "processor",
  RESAMPLER = "resampler",
  SESSION = "session",
  WORKLET = "worklet",
  WASM = "wasm",
}

/** One structured log entry (what getLogEntries() returns and onLogEntry() listeners get). */
export interface LogMessage {
  seq: number;
  /** milliseconds since the epoch */
  timestamp: number;
  /** ISO 8601 */
  time: string;
  level: LogLevel;
  levelName: keyof typeof LogLevel;
  category: LogCategory | string;
  logger: string;
  message: string;
  data: Record<string, unknown> | null;
  error: { name: string; message: string; code?: string; stack?: string } | null;
}
export type LogEntry = LogMessage;

export interface LoggerOptions {
  level?: LogLevel;
  enabled?: boolean;
}

export declare class Logger {
  constructor(name: string, category?: LogCategory | string, options?: LoggerOptions);
  readonly name: string;
  readonly category: LogCategory | string;
  level: LogLevel | null;
  enabled: boolean;
  readonly effectiveLevel: LogLevel;
  setLevel(level: LogLevel | null): this;
  isEnabled(level: LogLevel): boolean;
  log(level: LogLevel, message: string, ...args: unknown[]): LogMessage | null;
  trace(message: string, ...args: unknown[]): LogMessage | null;
  debug(message: string, ...args: unknown[]): LogMessage | null;
  info(message: string, ...args: unknown[]): LogMessage | null;
  warn(message: string, ...args: unknown[]): LogMessage | null;
  error(message: string, ...args: unknown[]): LogMessage | null;
}

export declare class AudioLogger extends Logger {}

export interface NetworkLoggers {
  readonly websocket: Logger;
  readonly connection: Logger;
  readonly queue: Logger;
  readonly circuit: Logger;
  readonly heartbeat: Logger;
}

export interface AudioLoggers {
  readonly processor: AudioLogger;
  readonly resampler: AudioLogger;
  readonly session: AudioLogger;
  readonly worklet: AudioLogger;
  readonly wasm: AudioLogger;
}

export declare const networkLoggers: NetworkLoggers;
export declare const audioLoggers: AudioLoggers;
/** The generic module logger. */
export declare const logger: Logger;

/** S0's loggerOptions. */
export interface LoggingOptions {
  level?: LogLevel;
  /** TRACE, whatever `level` says */
  debug?: boolean;
  /** also print entries to the console */
  console?: boolean;
  maxEntries?: number;
  enableWasm?: boolean;
  enableResampler?: boolean;
  enableWorklet?: boolean;
  enableProcessor?: boolean;
}

export declare function createLogger(name: string, category?: LogCategory | string, options?: LoggerOptions): Logger;
export declare function configureLogging(options?: LoggingOptions): { level: LogLevel; console: boolean; maxEntries: number };
export declare function setLogLevel(level: LogLevel): void;
export declare function getLogLevel(): LogLevel;
export declare function getLogEntries(filter?: { minLevel?: LogLevel; category?: LogCategory | string; logger?: string }): LogMessage[];
export declare function clearLogEntries(): void;
export declare function onLogEntry(listener: (entry: LogMessage) => void): () => void;

export declare const LoggerFactory: {
  readonly createLogger: typeof createLogger;
  readonly configure: typeof configureLogging;
  readonly getLogEntries: typeof getLogEntries;
  readonly clearLogEntries: typeof clearLogEntries;
  readonly onLogEntry: typeof onLogEntry;
  readonly networkLoggers: NetworkLoggers;
  readonly audioLoggers: AudioLoggers;
};

/* ------------------------------------------------------------------ events */

export type Listener<T = any> = (event: T) => void;

export declare class EventEmitter<Events extends Record<string, any> = Record<string, any>> {
  on<K extends keyof Events & string>(event: K, listener: Listener<Events[K]>): () => void;
  on(event: string, listener: (...args: any[]) => void): () => void;
  addEventListener<K extends keyof Events & string>(event: K, listener: Listener<Events[K]>): () => void;
  addEventListener(event: string, listener: (...args: any[]) => void): () => void;
  once<K extends keyof Events & string>(event: K, listener: Listener<Events[K]>): () => void;
  once(event: string, listener: (...args: any[]) => void): () => void;
  off(event: string, listener: (...args: any[]) => void): void;
  removeEventListener(event: string, listener: (...args: any[]) => void): void;
  removeAllListeners(event?: string): void;
  listenerCount(event: string): number;
  emit(event: string, ...args: any[]): boolean;
}

/* ------------------------------------------------------------------ queue */

export declare const MessagePriority: {
  readonly HIGHEST: 1;
  readonly HIGH: 2;
  readonly NORMAL: 5;
  readonly LOW: 8;
  readonly LOWEST: 10;
};

/** 1 is the highest priority, 10 the lowest. */
export type Priority = number;

/** The txvoice.v1 envelope of a client message. */
export interface ClientEnvelope {
  type: NativeClientType;
  data: Record<string, unknown>;
  message_id?: string;
  timestamp?: number;
  conversation_id?: string | null;
  reliable?: boolean;
}

export interface QueuedMessage {
  id: string;
  priority: Priority;
  reliable: boolean;
  seq?: number;
  enqueuedAt?: number;
  createdAt?: number;
  sendCount?: number;
  lastSentAt?: number;
  envelope?: ClientEnvelope;
  binary?: ArrayBuffer | ArrayBufferView | Blob;
}

export declare class MessageQueue extends EventEmitter<{
  enqueued: QueuedMessage;
  overflow: QueuedMessage;
}> {
  constructor(options?: { maxSize?: number });
  readonly maxSize: number;
  readonly size: number;
  static clampPriority(priority: number): Priority;
  isEmpty(): boolean;
  enqueue(item: QueuedMessage): boolean;
  dequeue(): QueuedMessage | null;
  peek(): QueuedMessage | null;
  has(id: string): boolean;
  remove(id: string): QueuedMessage | null;
  dropBestEffort(): QueuedMessage[];
  clear(): QueuedMessage[];
  toArray(): QueuedMessage[];
}

/* ------------------------------------------------------------------ circuit breaker */

export declare enum CircuitState {
  CLOSED = "closed",
  OPEN = "open",
  HALF_OPEN = "half_open",
}

export interface CircuitBreakerOptions {
  /** failed connection attempts in a row that open the breaker (3) */
  failureThreshold?: number;
  /** how long it stays open before one trial attempt (15000 ms) */
  resetTimeout?: number;
  enabled?: boolean;
}

export interface CircuitStateChangeEvent {
  type?: "circuitStateChange";
  state: CircuitState;
  previous: CircuitState;
  failures: number;
  resetTimeout: number;
  reason: string | null;
  target?: WebSocketService;
}

export declare class CircuitBreaker extends EventEmitter<{ stateChange: CircuitStateChangeEvent }> {
  constructor(options?: CircuitBreakerOptions);
  readonly state: CircuitState;
  readonly failures: number;
  failureThreshold: number;
  resetTimeout: number;
  canAttempt(): boolean;
  remainingMs(): number;
  recordSuccess(): void;
  recordFailure(reason?: string | null): void;
  reset(): void;
  dispose(): void;
}

/* ------------------------------------------------------------------ connection */

export declare enum ConnectionState {
  DISCONNECTED = "disconnected",
  CONNECTING = "connecting",
  CONNECTED = "connected",
  RECONNECTING = "reconnecting",
  DISCONNECTING = "disconnecting",
  FAILED = "failed",
}

/** The server's greeting (`connect` data), see doc/protocol.md. */
export interface Greeting {
  status: string;
  session_id: string;
  protocol: string;
  server: { name: string; version: string };
  config: {
    sample_rate: number;
    channels: number;
    sample_width: number;
    frame_duration_ms: number;
    max_message_size: number;
    codecs: string[];
    response_audio: string[];
  };
  auth_required: boolean;
  heartbeat: { ping_interval: number; ping_timeout: number };
  pipeline: string;
  resume_token?: string;
  resumed?: boolean;
  previous_session_id?: string;
  [field: string]: unknown;
}

export declare class ConnectionManager extends EventEmitter {
  constructor(options?: { url?: string; protocols?: string[]; connectTimeout?: number; authToken?: string | null });
  url: string;
  protocols: string[];
  connectTimeout: number;
  readonly socket: WebSocket | null;
  readonly greeting: Greeting | null;
  readonly isOpen: boolean;
  readonly bufferedAmount: number;
  open(): Promise<Greeting>;
  send(payload: string | ArrayBuffer | ArrayBufferView | Blob): boolean;
  close(code?: number, reason?: string): void;
}

/* ------------------------------------------------------------------ WebSocketService */

export interface WebSocketOptions {
  /** ws:// or wss:// URL of the txvoice endpoint (default: this page's origin) */
  url?: string;
  protocols?: string[];
  autoReconnect?: boolean;
  maxReconnectAttempts?: number;
  /** first retry delay in ms; doubles each attempt up to maxReconnectDelay, with jitter */
  reconnectDelay?: number;
  maxReconnectDelay?: number;
  /** 0..1: each delay is drawn from [delay * (1 - jitter), delay] */
  reconnectJitter?: number;
  connectTimeout?: number;
  /** ms between application heartbeats (0: none) */
  heartbeatInterval?: number;
  heartbeatTimeout?: number;
  /** a reliable message not acknowledged within this is sent again */
  ackTimeout?: number;
  /** a best-effort message waiting longer than this is dropped */
  bestEffortTimeout?: number;
  maxQueueSize?: number;
  maxBufferedAmount?: number;
  requestTimeout?: number;
  resumeSession?: boolean;
  clientName?: string;
  /** JWT or session token, sent as ?token= on the upgrade */
  authToken?: string | null;
  circuitBreaker?: CircuitBreakerOptions;
}

export declare const DEFAULT_OPTIONS: Readonly<Required<Omit<WebSocketOptions, "url" | "authToken">> & { url: null; authToken: null }>;

/** A server message: the parsed txvoice.v1 envelope. */
export interface ServerEnvelope {
  type: string;
  data: Record<string, any>;
  message_id: string;
  timestamp: number;
  conversation_id: string | null;
}

/** What `on('message')` listeners get. */
export interface WebSocketMessageEvent {
  type: "message";
  /** true for a binary message (response audio) */
  binary: boolean;
  /** the parsed envelope, or the ArrayBuffer of a binary message */
  data: ServerEnvelope | ArrayBuffer;
  envelope: ServerEnvelope | null;
  /** the envelope's type, or "binary" */
  messageType: string;
  /** for a `pong`: the payload that send() carried in its ping */
  payload?: unknown;
  raw: string | ArrayBuffer;
  target: WebSocketService;
  timeStamp: number;
}

export interface WebSocketCloseEvent {
  type: "close";
  code: number;
  reason: string;
  wasClean: boolean;
  willReconnect: boolean;
  target: WebSocketService;
}

export interface StateChangeEvent {
  state: ConnectionState;
  previous: ConnectionState;
  attempt?: number;
  delay?: number;
  sessionId?: string;
  resumed?: boolean;
  code?: number;
  error?: string;
  target: WebSocketService;
}

export interface WebSocketServiceEvents {
  message: WebSocketMessageEvent;
  close: WebSocketCloseEvent;
  open: { type: "open"; target: WebSocketService; greeting: Greeting };
  connected: StateChangeEvent | { type: "connected"; target: WebSocketService; greeting: Greeting };
  reconnected: { type: "reconnected"; target: WebSocketService; greeting: Greeting; resumed: boolean; attempts: number };
  reconnecting: StateChangeEvent | { type: "reconnecting"; attempt: number; delay: number; initial: true; target: WebSocketService };
  reconnectFailed: { type: "reconnectFailed"; target: WebSocketService; attempts: number; error: TxVoiceError };
  stateChange: StateChangeEvent;
  connecting: StateChangeEvent;
  disconnected: StateChangeEvent;
  disconnecting: StateChangeEvent;
  failed: StateChangeEvent;
  error: { type: string; code: string; message: string; target: WebSocketService; event?: Event };
  ack: { type: "ack"; id: string; duplicate: boolean; target: WebSocketService };
  messageDropped: { type: "messageDropped"; id: string; priority: Priority; reason: "offline" | "expired" | "queue_full" | "circuit_open" | "disconnected"; target: WebSocketService };
  messageFailed: { type: "messageFailed"; id: string; code: string; message: string; target: WebSocketService };
  heartbeat: { type: "heartbeat"; rttMs: number; serverTime: number; target: WebSocketService };
  heartbeatTimeout: { type: "heartbeatTimeout"; target: WebSocketService };
  circuitStateChange: CircuitStateChangeEvent;
  circuitOpen: CircuitStateChangeEvent;
  circuitHalfOpen: CircuitStateChangeEvent;
  circuitClosed: CircuitStateChangeEvent;
}

export interface WebSocketStats {
  sent: number;
  received: number;
  dropped: number;
  acked: number;
  resent: number;
  duplicates: number;
  reconnects: number;
  failures: number;
  bytesSent: number;
  bytesReceived: number;
  rttMs: number | null;
  queued: number;
  unacked: number;
  state: ConnectionState;
  circuit: CircuitState;
}

/** What send() accepts: a native message object, a JSON string of one, binary audio, or any payload. */
export type SendData = Partial<ClientEnvelope> | string | ArrayBuffer | ArrayBufferView | Blob | unknown;

export declare class WebSocketService extends EventEmitter<WebSocketServiceEvents> {
  constructor(options?: WebSocketOptions);
  readonly options: Required<WebSocketOptions>;
  readonly url: string;
  readonly state: ConnectionState;
  readonly isConnected: boolean;
  readonly circuitState: CircuitState;
  readonly greeting: Greeting | null;
  readonly sessionId: string | null;
  readonly reconnectAttempts: number;
  readonly queue: MessageQueue;
  readonly circuitBreaker: CircuitBreaker;
  readonly connection: ConnectionManager;
  readonly unacked: Map<string, QueuedMessage>;
  connect(): Promise<void>;
  /**
   * Send with a priority (1 highest .. 10 lowest, default 5); reliable: re-sent until the
   * server's ack. Returns the message id, or null when it was dropped (best effort, offline).
   */
  send(data: SendData, priority?: Priority, reliable?: boolean): string | null;
  request(type: NativeClientType, data?: Record<string, unknown>, options?: { priority?: Priority; reliable?: boolean; timeout?: number }): Promise<ServerEnvelope>;
  reconnect(reason?: string): boolean;
  disconnect(code?: number, reason?: string): Promise<void>;
  close(code?: number, reason?: string): Promise<void>;
  getState(): ConnectionState;
  getConnectionState(): ConnectionState;
  getCircuitState(): CircuitState;
  getQueueSize(): number;
  getStats(): WebSocketStats;
  dispose(): void;
}

export default WebSocketService;

/* ------------------------------------------------------------------ audio streaming */

export declare enum AudioStreamingState {
  IDLE = "idle",
  STARTING = "starting",
  STREAMING = "streaming",
  STOPPING = "stopping",
  STOPPED = "stopped",
  ERROR = "error",
}

export interface AudioProcessingOptions {
  /** the wire rate; default: the server's (greeting config.sample_rate, 16000) */
  sampleRate?: number | null;
  frameDurationMs?: number;
  channels?: 1;
  /** txvoice streaming mode */
  mode?: "voice_activity" | "push_to_talk" | "continuous";
  enableVAD?: boolean;
  /** voice_start options (silence_ms, phrase_list, tts_voice, ...) */
  streamOptions?: Record<string, unknown>;
  framePriority?: Priority;
  controlPriority?: Priority;
  audioConstraints?: MediaTrackConstraints;
  /** a MediaStream to use instead of the microphone */
  mediaStream?: MediaStream | null;
}

export declare const DEFAULT_AUDIO_OPTIONS: Readonly<AudioProcessingOptions>;

export interface AudioStreamingOptions {
  serverUrl?: string;
  processingOptions?: AudioProcessingOptions;
  /** TRACE logging */
  debug?: boolean;
  loggerOptions?: LoggingOptions;
  websocketOptions?: Omit<WebSocketOptions, "url">;
  /** use this service instead of making one */
  webSocketService?: WebSocketService;
}

export interface TranscriptEvent {
  event_type: "transcript";
  text: string;
  final: boolean;
  audio_ms?: number;
  confidence?: number | null;
  words?: { word: string; start_ms: number; end_ms: number; confidence: number }[];
  [field: string]: unknown;
}

export interface AudioStreamingEvents {
  stateChange: { state: AudioStreamingState; previous: AudioStreamingState; target: StreamingAudioProcessor; [k: string]: unknown };
  frame: { seq: number; bytes: number; samples: number; rms: number; peak: number };
  status: Record<string, any>;
  vad: Record<string, any>;
  turnEnd: Record<string, any>;
  transcript: TranscriptEvent;
  aiResponse: Record<string, any> & { text: string };
  response: Record<string, any>;
  responseEnd: Record<string, any>;
  audio: ArrayBuffer;
  error: Error;
}

export declare class StreamingAudioProcessor extends EventEmitter<AudioStreamingEvents> {
  constructor(options?: AudioStreamingOptions);
  readonly service: WebSocketService;
  readonly state: AudioStreamingState;
  readonly isStreaming: boolean;
  readonly sampleRate: number | null;
  readonly streamId: string | null;
  readonly frames: number;
  readonly droppedFrames: number;
  readonly transcripts: string[];
  readonly audioContext: AudioContext | null;
  getState(): AudioStreamingState;
  start(): Promise<void>;
  stop(): Promise<Record<string, any> | null>;
  destroy(): Promise<void>;
  getStats(): { frames: number; droppedFrames: number; sampleRate: number | null; state: AudioStreamingState; streamId: string | null };
}

export { StreamingAudioProcessor as AudioStreamingBridge };

export declare function createAudioStreaming(options?: AudioStreamingOptions): StreamingAudioProcessor;
