/*
 * txvoice capture worklet: microphone audio -> exact frames at the wire rate.
 *
 * Runs on the audio rendering thread.  Each 128-sample render quantum of the (mono-mixed) input
 * is resampled from the AudioContext rate to `targetRate` with a windowed-sinc low-pass
 * interpolator, then cut into frames of exactly `frameMs` milliseconds.  Every full frame is
 * posted to the main thread (its buffer transferred), as little-endian PCM16 (`format: "pcm16"`)
 * or as Float32 (`format: "f32"`, for a WebCodecs Opus encoder), with its RMS and peak level.
 *
 * Messages in:  {type: "start"} | {type: "stop"} (pads the last partial frame with silence and
 *               posts it) | {type: "close"}
 * Messages out: {type: "frame", seq, data: ArrayBuffer, samples, rms, peak}
 *               {type: "stopped", frames}
 */

const PHASES = 256;

/** Streaming fractional resampler: y(t) = sum x[i] h(t - i), h a Kaiser-windowed sinc. */
class SincResampler {
  constructor(inRate, outRate, zeroCrossings = 10) {
    this.step = inRate / outRate; // input samples per output sample
    this.passthrough = inRate === outRate;
    const cutoff = Math.min(1, outRate / inRate) * 0.92;
    this.half = Math.ceil(zeroCrossings / cutoff);
    this.taps = 2 * this.half;
    this.table = new Float32Array((PHASES + 1) * this.taps);
    const beta = 7.0;
    const i0 = (x) => {
      let sum = 1, term = 1;
      for (let k = 1; k < 30; k++) { term *= (x / (2 * k)) * (x / (2 * k)); sum += term; }
      return sum;
    };
    const norm = i0(beta);
    for (let p = 0; p <= PHASES; p++) {
      const frac = p / PHASES;
      let gain = 0;
      for (let j = 0; j < this.taps; j++) {
        const u = j - this.half + 1 - frac; // distance from the output instant, in input samples
        const r = u / this.half;
        const w = Math.abs(r) >= 1 ? 0 : i0(beta * Math.sqrt(1 - r * r)) / norm;
        const x = Math.PI * cutoff * u;
        const s = u === 0 ? cutoff : (cutoff * Math.sin(x)) / x;
        this.table[p * this.taps + j] = s * w;
        gain += s * w;
      }
      for (let j = 0; j < this.taps; j++) this.table[p * this.taps + j] /= gain; // unity DC gain
    }
    this.buf = new Float32Array(8192);
    this.len = 0; // samples held in buf
    this.base = 0; // absolute index of buf[0]
    this.t = 0; // absolute input position of the next output sample
    // Start half a kernel in the past (zeros), so output begins at once.
    this.len = this.half;
  }

  /** Feed input samples; call `emit(sample)` for each output sample now computable. */
  process(input, emit) {
    if (this.passthrough) {
      for (let i = 0; i < input.length; i++) emit(input[i]);
      return;
    }
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const { table, taps, half, buf } = this;
    for (;;) {
      const i0 = Math.floor(this.t);
      const first = i0 - half + 1 - this.base;
      if (first + taps > this.len) break;
      const phase = Math.round((this.t - i0) * PHASES);
      const row = phase * taps;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += buf[first + j] * table[row + j];
      emit(acc);
      this.t += this.step;
    }
    // Drop what no future output needs.
    const keepFrom = Math.floor(this.t) - half + 1 - this.base;
    if (keepFrom > 0) {
      buf.copyWithin(0, keepFrom, this.len);
      this.len -= keepFrom;
      this.base += keepFrom;
    }
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.targetRate = o.targetRate || 16000;
    this.frameMs = o.frameMs || 20;
    this.format = o.format === "f32" ? "f32" : "pcm16";
    this.frameSize = Math.round((this.targetRate * this.frameMs) / 1000);
    this.resampler = new SincResampler(sampleRate, this.targetRate);
    this.frame = new Float32Array(this.frameSize);
    this.fill = 0;
    this.seq = 0;
    this.capturing = !!o.autostart;
    this.alive = true;
    this.mono = new Float32Array(128);
    this.emit = (s) => {
      this.frame[this.fill++] = s;
      if (this.fill === this.frameSize) this.flush();
    };
    this.port.onmessage = (event) => {
      const msg = event.data || {};
      if (msg.type === "start") {
        this.capturing = true;
      } else if (msg.type === "stop") {
        if (this.fill > 0) {
          this.frame.fill(0, this.fill);
          this.fill = this.frameSize;
          this.flush();
        }
        this.capturing = false;
        this.port.postMessage({ type: "stopped", frames: this.seq });
      } else if (msg.type === "close") {
        this.capturing = false;
        this.alive = false;
      }
    };
  }

  flush() {
    const n = this.frameSize;
    const f = this.frame;
    let sum = 0, peak = 0;
    for (let i = 0; i < n; i++) {
      const v = f[i];
      sum += v * v;
      const a = v < 0 ? -v : v;
      if (a > peak) peak = a;
    }
    let data;
    if (this.format === "f32") {
      data = new Float32Array(f).buffer;
    } else {
      const out = new DataView(new ArrayBuffer(n * 2));
      for (let i = 0; i < n; i++) {
        let v = Math.round(f[i] * 32768);
        if (v > 32767) v = 32767; else if (v < -32768) v = -32768;
        out.setInt16(i * 2, v, true);
      }
      data = out.buffer;
    }
    this.port.postMessage(
      { type: "frame", seq: this.seq++, data, samples: n, rms: Math.sqrt(sum / n), peak },
      [data],
    );
    this.fill = 0;
  }

  process(inputs) {
    if (!this.alive) return false;
    const input = inputs[0];
    if (!this.capturing || !input || input.length === 0) return true;
    const n = input[0].length;
    if (this.mono.length !== n) this.mono = new Float32Array(n);
    const mono = this.mono;
    if (input.length === 1) {
      mono.set(input[0]);
    } else {
      mono.fill(0);
      for (let c = 0; c < input.length; c++) {
        const ch = input[c];
        for (let i = 0; i < n; i++) mono[i] += ch[i];
      }
      const k = 1 / input.length;
      for (let i = 0; i < n; i++) mono[i] *= k;
    }
    this.resampler.process(mono, this.emit);
    return true;
  }
}

registerProcessor("txvoice-capture", CaptureProcessor);
