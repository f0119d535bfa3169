/*
 * elementwise.c — elementwise arithmetic, the fast exp (fastmath.h) as an array op,
 * per-channel bias, channel concat/split, per-batch transpose (cache-blocked) and nearest 2x
 * upsampling.
 *
 * Ops documented as allowing aliasing (y = a, y = x, ...) take no `restrict`. The compiler
 * vectorises such a loop behind a run-time overlap check, but that check also rejects y == x
 * exactly (clang: y - x < vector bytes), so an in-place call would run the scalar loop, 2-4x
 * slower. Each op therefore tests y == x itself and runs a loop over the one pointer then.
 */
#include "millrace_kernels.h"

#include <string.h>

#include "fastmath.h"

MR_VECTOR_CLONES void mr_exp_approx(size_t n, const float *x, float *y) {
    if (x == y) {
        for (size_t i = 0; i < n; i++) y[i] = mr_fast_expf(y[i]);
    } else {
        for (size_t i = 0; i < n; i++) y[i] = mr_fast_expf(x[i]);
    }
}

/* IEEE addition and multiplication commute exactly, so y == b is handled as y == a. */
MR_VECTOR_CLONES void mr_add(size_t n, const float *a, const float *b, float *y) {
    if (y == b) {
        b = a;
        a = y;
    }
    if (y == a) {
        for (size_t i = 0; i < n; i++) y[i] += b[i];
    } else {
        for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    }
}

MR_VECTOR_CLONES void mr_mul(size_t n, const float *a, const float *b, float *y) {
    if (y == b) {
        b = a;
        a = y;
    }
    if (y == a) {
        for (size_t i = 0; i < n; i++) y[i] *= b[i];
    } else {
        for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
    }
}

