/*
 * Direct convolution for stride-1 "same" convolutions (output as large as the input: 3x3 with
 * padding 1, the convolutions of a UNet's resnets and up-sampling), AVX-512, no im2col.
 *
 * The output plane of one image is read as a flat run of P = H*W pixels cut into vectors of 16.
 * For a tap (ky, kx), the inputs that 16 consecutive output pixels need are 16 consecutive floats
 * of the flat input plane, shifted by (ky - pad_top) * W + (kx - pad_left): that holds across row
 * ends too, because the next output row reads the next input row. The lanes whose input falls
 * outside the image (the padding, and the wrap from one row into the next) are masked off; a
 * masked load reads nothing there and gives zeros. So each tap of each input channel is one
 * masked load per vector, shared by all the output channels of a tile, and no column matrix is
 * ever written.
 *
 * A tile is MR output channels x NV vectors (6 x 4 = 24 accumulators in registers). Weights are
 * broadcast straight from w (no packing pass: a packed copy cost a read and a write of every
 * weight per call, 8% of a forward in perf).
 * Each output element is summed in one fixed order (tap, then input channel), whatever the tile,
 * the batch or the split over cores, so results do not depend on batch position.
 */
#include "millrace_kernels.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { MR = 6, NV = 4, VEC = 16 };

static int direct_enabled = 1;
static int direct_cpu = -1; /* -1: not yet checked */

void mr_conv2d_set_direct(int on) { direct_enabled = on ? 1 : 0; }

int mr_conv2d_direct_applies(const mr_conv2d_shape *s) {
    if (!direct_enabled) return 0;
    if (direct_cpu < 0) direct_cpu = mr_cpu_has_avx512f();
    if (!direct_cpu) return 0;
    if (s->stride != 1 || (s->k_h == 1 && s->k_w == 1)) return 0;
    if (s->pad_top + s->pad_bottom != s->k_h - 1 || s->pad_left + s->pad_right != s->k_w - 1) return 0;
    if (s->pad_top < 0 || s->pad_left < 0 || s->pad_bottom < 0 || s->pad_right < 0) return 0;
    /* taps * 16-bit masks per vector and the packed weights must stay small */
    if (s->k_h * s->k_w > 49 || s->in_w <= 0 || s->in_h <= 0) return 0;
    return 1;
}

/* ---- per-thread scratch ------------------------------------------------------------------ */

typedef struct { void *data; size_t cap; } scratch;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void scratch_free(void *p) {
    scratch *s = p;
    if (s) { free(s->data); free(s); }
}
static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }
static void *scratch_get(size_t bytes) {
    pthread_once(&scratch_once, scratch_init);
    scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return NULL;
        pthread_setspecific(scratch_key, s);
    }
    if (s->cap < bytes) {
        free(s->data);
        size_t rounded = (bytes + 63) & ~(size_t)63;
        s->data = aligned_alloc(64, rounded);
        s->cap = s->data ? rounded : 0;
    }
    return s->data;
}

/* ---- the tile kernel ----------------------------------------------------------------------- */

typedef struct {
    const float *x;        /* one image, [in_c][P] */
    const float *w;        /* weights of the block's first output channel: [in_c][taps], rows K apart */
    const float *bias;     /* bias of the block's first channel, or NULL */
    float *y;              /* the block's first output plane of this image */
    const uint16_t *masks; /* [vector][tap] of the tile's first vector */
    const int *offsets;    /* [tap]: flat input shift */
    int in_c, taps, P, K;
    int q0;                /* first vector of the tile */
    int nv;                /* vectors in the tile (1 .. NV) */
    uint16_t last_mask;    /* lanes of the tile's last vector inside [.., p1) */
} tile_args;

__attribute__((target("avx512f"), always_inline))
static inline void tile(const tile_args *a, const int mr) {
    __m512 acc[MR][NV];
    for (int m = 0; m < MR; m++) {
        if (m >= mr) break;
        __m512 b0 = _mm512_set1_ps(a->bias ? a->bias[m] : 0.0f);
        for (int v = 0; v < NV; v++) acc[m][v] = b0;
    }
    const int taps = a->taps, P = a->P;
    const float *xv = a->x + (size_t)a->q0 * VEC;
    const uint16_t *mk = a->masks;
    const float *wrow[MR];
    for (int m = 0; m < MR; m++) wrow[m] = a->w + (size_t)(m < mr ? m : 0) * a->K;
    for (int t = 0; t < taps; t++) {
        /* a tap's masks are the same for every input channel: loaded once */
        __mmask16 k[NV];
        for (int v = 0; v < NV; v++) k[v] = (__mmask16)mk[v * taps + t];
        const float *src = xv + a->offsets[t];
        /* weights broadcast straight from w: w[co][ci][t] for the block's rows, taps apart */
        for (int ci = 0, wi = t; ci < a->in_c; ci++, src += P, wi += taps) {
            __m512 in[NV];
            for (int v = 0; v < NV; v++) in[v] = _mm512_maskz_loadu_ps(k[v], src + v * VEC);
            for (int m = 0; m < MR; m++) {
                if (m >= mr) break;
                __m512 wv = _mm512_set1_ps(wrow[m][wi]);
                for (int v = 0; v < NV; v++) acc[m][v] = _mm512_fmadd_ps(in[v], wv, acc[m][v]);
            }
        }
    }
    float *yv = a->y + (size_t)a->q0 * VEC;
    for (int m = 0; m < MR; m++) {
        if (m >= mr) break;
        for (int v = 0; v < NV; v++) {
            if (v >= a->nv) break;
            __mmask16 keep = v == a->nv - 1 ? (__mmask16)a->last_mask : (__mmask16)0xFFFF;
            _mm512_mask_storeu_ps(yv + (size_t)m * P + v * VEC, keep, acc[m][v]);
        }
    }
}

