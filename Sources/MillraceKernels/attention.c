/*
 * attention.c — row softmax and multi-head scaled dot-product attention.
 *
 * The fast attention runs, per (batch, head), GEMMs straight on the [batch, L, heads * d] layout:
 * head h of Q is the strided matrix q + h*d with leading dimension heads*d, so no transposes or
 * copies are needed. The score matrix is processed in blocks of rows; when the caller passes
 * `probs` the blocks are written straight into it, otherwise into a scratch buffer of at most
 * max(MR_ATT_SCRATCH_FLOATS, L) floats, allocated and freed within the call.
 *
 * The fast softmax (row max, exp, sum, scale: vectorised passes over a row held in cache) uses
 * the exp of fastmath.h; the references use libm in double.
 */
#include "millrace_kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "fastmath.h"

#define MR_LANES 16
#define MR_ATT_SCRATCH_FLOATS ((size_t)1 << 20) /* 4 MiB per scratch buffer */

/* sum a[i] * b[i]: float partial sums in independent lanes, totals in double. */
static double dot_f(const float *restrict a, const float *restrict b, size_t n) {
    float acc[MR_LANES] = {0};
    double total = 0.0;
    size_t j = 0;
    while (j + MR_LANES <= n) {
        /* flush the float lanes into the double total every 4096 values */
        const size_t end = (n - j > 4096) ? j + 4096 : n;
        for (; j + MR_LANES <= end; j += MR_LANES)
            for (int l = 0; l < MR_LANES; l++) acc[l] += a[j + l] * b[j + l];
        for (int l = 0; l < MR_LANES; l++) {
            total += acc[l];
            acc[l] = 0.0f;
        }
    }
    for (; j < n; j++) total += (double)a[j] * (double)b[j];
    return total;
}

/* max x[i], n >= 1, in independent lanes (a plain max reduction is not vectorised without
 * -ffast-math). NaNs are not propagated, as with a scalar `x > m ? x : m` scan. */
static float max_f(const float *x, size_t n) {
    float m = x[0];
    size_t j = 0;
    if (n >= MR_LANES) {
        float acc[MR_LANES];
        for (int l = 0; l < MR_LANES; l++) acc[l] = x[l];
        for (j = MR_LANES; j + MR_LANES <= n; j += MR_LANES)
            for (int l = 0; l < MR_LANES; l++) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
        for (int l = 0; l < MR_LANES; l++) m = acc[l] > m ? acc[l] : m;
    }
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* sum x[i]: float partial sums in independent lanes, flushed into a double every 4096 values. */
static double sum_f(const float *restrict x, size_t n) {
    float acc[MR_LANES] = {0};
    double total = 0.0;
    size_t j = 0;
    while (j + MR_LANES <= n) {
        const size_t end = (n - j > 4096) ? j + 4096 : n;
        for (; j + MR_LANES <= end; j += MR_LANES)
            for (int l = 0; l < MR_LANES; l++) acc[l] += x[j + l];
        for (int l = 0; l < MR_LANES; l++) {
            total += acc[l];
            acc[l] = 0.0f;
        }
    }
    for (; j < n; j++) total += x[j];
    return total;
}

/* y = softmax(x) for one row of n >= 1 values; y may equal x. Three vectorised passes (max;
 * exp; sum and scale), the row staying in cache between them. The in-place case (attention's
 * score blocks) gets its own exp loop: the compiler's run-time overlap check rejects y == x and
 * would fall back to the scalar loop. */
MR_VECTOR_CLONES static void softmax_row(int n, const float *x, float *y) {
    const size_t m = (size_t)n;
    const float mx = max_f(x, m);
    if (x == y) {
        for (size_t i = 0; i < m; i++) y[i] = mr_fast_expf(y[i] - mx);
    } else {
        for (size_t i = 0; i < m; i++) y[i] = mr_fast_expf(x[i] - mx);
    }
    const float inv = (float)(1.0 / sum_f(y, m));
    for (size_t i = 0; i < m; i++) y[i] *= inv;
}

/* dx = y * (dy - <dy, y>); dx may alias y or dy (the dot product is taken first, and the
 * in-place cases get loops the compiler vectorises without an overlap check). */
MR_VECTOR_CLONES static void softmax_backward_row(int n, const float *y, const float *dy, float *dx) {
    const float dot = (float)dot_f(y, dy, (size_t)n);
    if (dx == dy) {
        for (int i = 0; i < n; i++) dx[i] = y[i] * (dx[i] - dot);
    } else if (dx == y) {
        for (int i = 0; i < n; i++) dx[i] = dx[i] * (dy[i] - dot);
    } else {
        for (int i = 0; i < n; i++) dx[i] = y[i] * (dy[i] - dot);
    }
}

void mr_softmax_forward(int rows, int n, const float *x, float *y) {
    if (n <= 0) return;
    for (int r = 0; r < rows; r++) softmax_row(n, x + (size_t)r * n, y + (size_t)r * n);
}

void mr_softmax_backward(int rows, int n, const float *y, const float *dy, float *dx) {
    if (n <= 0) return;
    for (int r = 0; r < rows; r++) {
        const size_t o = (size_t)r * n;
        softmax_backward_row(n, y + o, dy + o, dx + o);
    }
}

void mr_ref_softmax_forward(int rows, int n, const float *x, float *y) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        if (n <= 0) continue;
        double mx = xr[0];
        for (int i = 1; i < n; i++)
            if (xr[i] > mx) mx = xr[i];
        double sum = 0.0;
        for (int i = 0; i < n; i++) sum += exp((double)xr[i] - mx);
        for (int i = 0; i < n; i++) yr[i] = (float)(exp((double)xr[i] - mx) / sum);
    }
}

