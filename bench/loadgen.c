/*
 * loadgen: a one-thread epoll WebSocket load generator for voice servers.
 *
 * N sessions connect to ws://127.0.0.1:PORT/PATH (the address is fixed: this tool never targets
 * anything but the loopback address), complete the RFC 6455 handshake (the Sec-WebSocket-Accept
 * value is checked), optionally wait for one text greeting, then each sends one binary frame
 * every INTERVAL ms, the sessions staggered evenly across the interval.  The server answers every
 * frame, in order: a text message containing "chunk_received" (--mode ack) or the frame echoed
 * back (--mode echo).  Answers are matched FIFO per session against a ring of send timestamps,
 * so frames carry no header.  Latency is counted from each frame's intended send time (its slot in
 * the schedule), so a generator that falls behind adds that delay to the latency it reports
 * instead of hiding it (no coordinated omission); the round trip from the actual send is reported
 * beside it ("latency_from_send_us").  "saturated" means the generator's own CPU was busier than
 * --cpu-limit over the send phase; a send schedule that slipped past --slip-limit-us is reported
 * ("slip_over_limit") but does not void the run.
 *
 * permessage-deflate (--deflate) is offered in the handshake; compressed (RSV1) server messages,
 * fragmented or not, are inflated with zlib (raw deflate + the 00 00 ff ff tail), honouring
 * server_no_context_takeover.  Client frames are never compressed (RSV1 is per message).
 *
 * Turn-based protocols (--mode none) answer no frame: the frames are counted as sent, the drain runs
 * its full --drain (nothing says what the server still owes), and latency is
 * measured instead by probes, a WebSocket ping after every K-th frame of a session (--probe-every K)
 * whose 16-byte payload carries that frame's intended send time and its actual one; the pong echoes
 * it, so each probe is timed from its frame's slot in the schedule like an answer.  Probes work in
 * every mode.  A connection may ask for a subprotocol (--subprotocol, checked in the answer), carry
 * extra request headers (--header, e.g. a bearer token), wait for a greeting of its own text
 * (--greeting-match), and send text messages after the greeting and before audio (--start-file:
 * one message a line, "{i}" replaced by the session's index), waiting for the answer that contains
 * --start-reply before it counts as connected.  Text messages containing --count-match are counted
 * ("matched_messages", e.g. one per answered turn).
 *
 * Payloads: a file of frames, each a 4-byte little-endian length then the bytes (bench/frames.py
 * writes them).  Wire frames are built and masked once at start-up with a random key per payload
 * (a benchmark shortcut: RFC 6455 wants a fresh key per frame, no server checks that) so one send
 * is one write() of a prebuilt buffer.
 *
 * Output: one JSON object on stdout.  Progress lines "PHASE <name> <monotonic_ns>" on stderr mark
 * the start of sending ("send") and the end of the drain ("end"), so a runner can read the
 * server's CPU time exactly over the measured window.
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c -lz
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define TARGET_ADDR "127.0.0.1" /* never anything else */
#define RING 512                /* outstanding frames per session (10 s at 20 ms) */
#define MAX_INFLIGHT_CONNECTS 32 /* below a default listen backlog of 50 */

/* ------------------------------------------------------------------ utilities */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of memory");
    return q;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* SHA-1 (FIPS 180-1), only for the 60-byte handshake accept value. */
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *buf = calloc(total, 1);
    if (!buf) die("out of memory");
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)buf[off + 4 * i] << 24 | (uint32_t)buf[off + 4 * i + 1] << 16 |
                   (uint32_t)buf[off + 4 * i + 2] << 8 | buf[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) {
            uint32_t x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
            w[i] = x << 1 | x >> 31;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = (a << 5 | a >> 27) + f + e + k + w[i];
            e = d, d = c, c = b << 30 | b >> 2, b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(buf);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ histogram */
/* HDR-like log-linear histogram of microseconds: exact below 2048, then 1024 sub-buckets per
 * power of two (relative error < 0.1 %). */
#define H_LINEAR 2048
#define H_SUB 1024
#define H_EXP 40
#define H_SIZE (H_LINEAR + H_EXP * H_SUB)

typedef struct {
    uint64_t *b;
    uint64_t count, max, sum;
} hist_t;

static void hist_init(hist_t *h) {
    h->b = calloc(H_SIZE, sizeof(uint64_t));
    if (!h->b) die("out of memory");
    h->count = h->max = h->sum = 0;
}

static void hist_add(hist_t *h, uint64_t v) {
    size_t idx;
    if (v < H_LINEAR) idx = v;
    else {
        int e = 63 - __builtin_clzll(v) - 10; /* v >> e in [1024, 2048) */
        if (e > H_EXP) e = H_EXP, v = (2048ull << H_EXP) - 1;
        idx = H_LINEAR + (size_t)(e - 1) * H_SUB + ((v >> e) - H_SUB);
    }
    h->b[idx]++;
    h->count++;
    h->sum += v;
    if (v > h->max) h->max = v;
}

static uint64_t hist_value(size_t idx) {
    if (idx < H_LINEAR) return idx;
    int e = (int)((idx - H_LINEAR) / H_SUB) + 1;
    uint64_t m = (idx - H_LINEAR) % H_SUB + H_SUB;
    return (m << e) + ((1ull << e) >> 1); /* bucket midpoint */
}

static uint64_t hist_pct(const hist_t *h, double p) {
    if (!h->count) return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->count + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > h->count) rank = h->count;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_SIZE; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------ configuration */

static int opt_port = 0;
static const char *opt_path = "/ws/audio?codec=opus&sample_rate=48000&channels=1";
static int opt_sessions = 10;
static double opt_duration = 10.0;
static double opt_interval_ms = 20.0;
static const char *opt_frames = NULL;
static int opt_echo = 0;     /* mode echo: answers are binary echoes */
static int opt_greeting = 1; /* wait for one text greeting per session */
static int opt_deflate = 0;
static double opt_warmup = 1.0;
static double opt_drain = 3.0;
static double opt_connect_timeout = 0; /* 0: 10 s + 10 ms per session */
static double opt_slip_limit_us = 2000;
static double opt_cpu_limit = 0.9;
static int opt_prewarm = 0; /* frames the warm-up session sends (0: no warm-up) */
static double opt_tick_us = 500; /* send-scheduler granularity (0: wake for every frame) */
static int opt_lazy_reads = 0;   /* --lazy-reads: wake once per tick, not per answer (answers timed up to a tick late) */
static int opt_none = 0;         /* mode none: the server answers no frame (turn-based protocols) */
static int opt_probe_every = 0;  /* a WebSocket ping after every K-th frame of a session (0: none) */
static const char *opt_subprotocol = NULL; /* Sec-WebSocket-Protocol to ask for (and insist on) */
#define MAX_HEADERS 8
static const char *opt_headers[MAX_HEADERS];
static int opt_nheaders = 0;
static const char *opt_greeting_match = "connected"; /* the greeting is the first text containing this */
static const char *opt_start_file = NULL;            /* text messages sent after the greeting, one a line */
static const char *opt_start_reply = NULL;           /* ... then wait for a text containing this */
static const char *opt_count_match = NULL;           /* count the text messages containing this */
static char **start_msgs;
static size_t nstart_msgs;

/* ------------------------------------------------------------------ payloads */

typedef struct {
    uint8_t *wire; /* complete masked client frame */
    size_t wire_len, payload_len;
} payload_t;

static payload_t *payloads;
static size_t npayloads;

static size_t frame_header(uint8_t *h, int opcode, size_t len, const uint8_t mask[4]) {
    size_t n = 0;
    h[n++] = 0x80 | (uint8_t)opcode;
    if (len < 126) h[n++] = 0x80 | (uint8_t)len;
    else if (len < 65536) h[n++] = 0x80 | 126, h[n++] = (uint8_t)(len >> 8), h[n++] = (uint8_t)len;
    else {
        h[n++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) h[n++] = (uint8_t)(len >> (8 * i));
    }
    memcpy(h + n, mask, 4);
    return n + 4;
}

static size_t build_frame(uint8_t *dst, int opcode, const uint8_t *payload, size_t len) {
    uint8_t mask[4];
    uint32_t r = (uint32_t)rng();
    memcpy(mask, &r, 4);
    size_t n = frame_header(dst, opcode, len, mask);
    for (size_t i = 0; i < len; i++) dst[n + i] = payload[i] ^ mask[i & 3];
    return n + len;
}

static void load_payloads(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open frames file %s: %s", path, strerror(errno));
    size_t cap = 0;
    for (;;) {
        uint8_t lb[4];
        size_t got = fread(lb, 1, 4, f);
        if (got == 0) break;
        if (got != 4) die("truncated frames file %s", path);
        size_t len = (size_t)lb[0] | (size_t)lb[1] << 8 | (size_t)lb[2] << 16 | (size_t)lb[3] << 24;
        if (len == 0 || len > (1u << 20)) die("bad frame length %zu in %s", len, path);
        uint8_t *data = malloc(len);
        if (!data || fread(data, 1, len, f) != len) die("truncated frames file %s", path);
        if (npayloads == cap) cap = cap ? 2 * cap : 256, payloads = xrealloc(payloads, cap * sizeof(payload_t));
        payload_t *p = &payloads[npayloads++];
        p->wire = malloc(len + 14);
        if (!p->wire) die("out of memory");
        p->wire_len = build_frame(p->wire, 2, data, len);
        p->payload_len = len;
        free(data);
    }
    fclose(f);
    if (!npayloads) die("no frames in %s", path);
}

/* The start messages: one text message a line (empty lines skipped, a trailing CR dropped). */
static void load_start_messages(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open start file %s: %s", path, strerror(errno));
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') die("a line of %s is over %zu bytes", path, sizeof line - 2);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        start_msgs = xrealloc(start_msgs, (nstart_msgs + 1) * sizeof(char *));
        start_msgs[nstart_msgs++] = strdup(line);
    }
    fclose(f);
    if (!nstart_msgs) die("no messages in %s", path);
}

