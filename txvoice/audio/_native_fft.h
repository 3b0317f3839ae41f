/*
 * A mixed-radix complex FFT (double) for the native ingest's spectral gate (10-30 ms frames):
 * included by _native.c only, so everything here is static.
 */
#ifndef TXV_NATIVE_FFT_H
#define TXV_NATIVE_FFT_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- a mixed-radix complex FFT (double), for the gate's 10-30 ms frames ---------------------- */

typedef struct {
    double re, im;
} cpx;

#define MAX_FACTORS 32

/* Shared by every gate of one frame size (made once per size by the Python side, never freed):
 * per stream, a gate then holds only its state. */
typedef struct {
    int n;
    int factors[2 * MAX_FACTORS]; /* (radix, remaining length) pairs */
    cpx *tw;                      /* exp(-2 pi i k / n), k < n */
    float *window;                /* the gate's float32 window (Hann times 2**-15) */
} fft_plan;

#define MAX_FRAME 2048

static void plan_free(fft_plan *p)
{
    if (p) {
        free(p->tw);
        free(p->window);
        free(p);
    }
}

static fft_plan *plan_new(int n, const float *window)
{
    int i, rest = n, f = 0, radix = 4;
    fft_plan *p = calloc(1, sizeof(fft_plan));
    if (!p || n < 2 || n > MAX_FRAME) {
        free(p);
        return NULL;
    }
    p->n = n;
    p->tw = malloc(sizeof(cpx) * (size_t)n);
    p->window = malloc(sizeof(float) * (size_t)n);
    if (!p->tw || !p->window) {
        plan_free(p);
        return NULL;
    }
    memcpy(p->window, window, sizeof(float) * (size_t)n);
    for (i = 0; i < n; i++) {
        double phase = -2.0 * M_PI * i / n;
        p->tw[i].re = cos(phase);
        p->tw[i].im = sin(phase);
    }
    while (rest > 1 && f < MAX_FACTORS) {
        while (rest % radix) {
            radix = radix == 4 ? 2 : radix == 2 ? 3 : radix + 2;
            if (radix * radix > rest)
                radix = rest;
        }
        rest /= radix;
        p->factors[2 * f] = radix;
        p->factors[2 * f + 1] = rest;
        f++;
    }
    if (rest != 1) {
        plan_free(p);
        return NULL;
    }
    return p;
}

/* Decimation in time (as in kissfft): out[0..p*m) is the DFT of in[0], in[fstride], ... */
static void fft_work(const fft_plan *plan, cpx *out, const cpx *in, int fstride, const int *factors)
{
    int p = factors[0], m = factors[1], n = plan->n, q, u, k;
    const cpx *tw = plan->tw;
    if (m == 1) {
        for (q = 0; q < p; q++)
            out[q] = in[q * fstride];
    } else {
        for (q = 0; q < p; q++)
            fft_work(plan, out + q * m, in + q * fstride, fstride * p, factors + 2);
    }
    if (p == 2) {
        for (k = 0; k < m; k++) {
            cpx a = out[k], b = out[k + m], t = tw[k * fstride];
            cpx bt = {b.re * t.re - b.im * t.im, b.re * t.im + b.im * t.re};
            out[k].re = a.re + bt.re;
            out[k].im = a.im + bt.im;
            out[k + m].re = a.re - bt.re;
            out[k + m].im = a.im - bt.im;
        }
        return;
    }
    if (p == 4) {
        for (k = 0; k < m; k++) {
            cpx s[4], t0, t1, t2, t3;
            for (q = 0; q < 4; q++) {
                cpx x = out[k + q * m], t = tw[q * k * fstride];
                s[q].re = x.re * t.re - x.im * t.im;
                s[q].im = x.re * t.im + x.im * t.re;
            }
            t0.re = s[0].re + s[2].re; t0.im = s[0].im + s[2].im;
            t1.re = s[0].re - s[2].re; t1.im = s[0].im - s[2].im;
            t2.re = s[1].re + s[3].re; t2.im = s[1].im + s[3].im;
            t3.re = s[1].re - s[3].re; t3.im = s[1].im - s[3].im;
            out[k].re = t0.re + t2.re; out[k].im = t0.im + t2.im;
            out[k + 2 * m].re = t0.re - t2.re; out[k + 2 * m].im = t0.im - t2.im;
            /* forward: multiply t3 by -i */
            out[k + m].re = t1.re + t3.im; out[k + m].im = t1.im - t3.re;
            out[k + 3 * m].re = t1.re - t3.im; out[k + 3 * m].im = t1.im + t3.re;
        }
        return;
    }
    {
        cpx s[64];
        int step = n / p; /* W_p = tw[step] */
        for (k = 0; k < m; k++) {
            for (q = 0; q < p; q++) {
                cpx x = out[k + q * m], t = tw[q * k * fstride];
                s[q].re = x.re * t.re - x.im * t.im;
                s[q].im = x.re * t.im + x.im * t.re;
            }
            for (u = 0; u < p; u++) {
                double re = 0.0, im = 0.0;
                for (q = 0; q < p; q++) {
                    cpx t = tw[((q * u) % p) * step];
                    re += s[q].re * t.re - s[q].im * t.im;
                    im += s[q].re * t.im + s[q].im * t.re;
                }
                out[k + u * m].re = re;
                out[k + u * m].im = im;
            }
        }
    }
}

#endif
