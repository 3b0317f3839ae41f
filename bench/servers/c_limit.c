/*
 * c_limit: the benchmark's reference server ("the limit"), a one-thread epoll WebSocket server in C
 * that speaks /ws/audio's wire protocol and does nothing else.
 *
 * Any request path upgrades.  After the 101 it sends /ws/audio's greeting,
 *     {"status":"connected","session_id":"...","config":{"sample_rate":R,"channels":C,
 *      "sample_width":2,"max_message_size":M,"codec":"..."}}
 * (R, C and the codec from the query string, as txvoice/dialects/vocal.py does), then answers
 * every binary frame, in order, with the text {"status":"chunk_received"} - the ack txvoice sends -
 * without looking at the audio (the payload is unmasked, as any server must, and dropped).  Text
 * frames get {"status":"error",...}; pings a pong; a close frame is answered and the socket closed.
 * Every frame found in one read is answered in one write.
 *
 * Its point is to be cheaper than anything measured beside it: the generator and the machine
 * (loopback TCP, the hypervisor) are what stop it, so its ladder shows how far the benchmark itself
 * can see.  A plain GET /lag (no upgrade) answers the reactor-lag probe's JSON
 * (bench/servers/lagprobe.py's format): a timerfd every 250 ms, lag = now - the boundary it was due.
 *
 * Listens on 127.0.0.1 only.  Build: gcc -O2 -Wall -o c_limit c_limit.c
 * Usage: c_limit --port PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_MESSAGE 1048576 /* txvoice's default max_message_size is announced as this */
#define LAG_INTERVAL_NS 250000000ull
#define MAX_LAG_SAMPLES 200000

static const double LAG_BUCKETS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0};
#define NBUCKETS (sizeof LAG_BUCKETS / sizeof LAG_BUCKETS[0])

static const uint8_t ACK[] = "\x81\x1b{\"status\":\"chunk_received\"}"; /* 2 + 27 bytes */
#define ACK_LEN 29

typedef struct {
    int fd, ws;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    int want_out, closing;
} conn_t;

static int epfd, lfd, tfd;
static conn_t **conns;
static size_t nconns;
static uint64_t session_counter;

/* ------------------------------------------------------------------ lag probe */
static uint64_t lag_start_ns, lag_intervals, lag_count, lag_buckets[NBUCKETS + 1];
static double lag_sum, *lag_samples;
static size_t lag_nsamples;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void lag_tick(void) {
    uint64_t expirations;
    if (read(tfd, &expirations, sizeof expirations) != sizeof expirations || !expirations) return;
    uint64_t t = now_ns();
    lag_intervals += expirations;
    uint64_t scheduled = lag_start_ns + (lag_intervals - expirations + 1) * LAG_INTERVAL_NS;
    double lag = t > scheduled ? (double)(t - scheduled) / 1e9 : 0.0;
    lag_count++;
    lag_sum += lag;
    size_t i = 0;
    while (i < NBUCKETS && lag > LAG_BUCKETS[i]) i++;
    lag_buckets[i]++;
    if (lag_nsamples < MAX_LAG_SAMPLES) lag_samples[lag_nsamples++] = lag;
}

/* ------------------------------------------------------------------ SHA-1 / base64 (the accept value) */
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t buf[192] = {0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    if (total > sizeof buf) return;
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

/* ------------------------------------------------------------------ connections */
static void conn_close(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->in);
    free(c->out);
    free(c);
    nconns--;
}

static void out_append(conn_t *c, const void *data, size_t len) {
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2 + 1024;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) abort();
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void text_frame(conn_t *c, const char *s, size_t n) {
    uint8_t h[4];
    size_t hl;
    h[0] = 0x81;
    if (n < 126) h[1] = (uint8_t)n, hl = 2;
    else h[1] = 126, h[2] = (uint8_t)(n >> 8), h[3] = (uint8_t)n, hl = 4;
    out_append(c, h, hl);
    out_append(c, s, n);
}

/* Write what is queued; returns -1 when the connection is gone. */
static int flush(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) c->out_off += (size_t)n;
        else if (n < 0 && errno == EINTR) continue;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        else {
            conn_close(c);
            return -1;
        }
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    int want = c->out_len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = c->fd};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    if (c->closing && !c->out_len) {
        conn_close(c);
        return -1;
    }
    return 0;
}