/* ------------------------------------------------------------------ sessions */

enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_GREETING, S_STARTING, S_READY, S_DEAD };

typedef struct {
    int fd, state;
    char key[32];
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    int want_out;
    uint64_t ring[RING];           /* each outstanding frame's intended send time (its schedule slot) */
    uint64_t ring_sent[RING];      /* ... and when it actually went out */
    uint32_t ring_head, ring_tail; /* head: next write; tail: oldest unanswered */
    uint8_t *msg;                  /* fragmented / compressed message being assembled */
    size_t msg_len, msg_cap;
    int msg_opcode, msg_compressed, in_msg;
    int deflate, server_no_ctx;
    z_stream *z;
    uint64_t sent, acked;
    uint64_t probes_out; /* pings sent and not yet answered */
    int epfd_registered;
} sess_t;

static sess_t *sess;
static int epfd;
static uint64_t warmup_cutoff_ns = UINT64_MAX;
static hist_t lat, lat_send, slip, probe, probe_send;

/* counters */
static uint64_t c_sent, c_acked, c_skipped, c_unexpected, c_errors, c_other, c_server_closed, c_compressed;
static uint64_t c_connect_failed, c_handshake_failed, c_greeting_failed, c_deflate, c_pings, c_bytes_in;
static uint64_t c_lost_closed, c_start_failed, c_probes_sent, c_probes_answered, c_probes_unmatched;
static uint64_t c_probes_lost_closed, c_matched, c_binary_in;
static int first_http_status = 0;
static char first_error[256];

