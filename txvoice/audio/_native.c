/*
 * txvoice's native batch ingest: one call per batch of Opus chunks from many streams decodes each
 * chunk, re-slices it into exact frames and classifies every frame (webrtcvad and the spectral
 * gate at 20 ms, the fast barge-in onset's gate -- and, while a reply plays, its webrtcvad -- at
 * 10 ms), so the audio thread lets go of the GIL once per batch instead of calling into C several
 * times per frame.  It mirrors txvoice/audio/codecs/opus.py (OpusDecoder.decode),
 * txvoice/audio/frames.py (FrameAssembler) and txvoice/audio/vad.py (SpectralGate,
 * WebRtcClassifier); the hysteresis and turns stay in Python (txvoice/audio/native.py).
 *
 * No Python API and no headers beyond libc: libopus and the WebRTC VAD are reached through
 * function pointers that the Python side hands over once (txv_init), taken from the libopus it
 * already loaded and from webrtcvad's own extension module, so nothing is vendored or linked.
 * The decoder and VAD states are the Python objects' own (borrowed pointers).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*opus_decode_fn)(void *st, const unsigned char *data, int32_t len, int16_t *pcm, int frame_size,
                              int fec);
typedef int (*opus_nb_samples_fn)(const unsigned char *data, int32_t len, int32_t fs);
typedef int (*opus_parse_fn)(const unsigned char *data, int32_t len, unsigned char *toc,
                             const unsigned char *frames[48], int16_t size[48], int *payload_offset);
typedef int (*vad_process_fn)(void *handle, int fs, const int16_t *frame, size_t length);

static opus_decode_fn opus_decode_p;
static opus_nb_samples_fn opus_nb_samples_p;
static opus_parse_fn opus_parse_p;
static vad_process_fn vad_process_p;

#define OPUS_INTERNAL_ERROR (-3)
#define SILENCE_DB (-100.0)
#define CLEAR_DB 20.0
#define CONTINUE_DB 3.0
#define TONAL_FLATNESS 0.05
#define MAX_SKIPS 3

/* The interface version: txvoice/audio/native.py uses a library of its own version only. */
int txv_abi(void) { return 3; }

int txv_init(void *decode, void *nb_samples, void *parse, void *vad_process)
{
    opus_decode_p = (opus_decode_fn)decode;
    opus_nb_samples_p = (opus_nb_samples_fn)nb_samples;
    opus_parse_p = (opus_parse_fn)parse;
    vad_process_p = (vad_process_fn)vad_process;
    return 1;
}

#include "_native_fft.h"

/* The plans are made and (never) freed by the Python side, one per frame size. */
fft_plan *txv_plan_new(int n, const float *window) { return plan_new(n, window); }
void txv_plan_free(fft_plan *p) { plan_free(p); }

/* ---- the spectral gate (txvoice.audio.vad.SpectralGate) --------------------------------------- */

typedef struct {
    int n, top, ring_len, skips;
    double snr_db, max_flatness, min_level_db, rise, stationary_var;
    const fft_plan *plan; /* borrowed */
    long count;
    double sum, sumsq, floor_db, level_db, flatness, tonal_level;
    int has_tonal, run;
    long skipped;
    double ring[]; /* the last ring_len frame levels */
} txv_gate;

void txv_gate_free(txv_gate *g)
{
    free(g);
}

void txv_gate_reset(txv_gate *g)
{
    memset(g->ring, 0, sizeof(double) * (size_t)g->ring_len);
    g->count = 0;
    g->sum = g->sumsq = 0.0;
    g->floor_db = g->level_db = SILENCE_DB;
    g->flatness = 1.0;
    g->has_tonal = 0;
    g->tonal_level = 0.0;
    g->run = 0;
}

/* plan: txv_plan_new's for the frame size, with the Python gate's own window (so both paths use the same). */
txv_gate *txv_gate_new(int top, int ring_len, int skips, double snr_db, double max_flatness,
                       double min_level_db, double rise, double stationary_var, const fft_plan *plan)
{
    txv_gate *g;
    if (!plan || ring_len < 1 || top < 1 || top > plan->n / 2)
        return NULL;
    g = calloc(1, sizeof(txv_gate) + sizeof(double) * (size_t)ring_len);
    if (!g)
        return NULL;
    g->n = plan->n;
    g->plan = plan;
    g->top = top;
    g->ring_len = ring_len;
    g->skips = skips;
    g->snr_db = snr_db;
    g->max_flatness = max_flatness;
    g->min_level_db = min_level_db;
    g->rise = rise;
    g->stationary_var = stationary_var;
    txv_gate_reset(g);
    return g;
}