MR_VECTOR_CLONES void mr_axpy(size_t n, float alpha, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

MR_VECTOR_CLONES void mr_scale(size_t n, float alpha, const float *x, float *y) {
    if (x == y) {
        for (size_t i = 0; i < n; i++) y[i] *= alpha;
    } else {
        for (size_t i = 0; i < n; i++) y[i] = alpha * x[i];
    }
}

MR_VECTOR_CLONES void mr_add_channel_bias(int batch, int channels, int hw, const float *x, const float *bias,
                         float *y) {
    if (hw <= 0) return;
    const size_t plane = (size_t)hw;
    const size_t planes = (size_t)(batch > 0 ? batch : 0) * (size_t)(channels > 0 ? channels : 0);
    for (size_t p = 0; p < planes; p++) {
        const float bv = bias[p];
        const float *xp = x + p * plane;
        float *yp = y + p * plane;
        if (xp == yp) {
            for (size_t i = 0; i < plane; i++) yp[i] += bv;
        } else {
            for (size_t i = 0; i < plane; i++) yp[i] = xp[i] + bv;
        }
    }
}

void mr_channel_bias_backward(int batch, int channels, int hw, const float *dy, float *dbias) {
    if (hw <= 0) return;
    const size_t plane = (size_t)hw;
    const size_t planes = (size_t)(batch > 0 ? batch : 0) * (size_t)(channels > 0 ? channels : 0);
    enum { LANES = 16 };
    for (size_t p = 0; p < planes; p++) {
        const float *restrict dp = dy + p * plane;
        /* float partial sums in independent lanes (vectorisable), flushed to double */
        double total = 0.0;
        size_t i = 0;
        while (i + LANES <= plane) {
            const size_t end = (plane - i > 4096) ? i + 4096 : plane;
            float acc[LANES] = {0};
            for (; i + LANES <= end; i += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += dp[i + l];
            for (int l = 0; l < LANES; l++) total += acc[l];
        }
        for (; i < plane; i++) total += dp[i];
        dbias[p] += (float)total;
    }
}

void mr_concat_channels(int batch, int c1, int c2, int hw, const float *a, const float *b,
                        float *y) {
    const size_t na = (size_t)c1 * (size_t)hw, nb = (size_t)c2 * (size_t)hw;
    for (int bi = 0; bi < batch; bi++) {
        float *yb = y + (size_t)bi * (na + nb);
        if (na) memcpy(yb, a + (size_t)bi * na, na * sizeof(float));
        if (nb) memcpy(yb + na, b + (size_t)bi * nb, nb * sizeof(float));
    }
}

void mr_split_channels(int batch, int c1, int c2, int hw, const float *dy, float *da, float *db) {
    const size_t na = (size_t)c1 * (size_t)hw, nb = (size_t)c2 * (size_t)hw;
    for (int bi = 0; bi < batch; bi++) {
        const float *yb = dy + (size_t)bi * (na + nb);
        if (da && na) memcpy(da + (size_t)bi * na, yb, na * sizeof(float));
        if (db && nb) memcpy(db + (size_t)bi * nb, yb + na, nb * sizeof(float));
    }
}

/*
 * Transpose: 64x64 tiles, each moved as 8x8 blocks. An 8x8 block reads 8 short row segments
 * and writes 8 short column segments, so only 8 lines of each side are live at once even when the
 * row strides are powers of two (which map every row of a large tile onto one cache set).
 */
#define MR_TILE 64
#define MR_MICRO 8

static void transpose_tile(size_t R, size_t C, size_t i0, size_t i1, size_t j0, size_t j1,
                           const float *restrict x, float *restrict y) {
    size_t i = i0;
    for (; i + MR_MICRO <= i1; i += MR_MICRO) {
        size_t j = j0;
        for (; j + MR_MICRO <= j1; j += MR_MICRO) {
            float blk[MR_MICRO][MR_MICRO];
            for (int a = 0; a < MR_MICRO; a++)
                for (int b = 0; b < MR_MICRO; b++) blk[b][a] = x[(i + a) * C + j + b];
            for (int b = 0; b < MR_MICRO; b++)
                for (int a = 0; a < MR_MICRO; a++) y[(j + b) * R + i + a] = blk[b][a];
        }
        for (; j < j1; j++)
            for (int a = 0; a < MR_MICRO; a++) y[j * R + i + a] = x[(i + a) * C + j];
    }
    for (; i < i1; i++)
        for (size_t j = j0; j < j1; j++) y[j * R + i] = x[i * C + j];
}

void mr_transpose(int batch, int rows, int cols, const float *x, float *y) {
    if (rows <= 0 || cols <= 0) return;
    const size_t R = (size_t)rows, C = (size_t)cols, n = R * C;
    for (int b = 0; b < batch; b++) {
        const float *xb = x + (size_t)b * n;
        float *yb = y + (size_t)b * n;
        if (rows == 1 || cols == 1) {
            memcpy(yb, xb, n * sizeof(float));
            continue;
        }
        for (size_t i0 = 0; i0 < R; i0 += MR_TILE) {
            const size_t i1 = (R - i0 < MR_TILE) ? R : i0 + MR_TILE;
            for (size_t j0 = 0; j0 < C; j0 += MR_TILE) {
                const size_t j1 = (C - j0 < MR_TILE) ? C : j0 + MR_TILE;
                transpose_tile(R, C, i0, i1, j0, j1, xb, yb);
            }
        }
    }
}

void mr_upsample_nearest2x_forward(int planes, int h, int w, const float *x, float *y) {
    if (h <= 0 || w <= 0) return;
    const size_t W = (size_t)w, W2 = 2 * W;
    for (int p = 0; p < planes; p++) {
        const float *restrict xp = x + (size_t)p * h * W;
        float *restrict yp = y + (size_t)p * 4 * h * W;
        for (int i = 0; i < h; i++) {
            const float *restrict xr = xp + (size_t)i * W;
            float *restrict y0 = yp + (size_t)(2 * i) * W2;
            for (size_t j = 0; j < W; j++) {
                y0[2 * j] = xr[j];
                y0[2 * j + 1] = xr[j];
            }
            memcpy(y0 + W2, y0, W2 * sizeof(float));
        }
    }
}

void mr_upsample_nearest2x_backward(int planes, int h, int w, const float *dy, float *dx) {
    if (h <= 0 || w <= 0) return;
    const size_t W = (size_t)w, W2 = 2 * W;
    for (int p = 0; p < planes; p++) {
        const float *restrict dp = dy + (size_t)p * 4 * h * W;
        float *restrict xp = dx + (size_t)p * h * W;
        for (int i = 0; i < h; i++) {
            const float *restrict r0 = dp + (size_t)(2 * i) * W2;
            const float *restrict r1 = r0 + W2;
            float *restrict xr = xp + (size_t)i * W;
            for (size_t j = 0; j < W; j++)
                xr[j] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* References                                                                                */
/* ---------------------------------------------------------------------------------------- */

void mr_ref_add(size_t n, const float *a, const float *b, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void mr_ref_mul(size_t n, const float *a, const float *b, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
}

void mr_ref_concat_channels(int batch, int c1, int c2, int hw, const float *a, const float *b,
                            float *y) {
    const int c = c1 + c2;
    for (int bi = 0; bi < batch; bi++)
        for (int ch = 0; ch < c; ch++)
            for (int i = 0; i < hw; i++) {
                const size_t dst = ((size_t)bi * c + ch) * hw + i;
                y[dst] = ch < c1 ? a[((size_t)bi * c1 + ch) * hw + i]
                                 : b[((size_t)bi * c2 + (ch - c1)) * hw + i];
            }
}

void mr_ref_transpose(int batch, int rows, int cols, const float *x, float *y) {
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                y[((size_t)b * cols + j) * rows + i] = x[((size_t)b * rows + i) * cols + j];
}

void mr_ref_upsample_nearest2x_forward(int planes, int h, int w, const float *x, float *y) {
    for (int p = 0; p < planes; p++)
        for (int i = 0; i < 2 * h; i++)
            for (int j = 0; j < 2 * w; j++)
                y[((size_t)p * 2 * h + i) * 2 * w + j] = x[((size_t)p * h + i / 2) * w + j / 2];
}

void mr_ref_upsample_nearest2x_backward(int planes, int h, int w, const float *dy, float *dx) {
    for (int p = 0; p < planes; p++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++) {
                double s = 0.0;
                for (int a = 0; a < 2; a++)
                    for (int c = 0; c < 2; c++)
                        s += dy[((size_t)p * 2 * h + 2 * i + a) * 2 * w + 2 * j + c];
                dx[((size_t)p * h + i) * w + j] = (float)s;
            }
}