static void note_error(const char *fmt, ...) {
    if (first_error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
}

static void ep_mod(sess_t *s, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(s - sess)};
    if (epoll_ctl(epfd, s->epfd_registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    s->epfd_registered = 1;
}

static uint32_t outstanding(const sess_t *s) { return s->ring_head - s->ring_tail; }

static void sess_kill(sess_t *s, int by_server) {
    if (s->state == S_DEAD) return;
    if (s->state == S_READY) {
        /* Mode none: nothing says which frames of a connection that died were handled; all count. */
        c_lost_closed += opt_none ? s->sent : outstanding(s);
        c_probes_lost_closed += s->probes_out;
        if (by_server) c_server_closed++;
    }
    s->state = S_DEAD;
    if (s->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (s->z) inflateEnd(s->z), free(s->z), s->z = NULL;
}

static void flush_out(sess_t *s) {
    while (s->out_off < s->out_len) {
        ssize_t n = write(s->fd, s->out + s->out_off, s->out_len - s->out_off);
        if (n > 0) s->out_off += (size_t)n;
        else if (n < 0 && errno == EINTR) continue;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        else {
            note_error("write: %s", n < 0 ? strerror(errno) : "closed");
            sess_kill(s, 1);
            return;
        }
    }
    if (s->out_off == s->out_len) s->out_off = s->out_len = 0;
    int want = s->out_len > 0;
    if (want != s->want_out) {
        s->want_out = want;
        ep_mod(s, EPOLLIN | (want ? EPOLLOUT : 0));
    }
}

/* Queue bytes for the socket, writing at once when nothing is pending. */
static void sess_write(sess_t *s, const uint8_t *data, size_t len) {
    if (s->state == S_DEAD) return;
    size_t off = 0;
    if (s->out_len == 0) {
        while (off < len) {
            ssize_t n = write(s->fd, data + off, len - off);
            if (n > 0) off += (size_t)n;
            else if (n < 0 && errno == EINTR) continue;
            else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            else {
                note_error("write: %s", n < 0 ? strerror(errno) : "closed");
                sess_kill(s, 1);
                return;
            }
        }
        if (off == len) return;
    }
    size_t rest = len - off;
    if (s->out_len + rest > s->out_cap) {
        s->out_cap = (s->out_len + rest) * 2;
        s->out = xrealloc(s->out, s->out_cap);
    }
    memcpy(s->out + s->out_len, data + off, rest);
    s->out_len += rest;
    if (!s->want_out) s->want_out = 1, ep_mod(s, EPOLLIN | EPOLLOUT);
}

static void send_control(sess_t *s, int opcode, const uint8_t *payload, size_t len) {
    uint8_t buf[14 + 125];
    if (len > 125) len = 125;
    sess_write(s, buf, build_frame(buf, opcode, payload, len));
}

static void sess_start(sess_t *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        note_error("socket: %s", strerror(errno));
        c_connect_failed++;
        s->state = S_DEAD;
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    inet_pton(AF_INET, TARGET_ADDR, &a.sin_addr);
    s->state = S_CONNECTING;
    s->epfd_registered = 0;
    s->want_out = 1;
    if (connect(s->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        note_error("connect: %s", strerror(errno));
        c_connect_failed++;
        close(s->fd);
        s->fd = -1;
        s->state = S_DEAD;
        return;
    }
    ep_mod(s, EPOLLIN | EPOLLOUT);
}

static void send_handshake(sess_t *s) {
    uint8_t raw[16];
    for (int i = 0; i < 16; i++) raw[i] = (uint8_t)rng();
    base64(raw, 16, s->key);
    char req[16384], extra[8192];
    size_t el = 0;
    extra[0] = 0;
    if (opt_subprotocol) el += (size_t)snprintf(extra + el, sizeof extra - el, "Sec-WebSocket-Protocol: %s\r\n", opt_subprotocol);
    for (int h = 0; h < opt_nheaders && el < sizeof extra; h++)
        el += (size_t)snprintf(extra + el, sizeof extra - el, "%s\r\n", opt_headers[h]);
    if (el >= sizeof extra) die("request headers too long");
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s"
                     "User-Agent: txvoice-loadgen\r\n\r\n",
                     opt_path, TARGET_ADDR, opt_port, s->key,
                     opt_deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "", extra);
    if (n < 0 || (size_t)n >= sizeof req) die("request head too long");
    s->state = S_HANDSHAKE;
    s->want_out = 0;
    ep_mod(s, EPOLLIN);
    sess_write(s, (uint8_t *)req, (size_t)n);
}

/* Case-insensitive header lookup in the response head; returns a pointer to the value. */
static const char *header_value(const char *head, const char *name, size_t *vlen) {
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2] != '\r') {
        const char *line = p + 2;
        const char *eol = strstr(line, "\r\n");
        if (!eol) break;
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t') v++;
            const char *e = eol;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

static void handshake_failed(sess_t *s, const char *why) {
    note_error("handshake: %s", why);
    c_handshake_failed++;
    sess_kill(s, 0);
}

static void became_ready(sess_t *s) { s->state = S_READY; }

/* After the greeting: the start messages ("{i}" -> the session's index), then wait for --start-reply. */
static void send_start(sess_t *s) {
    if (!nstart_msgs) {
        became_ready(s);
        return;
    }
    char idx[24];
    snprintf(idx, sizeof idx, "%d", (int)(s - sess));
    for (size_t m = 0; m < nstart_msgs && s->state != S_DEAD; m++) {
        char text[8192];
        size_t o = 0;
        for (const char *c = start_msgs[m]; *c && o < sizeof text - 32; c++) {
            if (c[0] == '{' && c[1] == 'i' && c[2] == '}') {
                o += (size_t)snprintf(text + o, sizeof text - o, "%s", idx);
                c += 2;
            } else text[o++] = *c;
        }
        uint8_t *wire = malloc(o + 14);
        if (!wire) die("out of memory");
        size_t wl = build_frame(wire, 1, (const uint8_t *)text, o);
        sess_write(s, wire, wl);
        free(wire);
    }
    if (s->state == S_DEAD) return;
    if (opt_start_reply) s->state = S_STARTING;
    else became_ready(s);
}

/* Returns bytes consumed from s->in, or 0 when the head is incomplete. */
static size_t parse_handshake(sess_t *s) {
    uint8_t *end = memmem(s->in, s->in_len, "\r\n\r\n", 4);
    if (!end) {
        if (s->in_len > 16384) handshake_failed(s, "response head too long");
        return 0;
    }
    size_t head_len = (size_t)(end - s->in) + 4;
    char *head = malloc(head_len + 1);
    memcpy(head, s->in, head_len);
    head[head_len] = 0;
    int status = 0;
    sscanf(head, "HTTP/1.%*d %d", &status);
    if (status != 101) {
        if (!first_http_status) first_http_status = status;
        char why[64];
        snprintf(why, sizeof why, "HTTP status %d", status);
        handshake_failed(s, why);
        free(head);
        return 0;
    }
    char want[64], cat[128];
    uint8_t digest[20];
    snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", s->key);
    sha1((uint8_t *)cat, strlen(cat), digest);
    base64(digest, 20, want);
    size_t vl = 0;
    const char *v = header_value(head, "Sec-WebSocket-Accept", &vl);
    if (!v || vl != strlen(want) || memcmp(v, want, vl) != 0) {
        handshake_failed(s, "bad Sec-WebSocket-Accept");
        free(head);
        return 0;
    }
    if (opt_subprotocol) {
        v = header_value(head, "Sec-WebSocket-Protocol", &vl);
        if (!v || vl != strlen(opt_subprotocol) || memcmp(v, opt_subprotocol, vl) != 0) {
            handshake_failed(s, "the server did not select the subprotocol asked for");
            free(head);
            return 0;
        }
    }
    v = header_value(head, "Sec-WebSocket-Extensions", &vl);
    if (v) {
        char ext[512];
        snprintf(ext, sizeof ext, "%.*s", (int)(vl < 511 ? vl : 511), v);
        for (char *c = ext; *c; c++) *c = (char)tolower((unsigned char)*c);
        if (strstr(ext, "permessage-deflate")) {
            if (!opt_deflate) {
                handshake_failed(s, "server accepted an extension that was not offered");
                free(head);
                return 0;
            }
            s->deflate = 1;
            s->server_no_ctx = strstr(ext, "server_no_context_takeover") != NULL;
            c_deflate++;
        }
    }
    free(head);
    if (opt_greeting) s->state = S_GREETING;
    else send_start(s);
    return head_len;
}

static void on_answer(sess_t *s, uint64_t t) {
    if (outstanding(s) == 0) {
        c_unexpected++;
        return;
    }
    /* Latency counts from the frame's intended send time, not from when it went out: a generator
     * that falls behind its schedule adds its delay to what it reports (no coordinated omission).
     * The round trip from the actual send is kept beside it. */
    uint64_t due = s->ring[s->ring_tail % RING], sent_at = s->ring_sent[s->ring_tail % RING];
    s->ring_tail++;
    s->acked++;
    c_acked++;
    if (due >= warmup_cutoff_ns) {
        hist_add(&lat, (t > due ? t - due : 0) / 1000);
        hist_add(&lat_send, (t > sent_at ? t - sent_at : 0) / 1000);
    }
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A pong: the answer to a probe when it echoes one (due time, send time); others are ignored. */
static void on_pong(sess_t *s, const uint8_t *data, size_t len, uint64_t t) {
    if (len != 16 || !s->probes_out) {
        c_probes_unmatched++;
        return;
    }
    uint64_t due = get_u64(data), sent_at = get_u64(data + 8);
    s->probes_out--;
    c_probes_answered++;
    if (due >= warmup_cutoff_ns) {
        hist_add(&probe, (t > due ? t - due : 0) / 1000);
        hist_add(&probe_send, (t > sent_at ? t - sent_at : 0) / 1000);
    }
}

static void send_probe(sess_t *s, uint64_t due, uint64_t sent_at) {
    uint8_t payload[16];
    for (int i = 0; i < 8; i++) payload[i] = (uint8_t)(due >> (8 * i)), payload[8 + i] = (uint8_t)(sent_at >> (8 * i));
    s->probes_out++;
    c_probes_sent++;
    send_control(s, 9, payload, sizeof payload);
}

static void on_message(sess_t *s, int opcode, const uint8_t *data, size_t len, uint64_t t) {
    if (s->state == S_GREETING) {
        if (opcode == 1 && memmem(data, len, opt_greeting_match, strlen(opt_greeting_match))) send_start(s);
        else {
            c_greeting_failed++;
            note_error("first message is not a greeting: %.*s", (int)(len < 120 ? len : 120), (const char *)data);
            sess_kill(s, 0);
        }
        return;
    }
    if (s->state == S_STARTING) {
        if (opcode != 1) return;
        if (memmem(data, len, opt_start_reply, strlen(opt_start_reply))) became_ready(s);
        else if (memmem(data, len, "error", 5)) {
            c_start_failed++;
            note_error("start message refused: %.*s", (int)(len < 160 ? len : 160), (const char *)data);
            sess_kill(s, 0);
        }
        return;
    }
    if (s->state != S_READY) return;
    if (opcode == 2) c_binary_in++;
    if (opt_count_match && opcode == 1 && memmem(data, len, opt_count_match, strlen(opt_count_match))) c_matched++;
    if (opt_none) {
        if (opcode == 1 && memmem(data, len, "error", 5)) {
            c_errors++;
            note_error("server error: %.*s", (int)(len < 160 ? len : 160), (const char *)data);
        } else c_other++;
        return;
    }
    if (opt_echo) {
        if (opcode == 2) on_answer(s, t);
        else c_other++;
        return;
    }
    if (opcode == 1 && memmem(data, len, "chunk_received", 14)) on_answer(s, t);
    else if (opcode == 1 && memmem(data, len, "error", 5)) {
        c_errors++;
        note_error("server error: %.*s", (int)(len < 160 ? len : 160), (const char *)data);
    } else c_other++;
}

static void msg_append(sess_t *s, const uint8_t *d, size_t n) {
    if (s->msg_len + n > s->msg_cap) {
        s->msg_cap = (s->msg_len + n) * 2 + 256;
        s->msg = xrealloc(s->msg, s->msg_cap);
    }
    memcpy(s->msg + s->msg_len, d, n);
    s->msg_len += n;
}

static uint8_t *zbuf;
static size_t zbuf_cap;

/* Inflate one compressed message (RFC 7692 section 7.2.2). */
static int inflate_message(sess_t *s, const uint8_t *in, size_t len, size_t *out_len) {
    if (!s->z) {
        s->z = calloc(1, sizeof(z_stream));
        if (!s->z || inflateInit2(s->z, -15) != Z_OK) die("inflateInit2 failed");
    }
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    size_t produced = 0;
    for (int part = 0; part < 2; part++) {
        s->z->next_in = (Bytef *)(part ? tail : in);
        s->z->avail_in = (uInt)(part ? 4 : len);
        while (s->z->avail_in > 0) {
            if (zbuf_cap - produced < 4096) zbuf_cap = zbuf_cap * 2 + 65536, zbuf = xrealloc(zbuf, zbuf_cap);
            s->z->next_out = zbuf + produced;
            s->z->avail_out = (uInt)(zbuf_cap - produced);
            int r = inflate(s->z, Z_SYNC_FLUSH);
            produced = zbuf_cap - s->z->avail_out;
            if (r == Z_BUF_ERROR && s->z->avail_out > 0) break; /* no progress possible: all consumed */
            if (r != Z_OK && r != Z_BUF_ERROR && r != Z_STREAM_END) return -1;
            if (r == Z_STREAM_END) break;
        }
    }
    if (s->server_no_ctx) inflateReset(s->z);
    *out_len = produced;
    return 0;
}

static void deliver(sess_t *s, int opcode, int compressed, const uint8_t *data, size_t len, uint64_t t) {
    if (compressed) {
        size_t n;
        if (!s->deflate || inflate_message(s, data, len, &n) < 0) {
            c_errors++;
            note_error("bad compressed message");
            sess_kill(s, 0);
            return;
        }
        c_compressed++;
        on_message(s, opcode, zbuf, n, t);
    } else on_message(s, opcode, data, len, t);
}

/* Parse complete frames in s->in; returns bytes consumed. */
static size_t parse_frames(sess_t *s, size_t start, uint64_t t) {
    size_t pos = start;
    while (s->state != S_DEAD) {
        uint8_t *p = s->in + pos;
        size_t avail = s->in_len - pos;
        if (avail < 2) break;
        int fin = p[0] & 0x80, rsv1 = p[0] & 0x40, opcode = p[0] & 0x0f, masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t)p[2] << 8 | p[3], hl = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
            hl = 10;
        }
        if (masked) hl += 4;
        if (len > (64u << 20)) {
            note_error("frame too large");
            sess_kill(s, 0);
            break;
        }
        if (avail < hl + len) break;
        uint8_t *payload = p + hl;
        if (masked) /* servers must not mask; tolerate it */
            for (uint64_t i = 0; i < len; i++) payload[i] ^= p[hl - 4 + (i & 3)];
        pos += hl + (size_t)len;
        if (opcode >= 8) {
            if (opcode == 9) c_pings++, send_control(s, 10, payload, (size_t)len);
            else if (opcode == 10) on_pong(s, payload, (size_t)len, t);
            else if (opcode == 8) {
                if (s->state == S_READY || s->state == S_GREETING || s->state == S_STARTING) {
                    unsigned code = len >= 2 ? (unsigned)payload[0] << 8 | payload[1] : 0;
                    note_error("server closed the connection (code %u: %.*s)", code, (int)(len > 2 ? len - 2 : 0),
                               (const char *)payload + 2);
                }
                sess_kill(s, 1);
            }
            continue;
        }
        if (opcode == 0) {
            if (!s->in_msg) {
                note_error("continuation without a message");
                sess_kill(s, 0);
                break;
            }
            msg_append(s, payload, (size_t)len);
            if (fin) {
                s->in_msg = 0;
                deliver(s, s->msg_opcode, s->msg_compressed, s->msg, s->msg_len, t);
                s->msg_len = 0;
            }
        } else if (opcode == 1 || opcode == 2) {
            if (s->in_msg) {
                note_error("new message inside a fragmented one");
                sess_kill(s, 0);
                break;
            }
            if (fin) deliver(s, opcode, rsv1 != 0, payload, (size_t)len, t);
            else {
                s->in_msg = 1, s->msg_opcode = opcode, s->msg_compressed = rsv1 != 0, s->msg_len = 0;
                msg_append(s, payload, (size_t)len);
            }
        } else {
            note_error("reserved opcode %d", opcode);
            sess_kill(s, 0);
            break;
        }
    }
    return pos;
}

static void on_readable(sess_t *s) {
    for (;;) {
        if (s->in_cap - s->in_len < 16384) {
            s->in_cap = s->in_cap * 2 + 65536;
            s->in = xrealloc(s->in, s->in_cap);
        }
        size_t room = s->in_cap - s->in_len;
        ssize_t n = read(s->fd, s->in + s->in_len, room);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            if (s->state == S_HANDSHAKE) handshake_failed(s, n == 0 ? "connection closed" : strerror(errno));
            else {
                if (s->state == S_READY || s->state == S_GREETING || s->state == S_STARTING)
                    note_error("connection lost: %s", n == 0 ? "EOF" : strerror(errno));
                if (s->state == S_GREETING) c_greeting_failed++;
                if (s->state == S_STARTING) c_start_failed++;
                sess_kill(s, 1);
            }
            return;
        }
        uint64_t t = now_ns();
        c_bytes_in += (uint64_t)n;
        s->in_len += (size_t)n;
        size_t pos = 0;
        if (s->state == S_HANDSHAKE) {
            pos = parse_handshake(s);
            if (s->state == S_DEAD || pos == 0) {
                if (s->state == S_DEAD) return;
                continue;
            }
        }
        pos = parse_frames(s, pos, t);
        if (s->state == S_DEAD) return;
        if (pos) {
            memmove(s->in, s->in + pos, s->in_len - pos);
            s->in_len -= pos;
        }
        if ((size_t)n < room) return; /* short read: the socket is drained */
    }
}

static void on_event(sess_t *s, uint32_t ev) {
    if (s->state == S_DEAD) return;
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (ev & (EPOLLERR | EPOLLHUP))) {
            note_error("connect: %s", strerror(err ? err : ECONNREFUSED));
            c_connect_failed++;
            sess_kill(s, 0);
            return;
        }
        if (ev & EPOLLOUT) send_handshake(s);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(s);
    if (s->state != S_DEAD && (ev & EPOLLOUT)) flush_out(s);
}

