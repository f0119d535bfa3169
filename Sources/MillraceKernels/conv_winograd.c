/*
 * Winograd F(2x2, 3x3) for 3x3, stride-1, padding-1 convolutions (every 3x3 convolution of a
 * UNet's resnets and up-samplers), AVX-512F, chosen at run time.
 *
 * Why: the direct kernel (conv_direct.c) already runs these convolutions at 0.9-0.99 of
 * OpenBLAS's sgemm rate, so no schedule of the 9 multiply-adds per tap can go much faster.
 * Winograd's minimal filtering computes a 2x2 block of outputs of one (input, output) channel
 * pair from a 4x4 block of inputs with 16 multiplies instead of 36:
 *
 *     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
 *
 * with g the 3x3 kernel, d the 4x4 input tile (one pixel of overlap on each side), and
 *
 *     Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]
 *     Aᵀ = [1 1 1 0; 0 1 -1 -1].
 *
 * Summed over input channels, the 16 element-wise products become 16 independent matrix
 * products M[ξ] = U[ξ] · V[ξ] ([out_c × in_c] · [in_c × tiles]), which is where the time goes:
 * 2.25x fewer multiply-adds than any direct or im2col schedule.
 *
 * Layout and order of work, for a run of tiles (a "chunk", sized so that its transformed input
 * stays in L2):
 *   1. input transform: V[ξ][c][tile], vectorised over 16 tiles of one tile row (an input row is
 *      loaded as 32-float runs, split into even and odd columns, and transformed once for the
 *      two tile rows that share it);
 *   2. for each 64 tiles and each 6 output channels: the 16 products, in 24 registers each
 *      (6 channels × 4 vectors of 16 tiles, the same register tile as the direct kernel), into a
 *      small buffer, then at once
 *   3. the output transform and bias, vectorised over the same 16 tiles, written to y.
 * U = G g Gᵀ (stored by blocks of 6 output channels) is made by mr_conv2d_winograd_weights;
 * callers that keep weights fixed cache it, others get it made per call. The weight gradient
 * goes through the same domain (at the end of this file).
 *
 * Every output is computed by the same operations in the same order whatever its tile's place in
 * a vector, a chunk, the batch or the split over cores, so an image's result does not depend on
 * its batch position. Rounding differs from the direct kernel (different arithmetic); the error
 * against the plain reference stays at the level of float rounding (WinogradTests).
 */
#include "millrace_kernels.h"
#include "conv_workspace.h"

#include <cblas.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { XI = 16, WMR = 6, WNV = 4, WV = 16, MICRO = WNV * WV };

static int winograd_on = 1;
static int cpu_ok = -1;
/* Smallest input and output channel counts that take Winograd (below, the transforms cost more
   than the multiplies they save), and the fewest 2x2 tiles in a call: an 8x8 image alone (16
   tiles) reads transformed weights 16/9 the size of the plain ones for few products, and timed
   no faster than the direct kernel; two 8x8 images (the rows a core gets of a batch of 4) timed
   faster (docs/BENCHMARKS.md, "Winograd"). */
static const int min_in_c = 16, min_out_c = 16, min_tiles = 32;

void mr_conv2d_set_winograd(int on) { winograd_on = on ? 1 : 0; }
int mr_conv2d_winograd_enabled(void) { return winograd_on; }

int mr_conv2d_winograd_applies(const mr_conv2d_shape *s) {
    if (!winograd_on) return 0;
    if (cpu_ok < 0) cpu_ok = mr_cpu_has_avx512f();
    if (!cpu_ok) return 0;
    if (s->batch * ((s->in_h + 1) / 2) * ((s->in_w + 1) / 2) < min_tiles) return 0;
    return s->k_h == 3 && s->k_w == 3 && s->stride == 1 && s->pad_top == 1 && s->pad_left == 1 &&
           s->pad_bottom == 1 && s->pad_right == 1 && s->in_h > 0 && s->in_w > 0 &&
           s->in_c >= min_in_c && s->out_c >= min_out_c;
}

