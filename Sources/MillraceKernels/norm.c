/*
 * norm.c — GroupNorm (forward with optional fused SiLU, backward) and SiLU.
 *
 * Reductions: sums run in float over blocks of at most MR_SUM_BLOCK values, split across
 * MR_LANES independent accumulators (so the compiler can vectorise them without reassociating),
 * and the block totals are added in double. The variance is a second pass over (x - mean)^2, so
 * inputs with a large mean lose nothing to cancellation. A group (channels/groups * hw floats)
 * stays in cache between its passes, so memory still sees one read and one write per value.
 *
 * The sigmoid of the fast SiLU and of the fused GroupNorm + SiLU uses the vectorisable exp of
 * fastmath.h; the references use libm in double.
 */
#include "millrace_kernels.h"

#include <math.h>

#include "fastmath.h"

#define MR_LANES 16
#define MR_SUM_BLOCK 4096

/* sum x[i] */
static double sum_f(const float *restrict x, size_t n) {
    double total = 0.0;
    for (size_t i0 = 0; i0 < n; i0 += MR_SUM_BLOCK) {
        const size_t m = (n - i0 < MR_SUM_BLOCK) ? n - i0 : MR_SUM_BLOCK;
        const float *restrict p = x + i0;
        float acc[MR_LANES] = {0};
        size_t j = 0;
        for (; j + MR_LANES <= m; j += MR_LANES)
            for (int l = 0; l < MR_LANES; l++) acc[l] += p[j + l];
        double s = 0.0;
        for (; j < m; j++) s += p[j];
        for (int l = 0; l < MR_LANES; l++) s += acc[l];
        total += s;
    }
    return total;
}

/* sum (x[i] - c)^2 */
static double sum_sq_dev(const float *restrict x, size_t n, float c) {
    double total = 0.0;
    for (size_t i0 = 0; i0 < n; i0 += MR_SUM_BLOCK) {
        const size_t m = (n - i0 < MR_SUM_BLOCK) ? n - i0 : MR_SUM_BLOCK;
        const float *restrict p = x + i0;
        float acc[MR_LANES] = {0};
        size_t j = 0;
        for (; j + MR_LANES <= m; j += MR_LANES)
            for (int l = 0; l < MR_LANES; l++) {
                const float t = p[j + l] - c;
                acc[l] += t * t;
            }
        double s = 0.0;
        for (; j < m; j++) {
            const double t = (double)p[j] - (double)c;
            s += t * t;
        }
        for (int l = 0; l < MR_LANES; l++) s += acc[l];
        total += s;
    }
    return total;
}

/* The gradient norm's sum of squares (optimizer.c, AdamW.swift). */
MR_VECTOR_CLONES double mr_sum_squares(size_t n, const float *x) { return sum_sq_dev(x, n, 0.0f); }

/* sum dy[i] * (x[i] - c) */
static double dot_dev(const float *restrict dy, const float *restrict x, size_t n, float c) {
    double total = 0.0;
    for (size_t i0 = 0; i0 < n; i0 += MR_SUM_BLOCK) {
        const size_t m = (n - i0 < MR_SUM_BLOCK) ? n - i0 : MR_SUM_BLOCK;
        const float *restrict p = x + i0;
        const float *restrict q = dy + i0;
        float acc[MR_LANES] = {0};
        size_t j = 0;
        for (; j + MR_LANES <= m; j += MR_LANES)
            for (int l = 0; l < MR_LANES; l++) acc[l] += q[j + l] * (p[j + l] - c);
        double s = 0.0;
        for (; j < m; j++) s += (double)q[j] * ((double)p[j] - (double)c);
        for (int l = 0; l < MR_LANES; l++) s += acc[l];
        total += s;
    }
    return total;
}

/* sigmoid in double for the references (libm exp of a non-positive argument only). */
static inline double sigmoid_d(double x) {
    const double e = exp(-fabs(x));
    const double s = 1.0 / (1.0 + e);
    return x >= 0.0 ? s : e * s;
}

/* ---------------------------------------------------------------------------------------- */
/* SiLU                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/*
 * y may equal x, dx may equal dy: no restrict. The compiler vectorises the loops behind a run-time
 * overlap check, but that check rejects y == x exactly too (and the scalar fallback is several
 * times slower), so the in-place case gets its own loop over one pointer. The same holds for
 * every in-place path below.
 */
MR_VECTOR_CLONES void mr_silu_forward(size_t n, const float *x, float *y) {
    if (x == y) {
        for (size_t i = 0; i < n; i++) {
            const float v = y[i];
            y[i] = v * mr_fast_sigmoidf(v);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const float v = x[i];
            y[i] = v * mr_fast_sigmoidf(v);
        }
    }
}

static inline float silu_grad(float v) {
    const float s = mr_fast_sigmoidf(v);
    return s + v * s * (1.0f - s);
}

MR_VECTOR_CLONES void mr_silu_backward(size_t n, const float *x, const float *dy, float *dx) {
    if (dx == dy) {
        for (size_t i = 0; i < n; i++) dx[i] *= silu_grad(x[i]);
    } else {
        for (size_t i = 0; i < n; i++) dx[i] = dy[i] * silu_grad(x[i]);
    }
}