static int epoll_wait_ns(struct epoll_event *evs, int max, int64_t timeout_ns) {
#ifdef SYS_epoll_pwait2
    static int have_pwait2 = 1;
    if (have_pwait2) {
        struct timespec ts, *tp = NULL;
        if (timeout_ns >= 0) ts.tv_sec = timeout_ns / 1000000000, ts.tv_nsec = timeout_ns % 1000000000, tp = &ts;
        int r = (int)syscall(SYS_epoll_pwait2, epfd, evs, max, tp, NULL, 0);
        if (r >= 0 || errno != ENOSYS) return r;
        have_pwait2 = 0;
    }
#endif
    int ms = timeout_ns < 0 ? -1 : (int)(timeout_ns / 1000000);
    return epoll_wait(epfd, evs, max, ms);
}

static void pump(int64_t timeout_ns) {
    static struct epoll_event evs[1024];
    int n = epoll_wait_ns(evs, 1024, timeout_ns);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) on_event(&sess[evs[i].data.u32], evs[i].events);
}

/* Sleep until ``wake`` (CLOCK_MONOTONIC ns) without waking for answers, then read every answer that
 * came meanwhile: one wake-up per tick instead of one per answer.  An answer is timed when it is
 * read, so it is counted up to one tick late (conservative: never early). */
