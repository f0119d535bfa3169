/*
 * Direct convolution for stride-1 "same" convolutions (output as large as the input: 3x3 with
 * padding 1, the convolutions of a UNet's resnets and up-sampling), no im2col. Two kernels:
 * AVX-512F (below), taken by default where the CPU has it, and AVX2 + FMA (at the end), taken
 * only when asked for (mr_conv2d_set_direct(2)).
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
#include "conv_workspace.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

enum { MR = 6, NV = 4, VEC = 16 };

/* 0: off; 1: the AVX-512 kernel where the CPU has it (else im2col + sgemm); 2: the AVX2 kernel.
   Mode 1 leaves AVX2-only CPUs to im2col + sgemm: with OpenBLAS's Haswell sgemm that measured
   about 1.2x faster than the AVX2 kernel here (docs/BENCHMARKS.md), which stays for comparison. */
static int direct_mode = 1;
static int cpu_avx512 = -1, cpu_avx2 = -1; /* -1: not yet checked */

void mr_conv2d_set_direct(int mode) { direct_mode = mode < 0 || mode > 2 ? 1 : mode; }

/* The kernel a call takes: 512, 256 (AVX2 + FMA) or 0 (none: im2col + sgemm). */
static int direct_kernel(void) {
    if (cpu_avx512 < 0) cpu_avx512 = mr_cpu_has_avx512f();
    if (cpu_avx2 < 0) cpu_avx2 = mr_cpu_has_avx2_fma();
    if (direct_mode == 1 && cpu_avx512) return 512;
    if (direct_mode == 2 && cpu_avx2) return 256;
    return 0;
}

int mr_conv2d_direct_kernel(void) { return direct_kernel(); }

int mr_conv2d_direct_applies(const mr_conv2d_shape *s) {
    if (!direct_kernel()) return 0;
    if (s->stride != 1 || (s->k_h == 1 && s->k_w == 1)) return 0;
    if (s->pad_top + s->pad_bottom != s->k_h - 1 || s->pad_left + s->pad_right != s->k_w - 1) return 0;
    if (s->pad_top < 0 || s->pad_left < 0 || s->pad_bottom < 0 || s->pad_right < 0) return 0;
    /* bounded per-call tables (16-bit masks per tap and vector, tap offsets) */
    if (s->k_h * s->k_w > 49 || s->in_w <= 0 || s->in_h <= 0) return 0;
    return 1;
}

/* Scratch comes from the thread's convolution workspace (conv_workspace.h), in bytes. */
static void *scratch_get(size_t bytes) { return mr_conv_workspace((bytes + sizeof(float) - 1) / sizeof(float)); }

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
static int forward_avx512(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                          float *y, int co0, int co1, int p0, int p1) {
    const int H = s->in_h, W = s->in_w, P = H * W, taps = s->k_h * s->k_w, K = s->in_c * taps;
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

/* ---- AVX2 + FMA ------------------------------------------------------------------------------ */

/*
 * Without AVX-512's masked loads, each image's input is first copied into a zero-padded plane
 * per channel ((H + k_h - 1) rows of W + k_w - 1, and 8 floats of slack), so that any tap of any
 * output vector is one plain unaligned load. Output vectors run along a row (8 pixels, the last
 * of a row partial); a tile is 4 output channels x 3 such vectors (12 accumulators of 16 ymm).
 */
enum { MR2 = 4, NV2 = 3, VEC2 = 8 };

typedef struct {
    const float *pad;   /* padded input of one image: [in_c][PS] */
    const float *w;     /* weights of the block's first output channel, rows K apart */
    const float *bias;
    float *y;           /* the block's first output plane of this image */
    const int *in_off;  /* [NV2]: padded offset of each vector's first tap */
    const int *out_off; /* [NV2]: output offset of each vector */
    const int *tap_off; /* [taps] */
    int lanes[NV2];     /* valid lanes of each vector (0: no vector) */
    int in_c, taps, PS, K, P;
} tile2_args;

__attribute__((target("avx2,fma"), always_inline))
static inline void tile2(const tile2_args *a, const int mr) {
    __m256 acc[MR2][NV2];
    for (int m = 0; m < MR2; m++) {
        if (m >= mr) break;
        __m256 b0 = _mm256_set1_ps(a->bias ? a->bias[m] : 0.0f);
        for (int v = 0; v < NV2; v++) acc[m][v] = b0;
    }
    const float *wrow[MR2];
    for (int m = 0; m < MR2; m++) wrow[m] = a->w + (size_t)(m < mr ? m : 0) * a->K;
    const float *in0 = a->pad + a->in_off[0], *in1 = a->pad + a->in_off[1], *in2 = a->pad + a->in_off[2];
    for (int t = 0; t < a->taps; t++) {
        const int to = a->tap_off[t];
        for (int ci = 0, wi = t; ci < a->in_c; ci++, wi += a->taps) {
            const size_t o = (size_t)ci * a->PS + to;
            __m256 in[NV2];
            in[0] = _mm256_loadu_ps(in0 + o);
            in[1] = _mm256_loadu_ps(in1 + o);
            in[2] = _mm256_loadu_ps(in2 + o);
            for (int m = 0; m < MR2; m++) {
                if (m >= mr) break;
                __m256 wv = _mm256_broadcast_ss(&wrow[m][wi]);
                for (int v = 0; v < NV2; v++) acc[m][v] = _mm256_fmadd_ps(in[v], wv, acc[m][v]);
            }
        }
    }
    for (int v = 0; v < NV2; v++) {
        const int lanes = a->lanes[v];
        if (lanes <= 0) continue;
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int m = 0; m < MR2; m++) {
            if (m >= mr) break;
            float *dst = a->y + (size_t)m * a->P + a->out_off[v];
            if (lanes == VEC2) _mm256_storeu_ps(dst, acc[m][v]);
            else _mm256_maskstore_ps(dst, keep, acc[m][v]);
        }
    }
}