void mr_ref_softmax_backward(int rows, int n, const float *y, const float *dy, float *dx) {
    for (int r = 0; r < rows; r++) {
        const size_t o = (size_t)r * n;
        double dot = 0.0;
        for (int j = 0; j < n; j++) dot += (double)dy[o + j] * (double)y[o + j];
        for (int i = 0; i < n; i++) dx[o + i] = (float)((double)y[o + i] * ((double)dy[o + i] - dot));
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Attention                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Rows of an [L, L] score matrix per block so that a block fits the scratch bound. */
static int block_rows(int L) {
    size_t r = MR_ATT_SCRATCH_FLOATS / (size_t)L;
    if (r < 1) r = 1;
    if (r > (size_t)L) r = (size_t)L;
    return (int)r;
}

/* Allocates `count` buffers of rows*L floats, halving rows on failure; aborts if one row fails. */
static float *alloc_blocks(int L, int *rows, int count) {
    for (;;) {
        float *p = malloc((size_t)count * (size_t)(*rows) * (size_t)L * sizeof(float));
        if (p) return p;
        if (*rows == 1) abort();
        *rows /= 2;
    }
}

/* S[r, L] = scale * Q[r rows at ld] · K^T, then row softmax in place. */
static void scores_block(int r, int L, int d, int ld, float scale, const float *Q, const float *K,
                         float *S) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, L, d, scale, Q, ld, K, ld, 0.0f, S, L);
    for (int i = 0; i < r; i++) softmax_row(L, S + (size_t)i * L, S + (size_t)i * L);
}

/* (batch, head) pairs [p0, p1) of one attention forward; each pair is computed whole and alone,
   so the result does not depend on how the pairs are shared out. */
typedef struct {
    int batch, heads, L, d;
    float scale;
    const float *q, *k, *v;
    float *o, *probs;
    int parts;
    int channels_first; /* mr_attention_forward_cf's layout */
} attention_job;