static void sleep_then_pump(uint64_t wake) {
    struct timespec ts = {.tv_sec = (time_t)(wake / 1000000000ull), .tv_nsec = (long)(wake % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
    static struct epoll_event evs[1024];
    int n;
    do {
        n = epoll_wait_ns(evs, 1024, 0);
        for (int i = 0; i < n; i++) on_event(&sess[evs[i].data.u32], evs[i].events);
    } while (n == 1024);
}

/* Warm-up: one session sends a few frames and leaves before the measured sessions connect, so
 * what a server loads lazily on its first session is in its baseline, not in the per-session
 * figures.  Prints "PHASE warm" then pauses so the runner can read the baseline; every counter
 * is reset afterwards. */
static void prewarm(sess_t *s) {
    uint64_t deadline = now_ns() + (uint64_t)((opt_connect_timeout < 10 ? opt_connect_timeout : 10) * 1e9);
    sess_start(s);
    while (s->state != S_READY && s->state != S_DEAD && now_ns() < deadline) pump(10000000);
    if (s->state == S_READY) {
        uint64_t interval = (uint64_t)(opt_interval_ms * 1e6);
        for (int k = 0; k < opt_prewarm && s->state == S_READY; k++) {
            uint64_t due = now_ns() + interval;
            payload_t *p = &payloads[(size_t)k % npayloads];
            uint64_t ts = now_ns();
            if (!opt_none) {
                s->ring[s->ring_head % RING] = s->ring_sent[s->ring_head % RING] = ts;
                s->ring_head++;
            }
            sess_write(s, p->wire, p->wire_len);
            if (opt_probe_every && (k + 1) % opt_probe_every == 0) send_probe(s, ts, ts);
            for (uint64_t t = now_ns(); t < due; t = now_ns()) pump((int64_t)(due - t));
        }
        uint64_t wait_until = now_ns() + 2000000000ull;
        while (s->state == S_READY && (outstanding(s) || s->probes_out) && now_ns() < wait_until) pump(5000000);
        if (s->state == S_READY) {
            static const uint8_t bye[2] = {0x03, 0xe8};
            send_control(s, 8, bye, 2);
        }
    }
    if (s->state != S_READY) note_error("warm-up session failed");
    if (s->fd >= 0) epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL), shutdown(s->fd, SHUT_WR), close(s->fd), s->fd = -1;
    s->state = S_DEAD;
    c_sent = c_acked = c_skipped = c_unexpected = c_errors = c_other = c_server_closed = c_compressed = 0;
    c_connect_failed = c_handshake_failed = c_greeting_failed = c_deflate = c_pings = c_bytes_in = c_lost_closed = 0;
    c_start_failed = c_probes_sent = c_probes_answered = c_probes_unmatched = c_probes_lost_closed = 0;
    c_matched = c_binary_in = 0;
    hist_t *hs[] = {&lat, &lat_send, &probe, &probe_send};
    for (size_t h = 0; h < sizeof hs / sizeof hs[0]; h++) {
        memset(hs[h]->b, 0, H_SIZE * sizeof(uint64_t));
        hs[h]->count = hs[h]->max = hs[h]->sum = 0;
    }
    first_error[0] = 0;
    first_http_status = 0;
    usleep(150000); /* let the server finish closing the warm-up session */
    fprintf(stderr, "PHASE warm %llu\n", (unsigned long long)now_ns());
    fflush(stderr);
    usleep(50000); /* the runner reads the server's baseline now */
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P --frames FILE [--path /ws/audio?...] [--sessions N] [--duration S]\n"
            "               [--interval-ms 20] [--mode ack|echo] [--no-greeting] [--deflate] [--warmup S]\n"
            "               [--drain S] [--connect-timeout S] [--slip-limit-us 2000] [--cpu-limit 0.9]\n"
            "               [--prewarm FRAMES] [--tick-us 500] [--lazy-reads] [--mode none] [--probe-every K]\n"
            "               [--subprotocol NAME] [--header 'Name: value']... [--greeting-match TEXT]\n"
            "               [--start-file FILE] [--start-reply TEXT] [--count-match TEXT]\n"
            "Target address is always " TARGET_ADDR ".\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"port", required_argument, 0, 'p'},        {"path", required_argument, 0, 'u'},
        {"sessions", required_argument, 0, 'n'},    {"duration", required_argument, 0, 'd'},
        {"interval-ms", required_argument, 0, 'i'}, {"frames", required_argument, 0, 'f'},
        {"mode", required_argument, 0, 'm'},        {"no-greeting", no_argument, 0, 'G'},
        {"greeting", no_argument, 0, 'g'},          {"deflate", no_argument, 0, 'z'},
        {"warmup", required_argument, 0, 'w'},      {"drain", required_argument, 0, 'D'},
        {"connect-timeout", required_argument, 0, 'c'}, {"slip-limit-us", required_argument, 0, 's'},
        {"cpu-limit", required_argument, 0, 'C'},   {"prewarm", required_argument, 0, 'P'},
        {"tick-us", required_argument, 0, 'T'},     {"lazy-reads", no_argument, 0, 'L'},
        {"probe-every", required_argument, 0, 'K'}, {"subprotocol", required_argument, 0, 'S'},
        {"header", required_argument, 0, 'H'},      {"greeting-match", required_argument, 0, 'M'},
        {"start-file", required_argument, 0, 'F'},  {"start-reply", required_argument, 0, 'R'},
        {"count-match", required_argument, 0, 'X'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p': opt_port = atoi(optarg); break;
        case 'u': opt_path = optarg; break;
        case 'n': opt_sessions = atoi(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'i': opt_interval_ms = atof(optarg); break;
        case 'f': opt_frames = optarg; break;
        case 'm':
            if (!strcmp(optarg, "echo")) opt_echo = 1, opt_none = 0;
            else if (!strcmp(optarg, "ack")) opt_echo = 0, opt_none = 0;
            else if (!strcmp(optarg, "none")) opt_echo = 0, opt_none = 1;
            else usage();
            break;
        case 'G': opt_greeting = 0; break;
        case 'g': opt_greeting = 1; break;
        case 'z': opt_deflate = 1; break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'D': opt_drain = atof(optarg); break;
        case 'c': opt_connect_timeout = atof(optarg); break;
        case 's': opt_slip_limit_us = atof(optarg); break;
        case 'C': opt_cpu_limit = atof(optarg); break;
        case 'P': opt_prewarm = atoi(optarg); break;
        case 'T': opt_tick_us = atof(optarg); break;
        case 'L': opt_lazy_reads = 1; break;
        case 'K': opt_probe_every = atoi(optarg); break;
        case 'S': opt_subprotocol = optarg; break;
        case 'H':
            if (opt_nheaders == MAX_HEADERS) die("at most %d --header", MAX_HEADERS);
            opt_headers[opt_nheaders++] = optarg;
            break;
        case 'M': opt_greeting_match = optarg; break;
        case 'F': opt_start_file = optarg; break;
        case 'R': opt_start_reply = optarg; break;
        case 'X': opt_count_match = optarg; break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || !opt_frames || opt_sessions <= 0 || opt_duration <= 0 ||
        opt_interval_ms <= 0 || opt_path[0] != '/' || strpbrk(opt_path, " \r\n"))
        usage();
    if (opt_duration > 3600 || opt_sessions > 100000) die("duration <= 3600 s and sessions <= 100000");
    if (opt_probe_every < 0 || !opt_greeting_match[0]) usage();
    if (opt_subprotocol && (!opt_subprotocol[0] || strpbrk(opt_subprotocol, " ,\r\n"))) die("bad --subprotocol");
    for (int h = 0; h < opt_nheaders; h++)
        if (!strchr(opt_headers[h], ':') || strpbrk(opt_headers[h], "\r\n")) die("bad --header (want 'Name: value')");
    if (opt_start_reply && !opt_start_reply[0]) opt_start_reply = NULL;
    if (opt_start_file) load_start_messages(opt_start_file);
    if (opt_connect_timeout <= 0) opt_connect_timeout = 10.0 + 0.01 * opt_sessions;

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake on time: the default 50 us slack blurs pacing */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rng_state ^= now_ns() ^ ((uint64_t)getpid() << 32);
    load_payloads(opt_frames);
    hist_init(&lat);
    hist_init(&lat_send);
    hist_init(&slip);
    hist_init(&probe);
    hist_init(&probe_send);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    /* One extra slot: the warm-up session. */
    sess = calloc((size_t)opt_sessions + 1, sizeof(sess_t));
    if (!sess) die("out of memory");
    for (int i = 0; i <= opt_sessions; i++) sess[i].fd = -1, sess[i].state = S_IDLE;
    if (opt_prewarm > 0) prewarm(&sess[opt_sessions]);

    /* Connect phase: at most MAX_INFLIGHT_CONNECTS handshakes in flight. */
    uint64_t t_conn = now_ns();
    uint64_t conn_deadline = t_conn + (uint64_t)(opt_connect_timeout * 1e9);
    int next = 0;
    for (;;) {
        int inflight = 0, ready = 0, dead = 0;
        for (int i = 0; i < opt_sessions; i++) {
            int st = sess[i].state;
            if (st == S_CONNECTING || st == S_HANDSHAKE || st == S_GREETING || st == S_STARTING) inflight++;
            else if (st == S_READY) ready++;
            else if (st == S_DEAD) dead++;
        }
        if (ready + dead == opt_sessions) break;
        while (next < opt_sessions && inflight < MAX_INFLIGHT_CONNECTS) sess_start(&sess[next++]), inflight++;
        uint64_t t = now_ns();
        if (t >= conn_deadline) {
            for (int i = 0; i < opt_sessions; i++)
                if (sess[i].state != S_READY && sess[i].state != S_DEAD) {
                    if (sess[i].state == S_GREETING) {
                        c_greeting_failed++;
                        note_error("no greeting before the connect timeout");
                    } else if (sess[i].state == S_STARTING) {
                        c_start_failed++;
                        note_error("no answer to the start messages before the connect timeout");
                    } else {
                        c_connect_failed++;
                        note_error("handshake not complete before the connect timeout");
                    }
                    sess_kill(&sess[i], 0);
                }
            break;
        }
        pump(10000000);
    }
    int connected = 0;
    for (int i = 0; i < opt_sessions; i++) connected += sess[i].state == S_READY;
    double connect_s = (now_ns() - t_conn) / 1e9;

    /* Send phase: session i sends its k-th frame at t0 + k*I + i*I/N. */
    uint64_t interval = (uint64_t)(opt_interval_ms * 1e6);
    uint64_t per_session = (uint64_t)(opt_duration * 1000.0 / opt_interval_ms + 0.5);
    if (per_session < 1) per_session = 1;
    uint64_t t0 = now_ns() + 5000000;
    warmup_cutoff_ns = t0 + (uint64_t)(opt_warmup * 1e9);
    if (warmup_cutoff_ns >= t0 + per_session * interval) warmup_cutoff_ns = t0; /* too short: keep all */
    double cpu0 = cpu_seconds();
    fprintf(stderr, "PHASE send %llu\n", (unsigned long long)t0);
    fflush(stderr);
    uint64_t tick = (uint64_t)(opt_tick_us * 1000.0);
    uint64_t k = 0;
    int i = 0;
    uint64_t N = (uint64_t)opt_sessions;
    if (connected > 0) {
        while (k < per_session) {
            uint64_t t = now_ns();
            for (;;) {
                uint64_t due = t0 + k * interval + (uint64_t)i * interval / N;
                if (due > t) {
                    /* Sleep to the next tick boundary at or after the due time: the frames due
                     * within one tick go out together, one wake-up for all of them. */
                    uint64_t wake = due;
                    if (tick) wake = t0 + (due - t0 + tick - 1) / tick * tick;
                    if (opt_lazy_reads) sleep_then_pump(wake);
                    else pump((int64_t)(wake - t));
                    break;
                }
                sess_t *s = &sess[i];
                if (s->state == S_READY) {
                    if (!opt_none && outstanding(s) >= RING) c_skipped++;
                    else {
                        payload_t *p = &payloads[(k + (uint64_t)i * 7) % npayloads];
                        uint64_t ts = now_ns();
                        hist_add(&slip, (ts - due) / 1000);
                        if (!opt_none) {
                            s->ring[s->ring_head % RING] = due;
                            s->ring_sent[s->ring_head % RING] = ts;
                            s->ring_head++;
                        }
                        s->sent++;
                        c_sent++;
                        sess_write(s, p->wire, p->wire_len);
                        /* The probe follows its frame on the wire: the server sees it once it read the frame. */
                        if (opt_probe_every && s->sent % (uint64_t)opt_probe_every == 0 && s->state == S_READY)
                            send_probe(s, due, ts);
                    }
                }
                if (++i == opt_sessions) i = 0, k++;
                if (k >= per_session) break;
                /* Read answers between bursts so a slipping sender does not starve the socket reads. */
                if ((i & 63) == 0) pump(0), t = now_ns();
            }
        }
    }
    uint64_t t_send_end = now_ns();
    double cpu_send = cpu_seconds() - cpu0;
    /* Drain: wait for the answers still outstanding. */
    uint64_t drain_deadline = t_send_end + (uint64_t)(opt_drain * 1e9);
    for (;;) {
        uint64_t pending = 0;
        for (int j = 0; j < opt_sessions; j++)
            if (sess[j].state == S_READY) pending += outstanding(&sess[j]) + sess[j].probes_out;
        uint64_t t = now_ns();
        /* Mode none: nothing says what the server still owes (a backlog of audio work, turns it has
         * yet to close), so the drain runs its full length and the server's CPU window covers it. */
        if ((!pending && !opt_none) || t >= drain_deadline) break;
        pump((int64_t)(drain_deadline - t < 5000000 ? drain_deadline - t : 5000000));
    }
    uint64_t t_end = now_ns();
    double cpu1 = cpu_seconds();
    fprintf(stderr, "PHASE end %llu\n", (unsigned long long)t_end);
    fflush(stderr);
    usleep(50000); /* every session is still open while the runner reads the server's RSS */

    uint64_t lost_open = 0, probes_lost = c_probes_lost_closed;
    for (int j = 0; j < opt_sessions; j++)
        if (sess[j].state == S_READY) {
            lost_open += outstanding(&sess[j]);
            probes_lost += sess[j].probes_out;
            static const uint8_t bye[2] = {0x03, 0xe8}; /* close 1000 */
            send_control(&sess[j], 8, bye, 2);
        }
    for (int j = 0; j < opt_sessions; j++) {
        if (sess[j].fd >= 0) {
            shutdown(sess[j].fd, SHUT_WR);
            close(sess[j].fd);
        }
    }

    double send_wall = (t_send_end > t0 ? t_send_end - t0 : 0) / 1e9;
    double wall = (t_end > t0 ? t_end - t0 : 0) / 1e9;
    double gen_cpu = cpu1 - cpu0;
    double cpu_frac = send_wall > 0.05 ? cpu_send / send_wall : 0.0; /* busy share of the send phase */
    uint64_t slip_p99 = hist_pct(&slip, 99);
    /* Saturated: the generator's own CPU was the bottleneck.  A slipping schedule alone is not: its
     * delay is already in the latency (measured from the intended send times), and on a shared VM
     * it is mostly the hypervisor's; it is reported as slip_over_limit. */
    int slip_over = (double)slip_p99 > opt_slip_limit_us;
    int saturated = cpu_frac > opt_cpu_limit;
    const char *reason = saturated ? (slip_over ? "generator CPU busy and send schedule slipped" : "generator CPU busy") : "";
    uint64_t lost = lost_open + c_lost_closed;

    printf("{\"sessions\": %d, \"connected\": %d, \"connect_failed\": %llu, \"handshake_failed\": %llu, "
           "\"greeting_failed\": %llu, \"first_http_status\": %d, \"deflate_negotiated\": %llu, ",
           opt_sessions, connected, (unsigned long long)c_connect_failed, (unsigned long long)c_handshake_failed,
           (unsigned long long)c_greeting_failed, first_http_status, (unsigned long long)c_deflate);
    printf("\"lazy_reads\": %s, \"subprotocol\": \"%s\", \"start_messages\": %zu, \"start_failed\": %llu, ",
           opt_lazy_reads ? "true" : "false", opt_subprotocol ? opt_subprotocol : "", nstart_msgs,
           (unsigned long long)c_start_failed);
    printf("\"probe_every\": %d, \"probes_sent\": %llu, \"probes_answered\": %llu, \"probes_lost\": %llu, "
           "\"probes_unmatched\": %llu, ",
           opt_probe_every, (unsigned long long)c_probes_sent, (unsigned long long)c_probes_answered,
           (unsigned long long)probes_lost, (unsigned long long)c_probes_unmatched);
    printf("\"probe_latency_us\": {\"count\": %llu, \"mean\": %.1f, \"p50\": %llu, \"p90\": %llu, \"p99\": %llu, "
           "\"p999\": %llu, \"max\": %llu}, ",
           (unsigned long long)probe.count, probe.count ? (double)probe.sum / (double)probe.count : 0.0,
           (unsigned long long)hist_pct(&probe, 50), (unsigned long long)hist_pct(&probe, 90),
           (unsigned long long)hist_pct(&probe, 99), (unsigned long long)hist_pct(&probe, 99.9),
           (unsigned long long)probe.max);
    printf("\"probe_latency_from_send_us\": {\"count\": %llu, \"p50\": %llu, \"p99\": %llu, \"max\": %llu}, ",
           (unsigned long long)probe_send.count, (unsigned long long)hist_pct(&probe_send, 50),
           (unsigned long long)hist_pct(&probe_send, 99), (unsigned long long)probe_send.max);
    printf("\"matched_messages\": %llu, \"binary_messages_in\": %llu, ", (unsigned long long)c_matched,
           (unsigned long long)c_binary_in);
    printf("\"mode\": \"%s\", \"interval_ms\": %.3f, \"tick_us\": %.0f, \"duration_s\": %.3f, \"frames_per_session\": %llu, "
           "\"payloads\": %zu, \"connect_s\": %.3f, \"send_wall_s\": %.3f, \"wall_s\": %.3f, ",
           opt_none ? "none" : opt_echo ? "echo" : "ack", opt_interval_ms, opt_tick_us, opt_duration, (unsigned long long)per_session, npayloads,
           connect_s, send_wall, wall);
    printf("\"frames_sent\": %llu, \"frames_acked\": %llu, \"frames_lost\": %llu, \"frames_skipped\": %llu, "
           "\"unexpected_answers\": %llu, \"server_errors\": %llu, \"other_messages\": %llu, "
           "\"server_closed\": %llu, \"compressed_messages\": %llu, \"pings\": %llu, \"bytes_in\": %llu, ",
           (unsigned long long)c_sent, (unsigned long long)c_acked, (unsigned long long)lost,
           (unsigned long long)c_skipped, (unsigned long long)c_unexpected, (unsigned long long)c_errors,
           (unsigned long long)c_other, (unsigned long long)c_server_closed, (unsigned long long)c_compressed,
           (unsigned long long)c_pings, (unsigned long long)c_bytes_in);
    printf("\"latency_us\": {\"count\": %llu, \"mean\": %.1f, \"p50\": %llu, \"p90\": %llu, \"p99\": %llu, "
           "\"p999\": %llu, \"max\": %llu}, ",
           (unsigned long long)lat.count, lat.count ? (double)lat.sum / (double)lat.count : 0.0,
           (unsigned long long)hist_pct(&lat, 50), (unsigned long long)hist_pct(&lat, 90),
           (unsigned long long)hist_pct(&lat, 99), (unsigned long long)hist_pct(&lat, 99.9),
           (unsigned long long)lat.max);
    printf("\"latency_from_send_us\": {\"count\": %llu, \"p50\": %llu, \"p99\": %llu, \"max\": %llu}, ",
           (unsigned long long)lat_send.count, (unsigned long long)hist_pct(&lat_send, 50),
           (unsigned long long)hist_pct(&lat_send, 99), (unsigned long long)lat_send.max);
    printf("\"send_slip_us\": {\"p50\": %llu, \"p99\": %llu, \"max\": %llu}, \"slip_over_limit\": %s, ",
           (unsigned long long)hist_pct(&slip, 50), (unsigned long long)slip_p99, (unsigned long long)slip.max,
           slip_over ? "true" : "false");
    printf("\"gen_cpu_s\": %.4f, \"gen_cpu_frac\": %.4f, \"saturated\": %s, \"saturated_reason\": \"%s\", ",
           gen_cpu, cpu_frac, saturated ? "true" : "false", reason);
    printf("\"first_error\": \"");
    for (const char *e = first_error; *e; e++) {
        unsigned char ch = (unsigned char)*e;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f) printf("\\u%04x", ch);
        else putchar(ch);
    }
    printf("\"}\n");
    return 0;
}