static const char *query_value(const char *target, const char *name, char *buf, size_t cap, const char *dflt) {
    const char *q = strchr(target, '?');
    size_t nl = strlen(name);
    while (q) {
        q++;
        if (!strncmp(q, name, nl) && q[nl] == '=') {
            const char *v = q + nl + 1;
            size_t n = strcspn(v, "& ");
            if (n >= cap) n = cap - 1;
            memcpy(buf, v, n);
            buf[n] = 0;
            return buf;
        }
        q = strchr(q, '&');
    }
    return dflt;
}

static void lag_response(conn_t *c, const char *target) {
    char since_s[32];
    const char *since = query_value(target, "since", since_s, sizeof since_s, NULL);
    size_t cap = 512 + lag_nsamples * 24, n = 0;
    char *body = malloc(cap);
    n += (size_t)snprintf(body + n, cap - n, "{\"interval\": 0.25, \"count\": %llu, \"sum\": %.9f, \"buckets\": [",
                          (unsigned long long)lag_count, lag_sum);
    uint64_t cum = 0;
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += lag_buckets[i];
        if (i < NBUCKETS) n += (size_t)snprintf(body + n, cap - n, "[%g, %llu], ", LAG_BUCKETS[i], (unsigned long long)cum);
        else n += (size_t)snprintf(body + n, cap - n, "[\"+Inf\", %llu]", (unsigned long long)cum);
    }
    n += (size_t)snprintf(body + n, cap - n, "]");
    if (since) {
        long k = atol(since);
        n += (size_t)snprintf(body + n, cap - n, ", \"samples\": [");
        for (size_t i = k > 0 ? (size_t)k : 0; i < lag_nsamples; i++)
            n += (size_t)snprintf(body + n, cap - n, "%s%.9f", i > (size_t)(k > 0 ? k : 0) ? ", " : "", lag_samples[i]);
        n += (size_t)snprintf(body + n, cap - n, "]");
    }
    n += (size_t)snprintf(body + n, cap - n, "}");
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                      "Connection: close\r\nContent-Length: %zu\r\n\r\n", n);
    out_append(c, head, (size_t)hl);
    out_append(c, body, n);
    free(body);
    c->closing = 1;
}

/* Returns bytes consumed (0: head incomplete), or -1 after a response that closes. */
static long handle_http(conn_t *c) {
    uint8_t *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return c->in_len > 16384 ? -1 : 0;
    size_t head_len = (size_t)(end - c->in) + 4;
    char *head = malloc(head_len + 1);
    memcpy(head, c->in, head_len);
    head[head_len] = 0;
    char target[1024] = "/";
    sscanf(head, "GET %1023s", target);
    const char *key = NULL;
    size_t key_len = 0;
    for (char *line = strstr(head, "\r\n"); line && line[2] != '\r'; line = strstr(line + 2, "\r\n")) {
        char *l = line + 2;
        if (!strncasecmp(l, "Sec-WebSocket-Key:", 18)) {
            key = l + 18;
            while (*key == ' ') key++;
            key_len = strcspn(key, " \r");
        }
    }
    if (!key) {
        if (!strncmp(target, "/lag", 4)) lag_response(c, target);
        else {
            static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            out_append(c, bad, sizeof bad - 1);
            c->closing = 1;
        }
        free(head);
        return (long)head_len;
    }
    char cat[128], accept[40];
    uint8_t digest[20];
    snprintf(cat, sizeof cat, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)(key_len < 60 ? key_len : 60), key);
    sha1((uint8_t *)cat, strlen(cat), digest);
    base64(digest, 20, accept);
    char resp[256];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    out_append(c, resp, (size_t)rl);
    char rate[16], chans[8], codec[32], greet[512];
    session_counter++;
    int gl = snprintf(greet, sizeof greet,
                      "{\"status\":\"connected\",\"session_id\":\"c0ffee00-0000-4000-8000-%012llx\",\"config\":{"
                      "\"sample_rate\":%s,\"channels\":%s,\"sample_width\":2,\"max_message_size\":%d,\"codec\":\"%s\"}}",
                      (unsigned long long)session_counter, query_value(target, "sample_rate", rate, sizeof rate, "44100"),
                      query_value(target, "channels", chans, sizeof chans, "1"),
                      MAX_MESSAGE, query_value(target, "codec", codec, sizeof codec, "webm_opus"));
    text_frame(c, greet, (size_t)gl);
    c->ws = 1;
    free(head);
    return (long)head_len;
}