/* Blocks of WMR output channels, the last one padded. */
static inline int k_blocks(int K) { return (K + WMR - 1) / WMR; }

size_t mr_conv2d_winograd_weights_count(const mr_conv2d_shape *s) {
    return (size_t)XI * k_blocks(s->out_c) * WMR * s->in_c;
}

/* Where U[ξ][k][c] lives: [ξ][k / 6][c][k % 6], so that the 6 output channels a product tile
   broadcasts for one input channel share a cache line and a tile reads its weights as one
   sequential stream (the largest layers' weights do not fit in L2). */
static inline size_t u_at(int xi, int k, int c, int K, int C) {
    return (((size_t)xi * k_blocks(K) + (size_t)(k / WMR)) * C + (size_t)c) * WMR + (size_t)(k % WMR);
}

/* U = (G g Gᵀ)[ξ] for g = w[k][c]: the plain twin of the vector version below. */
void mr_ref_conv2d_winograd_weights(const mr_conv2d_shape *s, const float *w, float *u) {
    const int K = s->out_c, C = s->in_c;
    if (K % WMR) memset(u, 0, mr_conv2d_winograd_weights_count(s) * sizeof(float)); /* padding rows */
    for (int k = 0; k < K; k++)
        for (int c = 0; c < C; c++) {
            const float *g = w + ((size_t)k * C + c) * 9;
            float t[4][3];
            for (int j = 0; j < 3; j++) { /* the vector version's order of additions */
                const float sum02 = g[j] + g[6 + j];
                t[0][j] = g[j];
                t[1][j] = 0.5f * (sum02 + g[3 + j]);
                t[2][j] = 0.5f * (sum02 - g[3 + j]);
                t[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; i++) {
                const float sum02 = t[i][0] + t[i][2];
                float r[4] = {t[i][0], 0.5f * (sum02 + t[i][1]), 0.5f * (sum02 - t[i][1]), t[i][2]};
                for (int j = 0; j < 4; j++) u[u_at(i * 4 + j, k, c, K, C)] = r[j];
            }
        }
}

/* The same for 16 input channels at a time: their 16 x 9 weights are contiguous, so tap t of
   each is a gather at stride 9; the transform runs on vectors and each ξ is one scatter. Training
   transforms every weight each step (and the flipped ones for the input gradient): scalar, this
   was 8% of a training step in perf. */
__attribute__((target("avx512f")))
static void weights_avx512(const mr_conv2d_shape *s, const float *w, float *u) {
    const int K = s->out_c, C = s->in_c;
    if (K % WMR) memset(u, 0, mr_conv2d_winograd_weights_count(s) * sizeof(float)); /* padding rows */
    const __m512i stride6 = _mm512_setr_epi32(0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66, 72, 78, 84, 90);
    const __m512i stride9 = _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135);
    const __m512 half = _mm512_set1_ps(0.5f);
    for (int k = 0; k < K; k++)
        for (int c0 = 0; c0 < C; c0 += 16) {
            const __mmask16 m = C - c0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c0)) - 1u);
            const float *base = w + ((size_t)k * C + c0) * 9;
            __m512 g[9];
            for (int t = 0; t < 9; t++)
                g[t] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_add_epi32(stride9, _mm512_set1_epi32(t)), base, 4);
            __m512 t4[4][3];
            for (int j = 0; j < 3; j++) {
                const __m512 sum02 = _mm512_add_ps(g[j], g[6 + j]);
                t4[0][j] = g[j];
                t4[1][j] = _mm512_mul_ps(half, _mm512_add_ps(sum02, g[3 + j]));
                t4[2][j] = _mm512_mul_ps(half, _mm512_sub_ps(sum02, g[3 + j]));
                t4[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; i++) {
                const __m512 sum02 = _mm512_add_ps(t4[i][0], t4[i][2]);
                const __m512 r[4] = {t4[i][0], _mm512_mul_ps(half, _mm512_add_ps(sum02, t4[i][1])),
                                     _mm512_mul_ps(half, _mm512_sub_ps(sum02, t4[i][1])), t4[i][2]};
                for (int j = 0; j < 4; j++)
                    _mm512_mask_i32scatter_ps(u + u_at(i * 4 + j, k, c0, K, C), m, stride6, r[j], 4);
            }
        }
}