#define TILE_MR(n) \
    __attribute__((target("avx512f"))) static void tile_##n(const tile_args *a) { tile(a, n); }
TILE_MR(1) TILE_MR(2) TILE_MR(3) TILE_MR(4) TILE_MR(5) TILE_MR(6)
static void (*const tile_fns[MR + 1])(const tile_args *) = {NULL, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6};

/* ---- driver --------------------------------------------------------------------------------- */

/*
 * y[n][co][p] = b[co] + sum over ci, taps of w[co][ci][tap] * x[n][ci][shifted p], for every image
 * n < s->batch, co in [co0, co1) and p in [p0, p1) (p0 a multiple of 16). x and y point at the
 * first image. Returns 0 (y untouched) when out of memory.
 */
int mr_conv2d_direct_forward(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                             float *y, int co0, int co1, int p0, int p1) {
    const int H = s->in_h, W = s->in_w, P = H * W, taps = s->k_h * s->k_w, K = s->in_c * taps;
    if (co1 <= co0 || p1 <= p0 || s->batch <= 0) return 1;
    const int nvec = (P + VEC - 1) / VEC;
    const int blocks = (co1 - co0 + MR - 1) / MR;
    /* scratch: masks [nvec + NV][taps], then offsets [taps] */
    /* NV vectors of zero masks after the last: a tile's vectors past the plane load nothing */
    size_t mbytes = (size_t)(nvec + NV) * taps * sizeof(uint16_t);
    char *mem = scratch_get(mbytes + (size_t)taps * sizeof(int) + 64);
    if (!mem) return 0;
    uint16_t *masks = (uint16_t *)mem;
    int *offsets = (int *)(mem + ((mbytes + 15) & ~(size_t)15));

    for (int t = 0; t < taps; t++) {
        const int ky = t / s->k_w, kx = t % s->k_w;
        const int dy = ky - s->pad_top, dx = kx - s->pad_left;
        offsets[t] = dy * W + dx;
        int oy = 0, ox = 0; /* walks p = 0 .. P - 1 without a division per pixel */
        for (int q = 0; q < nvec; q++) {
            unsigned m = 0;
            for (int l = 0; l < VEC && q * VEC + l < P; l++) {
                const int iy = oy + dy, ix = ox + dx;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W) m |= 1u << l;
                if (++ox == W) { ox = 0; oy++; }
            }
            masks[q * taps + t] = (uint16_t)m;
        }
        for (int q = nvec; q < nvec + NV; q++) masks[q * taps + t] = 0;
    }

    const size_t x_img = (size_t)s->in_c * P, y_img = (size_t)s->out_c * P;
    const int q_begin = p0 / VEC, q_end = (p1 + VEC - 1) / VEC;
    /* Work units are (image, tile) pairs. A group of units whose input fits in about 256 KiB is
       swept once per channel block, so the packed weights of a block are reused across the group
       (across images when images are small) while its input stays in cache. */
    const int tiles_per_img = (q_end - q_begin + NV - 1) / NV;
    const size_t unit_bytes = (size_t)s->in_c * (NV * VEC + 2 * W) * sizeof(float);
    int group = (int)((256 << 10) / (unit_bytes ? unit_bytes : 1));
    if (group < 1) group = 1;
    const int units = s->batch * tiles_per_img;
    for (int u0 = 0; u0 < units; u0 += group) {
        const int u1 = u0 + group < units ? u0 + group : units;
        for (int blk = 0; blk < blocks; blk++) {
            const int c = co0 + blk * MR, mr = co1 - c < MR ? co1 - c : MR;
            tile_args a;
            a.w = w + (size_t)c * K;
            a.K = K;
            a.bias = b ? b + c : NULL;
            a.offsets = offsets;
            a.in_c = s->in_c; a.taps = taps; a.P = P;
            for (int u = u0; u < u1; u++) {
                const int n = u / tiles_per_img, ti = u % tiles_per_img;
                const int q = q_begin + ti * NV;
                const int nv = q_end - q < NV ? q_end - q : NV;
                const int last_p = (q + nv) * VEC < p1 ? (q + nv) * VEC : p1; /* end of the tile */
                const int lanes = last_p - (q + nv - 1) * VEC;
                a.x = x + n * x_img;
                a.y = y + n * y_img + (size_t)c * P;
                a.masks = masks + (size_t)q * taps;
                a.q0 = q;
                a.nv = nv;
                a.last_mask = (uint16_t)(lanes >= VEC ? 0xFFFF : ((1u << lanes) - 1));
                tile_fns[mr](&a);
            }
        }
    }
    return 1;
}