/* A correctly rounded sum is what math.fsum gives; Neumaier's compensation is as close as it matters. */
static double compensated_sum(const double *v, int n, int squares)
{
    double s = 0.0, c = 0.0;
    int i;
    for (i = 0; i < n; i++) {
        double x = squares ? v[i] * v[i] : v[i], t = s + x;
        c += fabs(s) >= fabs(x) ? (s - t) + x : (x - t) + s;
        s = t;
    }
    return s + c;
}

static void track_floor(txv_gate *g, double level)
{
    int len = g->ring_len, i = (int)(g->count % len);
    double old = g->ring[i];
    g->ring[i] = level;
    g->count++;
    if (g->count % len == 0) {
        g->sum = compensated_sum(g->ring, len, 0);
        g->sumsq = compensated_sum(g->ring, len, 1);
    } else {
        g->sum += level - old;
        g->sumsq += level * level - old * old;
    }
    if (g->count >= len) {
        double mean = g->sum / len;
        if (g->sumsq / len - mean * mean < g->stationary_var) {
            g->floor_db = mean;
            return;
        }
    }
    if (level < g->floor_db)
        g->floor_db = level;
    else
        g->floor_db += g->rise;
}

static double frame_level(const txv_gate *g, const int16_t *frame)
{
    int64_t acc = 0;
    int i;
    double mean_square;
    for (i = 0; i < g->n; i++)
        acc += (int64_t)frame[i] * frame[i];
    mean_square = (double)acc * (1.0 / 1073741824.0) / g->n;
    return mean_square > 1e-10 ? 10.0 * log10(mean_square) : SILENCE_DB;
}

void txv_gate_track(txv_gate *g, const int16_t *frame)
{
    double level = frame_level(g, frame);
    g->level_db = level;
    track_floor(g, level);
    g->has_tonal = 0;
}

int txv_gate_accept(txv_gate *g, const int16_t *frame, int spectral)
{
    double level = frame_level(g, frame), margin, arithmetic = 0.0, logs = 0.0, flatness;
    int i, n = g->n, top = g->top;
    const fft_plan *plan = g->plan;
    cpx in[MAX_FRAME], out[MAX_FRAME];
    g->level_db = level;
    track_floor(g, level);
    margin = level - g->floor_db;
    if (level < g->min_level_db || margin < g->snr_db) {
        g->flatness = NAN;
        g->has_tonal = 0;
        return 0;
    }
    if (!spectral) {
        g->flatness = NAN;
        g->has_tonal = 0;
        return 1;
    }
    if (g->has_tonal && g->run < MAX_SKIPS && margin >= CLEAR_DB && -CONTINUE_DB < level - g->tonal_level &&
        level - g->tonal_level < CONTINUE_DB && g->skips) {
        g->run++;
        g->skipped++;
        g->flatness = NAN;
        return 1;
    }
    for (i = 0; i < n; i++) {
        in[i].re = (double)((float)frame[i] * plan->window[i]);
        in[i].im = 0.0;
    }
    fft_work(plan, out, in, 1, plan->factors);
    for (i = 1; i <= top; i++) {
        double power = out[i].re * out[i].re + out[i].im * out[i].im + 1e-12;
        arithmetic += power;
        logs += log(power);
    }
    flatness = g->flatness = exp(logs / top) * top / arithmetic;
    g->run = 0;
    g->has_tonal = flatness <= TONAL_FLATNESS;
    g->tonal_level = level;
    return flatness <= g->max_flatness;
}

double txv_gate_level(const txv_gate *g) { return g->level_db; }
double txv_gate_floor(const txv_gate *g) { return g->floor_db; }
double txv_gate_flatness(const txv_gate *g) { return g->flatness; }

/* webrtcvad and the gate together (txvoice.audio.vad.WebRtcClassifier.classify) */
static int classify(void *vad, int rate, txv_gate *g, const int16_t *frame)
{
    int webrtc = vad_process_p(vad, rate, frame, (size_t)g->n) != 0;
    return txv_gate_accept(g, frame, webrtc) && webrtc;
}