/* The check stays outside the AVX-512 function, so that no wide instruction runs before it. */
void mr_conv2d_winograd_weights(const mr_conv2d_shape *s, const float *w, float *u) {
    if (cpu_ok < 0) cpu_ok = mr_cpu_has_avx512f();
    if (cpu_ok) weights_avx512(s, w, u);
    else mr_ref_conv2d_winograd_weights(s, w, u);
}

/* Lanes l of a 16-float run starting at column `start` with 0 <= start + l < width, and l < lanes. */
static inline __mmask16 run_mask(int start, int width, int lanes) {
    int lo = start < 0 ? -start : 0, hi = width - start;
    if (hi > lanes) hi = lanes;
    if (hi <= lo) return 0;
    return (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

/* A masked load may start before the row: the lanes masked off are never read. */
__attribute__((target("avx512f"), always_inline))
static inline __m512 load_run(const float *row, int start, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, (const float *)((uintptr_t)row + (intptr_t)start * (intptr_t)sizeof(float)));
}

/* ---- 1. input transform ---------------------------------------------------------------------- */

typedef struct {
    int H, W, C, th, tw, tpi; /* image size, channels, tiles per column/row/image */
    size_t x_img;
} geom;

/* Bᵀ applied along one input row for 16 tiles: h[0..3] from columns 2tx-1 .. 2tx+2 of each tile
   (zeros for a row outside the image). */
__attribute__((target("avx512f"), always_inline))
static inline void row_transform(const geom *g, const float *xc, int iy, int col, const __mmask16 m[4], __m512 h[4]) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    if (iy < 0 || iy >= g->H) {
        for (int j = 0; j < 4; j++) h[j] = _mm512_setzero_ps();
        return;
    }
    const float *row = xc + (size_t)iy * g->W;
    const __m512 l0 = load_run(row, col, m[0]), l1 = load_run(row, col + 16, m[1]);
    const __m512 l2 = load_run(row, col + 2, m[2]), l3 = load_run(row, col + 18, m[3]);
    const __m512 a = _mm512_permutex2var_ps(l0, even, l1);  /* d[2tx - 1] */
    const __m512 b = _mm512_permutex2var_ps(l0, odd, l1);   /* d[2tx] */
    const __m512 cc = _mm512_permutex2var_ps(l2, even, l3); /* d[2tx + 1] */
    const __m512 e = _mm512_permutex2var_ps(l2, odd, l3);   /* d[2tx + 2] */
    h[0] = _mm512_sub_ps(a, cc);
    h[1] = _mm512_add_ps(b, cc);
    h[2] = _mm512_sub_ps(cc, b);
    h[3] = _mm512_sub_ps(b, e);
}

/* V[ξ][c][j] (rows ldv apart per c, planes `plane` apart per ξ) for tiles t0 .. t1 - 1, j = t - t0.
   Consecutive whole tile rows of an image go together: a tile row's last two input rows are the
   next one's first two, so each input row is transformed once (rows down the inner loop). */