static void attention_pairs(const attention_job *j, int p0, int p1) {
    const int L = j->L, d = j->d, ld = j->heads * d;
    int rb = L;
    float *scratch = NULL;
    if (!j->probs) {
        rb = block_rows(L);
        scratch = alloc_blocks(L, &rb, 1);
    }
    for (int p = p0; p < p1; p++) {
        const int b = p / j->heads, h = p % j->heads;
        const size_t off = (size_t)b * L * ld + (size_t)h * d;
        const float *Q = j->q + off, *K = j->k + off, *V = j->v + off;
        float *O = j->o + off;
        float *P = j->probs ? j->probs + (size_t)p * (size_t)L * L : NULL;
        for (int r0 = 0; r0 < L; r0 += rb) {
            const int r = (L - r0 < rb) ? L - r0 : rb;
            float *S = P ? P + (size_t)r0 * L : scratch;
            scores_block(r, L, d, ld, j->scale, Q + (size_t)r0 * ld, K, S);
            /* O[r rows] = S[r, L] · V[L, d] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, d, L, 1.0f, S, L, V, ld,
                        0.0f, O + (size_t)r0 * ld, ld);
        }
    }
    free(scratch);
}

/* The same on the channels-first layout [batch, heads * d, L]: head h of an image is the d x L
   block of rows h*d .. h*d + d - 1, so S = Qhᵀ·Kh and Oh = Vh·Sᵀ, in blocks of query columns. */
static void attention_pairs_cf(const attention_job *j, int p0, int p1) {
    const int L = j->L, d = j->d;
    int rb = block_rows(L);
    float *S = alloc_blocks(L, &rb, 1);
    for (int p = p0; p < p1; p++) {
        const size_t off = (size_t)p * d * L;  /* pair p = image p / heads, head p % heads */
        const float *Q = j->q + off, *K = j->k + off, *V = j->v + off;
        float *O = j->o + off;
        for (int r0 = 0; r0 < L; r0 += rb) {
            const int r = (L - r0 < rb) ? L - r0 : rb;
            /* S[r, L] = scale * Q[:, r0 .. r0 + r]ᵀ · K, rows softmaxed */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, L, d, j->scale, Q + r0, L, K, L, 0.0f, S, L);
            for (int i = 0; i < r; i++) softmax_row(L, S + (size_t)i * L, S + (size_t)i * L);
            /* O[:, r0 .. r0 + r] = V · S[r, L]ᵀ */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, r, L, 1.0f, V, L, S, L, 0.0f, O + r0, L);
        }
    }
    free(S);
}

static void attention_part(void *ctx, int part) {
    const attention_job *j = ctx;
    const int pairs = j->batch * j->heads;
    const int p0 = (int)((long)part * pairs / j->parts), p1 = (int)((long)(part + 1) * pairs / j->parts);
    if (j->channels_first) attention_pairs_cf(j, p0, p1);
    else attention_pairs(j, p0, p1);
}

/* Over the pool by (batch, head) pairs when there are enough of them to share and enough work
   in each (a one-image forward's 8 heads of 64 tokens: about 0.3 M multiply-adds each). */
static void attention_forward(attention_job *j) {
    const int parts = mr_parallel_parts(), pairs = j->batch * j->heads;
    j->parts = 1;
    if (parts > 1 && pairs >= parts && (double)pairs * j->L * j->L * j->d >= (double)(1 << 20))
        j->parts = parts < pairs ? parts : pairs;
    if (j->parts > 1) mr_run_parts(j->parts, attention_part, j);
    else attention_part(j, 0);
}

void mr_attention_forward(int batch, int heads, int L, int d, float scale, const float *q,
                          const float *k, const float *v, float *o, float *probs) {
    if (batch <= 0 || heads <= 0 || L <= 0 || d <= 0) return;
    attention_job j = {batch, heads, L, d, scale, q, k, v, o, probs, 1, 0};
    attention_forward(&j);
}

void mr_attention_forward_cf(int batch, int heads, int L, int d, float scale, const float *q,
                             const float *k, const float *v, float *o) {
    if (batch <= 0 || heads <= 0 || L <= 0 || d <= 0) return;
    attention_job j = {batch, heads, L, d, scale, q, k, v, o, NULL, 1, 1};
    attention_forward(&j);
}

/*
 * Backward, block of rows R of P at a time:
 *   dV  (+)= P[R]^T dO[R]
 *   dP[R] = dO[R] V^T,  dS[R] = softmax_backward(P[R], dP[R])
 *   dQ[R]  = scale * dS[R] K
 *   dK  (+)= scale * dS[R]^T Q[R]
 * (the first block overwrites dV and dK, the later ones add). If probs is NULL, P[R] is
 * recomputed from q and k.
 */
void mr_attention_backward(int batch, int heads, int L, int d, float scale, const float *q,
                           const float *k, const float *v, const float *probs, const float *dout,
                           float *dq, float *dk, float *dv) {
    if (batch <= 0 || heads <= 0 || L <= 0 || d <= 0) return;
    const int ld = heads * d;
    int rb = block_rows(L);
    const int nbuf = probs ? 1 : 2;
    float *scratch = alloc_blocks(L, &rb, nbuf);
    float *dS = scratch;
    float *pbuf = probs ? NULL : scratch + (size_t)rb * L;
    for (int b = 0; b < batch; b++) {
        const size_t boff = (size_t)b * L * ld;
        for (int h = 0; h < heads; h++) {
            const size_t off = boff + (size_t)h * d;
            const float *Q = q + off, *K = k + off, *V = v + off, *dO = dout + off;
            float *dQ = dq + off, *dK = dk + off, *dV = dv + off;
            const float *Pall = probs ? probs + ((size_t)b * heads + h) * (size_t)L * L : NULL;
            for (int r0 = 0; r0 < L; r0 += rb) {
                const int r = (L - r0 < rb) ? L - r0 : rb;
                const float beta = r0 == 0 ? 0.0f : 1.0f;
                const float *P;
                if (Pall) {
                    P = Pall + (size_t)r0 * L;
                } else {
                    scores_block(r, L, d, ld, scale, Q + (size_t)r0 * ld, K, pbuf);
                    P = pbuf;
                }
                const float *dOr = dO + (size_t)r0 * ld;
                /* dV[L, d] (+)= P[r, L]^T · dO[r, d] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, d, r, 1.0f, P, L, dOr, ld,
                            beta, dV, ld);
                /* dP[r, L] = dO[r, d] · V[L, d]^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, L, d, 1.0f, dOr, ld, V, ld,
                            0.0f, dS, L);
                for (int i = 0; i < r; i++) {
                    const size_t ro = (size_t)i * L;
                    softmax_backward_row(L, P + ro, dS + ro, dS + ro);
                }
                /* dQ[r, d] = scale * dS[r, L] · K[L, d] */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, d, L, scale, dS, L, K,
                            ld, 0.0f, dQ + (size_t)r0 * ld, ld);
                /* dK[L, d] (+)= scale * dS[r, L]^T · Q[r, d] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, d, r, scale, dS, L,
                            Q + (size_t)r0 * ld, ld, beta, dK, ld);
            }
        }
    }
    free(scratch);
}

/* P[i, :] for one (b, h) in double, from q and k. */
static void ref_probs_row(int L, int d, int ld, double scale, const float *Q, const float *K,
                          int i, double *p) {
    double mx = -INFINITY;
    for (int j = 0; j < L; j++) {
        double s = 0.0;
        for (int e = 0; e < d; e++) s += (double)Q[(size_t)i * ld + e] * (double)K[(size_t)j * ld + e];
        p[j] = scale * s;
        if (p[j] > mx) mx = p[j];
    }
    double sum = 0.0;
    for (int j = 0; j < L; j++) {
        p[j] = exp(p[j] - mx);
        sum += p[j];
    }
    for (int j = 0; j < L; j++) p[j] /= sum;
}

void mr_ref_attention_forward(int batch, int heads, int L, int d, float scale, const float *q,
                              const float *k, const float *v, float *o, float *probs) {
    if (batch <= 0 || heads <= 0 || L <= 0 || d <= 0) return;
    const int ld = heads * d;
    double *p = malloc((size_t)L * sizeof(double));
    if (!p) abort();
    for (int b = 0; b < batch; b++) {
        for (int h = 0; h < heads; h++) {
            const size_t off = (size_t)b * L * ld + (size_t)h * d;
            for (int i = 0; i < L; i++) {
                ref_probs_row(L, d, ld, scale, q + off, k + off, i, p);
                if (probs) {
                    float *pr = probs + (((size_t)b * heads + h) * L + i) * (size_t)L;
                    for (int j = 0; j < L; j++) pr[j] = (float)p[j];
                }
                for (int e = 0; e < d; e++) {
                    double acc = 0.0;
                    for (int j = 0; j < L; j++) acc += p[j] * (double)v[off + (size_t)j * ld + e];
                    o[off + (size_t)i * ld + e] = (float)acc;
                }
            }
        }
    }
    free(p);
}

void mr_ref_attention_backward(int batch, int heads, int L, int d, float scale, const float *q,
                               const float *k, const float *v, const float *probs,
                               const float *dout, float *dq, float *dk, float *dv) {
    if (batch <= 0 || heads <= 0 || L <= 0 || d <= 0) return;
    const int ld = heads * d;
    const size_t LL = (size_t)L * L;
    double *P = malloc(LL * sizeof(double));
    double *dS = malloc(LL * sizeof(double));
    if (!P || !dS) abort();
    for (int b = 0; b < batch; b++) {
        for (int h = 0; h < heads; h++) {
            const size_t off = (size_t)b * L * ld + (size_t)h * d;
            const float *Q = q + off, *K = k + off, *V = v + off, *dO = dout + off;
            if (probs) {
                const float *pp = probs + ((size_t)b * heads + h) * LL;
                for (size_t t = 0; t < LL; t++) P[t] = pp[t];
            } else {
                for (int i = 0; i < L; i++) ref_probs_row(L, d, ld, scale, Q, K, i, P + (size_t)i * L);
            }
            /* dP = dO V^T; dS = P * (dP - rowsum(dP * P)) */
            for (int i = 0; i < L; i++) {
                double dot = 0.0;
                for (int j = 0; j < L; j++) {
                    double s = 0.0;
                    for (int e = 0; e < d; e++)
                        s += (double)dO[(size_t)i * ld + e] * (double)V[(size_t)j * ld + e];
                    dS[(size_t)i * L + j] = s;
                    dot += s * P[(size_t)i * L + j];
                }
                for (int j = 0; j < L; j++)
                    dS[(size_t)i * L + j] = P[(size_t)i * L + j] * (dS[(size_t)i * L + j] - dot);
            }
            for (int i = 0; i < L; i++) {
                for (int e = 0; e < d; e++) {
                    double aq = 0.0, ak = 0.0, av = 0.0;
                    for (int j = 0; j < L; j++) {
                        aq += dS[(size_t)i * L + j] * (double)K[(size_t)j * ld + e];
                        ak += dS[(size_t)j * L + i] * (double)Q[(size_t)j * ld + e];
                        av += P[(size_t)j * L + i] * (double)dO[(size_t)j * ld + e];
                    }
                    dq[off + (size_t)i * ld + e] = (float)(scale * aq);
                    dk[off + (size_t)i * ld + e] = (float)(scale * ak);
                    dv[off + (size_t)i * ld + e] = (float)av;
                }
            }
        }
    }
    free(P);
    free(dS);
}
