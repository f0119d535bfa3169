/*
 * linear.c — fully connected layer: y = x · w^T + b, with w in PyTorch's [out, in] layout.
 * The fast versions are one cblas_sgemm each; the references are the definitions.
 */
#include "millrace_kernels.h"

#include <cblas.h>
#include <string.h>

/* Large products split over Millrace's pool: forward by rows of x, or by output features when
   there are fewer rows than features (each part then packs only its share of w, where a split by
   rows had every part pack all of it: the attention of an 8x8 image, 64 rows by 256), dx by rows
   of x, dw by rows of dw (output features); every output element is computed by one part, as
   serially. */
typedef struct {
    int n, in, out, parts;
    const float *x, *w, *b, *dy;
    float *y, *dx, *dw;
    int by_features;
} linear_job;

static int linear_parts(int n, int in, int out) {
    int parts = mr_parallel_parts();
    if (parts <= 1 || (double)n * in * out < (double)(1 << 18)) return 1;
    return parts;
}

static void linear_forward_serial(int n, int in, int out, const float *x, const float *w,
                                  const float *b, float *y, int ldy);

static void linear_forward_part(void *ctx, int part) {
    linear_job *j = ctx;
    if (j->by_features) {
        /* ranges start on multiples of 32 features, so that each part's features fall in the
           same groups of OpenBLAS's kernel as in one serial call: the same bytes on any number
           of cores with its AVX-512 kernels, which gen selects unless OPENBLAS_CORETYPE says
           otherwise (its Haswell kernels order a
           part's tail differently: the last bits differ); the last part also takes the
           remainder */
        const int blocks = (j->out + 31) / 32;
        const int o0 = 32 * (int)((long)part * blocks / j->parts);
        int o1 = part == j->parts - 1 ? j->out : 32 * (int)((long)(part + 1) * blocks / j->parts);
        if (o1 > j->out) o1 = j->out;
        if (o1 <= o0) return;
        linear_forward_serial(j->n, j->in, o1 - o0, j->x, j->w + (size_t)o0 * j->in, j->b ? j->b + o0 : NULL,
                              j->y + o0, j->out);
        return;
    }
    int r0 = (int)((long)part * j->n / j->parts), r1 = (int)((long)(part + 1) * j->n / j->parts);
    if (r1 > r0)
        linear_forward_serial(r1 - r0, j->in, j->out, j->x + (size_t)r0 * j->in, j->w, j->b,
                              j->y + (size_t)r0 * j->out, j->out);
}

static void linear_backward_part(void *ctx, int part) {
    linear_job *j = ctx;
    int r0 = (int)((long)part * j->n / j->parts), r1 = (int)((long)(part + 1) * j->n / j->parts);
    if (j->dx && r1 > r0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, j->in, j->out, 1.0f,
                    j->dy + (size_t)r0 * j->out, j->out, j->w, j->in, 0.0f, j->dx + (size_t)r0 * j->in, j->in);
    int o0 = (int)((long)part * j->out / j->parts), o1 = (int)((long)(part + 1) * j->out / j->parts);
    if (j->dw && o1 > o0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o1 - o0, j->in, j->n, 1.0f, j->dy + o0,
                    j->out, j->x, j->in, 1.0f, j->dw + (size_t)o0 * j->in, j->in);
}

void mr_linear_forward(int n, int in, int out, const float *x, const float *w, const float *b,
                       float *y) {
    int parts = linear_parts(n, in, out);
    if (parts > 1 && n >= parts && in > 0 && out > 0) {
        linear_job j = {n, in, out, parts, x, w, b, NULL, y, NULL, NULL, n < out && out >= 16 * parts};
        mr_run_parts(parts, linear_forward_part, &j);
        return;
    }
    linear_forward_serial(n, in, out, x, w, b, y, out);
}

/* y[n, out] (rows ldy apart) = x[n, in] · w[out, in]^T + b */
static void linear_forward_serial(int n, int in, int out, const float *x, const float *w,
                                  const float *b, float *y, int ldy) {
    if (n <= 0 || out <= 0) return;
    const size_t on = (size_t)out;
    float beta = 0.0f;
    if (b) {
        for (int r = 0; r < n; r++) memcpy(y + (size_t)r * ldy, b, on * sizeof(float));
        beta = 1.0f;
    } else if (in <= 0) {
        for (int r = 0; r < n; r++) memset(y + (size_t)r * ldy, 0, on * sizeof(float));
    }
    if (in <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta, y,
                ldy);
}

void mr_linear_backward(int n, int in, int out, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db) {
    if (n <= 0) return;
    int parts = linear_parts(n, in, out);
    if (parts > 1 && n >= parts && out >= parts && in > 0) {
        linear_job j = {n, in, out, parts, x, w, NULL, dy, NULL, dx, dw};
        mr_run_parts(parts, linear_backward_part, &j);
        dx = NULL;
        dw = NULL;
    }
    if (dx && in > 0) {
        if (out <= 0) {
            memset(dx, 0, (size_t)n * (size_t)in * sizeof(float));
        } else {
            /* dx[n, in] = dy[n, out] · w[out, in] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w,
                        in, 0.0f, dx, in);
        }
    }
    if (out <= 0) return;
    if (dw && in > 0) {
        /* dw[out, in] += dy^T[out, n] · x[n, in] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in,
                    1.0f, dw, in);
    }
    if (db) {
        /* Column sums of dy, accumulated one row at a time (vectorises across columns). */
        float *restrict d = db;
        for (int r = 0; r < n; r++) {
            const float *restrict row = dy + (size_t)r * (size_t)out;
            for (int o = 0; o < out; o++) d[o] += row[o];
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* References                                                                                */
/* ---------------------------------------------------------------------------------------- */

void mr_ref_linear_forward(int n, int in, int out, const float *x, const float *w,
                           const float *b, float *y) {
    for (int r = 0; r < n; r++) {
        for (int o = 0; o < out; o++) {
            double acc = b ? (double)b[o] : 0.0;
            for (int i = 0; i < in; i++)
                acc += (double)x[(size_t)r * in + i] * (double)w[(size_t)o * in + i];
            y[(size_t)r * out + o] = (float)acc;
        }
    }
}

void mr_ref_linear_backward(int n, int in, int out, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db) {
    if (dx) {
        for (int r = 0; r < n; r++) {
            for (int i = 0; i < in; i++) {
                double acc = 0.0;
                for (int o = 0; o < out; o++)
                    acc += (double)dy[(size_t)r * out + o] * (double)w[(size_t)o * in + i];
                dx[(size_t)r * in + i] = (float)acc;
            }
        }
    }
    if (dw) {
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                double acc = 0.0;
                for (int r = 0; r < n; r++)
                    acc += (double)dy[(size_t)r * out + o] * (double)x[(size_t)r * in + i];
                dw[(size_t)o * in + i] += (float)acc;
            }
        }
    }
    if (db) {
        for (int o = 0; o < out; o++) {
            double acc = 0.0;
            for (int r = 0; r < n; r++) acc += (double)dy[(size_t)r * out + o];
            db[o] += (float)acc;
        }
    }
}