__attribute__((target("avx512f")))
static void input_transform(const geom *g, const float *x, int t0, int t1, float *v, size_t ldv, size_t plane) {
    for (int t = t0; t < t1;) {
        const int n = t / g->tpi, r = t % g->tpi, ty0 = r / g->tw, tx0 = r % g->tw;
        int rows = 1, len = g->tw - tx0 < t1 - t ? g->tw - tx0 : t1 - t;
        if (tx0 == 0 && t1 - t >= g->tw) {
            rows = (t1 - t) / g->tw;
            if (rows > g->th - ty0) rows = g->th - ty0;
            len = g->tw;
        }
        for (int tx = tx0; tx < tx0 + len; tx += WV) {
            const int lanes = tx0 + len - tx < WV ? tx0 + len - tx : WV;
            const __mmask16 keep = (__mmask16)((1u << lanes) - 1u);
            const int col = 2 * tx - 1; /* first input column of the first tile */
            const __mmask16 m[4] = {run_mask(col, g->W, WV), run_mask(col + 16, g->W, WV),
                                    run_mask(col + 2, g->W, WV), run_mask(col + 18, g->W, WV)};
            float *dst = v + (size_t)(t - t0) + (size_t)(tx - tx0);
            for (int c = 0; c < g->C; c++) {
                const float *xc = x + (size_t)n * g->x_img + (size_t)c * g->H * g->W;
                __m512 h[4][4];
                row_transform(g, xc, 2 * ty0 - 1, col, m, h[0]);
                row_transform(g, xc, 2 * ty0, col, m, h[1]);
                for (int k = 0; k < rows; k++) {
                    const int ty = ty0 + k;
                    row_transform(g, xc, 2 * ty + 1, col, m, h[2]);
                    row_transform(g, xc, 2 * ty + 2, col, m, h[3]);
                    float *dc = dst + (size_t)c * ldv + (size_t)k * g->tw;
                    for (int j = 0; j < 4; j++) {
                        _mm512_mask_storeu_ps(dc + (size_t)(0 * 4 + j) * plane, keep, _mm512_sub_ps(h[0][j], h[2][j]));
                        _mm512_mask_storeu_ps(dc + (size_t)(1 * 4 + j) * plane, keep, _mm512_add_ps(h[1][j], h[2][j]));
                        _mm512_mask_storeu_ps(dc + (size_t)(2 * 4 + j) * plane, keep, _mm512_sub_ps(h[2][j], h[1][j]));
                        _mm512_mask_storeu_ps(dc + (size_t)(3 * 4 + j) * plane, keep, _mm512_sub_ps(h[1][j], h[3][j]));
                    }
                    for (int j = 0; j < 4; j++) { h[0][j] = h[2][j]; h[1][j] = h[3][j]; }
                }
            }
        }
        t += rows == 1 ? len : rows * g->tw;
    }
}

/* ---- 2. the products ------------------------------------------------------------------------- */

/* m[ξ][i][0 .. nv*16) = sum over c of U[ξ][k0 + i][c] * v[ξ][c][...], i < mr. u: the block of
   output channels k0 .. k0 + 5 of ξ = 0 ([c][6]), the next ξ's uplane further; v: rows ldv apart,
   planes vplane apart. */
__attribute__((target("avx512f"), always_inline))
static inline void products(const float *u, size_t uplane, int C, const float *v, size_t ldv, size_t vplane,
                            float *m, const int mr, const int nv) {
    for (int xi = 0; xi < XI; xi++) {
        __m512 acc[WMR][WNV];
        for (int i = 0; i < WMR; i++)
            for (int q = 0; q < WNV; q++) acc[i][q] = _mm512_setzero_ps();
        const float *ux = u + (size_t)xi * uplane, *vx = v + (size_t)xi * vplane;
        for (int c = 0; c < C; c++) {
            __m512 in[WNV];
            for (int q = 0; q < WNV; q++)
                if (q < nv) in[q] = _mm512_loadu_ps(vx + (size_t)c * ldv + q * WV);
            for (int i = 0; i < WMR; i++) {
                if (i >= mr) break;
                const __m512 wv = _mm512_set1_ps(ux[(size_t)c * WMR + i]);
                for (int q = 0; q < WNV; q++)
                    if (q < nv) acc[i][q] = _mm512_fmadd_ps(in[q], wv, acc[i][q]);
            }
        }
        for (int i = 0; i < WMR; i++) {
            if (i >= mr) break;
            for (int q = 0; q < WNV; q++)
                if (q < nv) _mm512_storeu_ps(m + ((size_t)xi * WMR + i) * MICRO + q * WV, acc[i][q]);
        }
    }
}