/* Parse every complete frame from ``pos``; returns bytes consumed, or -1 on a protocol error. */
static long handle_frames(conn_t *c, size_t pos) {
    while (!c->closing) {
        uint8_t *p = c->in + pos;
        size_t avail = c->in_len - pos;
        if (avail < 2) break;
        int opcode = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        size_t hl = 2;
        if (!(p[1] & 0x80)) return -1; /* client frames must be masked */
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t)p[2] << 8 | p[3], hl = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
            hl = 10;
        }
        if (len > MAX_MESSAGE) return -1;
        hl += 4;
        if (avail < hl + len) break;
        uint8_t *mask = p + hl - 4, *payload = p + hl;
        for (uint64_t i = 0; i < len; i++) payload[i] ^= mask[i & 3];
        pos += hl + (size_t)len;
        switch (opcode) {
        case 2: out_append(c, ACK, ACK_LEN); break;
        case 0: break; /* continuation: answered with its message's first frame */
        case 1: {
            static const char e[] = "{\"status\":\"error\",\"message\":\"this endpoint takes binary audio chunks only\","
                                    "\"code\":\"unexpected_text\"}";
            text_frame(c, e, sizeof e - 1);
            break;
        }
        case 9: {
            uint8_t h[2] = {0x8a, (uint8_t)(len < 126 ? len : 0)};
            out_append(c, h, 2);
            if (len < 126) out_append(c, payload, (size_t)len);
            break;
        }
        case 10: break;
        case 8: {
            uint8_t h[4] = {0x88, 2, 0x03, 0xe8};
            out_append(c, h, 4);
            c->closing = 1;
            break;
        }
        default: return -1;
        }
    }
    return (long)pos;
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->in_cap - c->in_len < 16384) {
            c->in_cap = c->in_cap * 2 + 65536;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in) abort();
        }
        size_t room = c->in_cap - c->in_len;
        ssize_t n = read(c->fd, c->in + c->in_len, room);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            conn_close(c);
            return;
        }
        c->in_len += (size_t)n;
        long pos = 0;
        if (!c->ws) {
            pos = handle_http(c);
            if (pos < 0) {
                conn_close(c);
                return;
            }
        }
        if (c->ws) {
            pos = handle_frames(c, (size_t)pos);
            if (pos < 0) {
                conn_close(c);
                return;
            }
        }
        if (pos) {
            memmove(c->in, c->in + pos, c->in_len - (size_t)pos);
            c->in_len -= (size_t)pos;
        }
        if ((size_t)n < room || c->closing) break;
    }
    if (c->out_len || c->closing) flush(c); /* every answer to this read in one write */
}

static void on_accept(void) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->fd = fd;
        conns[fd] = c;
        nconns++;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

int main(int argc, char **argv) {
    int port = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--port")) port = atoi(argv[++i]);
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: c_limit --port PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    conns = calloc(1 << 20, sizeof *conns); /* indexed by fd */
    lag_samples = malloc(MAX_LAG_SAMPLES * sizeof(double));
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
        perror("c_limit: bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    lag_start_ns = now_ns();
    struct itimerspec its = {.it_interval = {0, (long)LAG_INTERVAL_NS}};
    uint64_t first = lag_start_ns + LAG_INTERVAL_NS;
    its.it_value.tv_sec = (time_t)(first / 1000000000ull), its.it_value.tv_nsec = (long)(first % 1000000000ull);
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
    ev.data.fd = tfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    fprintf(stderr, "c_limit listening on 127.0.0.1:%d\n", port);
    static struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(epfd, evs, 1024, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("c_limit: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) on_accept();
            else if (fd == tfd) lag_tick();
            else if (conns[fd]) {
                conn_t *c = conns[fd];
                if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
                if (conns[fd] == c && (evs[i].events & EPOLLOUT)) flush(c);
            }
        }
    }
}