void mr_ref_silu_forward(size_t n, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) {
        const double v = x[i];
        y[i] = (float)(v * sigmoid_d(v));
    }
}

void mr_ref_silu_backward(size_t n, const float *x, const float *dy, float *dx) {
    for (size_t i = 0; i < n; i++) {
        const double v = x[i];
        const double s = sigmoid_d(v);
        dx[i] = (float)((double)dy[i] * (s + v * s * (1.0 - s)));
    }
}

/* ---------------------------------------------------------------------------------------- */
/* GroupNorm                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Groups [g0, g1) of the flattened (image, group) index, each normalised on its own: the result
   of a group does not depend on which part computes it. */
typedef struct {
    int channels, groups;
    size_t plane;
    float eps;
    const float *x, *gamma, *beta;
    float *y, *mean, *rstd;
    int fuse_silu, total, parts;
} gn_job;

MR_VECTOR_CLONES static void gn_groups(const gn_job *j, int g0, int g1) {
    const int cpg = j->channels / j->groups;
    const size_t plane = j->plane, count = (size_t)cpg * plane;
    for (int bg = g0; bg < g1; bg++) {
        const int b = bg / j->groups, g = bg % j->groups;
        const size_t base = ((size_t)b * j->channels + (size_t)g * cpg) * plane;
        const float *xg = j->x + base;
        double m = 0.0, var = 0.0;
        if (count > 0) {
            m = sum_f(xg, count) / (double)count;
            const float mf0 = (float)m;
            /* E[(x - mf0)^2] = var + (m - mf0)^2 */
            const double d = m - (double)mf0;
            var = sum_sq_dev(xg, count, mf0) / (double)count - d * d;
            if (var < 0.0) var = 0.0;
        }
        const double rs = 1.0 / sqrt(var + (double)j->eps);
        const float mf = (float)m;
        if (j->mean) j->mean[bg] = mf;
        if (j->rstd) j->rstd[bg] = (float)rs;
        for (int cc = 0; cc < cpg; cc++) {
            const int c = g * cpg + cc;
            const float a = (float)rs * (j->gamma ? j->gamma[c] : 1.0f);
            const float sh = j->beta ? j->beta[c] : 0.0f;
            const float *xp = xg + (size_t)cc * plane;  /* y may equal x: no restrict */
            float *yp = j->y + base + (size_t)cc * plane;
            if (yp == xp) {
                for (size_t i = 0; i < plane; i++) yp[i] = (yp[i] - mf) * a + sh;
            } else {
                for (size_t i = 0; i < plane; i++) yp[i] = (xp[i] - mf) * a + sh;
            }
            /* SiLU over the plane just written, still in cache: measured faster than one
             * fused loop, whose many live constants spill out of the 16 SSE registers. */
            if (j->fuse_silu) mr_silu_forward(plane, yp, yp);
        }
    }
}

static void gn_part(void *ctx, int part) {
    const gn_job *j = ctx;
    gn_groups(j, (int)((long)part * j->total / j->parts), (int)((long)(part + 1) * j->total / j->parts));
}

void mr_group_norm_forward(int batch, int channels, int hw, int groups, float eps, const float *x,
                           const float *gamma, const float *beta, float *y, float *mean,
                           float *rstd, int fuse_silu) {
    if (batch <= 0 || channels <= 0 || groups <= 0) return;
    gn_job j = {channels, groups, (size_t)(hw > 0 ? hw : 0), eps, x, gamma, beta, y, mean, rstd,
                fuse_silu, batch * groups, 1};
    /* Split over the pool when there is enough to share (a memory-bound pass: below ~64 K
       values a second thread costs more than it saves). Each group is computed whole by one
       part, so the result does not depend on the split. */
    const int parts = mr_parallel_parts();
    const size_t values = (size_t)batch * channels * j.plane;
    if (parts > 1 && j.total >= parts && values >= 65536) {
        j.parts = parts;
        mr_run_parts(parts, gn_part, &j);
    } else {
        gn_groups(&j, 0, j.total);
    }
}