typedef void (*products_fn)(const float *, size_t, int, const float *, size_t, size_t, float *);
#define PRODUCTS(mr, nv)                                                                              \
    __attribute__((target("avx512f"))) static void products_##mr##_##nv(                              \
        const float *u, size_t up, int C, const float *v, size_t ldv, size_t vp, float *m) {           \
        products(u, up, C, v, ldv, vp, m, mr, nv);                                                    \
    }
#define PRODUCTS_MR(mr) PRODUCTS(mr, 1) PRODUCTS(mr, 2) PRODUCTS(mr, 3) PRODUCTS(mr, 4)
PRODUCTS_MR(1) PRODUCTS_MR(2) PRODUCTS_MR(3) PRODUCTS_MR(4) PRODUCTS_MR(5) PRODUCTS_MR(6)
#define ROW(mr) {products_##mr##_1, products_##mr##_2, products_##mr##_3, products_##mr##_4}
static const products_fn products_fns[WMR][WNV] = {ROW(1), ROW(2), ROW(3), ROW(4), ROW(5), ROW(6)};

/* ---- 3. output transform --------------------------------------------------------------------- */

/* Output channels k0 .. k0 + mr - 1 of tiles t .. t + cnt - 1 from m[ξ][i][j] (j = tile - t). */
__attribute__((target("avx512f")))
static void output_transform(const geom *g, const float *m, int mr, int t, int cnt, int k0, int K,
                             const float *bias, float *y) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const size_t y_img = (size_t)K * g->H * g->W, P = (size_t)g->H * g->W;
    for (int j0 = 0; j0 < cnt; j0 += WV) {
        const int lanes = cnt - j0 < WV ? cnt - j0 : WV;
        for (int i = 0; i < mr; i++) {
            __m512 q[4][4];
            for (int xi = 0; xi < XI; xi++) q[xi / 4][xi % 4] = _mm512_loadu_ps(m + ((size_t)xi * WMR + i) * MICRO + j0);
            __m512 s0[4], s1[4];
            for (int a = 0; a < 4; a++) {
                s0[a] = _mm512_add_ps(_mm512_add_ps(q[a][0], q[a][1]), q[a][2]);
                s1[a] = _mm512_sub_ps(_mm512_sub_ps(q[a][1], q[a][2]), q[a][3]);
            }
            const __m512 b = _mm512_set1_ps(bias ? bias[k0 + i] : 0.0f);
            const __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), b);
            const __m512 y01 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), b);
            const __m512 y10 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), b);
            const __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), b);
            /* rows of output pixels, tile j's two columns at lanes 2j, 2j+1 (j < 8: r?lo, else r?hi) */
            const __m512 r0lo = _mm512_permutex2var_ps(y00, lo, y01), r0hi = _mm512_permutex2var_ps(y00, hi, y01);
            const __m512 r1lo = _mm512_permutex2var_ps(y10, lo, y11), r1hi = _mm512_permutex2var_ps(y10, hi, y11);
            /* the lanes may span tile rows: store each row's run of tiles on its own */
            for (int j = 0; j < lanes;) {
                const int tt = t + j0 + j, n = tt / g->tpi, r = tt % g->tpi, ty = r / g->tw, tx = r % g->tw;
                int run = g->tw - tx;
                if (run > lanes - j) run = lanes - j;
                float *plane = y + (size_t)n * y_img + (size_t)(k0 + i) * P;
                /* output column of lane L of the lo vector: 2*(tx - j) + L; of the hi one: + 16 */
                const int base = 2 * (tx - j);
                const int oy = 2 * ty;
                for (int half = 0; half < 2; half++) {
                    const int l0 = 2 * j - 16 * half, l1 = 2 * (j + run) - 16 * half;
                    const int a0 = l0 < 0 ? 0 : l0, a1 = l1 > 16 ? 16 : l1;
                    if (a1 <= a0) continue;
                    const int start = base + 16 * half;
                    __mmask16 mk = (__mmask16)(((1u << a1) - 1u) & ~((1u << a0) - 1u));
                    mk &= run_mask(start, g->W, WV);
                    const __m512 v0 = half ? r0hi : r0lo, v1 = half ? r1hi : r1lo;
                    float *row0 = plane + (size_t)oy * g->W;
                    _mm512_mask_storeu_ps((float *)((uintptr_t)row0 + (intptr_t)start * (intptr_t)sizeof(float)), mk, v0);
                    if (oy + 1 < g->H) {
                        float *row1 = row0 + g->W;
                        _mm512_mask_storeu_ps((float *)((uintptr_t)row1 + (intptr_t)start * (intptr_t)sizeof(float)), mk, v1);
                    }
                }
                j += run;
            }
        }
    }
}