/* ---- a stream: decoder, frame assembly, the two classifiers --------------------------------- */

typedef struct {
    void *decoder;     /* the OpusDecoder's own OpusDecoder* (borrowed) */
    int rate, max_samples, max_conceal, fec;
    int has_last;
    int64_t last_sequence;
    int frame_size, fill;
    int16_t *pending;  /* < frame_size samples waiting for the rest of their frame; made when first needed
                        * (never for 20 ms packets in 20 ms frames: 640 bytes a stream saved) */
    void *vad;         /* the 20 ms webrtcvad (borrowed) */
    txv_gate *gate;    /* owned */
    void *onset_vad;   /* the 10 ms one (borrowed): NULL until the first reply (txv_stream_set_onset_vad) */
    txv_gate *onset_gate; /* NULL without the fast onset */
    int sub;
} txv_stream;

void txv_stream_free(txv_stream *s)
{
    if (!s)
        return;
    txv_gate_free(s->gate);
    txv_gate_free(s->onset_gate);
    free(s->pending);
    free(s);
}

/* Takes ownership of both gates (freed with the stream, or here when it cannot be made). */
txv_stream *txv_stream_new(void *decoder, int rate, int max_samples, int max_conceal, int fec, int frame_size,
                           void *vad, txv_gate *gate, void *onset_vad, txv_gate *onset_gate)
{
    txv_stream *s = calloc(1, sizeof(txv_stream));
    if (s) {
        s->gate = gate;
        s->onset_gate = onset_gate;
    }
    if (!s || !gate || gate->n != frame_size || (onset_vad && !onset_gate) ||
        (onset_gate && frame_size % onset_gate->n)) {
        if (s)
            txv_stream_free(s);
        else {
            txv_gate_free(gate);
            txv_gate_free(onset_gate);
        }
        return NULL;
    }
    s->decoder = decoder;
    s->rate = rate;
    s->max_samples = max_samples;
    s->max_conceal = max_conceal;
    s->fec = fec;
    s->frame_size = frame_size;
    s->vad = vad;
    s->onset_vad = onset_vad;
    s->sub = onset_gate ? onset_gate->n : 0;
    return s;
}

/* The onset's webrtcvad, made by the Python side when a reply first plays (a webrtcvad that has
 * classified nothing is the same whenever it is made, and an idle onset only tracks its gate). */
void txv_stream_set_onset_vad(txv_stream *s, void *onset_vad)
{
    s->onset_vad = onset_vad;
}

/* Error kinds in an item's info row (the Python side raises what OpusDecoder.decode would). */
enum { OK = 0, EMPTY_PACKET = 1, INVALID_PACKET = 2, ZERO_DURATION = 3 };

/* Per item, 8 int32: kind, opus code, samples decoded, pcm offset, frames, voiced offset,
 * onset offset, onset decisions. */
#define INFO 8

/* Decode one chunk at out (room for `room` samples); samples decoded, or < 0 with info set. */
static int decode_chunk(txv_stream *s, const unsigned char *data, int32_t len, int has_seq, int64_t seq,
                        int16_t *out, int64_t room, int32_t *info)
{
    int n;
    if (len <= 0) {
        info[0] = EMPTY_PACKET;
        return -1;
    }
    if (has_seq && s->has_last && seq - s->last_sequence > 1) {
        int64_t missing = seq - s->last_sequence - 1;
        int per_packet = opus_nb_samples_p(data, len, s->rate), parsed;
        int64_t concealed;
        unsigned char toc;
        const unsigned char *frames[48];
        int16_t size[48];
        int offset;
        if (per_packet < 0) {
            info[0] = INVALID_PACKET, info[1] = per_packet;
            return -1;
        }
        parsed = opus_parse_p(data, len, &toc, frames, size, &offset);
        if (parsed < 0) {
            info[0] = INVALID_PACKET, info[1] = parsed;
            return -1;
        }
        if (per_packet == 0) {
            info[0] = ZERO_DURATION;
            return -1;
        }
        concealed = s->max_conceal / per_packet;
        if (missing < concealed)
            concealed = missing;
        concealed *= per_packet;
        if (concealed + per_packet > room)
            return -2; /* no room: the caller calls again with more */
        if (concealed) {
            n = s->fec ? opus_decode_p(s->decoder, data, len, out, (int)concealed, 1)
                       : opus_decode_p(s->decoder, NULL, 0, out, (int)concealed, 0);
            if (n != concealed) {
                info[0] = INVALID_PACKET, info[1] = n < 0 ? n : OPUS_INTERNAL_ERROR;
                return -1;
            }
        }
        n = opus_decode_p(s->decoder, data, len, out + concealed, per_packet, 0);
        if (n < 0) {
            info[0] = INVALID_PACKET, info[1] = n;
            return -1;
        }
        n += (int)concealed;
    } else {
        if (s->max_samples > room)
            return -2;
        n = opus_decode_p(s->decoder, data, len, out, s->max_samples, 0);
        if (n < 0) {
            info[0] = INVALID_PACKET, info[1] = n;
            return -1;
        }
    }
    if (has_seq) {
        s->has_last = 1;
        s->last_sequence = seq;
    }
    return n;
}