#define TILE2_MR(n) \
    __attribute__((target("avx2,fma"))) static void tile2_##n(const tile2_args *a) { tile2(a, n); }
TILE2_MR(1) TILE2_MR(2) TILE2_MR(3) TILE2_MR(4)
static void (*const tile2_fns[MR2 + 1])(const tile2_args *) = {NULL, tile2_1, tile2_2, tile2_3, tile2_4};

static int forward_avx2(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                        float *y, int co0, int co1, int p0, int p1) {
    const int H = s->in_h, W = s->in_w, P = H * W, taps = s->k_h * s->k_w, K = s->in_c * taps;
    const int PW = W + s->k_w - 1, PH = H + s->k_h - 1;
    const size_t PS = (size_t)PH * PW + VEC2;  /* a channel's padded plane, with slack */
    /* output vectors of [p0, p1): along each row, 8 pixels at a time */
    int nvec = 0;
    for (int oy = p0 / W; oy < H && oy * W < p1; oy++) {
        int a0 = p0 - oy * W, a1 = p1 - oy * W;
        if (a0 < 0) a0 = 0;
        if (a1 > W) a1 = W;
        nvec += (a1 - a0 + VEC2 - 1) / VEC2;
    }
    size_t pad_bytes = (size_t)s->in_c * PS * sizeof(float);
    size_t vec_bytes = (size_t)(nvec + NV2) * 3 * sizeof(int);
    char *mem = scratch_get(pad_bytes + vec_bytes + (size_t)taps * sizeof(int) + 64);
    if (!mem) return 0;
    float *pad = (float *)mem;
    int *vin = (int *)(mem + pad_bytes), *vout = vin + (nvec + NV2), *vlanes = vout + (nvec + NV2);
    int *tap_off = vlanes + (nvec + NV2);
    int q = 0;
    for (int oy = p0 / W; oy < H && oy * W < p1; oy++) {
        int a0 = p0 - oy * W, a1 = p1 - oy * W;
        if (a0 < 0) a0 = 0;
        if (a1 > W) a1 = W;
        for (int ox = a0; ox < a1; ox += VEC2, q++) {
            vin[q] = oy * PW + ox;
            vout[q] = oy * W + ox;
            vlanes[q] = a1 - ox < VEC2 ? a1 - ox : VEC2;
        }
    }
    for (; q < nvec + NV2; q++) { vin[q] = 0; vout[q] = 0; vlanes[q] = 0; }
    for (int t = 0; t < taps; t++) tap_off[t] = (t / s->k_w) * PW + t % s->k_w;

    const size_t x_img = (size_t)s->in_c * P, y_img = (size_t)s->out_c * P;
    memset(pad, 0, pad_bytes);  /* borders and slack stay zero; interiors are rewritten per image */
    for (int n = 0; n < s->batch; n++) {
        for (int ci = 0; ci < s->in_c; ci++)
            for (int iy = 0; iy < H; iy++)
                memcpy(pad + ci * PS + (size_t)(iy + s->pad_top) * PW + s->pad_left,
                       x + n * x_img + (size_t)ci * P + (size_t)iy * W, (size_t)W * sizeof(float));
        for (int c = co0; c < co1; c += MR2) {
            const int mr = co1 - c < MR2 ? co1 - c : MR2;
            tile2_args a;
            a.pad = pad; a.w = w + (size_t)c * K; a.bias = b ? b + c : NULL;
            a.y = y + n * y_img + (size_t)c * P;
            a.tap_off = tap_off;
            a.in_c = s->in_c; a.taps = taps; a.PS = (int)PS; a.K = K; a.P = P;
            for (int v0 = 0; v0 < nvec; v0 += NV2) {
                a.in_off = vin + v0;
                a.out_off = vout + v0;
                for (int v = 0; v < NV2; v++) a.lanes[v] = vlanes[v0 + v];
                tile2_fns[mr](&a);
            }
        }
    }
    return 1;
}

int mr_conv2d_direct_forward(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                             float *y, int co0, int co1, int p0, int p1) {
    if (co1 <= co0 || p1 <= p0 || s->batch <= 0) return 1;
    switch (direct_kernel()) {
    case 512: return forward_avx512(s, x, w, b, y, co0, co1, p0, p1);
    case 256: return forward_avx2(s, x, w, b, y, co0, co1, p0, p1);
    default: return 0;
    }
}