/* ---- driver ---------------------------------------------------------------------------------- */

int mr_conv2d_winograd_forward(const mr_conv2d_shape *s, const float *x, const float *u, const float *b,
                               float *y, int t0, int t1, int co0, int co1) {
    if (!mr_conv2d_winograd_applies(s)) return 0;
    geom g;
    g.H = s->in_h; g.W = s->in_w; g.C = s->in_c;
    g.th = (g.H + 1) / 2; g.tw = (g.W + 1) / 2; g.tpi = g.th * g.tw;
    g.x_img = (size_t)s->in_c * g.H * g.W;
    const int K = s->out_c, C = s->in_c;
    if (t1 > s->batch * g.tpi) t1 = s->batch * g.tpi;
    if (co0 < 0 || co0 % WMR) return 0; /* weights are stored in blocks of 6 channels */
    if (co1 > K) co1 = K;
    if (t1 <= t0 || co1 <= co0) return 1;
    /* chunk: transformed input of about 512 KiB, 64 to 1024 tiles, a multiple of 64 */
    size_t chunk = ((size_t)512 << 10) / ((size_t)XI * C * sizeof(float));
    chunk = chunk / MICRO * MICRO;
    if (chunk < MICRO) chunk = MICRO;
    if (chunk > 1024) chunk = 1024;
    /* rows and planes one cache line past a multiple of 4 KiB apart, so that the 16 planes a
       transform writes (and the rows a product reads) do not all map to the same L1 sets */
    const size_t ldv = chunk + WV, vplane = (size_t)C * ldv + WV;
    const size_t v_floats = (size_t)XI * vplane, m_floats = (size_t)XI * WMR * MICRO;
    float *mem = mr_conv_workspace(v_floats + m_floats);
    if (!mem) return 0;
    float *v = mem, *m = mem + v_floats;
    const size_t uplane = (size_t)k_blocks(K) * WMR * C;
    for (int c0 = t0; c0 < t1; c0 += (int)chunk) {
        const int len = t1 - c0 < (int)chunk ? t1 - c0 : (int)chunk;
        const int padded = (len + WV - 1) / WV * WV;
        input_transform(&g, x, c0, c0 + len, v, ldv, vplane);
        if (padded > len) /* lanes past the last tile: zeros, never garbage (denormals) */
            for (int xi = 0; xi < XI; xi++)
                for (int c = 0; c < C; c++)
                    memset(v + xi * vplane + (size_t)c * ldv + len, 0, (size_t)(padded - len) * sizeof(float));
        for (int j = 0; j < len; j += MICRO) {
            const int cnt = len - j < MICRO ? len - j : MICRO;
            const int nv = (cnt + WV - 1) / WV;
            for (int k = co0; k < co1; k += WMR) {
                const int mr = co1 - k < WMR ? co1 - k : WMR;
                products_fns[mr - 1][nv - 1](u + (size_t)(k / WMR) * C * WMR, uplane, C, v + j, ldv, vplane, m);
                output_transform(&g, m, mr, c0 + j, cnt, k, K, b, y);
            }
        }
    }
    return 1;
}