/*
 * The batch: items i < count, 4 int64 each: the stream, the packet's length (the packets follow
 * one another in data), its sequence number, and flags (1: it has a sequence number, 2: the fast
 * onset classifies).  Frames go to pcm (pcm_cap samples), 20 ms decisions to voiced, 10 ms onset
 * decisions (active items only) to onset (dec_cap each; one per frame of pcm is enough); info
 * gets INFO int32 per item.  Returns the number of items done: fewer than count when pcm ran out
 * of room (call again for the rest with more).
 */
int txv_batch(const int64_t *items, int count, const unsigned char *data, int16_t *pcm, int64_t pcm_cap,
              uint8_t *voiced, uint8_t *onset, int64_t dec_cap, int32_t *info)
{
    int64_t used = 0, vused = 0, oused = 0;
    int i;
    for (i = 0; i < count; i++) {
        const int64_t *item = items + (size_t)i * 4;
        txv_stream *s = (txv_stream *)(intptr_t)item[0];
        int32_t len = (int32_t)item[1], *row = info + (size_t)i * INFO;
        int has_seq = (int)(item[3] & 1), active = (int)((item[3] >> 1) & 1) && s->onset_vad;
        int fs = s->frame_size, fill = s->fill, n, frames, f, rest;
        int64_t need_o;
        memset(row, 0, sizeof(int32_t) * INFO);
        if (used + fill > pcm_cap)
            return i;
        n = decode_chunk(s, data, len, has_seq, item[2], pcm + used + fill, pcm_cap - used - fill, row);
        if (n == -2)
            return i;
        data += len > 0 ? len : 0;
        if (n < 0)
            continue;
        row[2] = n;
        if (n == 0)
            continue;
        frames = (fill + n) / fs;
        need_o = s->onset_gate && active ? (int64_t)frames * (fs / s->sub) : 0;
        if (vused + frames > dec_cap || oused + need_o > dec_cap)
            return -1; /* cannot happen with one decision of room per sample / 10 ms */
        rest = (fill + n) - frames * fs;
        if (rest && !s->pending && !(s->pending = malloc(sizeof(int16_t) * (size_t)fs)))
            return -3; /* out of memory (the Python side raises MemoryError) */
        if (fill)
            memcpy(pcm + used, s->pending, sizeof(int16_t) * (size_t)fill);
        row[3] = (int32_t)used;
        row[4] = frames;
        row[5] = (int32_t)vused;
        row[6] = (int32_t)oused;
        row[7] = (int32_t)need_o;
        for (f = 0; f < frames; f++) {
            const int16_t *frame = pcm + used + (int64_t)f * fs;
            int j;
            voiced[vused++] = (uint8_t)classify(s->vad, s->rate, s->gate, frame);
            if (s->onset_gate) {
                for (j = 0; j < fs; j += s->sub) {
                    if (active)
                        onset[oused++] = (uint8_t)classify(s->onset_vad, s->rate, s->onset_gate, frame + j);
                    else
                        txv_gate_track(s->onset_gate, frame + j);
                }
            }
        }
        if (rest)
            memcpy(s->pending, pcm + used + (int64_t)frames * fs, sizeof(int16_t) * (size_t)rest);
        s->fill = rest;
        used += (int64_t)frames * fs;
    }
    return count;
}