MR_VECTOR_CLONES void mr_group_norm_backward(int batch, int channels, int hw, int groups, const float *x,
                            const float *gamma, const float *mean, const float *rstd,
                            const float *dy, float *dx, float *dgamma, float *dbeta) {
    if (batch <= 0 || channels <= 0 || groups <= 0) return;
    const int cpg = channels / groups;
    const size_t plane = (size_t)(hw > 0 ? hw : 0);
    const double count = (double)cpg * (double)plane;
    for (int b = 0; b < batch; b++) {
        for (int g = 0; g < groups; g++) {
            const size_t base = ((size_t)b * channels + (size_t)g * cpg) * plane;
            const float mf = mean[(size_t)b * groups + g];
            const double rs = rstd[(size_t)b * groups + g];
            double sum_gdy = 0.0;   /* sum over the group of dxhat = gamma * dy */
            double sum_gdyx = 0.0;  /* sum over the group of gamma * dy * (x - mean) */
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const float *xp = x + base + (size_t)cc * plane;
                const float *dp = dy + base + (size_t)cc * plane;
                const double s1 = sum_f(dp, plane);
                const double s2 = dot_dev(dp, xp, plane, mf);
                if (dgamma) dgamma[c] += (float)(s2 * rs);
                if (dbeta) dbeta[c] += (float)s1;
                const double gc = gamma ? (double)gamma[c] : 1.0;
                sum_gdy += gc * s1;
                sum_gdyx += gc * s2;
            }
            if (!dx || count == 0.0) continue;
            const double m1 = sum_gdy / count;            /* mean(dxhat) */
            const double m2 = sum_gdyx * rs / count;      /* mean(dxhat * xhat) */
            const float k0 = (float)(-rs * m1);
            const float k1 = (float)(-rs * rs * m2);
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const float a = (float)(rs * (gamma ? (double)gamma[c] : 1.0));
                const float *xp = x + base + (size_t)cc * plane;
                const float *dp = dy + base + (size_t)cc * plane;
                float *op = dx + base + (size_t)cc * plane;
                /* dx = rstd * (gamma dy - mean(dxhat) - xhat mean(dxhat xhat)) */
                if (op == dp) {
                    for (size_t i = 0; i < plane; i++) op[i] = a * op[i] + k0 + k1 * (xp[i] - mf);
                } else {
                    for (size_t i = 0; i < plane; i++) op[i] = a * dp[i] + k0 + k1 * (xp[i] - mf);
                }
            }
        }
    }
}

void mr_ref_group_norm_forward(int batch, int channels, int hw, int groups, float eps,
                               const float *x, const float *gamma, const float *beta, float *y,
                               float *mean, float *rstd, int fuse_silu) {
    const int cpg = channels / groups;
    for (int b = 0; b < batch; b++) {
        for (int g = 0; g < groups; g++) {
            double s = 0.0;
            for (int cc = 0; cc < cpg; cc++)
                for (int i = 0; i < hw; i++)
                    s += x[((size_t)b * channels + (size_t)g * cpg + cc) * hw + i];
            const double n = (double)cpg * (double)hw;
            const double m = n > 0 ? s / n : 0.0;
            double v = 0.0;
            for (int cc = 0; cc < cpg; cc++)
                for (int i = 0; i < hw; i++) {
                    const double t = x[((size_t)b * channels + (size_t)g * cpg + cc) * hw + i] - m;
                    v += t * t;
                }
            v = n > 0 ? v / n : 0.0;
            const double rs = 1.0 / sqrt(v + (double)eps);
            if (mean) mean[(size_t)b * groups + g] = (float)m;
            if (rstd) rstd[(size_t)b * groups + g] = (float)rs;
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const double gc = gamma ? gamma[c] : 1.0;
                const double bc = beta ? beta[c] : 0.0;
                for (int i = 0; i < hw; i++) {
                    const size_t idx = ((size_t)b * channels + c) * hw + i;
                    double t = (x[idx] - m) * rs * gc + bc;
                    if (fuse_silu) t = t * sigmoid_d(t);
                    y[idx] = (float)t;
                }
            }
        }
    }
}

void mr_ref_group_norm_backward(int batch, int channels, int hw, int groups, const float *x,
                                const float *gamma, const float *mean, const float *rstd,
                                const float *dy, float *dx, float *dgamma, float *dbeta) {
    const int cpg = channels / groups;
    const double n = (double)cpg * (double)hw;
    for (int b = 0; b < batch; b++) {
        for (int g = 0; g < groups; g++) {
            const double m = mean[(size_t)b * groups + g];
            const double rs = rstd[(size_t)b * groups + g];
            double mean_dxhat = 0.0, mean_dxhat_xhat = 0.0;
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const double gc = gamma ? gamma[c] : 1.0;
                double dg = 0.0, db = 0.0;
                for (int i = 0; i < hw; i++) {
                    const size_t idx = ((size_t)b * channels + c) * hw + i;
                    const double xhat = (x[idx] - m) * rs;
                    const double dxhat = dy[idx] * gc;
                    mean_dxhat += dxhat;
                    mean_dxhat_xhat += dxhat * xhat;
                    dg += dy[idx] * xhat;
                    db += dy[idx];
                }
                if (dgamma) dgamma[c] += (float)dg;
                if (dbeta) dbeta[c] += (float)db;
            }
            if (!dx || n == 0.0) continue;
            mean_dxhat /= n;
            mean_dxhat_xhat /= n;
            for (int cc = 0; cc < cpg; cc++) {
                const int c = g * cpg + cc;
                const double gc = gamma ? gamma[c] : 1.0;
                for (int i = 0; i < hw; i++) {
                    const size_t idx = ((size_t)b * channels + c) * hw + i;
                    const double xhat = (x[idx] - m) * rs;
                    const double dxhat = dy[idx] * gc;
                    dx[idx] = (float)(rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
                }
            }
        }
    }
}