/* ---- the weight gradient --------------------------------------------------------------------- */

/*
 * The same identity read backwards. With Y = Aᵀ M A and M[ξ] = U[ξ] · V[ξ] summed over tiles:
 *     dM = A dY Aᵀ (per tile: the 2x2 output gradient spread over the 16 ξ),
 *     dU[ξ] = Σ_tiles dM[ξ] · V[ξ]ᵀ  (16 matrix products [out_c × tiles] · [tiles × in_c], sgemm),
 *     dw = Gᵀ dU G  (per (k, c): 4x4 back to 3x3).
 * Output pixels past the plane (the half tiles of odd sizes) have no gradient: they are zeros.
 */

/* dM[ξ][k][j] (rows ldm apart per k, planes K*ldm apart) for tiles t0 .. t1 - 1 from dy. */
__attribute__((target("avx512f")))
static void gradient_transform(const geom *g, int K, const float *dy, int t0, int t1, float *dm, size_t ldm) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const size_t plane = (size_t)K * ldm, P = (size_t)g->H * g->W, y_img = (size_t)K * P;
    for (int t = t0; t < t1;) {
        const int n = t / g->tpi, r = t % g->tpi, ty = r / g->tw, tx0 = r % g->tw;
        const int seg_end = t + (g->tw - tx0) < t1 ? t + (g->tw - tx0) : t1;
        for (int tx = tx0; tx < tx0 + (seg_end - t); tx += WV) {
            const int lanes = tx0 + (seg_end - t) - tx < WV ? tx0 + (seg_end - t) - tx : WV;
            const __mmask16 keep = (__mmask16)((1u << lanes) - 1u);
            const int col = 2 * tx;
            const __mmask16 m0 = run_mask(col, g->W, WV), m1 = run_mask(col + 16, g->W, WV);
            float *dst = dm + (size_t)(t - t0) + (size_t)(tx - tx0);
            for (int k = 0; k < K; k++) {
                const float *yk = dy + (size_t)n * y_img + (size_t)k * P;
                __m512 gv[2][2]; /* [row][column] of each tile's 2x2 gradient */
                for (int i = 0; i < 2; i++) {
                    const int oy = 2 * ty + i;
                    if (oy >= g->H) { gv[i][0] = gv[i][1] = _mm512_setzero_ps(); continue; }
                    const float *row = yk + (size_t)oy * g->W;
                    const __m512 l0 = load_run(row, col, m0), l1 = load_run(row, col + 16, m1);
                    gv[i][0] = _mm512_permutex2var_ps(l0, even, l1);
                    gv[i][1] = _mm512_permutex2var_ps(l0, odd, l1);
                }
                /* rows: A·g (4 rows from 2), then columns: (A·g)·Aᵀ */
                __m512 rr[4][2];
                for (int j = 0; j < 2; j++) {
                    rr[0][j] = gv[0][j];
                    rr[1][j] = _mm512_add_ps(gv[0][j], gv[1][j]);
                    rr[2][j] = _mm512_sub_ps(gv[0][j], gv[1][j]);
                    rr[3][j] = _mm512_sub_ps(_mm512_setzero_ps(), gv[1][j]);
                }
                float *dk = dst + (size_t)k * ldm;
                for (int i = 0; i < 4; i++) {
                    _mm512_mask_storeu_ps(dk + (size_t)(i * 4 + 0) * plane, keep, rr[i][0]);
                    _mm512_mask_storeu_ps(dk + (size_t)(i * 4 + 1) * plane, keep, _mm512_add_ps(rr[i][0], rr[i][1]));
                    _mm512_mask_storeu_ps(dk + (size_t)(i * 4 + 2) * plane, keep, _mm512_sub_ps(rr[i][0], rr[i][1]));
                    _mm512_mask_storeu_ps(dk + (size_t)(i * 4 + 3) * plane, keep, _mm512_sub_ps(_mm512_setzero_ps(), rr[i][1]));
                }
            }
        }
        t = seg_end;
    }
}

int mr_conv2d_winograd_weight_gradient(const mr_conv2d_shape *s, const float *x, const float *dy, float *dw) {
    if (!mr_conv2d_winograd_applies(s)) return 0;
    geom g;
    g.H = s->in_h; g.W = s->in_w; g.C = s->in_c;
    g.th = (g.H + 1) / 2; g.tw = (g.W + 1) / 2; g.tpi = g.th * g.tw;
    g.x_img = (size_t)s->in_c * g.H * g.W;
    const int K = s->out_c, C = s->in_c, T = s->batch * g.tpi;
    /* chunk: both transformed operands in about 2 MiB, 64 to 1024 tiles */
    size_t chunk = ((size_t)2 << 20) / ((size_t)XI * (C + K) * sizeof(float));
    chunk = chunk / WV * WV;
    if (chunk < 64) chunk = 64;
    if (chunk > 1024) chunk = 1024;
    const size_t ldv = chunk, uplane = (size_t)K * C;
    const size_t du_floats = (size_t)XI * uplane, v_floats = (size_t)XI * C * ldv, m_floats = (size_t)XI * K * ldv;
    float *mem = mr_conv_workspace(du_floats + v_floats + m_floats);
    if (!mem) return 0;
    float *du = mem, *v = du + du_floats, *dm = v + v_floats;
    memset(du, 0, du_floats * sizeof(float));
    for (int c0 = 0; c0 < T; c0 += (int)chunk) {
        const int len = T - c0 < (int)chunk ? T - c0 : (int)chunk;
        input_transform(&g, x, c0, c0 + len, v, ldv, (size_t)C * ldv);
        gradient_transform(&g, K, dy, c0, c0 + len, dm, ldv);
        for (int xi = 0; xi < XI; xi++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, C, len, 1.0f, dm + (size_t)xi * K * ldv, (int)ldv,
                        v + (size_t)xi * C * ldv, (int)ldv, 1.0f, du + (size_t)xi * uplane, C);
    }
    /* dw[k][c] += Gᵀ dU G, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1] */
    for (int k = 0; k < K; k++)
        for (int c = 0; c < C; c++) {
            float d[4][4], t[3][4];
            for (int xi = 0; xi < XI; xi++) d[xi / 4][xi % 4] = du[(size_t)xi * uplane + (size_t)k * C + c];
            for (int j = 0; j < 4; j++) {
                t[0][j] = d[0][j] + 0.5f * (d[1][j] + d[2][j]);
                t[1][j] = 0.5f * (d[1][j] - d[2][j]);
                t[2][j] = 0.5f * (d[1][j] + d[2][j]) + d[3][j];
            }
            float *o = dw + ((size_t)k * C + c) * 9;
            for (int i = 0; i < 3; i++) {
                o[i * 3 + 0] += t[i][0] + 0.5f * (t[i][1] + t[i][2]);
                o[i * 3 + 1] += 0.5f * (t[i][1] - t[i][2]);
                o[i * 3 + 2] += 0.5f * (t[i][1] + t[i][2]) + t[i][3];
            }
        }
    return 1;
}

int mr_conv2d_winograd_tiles(const mr_conv2d_shape *s) {
    return s->batch * ((s->in_h + 1) / 2) * ((s->in_w + 1) / 2);
}
