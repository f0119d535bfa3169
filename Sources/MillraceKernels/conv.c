/*
 * 2-D convolution, NCHW, groups = 1, on cblas_sgemm.
 *
 * The pixels of the whole batch form one index space of batch * out_h * out_w columns. It is cut
 * into tiles of n_tile columns (see MR_CONV_TILE_FLOATS); each tile is unfolded (im2col) into a
 * [K, n_tile] column matrix, K = in_c * k_h * k_w, and multiplied by the [out_c, K] weights.
 *  - When a tile lies inside one image, the GEMM writes straight into y (leading dimension
 *    out_h * out_w): no copy.
 *  - When images are small (8x8, 16x16), one tile spans several whole images, so a batch gives
 *    one wide GEMM instead of several thin ones; the result is scattered back to NCHW.
 * 1x1, stride 1, unpadded convolutions use the input as the column matrix directly.
 */
#include "millrace_kernels.h"
#include "conv_workspace.h"

#include <cblas.h>
#include <pthread.h>


#include <stdlib.h>
#include <string.h>

int mr_conv2d_out_h(const mr_conv2d_shape *s) {
    return (s->in_h + s->pad_top + s->pad_bottom - s->k_h) / s->stride + 1;
}

int mr_conv2d_out_w(const mr_conv2d_shape *s) {
    return (s->in_w + s->pad_left + s->pad_right - s->k_w) / s->stride + 1;
}

/* ---- per-thread workspace ---------------------------------------------------------------- */

typedef struct { float *data; size_t cap; } workspace;
static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;

static void ws_free(void *p) {
    workspace *w = p;
    if (w) { free(w->data); free(w); }
}
static void ws_init(void) { pthread_key_create(&ws_key, ws_free); }

/* Returns a buffer of at least n floats owned by the calling thread (NULL if out of memory).
   The direct kernels (conv_direct.c) use it too: a thread runs one convolution at a time, and
   each path takes the buffer only once it no longer needs an earlier one. */
float *mr_conv_workspace(size_t n) {
    pthread_once(&ws_once, ws_init);
    workspace *w = pthread_getspecific(ws_key);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w) return NULL;
        pthread_setspecific(ws_key, w);
    }
    if (w->cap < n) {
        free(w->data);
        size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
        w->data = aligned_alloc(64, bytes);
        w->cap = w->data ? n : 0;
    }
    return w->data;
}

/* ---- tiling -------------------------------------------------------------------------------- */

static long tile_floats = MR_CONV_TILE_FLOATS;
enum { MIN_WIDE = 512 };

void mr_conv2d_set_tile_floats(long floats) {
    tile_floats = floats > 0 ? floats : MR_CONV_TILE_FLOATS;
}

typedef struct {
    int oh, ow, P;     /* output size, pixels per image */
    int K;             /* rows of the column matrix */
    int n_tile;        /* columns per tile */
    int whole_images;  /* 1: a tile is a run of whole images; 0: a tile lies inside one image */
} conv_plan;

static conv_plan make_plan(const mr_conv2d_shape *s) {
    conv_plan p;
    p.oh = mr_conv2d_out_h(s);
    p.ow = mr_conv2d_out_w(s);
    p.P = p.oh * p.ow;
    p.K = s->in_c * s->k_h * s->k_w;
    long cap = tile_floats / (p.K + s->out_c);
    if (cap < 64) cap = 64;
    /* Images of at least MIN_WIDE pixels get their own GEMM (written straight into y); only
       smaller ones are grouped into one wide GEMM, whose result must be scattered back. */
    if (cap >= p.P && p.P < MIN_WIDE) {
        long images = cap / p.P;
        if (images > s->batch) images = s->batch;
        p.n_tile = (int)(images * p.P);
        p.whole_images = 1;
    } else {
        p.n_tile = (int)(cap < p.P ? cap : p.P);
        p.whole_images = 0;
    }
    return p;
}

/* im2col for stride 1 over whole output rows [oy0, oy1): plain loops that the compiler turns
   into vector moves. Rows of small images (8 to 32 floats) are too short for memcpy and memset
   calls to pay off, and a whole-row range needs no division per row. */
#if defined(__clang__)
/* Keep the short zeroing loops as loops: recognised as memset, a pad of one float became a
   library call per row (seen in perf). */
__attribute__((no_builtin("memset")))
#endif
static void im2col_rows_s1(const mr_conv2d_shape *s, const conv_plan *pl, const float *restrict x,
                           int oy0, int oy1, float *restrict col, int ld) {
    const int ih = s->in_h, iw = s->in_w, ow = pl->ow;
    for (int ci = 0; ci < s->in_c; ci++) {
        const float *restrict xc = x + (size_t)ci * ih * iw;
        for (int ky = 0; ky < s->k_h; ky++) {
            for (int kx = 0; kx < s->k_w; kx++) {
                float *restrict dst = col + (size_t)((ci * s->k_h + ky) * s->k_w + kx) * ld;
                const int shift = kx - s->pad_left;
                int lo = -shift, hi = iw - shift;   /* valid ox: 0 <= ox + shift < iw */
                if (lo < 0) lo = 0;
                if (hi > ow) hi = ow;
                if (hi < lo) hi = lo;
                for (int oy = oy0; oy < oy1; oy++) {
                    float *restrict d = dst + (size_t)(oy - oy0) * ow;
                    const int iy = oy - s->pad_top + ky;
                    if (iy < 0 || iy >= ih) {
                        for (int ox = 0; ox < ow; ox++) d[ox] = 0.0f;
                        continue;
                    }
                    const float *restrict row = xc + (size_t)iy * iw + shift;
                    for (int ox = 0; ox < lo; ox++) d[ox] = 0.0f;
                    for (int ox = lo; ox < hi; ox++) d[ox] = row[ox];
                    for (int ox = hi; ox < ow; ox++) d[ox] = 0.0f;
                }
            }
        }
    }
}

/* Unfolds pixels [p0, p0 + n) of one image into col[k * ld + j], j < n. */
static void im2col(const mr_conv2d_shape *s, const conv_plan *pl, const float *x, int p0, int n,
                   float *col, int ld) {
    const int ih = s->in_h, iw = s->in_w, ow = pl->ow, st = s->stride;
    if (st == 1 && p0 % ow == 0 && n % ow == 0) {
        im2col_rows_s1(s, pl, x, p0 / ow, (p0 + n) / ow, col, ld);
        return;
    }
    for (int ci = 0; ci < s->in_c; ci++) {
        const float *xc = x + (size_t)ci * ih * iw;
        for (int ky = 0; ky < s->k_h; ky++) {
            for (int kx = 0; kx < s->k_w; kx++) {
                float *dst = col + (size_t)((ci * s->k_h + ky) * s->k_w + kx) * ld;
                int p = p0, end = p0 + n, j = 0;
                while (p < end) {
                    int oy = p / ow, ox0 = p % ow;
                    int ox1 = ox0 + (end - p);
                    if (ox1 > ow) ox1 = ow;
                    int cnt = ox1 - ox0;
                    int iy = oy * st - s->pad_top + ky;
                    float *d = dst + j;
                    if (iy < 0 || iy >= ih) {
                        memset(d, 0, (size_t)cnt * sizeof(float));
                    } else {
                        const float *row = xc + (size_t)iy * iw;
                        int shift = kx - s->pad_left;
                        if (st == 1) {
                            /* valid ox: 0 <= ox + shift < iw */
                            int lo = -shift, hi = iw - shift;
                            if (lo < ox0) lo = ox0;
                            if (hi > ox1) hi = ox1;
                            if (hi < lo) hi = lo;
                            int a = lo - ox0, b = hi - ox0;
                            if (a > 0) memset(d, 0, (size_t)a * sizeof(float));
                            if (b > a) memcpy(d + a, row + lo + shift, (size_t)(b - a) * sizeof(float));
                            if (cnt > b) memset(d + b, 0, (size_t)(cnt - b) * sizeof(float));
                        } else {
                            for (int ox = ox0; ox < ox1; ox++) {
                                int ix = ox * st + shift;
                                d[ox - ox0] = (ix >= 0 && ix < iw) ? row[ix] : 0.0f;
                            }
                        }
                    }
                    j += cnt;
                    p += cnt;
                }
            }
        }
    }
}

/* Adds col[k * ld + j] back into the image gradient dx (the adjoint of im2col). */
static void col2im(const mr_conv2d_shape *s, const conv_plan *pl, const float *col, int p0, int n,
                   int ld, float *dx) {
    const int ih = s->in_h, iw = s->in_w, ow = pl->ow, st = s->stride;
    for (int ci = 0; ci < s->in_c; ci++) {
        float *dxc = dx + (size_t)ci * ih * iw;
        for (int ky = 0; ky < s->k_h; ky++) {
            for (int kx = 0; kx < s->k_w; kx++) {
                const float *src = col + (size_t)((ci * s->k_h + ky) * s->k_w + kx) * ld;
                int p = p0, end = p0 + n, j = 0;
                while (p < end) {
                    int oy = p / ow, ox0 = p % ow;
                    int ox1 = ox0 + (end - p);
                    if (ox1 > ow) ox1 = ow;
                    int cnt = ox1 - ox0;
                    int iy = oy * st - s->pad_top + ky;
                    if (iy >= 0 && iy < ih) {
                        float *row = dxc + (size_t)iy * iw;
                        const float *sv = src + j;
                        int shift = kx - s->pad_left;
                        if (st == 1) {
                            int lo = -shift, hi = iw - shift;
                            if (lo < ox0) lo = ox0;
                            if (hi > ox1) hi = ox1;
                            for (int ox = lo; ox < hi; ox++) row[ox + shift] += sv[ox - ox0];
                        } else {
                            for (int ox = ox0; ox < ox1; ox++) {
                                int ix = ox * st + shift;
                                if (ix >= 0 && ix < iw) row[ix] += sv[ox - ox0];
                            }
                        }
                    }
                    j += cnt;
                    p += cnt;
                }
            }
        }
    }
}

static int is_pointwise(const mr_conv2d_shape *s) {
    return s->k_h == 1 && s->k_w == 1 && s->stride == 1 && s->pad_top == 0 &&
           s->pad_left == 0 && s->pad_bottom == 0 && s->pad_right == 0;
}

static void add_bias(const mr_conv2d_shape *s, int P, const float *b, float *y) {
    if (!b) return;
    for (int n = 0; n < s->batch; n++)
        for (int c = 0; c < s->out_c; c++) {
            float *yc = y + ((size_t)n * s->out_c + c) * P;
            const float bc = b[c];
            for (int i = 0; i < P; i++) yc[i] += bc;
        }
}

/* ---- forward -------------------------------------------------------------------------------- */

static void conv_forward_serial(const mr_conv2d_shape *s, const float *x, const float *w,
                                const float *b, float *y) {
    conv_plan pl = make_plan(s);
    const size_t x_img = (size_t)s->in_c * s->in_h * s->in_w;
    const size_t y_img = (size_t)s->out_c * pl.P;
    if (pl.P <= 0 || s->batch <= 0) return;
    if (mr_conv2d_direct_applies(s) && mr_conv2d_direct_forward(s, x, w, b, y, 0, s->out_c, 0, pl.P)) return;

    if (is_pointwise(s)) {
        for (int n = 0; n < s->batch; n++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->out_c, pl.P, s->in_c, 1.0f,
                        w, s->in_c, x + n * x_img, pl.P, 0.0f, y + n * y_img, pl.P);
        add_bias(s, pl.P, b, y);
        return;
    }

    float *col = mr_conv_workspace((size_t)(pl.K + s->out_c) * pl.n_tile);
    if (!col) { mr_ref_conv2d_forward(s, x, w, b, y); return; }
    float *tmp = col + (size_t)pl.K * pl.n_tile;

    if (!pl.whole_images) {
        for (int n = 0; n < s->batch; n++) {
            for (int p0 = 0; p0 < pl.P; p0 += pl.n_tile) {
                int cnt = pl.P - p0 < pl.n_tile ? pl.P - p0 : pl.n_tile;
                im2col(s, &pl, x + n * x_img, p0, cnt, col, cnt);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->out_c, cnt, pl.K, 1.0f,
                            w, pl.K, col, cnt, 0.0f, y + n * y_img + p0, pl.P);
            }
        }
    } else {
        int per = pl.n_tile / pl.P;
        for (int n0 = 0; n0 < s->batch; n0 += per) {
            int imgs = s->batch - n0 < per ? s->batch - n0 : per;
            int cols = imgs * pl.P;
            for (int i = 0; i < imgs; i++)
                im2col(s, &pl, x + (n0 + i) * x_img, 0, pl.P, col + (size_t)i * pl.P, cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->out_c, cols, pl.K, 1.0f, w,
                        pl.K, col, cols, 0.0f, tmp, cols);
            for (int i = 0; i < imgs; i++)
                for (int c = 0; c < s->out_c; c++)
                    memcpy(y + (n0 + i) * y_img + (size_t)c * pl.P,
                           tmp + (size_t)c * cols + (size_t)i * pl.P, (size_t)pl.P * sizeof(float));
        }
    }
    add_bias(s, pl.P, b, y);
}

/* ---- backward ------------------------------------------------------------------------------- */

/* Stride 1: dx is the convolution of dy with the kernel flipped and its channels swapped,
   padded by k - 1 - pad. That reuses im2col + GEMM (and the parallel forward path) and avoids the
   scattered adds of col2im. Returns 0 if out of memory (dx untouched). */
static int transposed_input_gradient(const mr_conv2d_shape *s, const conv_plan *pl, const float *w,
                                     const float *dy, float *dx) {
    float *wt = malloc((size_t)s->out_c * s->in_c * s->k_h * s->k_w * sizeof(float));
    if (!wt) return 0;
    const int kk = s->k_h * s->k_w;
    for (int co = 0; co < s->out_c; co++)
        for (int ci = 0; ci < s->in_c; ci++)
            for (int t = 0; t < kk; t++)
                wt[((size_t)ci * s->out_c + co) * kk + (kk - 1 - t)] = w[((size_t)co * s->in_c + ci) * kk + t];
    mr_conv2d_shape ts = *s;
    ts.in_c = s->out_c; ts.in_h = pl->oh; ts.in_w = pl->ow; ts.out_c = s->in_c;
    ts.pad_top = s->k_h - 1 - s->pad_top; ts.pad_bottom = s->k_h - 1 - s->pad_bottom;
    ts.pad_left = s->k_w - 1 - s->pad_left; ts.pad_right = s->k_w - 1 - s->pad_right;
    mr_conv2d_forward(&ts, dy, wt, NULL, dx);
    free(wt);
    return 1;
}

static void conv_backward_serial(const mr_conv2d_shape *s, const float *x, const float *w,
                                 const float *dy, float *dx, float *dw, float *db) {
    conv_plan pl = make_plan(s);
    const size_t x_img = (size_t)s->in_c * s->in_h * s->in_w;
    const size_t y_img = (size_t)s->out_c * pl.P;
    if (pl.P <= 0 || s->batch <= 0) {
        if (dx) memset(dx, 0, (size_t)s->batch * x_img * sizeof(float));
        return;
    }

    if (db) {
        for (int n = 0; n < s->batch; n++)
            for (int c = 0; c < s->out_c; c++) {
                const float *g = dy + n * y_img + (size_t)c * pl.P;
                float acc = 0;
                for (int i = 0; i < pl.P; i++) acc += g[i];
                db[c] += acc;
            }
    }
    if (!dx && !dw) return;

    if (is_pointwise(s)) {
        for (int n = 0; n < s->batch; n++) {
            if (dw)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->out_c, s->in_c, pl.P, 1.0f,
                            dy + n * y_img, pl.P, x + n * x_img, pl.P, 1.0f, dw, s->in_c);
            if (dx)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->in_c, pl.P, s->out_c, 1.0f,
                            w, s->in_c, dy + n * y_img, pl.P, 0.0f, dx + n * x_img, pl.P);
        }
        return;
    }

    int transposed_dx = dx && s->stride == 1 && s->pad_top < s->k_h && s->pad_bottom < s->k_h &&
                        s->pad_left < s->k_w && s->pad_right < s->k_w;
    if (transposed_dx && transposed_input_gradient(s, &pl, w, dy, dx)) dx = NULL;
    if (dw && mr_conv2d_winograd_weight_gradient(s, x, dy, dw)) dw = NULL;
    if (!dw && !dx) return;
    if (dx) memset(dx, 0, (size_t)s->batch * x_img * sizeof(float));  /* col2im adds into it */

    float *col = mr_conv_workspace((size_t)(pl.K + s->out_c) * pl.n_tile);
    if (!col) { mr_ref_conv2d_backward(s, x, w, dy, dx, dw, NULL); return; }
    float *tmp = col + (size_t)pl.K * pl.n_tile;

    if (!pl.whole_images) {
        for (int n = 0; n < s->batch; n++) {
            for (int p0 = 0; p0 < pl.P; p0 += pl.n_tile) {
                int cnt = pl.P - p0 < pl.n_tile ? pl.P - p0 : pl.n_tile;
                const float *g = dy + n * y_img + p0;
                if (dw) {
                    im2col(s, &pl, x + n * x_img, p0, cnt, col, cnt);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->out_c, pl.K, cnt, 1.0f,
                                g, pl.P, col, cnt, 1.0f, dw, pl.K);
                }
                if (dx) {
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, pl.K, cnt, s->out_c, 1.0f,
                                w, pl.K, g, pl.P, 0.0f, col, cnt);
                    col2im(s, &pl, col, p0, cnt, cnt, dx + n * x_img);
                }
            }
        }
    } else {
        int per = pl.n_tile / pl.P;
        for (int n0 = 0; n0 < s->batch; n0 += per) {
            int imgs = s->batch - n0 < per ? s->batch - n0 : per;
            int cols = imgs * pl.P;
            for (int i = 0; i < imgs; i++)
                for (int c = 0; c < s->out_c; c++)
                    memcpy(tmp + (size_t)c * cols + (size_t)i * pl.P,
                           dy + (n0 + i) * y_img + (size_t)c * pl.P, (size_t)pl.P * sizeof(float));
            if (dw) {
                for (int i = 0; i < imgs; i++)
                    im2col(s, &pl, x + (n0 + i) * x_img, 0, pl.P, col + (size_t)i * pl.P, cols);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->out_c, pl.K, cols, 1.0f,
                            tmp, cols, col, cols, 1.0f, dw, pl.K);
            }
            if (dx) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, pl.K, cols, s->out_c, 1.0f, w,
                            pl.K, tmp, cols, 0.0f, col, cols);
                for (int i = 0; i < imgs; i++)
                    col2im(s, &pl, col + (size_t)i * pl.P, 0, pl.P, cols, dx + (n0 + i) * x_img);
            }
        }
    }
}

/* ---- batch split over cores ------------------------------------------------------------ */

typedef struct {
    const mr_conv2d_shape *s;
    const float *x, *w, *b, *dy;
    float *y, *dx, *dw, *db;
    float *private_grads; /* parts - 1 blocks of (dw, db) for the parts other than 0 */
    int parts;
} split_job;

static void part_range(const split_job *j, int part, int *n0, int *n1) {
    *n0 = (int)((long)part * j->s->batch / j->parts);
    *n1 = (int)((long)(part + 1) * j->s->batch / j->parts);
}

static void forward_part(void *ctx, int part) {
    split_job *j = ctx;
    int n0, n1;
    part_range(j, part, &n0, &n1);
    mr_conv2d_shape sub = *j->s;
    sub.batch = n1 - n0;
    const size_t x_img = (size_t)sub.in_c * sub.in_h * sub.in_w;
    const size_t y_img = (size_t)sub.out_c * mr_conv2d_out_h(&sub) * mr_conv2d_out_w(&sub);
    conv_forward_serial(&sub, j->x + n0 * x_img, j->w, j->b, j->y + n0 * y_img);
}

static void backward_part(void *ctx, int part) {
    split_job *j = ctx;
    int n0, n1;
    part_range(j, part, &n0, &n1);
    mr_conv2d_shape sub = *j->s;
    sub.batch = n1 - n0;
    const size_t x_img = (size_t)sub.in_c * sub.in_h * sub.in_w;
    const size_t y_img = (size_t)sub.out_c * mr_conv2d_out_h(&sub) * mr_conv2d_out_w(&sub);
    const size_t wn = (size_t)sub.out_c * sub.in_c * sub.k_h * sub.k_w;
    float *dw = j->dw, *db = j->db;
    if (part > 0) {
        float *mine = j->private_grads + (size_t)(part - 1) * (wn + sub.out_c);
        dw = j->dw ? mine : NULL;
        db = j->db ? mine + wn : NULL;
    }
    conv_backward_serial(&sub, j->x + n0 * x_img, j->w, j->dy + n0 * y_img,
                         j->dx ? j->dx + n0 * x_img : NULL, dw, db);
}

/* ---- splitting one image (batch smaller than the number of parts) ------------------------ */

typedef struct {
    const mr_conv2d_shape *s;
    const conv_plan *pl;
    const float *x, *w, *b, *dy;
    float *y, *dw, *private_dw;
    int parts, by_channels;
} intra_job;

/* Part p handles pixel chunk p of every image (or output channels [co0, co1) by_channels). */
static void intra_forward_part(void *ctx, int part) {
    intra_job *j = ctx;
    const mr_conv2d_shape *s = j->s;
    const conv_plan *pl = j->pl;
    const size_t x_img = (size_t)s->in_c * s->in_h * s->in_w, y_img = (size_t)s->out_c * pl->P;
    const int direct = mr_conv2d_direct_applies(s);
    if (j->by_channels) {
        int co0 = (int)((long)part * s->out_c / j->parts), co1 = (int)((long)(part + 1) * s->out_c / j->parts);
        if (co1 <= co0) return;
        if (direct && mr_conv2d_direct_forward(s, j->x, j->w, j->b, j->y, co0, co1, 0, pl->P)) return;
        /* a 1x1 convolution's unfolded input is the input itself: no copy */
        const int pointwise = is_pointwise(s);
        float *col = pointwise ? NULL : mr_conv_workspace((size_t)pl->K * pl->P);
        if (!pointwise && !col) return;
        for (int n = 0; n < s->batch; n++) {
            if (!pointwise) im2col(s, pl, j->x + n * x_img, 0, pl->P, col, pl->P);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, co1 - co0, pl->P, pl->K, 1.0f,
                        j->w + (size_t)co0 * pl->K, pl->K, pointwise ? j->x + n * x_img : col, pl->P, 0.0f,
                        j->y + n * y_img + (size_t)co0 * pl->P, pl->P);
            if (j->b)
                for (int c = co0; c < co1; c++)
                    for (int i = 0; i < pl->P; i++) j->y[n * y_img + (size_t)c * pl->P + i] += j->b[c];
        }
        return;
    }
    int c0 = (int)((long)part * pl->P / j->parts), c1 = (int)((long)(part + 1) * pl->P / j->parts);
    if (direct) {
        /* chunk ends on multiples of 16 pixels (the direct kernel's vectors) */
        c0 &= ~15;
        c1 = part == j->parts - 1 ? pl->P : (c1 & ~15);
        if (c1 <= c0 || mr_conv2d_direct_forward(s, j->x, j->w, j->b, j->y, 0, s->out_c, c0, c1)) return;
    }
    if (c1 <= c0) return;
    int tile = pl->n_tile < c1 - c0 ? pl->n_tile : c1 - c0;
    const int pointwise = is_pointwise(s);
    float *col = pointwise ? NULL : mr_conv_workspace((size_t)pl->K * tile);
    if (!pointwise && !col) return;
    for (int n = 0; n < s->batch; n++) {
        for (int p0 = c0; p0 < c1; p0 += tile) {
            int cnt = c1 - p0 < tile ? c1 - p0 : tile;
            if (pointwise) {  /* columns p0 .. p0 + cnt of the input, read in place */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->out_c, cnt, pl->K, 1.0f, j->w,
                            pl->K, j->x + n * x_img + p0, pl->P, 0.0f, j->y + n * y_img + p0, pl->P);
                continue;
            }
            im2col(s, pl, j->x + n * x_img, p0, cnt, col, cnt);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->out_c, cnt, pl->K, 1.0f, j->w,
                        pl->K, col, cnt, 0.0f, j->y + n * y_img + p0, pl->P);
        }
        if (j->b)
            for (int c = 0; c < s->out_c; c++)
                for (int i = c0; i < c1; i++) j->y[n * y_img + (size_t)c * pl->P + i] += j->b[c];
    }
}

/* Weight gradient of part p: pixel chunk p into its own buffer (part 0: straight into dw), or
   output-channel rows [co0, co1) of dw directly (by_channels; rows are disjoint). */
static void intra_dw_part(void *ctx, int part) {
    intra_job *j = ctx;
    const mr_conv2d_shape *s = j->s;
    const conv_plan *pl = j->pl;
    const size_t x_img = (size_t)s->in_c * s->in_h * s->in_w, y_img = (size_t)s->out_c * pl->P;
    if (j->by_channels) {
        int co0 = (int)((long)part * s->out_c / j->parts), co1 = (int)((long)(part + 1) * s->out_c / j->parts);
        if (co1 <= co0) return;
        float *col = mr_conv_workspace((size_t)pl->K * pl->P);
        if (!col) return;
        for (int n = 0; n < s->batch; n++) {
            im2col(s, pl, j->x + n * x_img, 0, pl->P, col, pl->P);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, co1 - co0, pl->K, pl->P, 1.0f,
                        j->dy + n * y_img + (size_t)co0 * pl->P, pl->P, col, pl->P, 1.0f,
                        j->dw + (size_t)co0 * pl->K, pl->K);
        }
        return;
    }
    float *dw = part == 0 ? j->dw : j->private_dw + (size_t)(part - 1) * s->out_c * pl->K;
    int c0 = (int)((long)part * pl->P / j->parts), c1 = (int)((long)(part + 1) * pl->P / j->parts);
    if (c1 <= c0) return;
    int tile = pl->n_tile < c1 - c0 ? pl->n_tile : c1 - c0;
    float *col = mr_conv_workspace((size_t)pl->K * tile);
    if (!col) return;
    for (int n = 0; n < s->batch; n++)
        for (int p0 = c0; p0 < c1; p0 += tile) {
            int cnt = c1 - p0 < tile ? c1 - p0 : tile;
            im2col(s, pl, j->x + n * x_img, p0, cnt, col, cnt);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->out_c, pl->K, cnt, 1.0f,
                        j->dy + n * y_img + p0, pl->P, col, cnt, 1.0f, dw, pl->K);
        }
}

/* Small images split by output channels, larger ones by pixel chunks of at least 128. */
static int split_by_channels(const conv_plan *pl, int parts) { return pl->P / parts < 128; }

/* ---- Winograd (conv_winograd.c): the batch's tiles shared out evenly over the parts ------- */

typedef struct {
    const mr_conv2d_shape *s;
    const float *x, *u, *b;
    float *y;
    int tiles, parts, by_channels, failed[64];
} winograd_job;

/* Part p takes an even share of the tiles, or, when that share would be small (fewer than 64
   tiles: an 8x8 or 16x16 image alone), all the tiles of a share of the output channels, so that
   each part reads only its own rows of the transformed weights. */
static void winograd_part(void *ctx, int part) {
    winograd_job *j = ctx;
    int ok;
    if (j->by_channels) {
        /* whole blocks of 6 channels (the transformed weights are stored by such blocks) */
        const int K = j->s->out_c, blocks = (K + 5) / 6;
        const int k0 = 6 * (int)((long)part * blocks / j->parts);
        int k1 = 6 * (int)((long)(part + 1) * blocks / j->parts);
        if (k1 > K) k1 = K;
        ok = mr_conv2d_winograd_forward(j->s, j->x, j->u, j->b, j->y, 0, j->tiles, k0, k1);
    } else {
        const int t0 = (int)((long)part * j->tiles / j->parts), t1 = (int)((long)(part + 1) * j->tiles / j->parts);
        ok = mr_conv2d_winograd_forward(j->s, j->x, j->u, j->b, j->y, t0, t1, 0, j->s->out_c);
    }
    if (!ok) j->failed[part] = 1;
}

/* 1 when done; 0 (y untouched or to be rewritten) when Winograd does not apply or memory ran out. */
static int winograd_forward(const mr_conv2d_shape *s, const float *x, const float *w, const float *u,
                            const float *b, float *y) {
    if (!mr_conv2d_winograd_applies(s)) return 0;
    float *own = NULL;
    if (!u) {
        own = malloc(mr_conv2d_winograd_weights_count(s) * sizeof(float));
        if (!own) return 0;
        mr_conv2d_winograd_weights(s, w, own);
        u = own;
    }
    int parts = mr_parallel_parts();
    if (parts > 64) parts = 64;
    const int tiles = mr_conv2d_winograd_tiles(s);
    winograd_job j = {s, x, u, b, y, tiles, parts, tiles / parts < 64 && s->out_c >= 12 * parts, {0}};
    if (parts <= 1) winograd_part(&j, 0);
    else mr_run_parts(parts, winograd_part, &j);
    free(own);
    for (int p = 0; p < parts; p++)
        if (j.failed[p]) return 0;
    return 1;
}

void mr_conv2d_forward(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                       float *y) {
    mr_conv2d_forward_prepared(s, x, w, NULL, b, y);
}

void mr_conv2d_forward_prepared(const mr_conv2d_shape *s, const float *x, const float *w, const float *u,
                                const float *b, float *y) {
    if (s->batch > 0 && winograd_forward(s, x, w, u, b, y)) return;
    int parts = mr_parallel_parts();
    conv_plan pl = make_plan(s);
    if (parts <= 1 || pl.P <= 0 || s->batch <= 0) {
        conv_forward_serial(s, x, w, b, y);
        return;
    }
    /* Whole images are shared out evenly; the images left over when the batch does not divide
       (one of three on two cores) are each split across all the parts, so that no core idles
       while another finishes an extra image. */
    const int whole = s->batch - s->batch % parts;
    if (whole > 0) {
        mr_conv2d_shape head = *s;
        head.batch = whole;
        split_job j = {&head, x, w, b, NULL, y, NULL, NULL, NULL, NULL, parts};
        mr_run_parts(parts, forward_part, &j);
    }
    if (whole < s->batch) {
        mr_conv2d_shape tail = *s;
        tail.batch = s->batch - whole;
        const size_t x_img = (size_t)s->in_c * s->in_h * s->in_w, y_img = (size_t)s->out_c * pl.P;
        intra_job j = {&tail, &pl, x + whole * x_img, w, b, NULL, y + whole * y_img, NULL, NULL, parts,
                       split_by_channels(&pl, parts)};
        mr_run_parts(parts, intra_forward_part, &j);
    }
}

void mr_conv2d_backward(const mr_conv2d_shape *s, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db) {
    int parts = mr_parallel_parts();
    conv_plan pl = make_plan(s);
    const size_t wn = (size_t)s->out_c * s->in_c * s->k_h * s->k_w;
    if (parts <= 1 || pl.P <= 0 || s->batch <= 0) {
        conv_backward_serial(s, x, w, dy, dx, dw, db);
        return;
    }
    if (s->batch >= parts) {
        float *priv = calloc((size_t)(parts - 1) * (wn + s->out_c), sizeof(float));
        if (!priv) { conv_backward_serial(s, x, w, dy, dx, dw, db); return; }
        split_job j = {s, x, w, NULL, dy, NULL, dx, dw, db, priv, parts};
        mr_run_parts(parts, backward_part, &j);
        for (int p = 1; p < parts; p++) {  /* fixed order: results do not depend on timing */
            const float *mine = priv + (size_t)(p - 1) * (wn + s->out_c);
            if (dw) for (size_t i = 0; i < wn; i++) dw[i] += mine[i];
            if (db) for (int i = 0; i < s->out_c; i++) db[i] += mine[wn + i];
        }
        free(priv);
        return;
    }
    /* One image (fewer images than parts): dx through the parallel forward path when the
       transposed form applies, dw split by pixel chunks or channels, db serially. */
    int transposed = s->stride == 1 && s->pad_top < s->k_h && s->pad_bottom < s->k_h &&
                     s->pad_left < s->k_w && s->pad_right < s->k_w;
    if (!transposed) { conv_backward_serial(s, x, w, dy, dx, dw, db); return; }
    conv_backward_serial(s, x, w, dy, NULL, NULL, db);  /* db only */
    if (dw) {
        int by_channels = split_by_channels(&pl, parts);
        float *priv = by_channels ? NULL : calloc((size_t)(parts - 1) * wn, sizeof(float));
        if (!by_channels && !priv) { conv_backward_serial(s, x, w, dy, NULL, dw, NULL); }
        else {
            intra_job j = {s, &pl, x, w, NULL, dy, NULL, dw, priv, parts, by_channels};
            mr_run_parts(parts, intra_dw_part, &j);
            for (int p = 1; priv && p < parts; p++)
                for (size_t i = 0; i < wn; i++) dw[i] += priv[(size_t)(p - 1) * wn + i];
            free(priv);
        }
    }
    if (dx && !transposed_input_gradient(s, &pl, w, dy, dx)) conv_backward_serial(s, x, w, dy, dx, NULL, NULL);
}

/* ---- reference ------------------------------------------------------------------------------ */

void mr_ref_conv2d_forward(const mr_conv2d_shape *s, const float *x, const float *w,
                           const float *b, float *y) {
    const int oh = mr_conv2d_out_h(s), ow = mr_conv2d_out_w(s);
    for (int n = 0; n < s->batch; n++)
        for (int co = 0; co < s->out_c; co++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    double acc = b ? b[co] : 0.0;
                    for (int ci = 0; ci < s->in_c; ci++)
                        for (int ky = 0; ky < s->k_h; ky++)
                            for (int kx = 0; kx < s->k_w; kx++) {
                                int iy = oy * s->stride - s->pad_top + ky;
                                int ix = ox * s->stride - s->pad_left + kx;
                                if (iy < 0 || iy >= s->in_h || ix < 0 || ix >= s->in_w) continue;
                                acc += (double)x[((size_t)(n * s->in_c + ci) * s->in_h + iy) * s->in_w + ix] *
                                       w[((size_t)(co * s->in_c + ci) * s->k_h + ky) * s->k_w + kx];
                            }
                    y[((size_t)(n * s->out_c + co) * oh + oy) * ow + ox] = (float)acc;
                }
}

void mr_ref_conv2d_backward(const mr_conv2d_shape *s, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db) {
    const int oh = mr_conv2d_out_h(s), ow = mr_conv2d_out_w(s);
    if (dx) memset(dx, 0, (size_t)s->batch * s->in_c * s->in_h * s->in_w * sizeof(float));
    for (int n = 0; n < s->batch; n++)
        for (int co = 0; co < s->out_c; co++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    float g = dy[((size_t)(n * s->out_c + co) * oh + oy) * ow + ox];
                    if (db) db[co] += g;
                    for (int ci = 0; ci < s->in_c; ci++)
                        for (int ky = 0; ky < s->k_h; ky++)
                            for (int kx = 0; kx < s->k_w; kx++) {
                                int iy = oy * s->stride - s->pad_top + ky;
                                int ix = ox * s->stride - s->pad_left + kx;
                                if (iy < 0 || iy >= s->in_h || ix < 0 || ix >= s->in_w) continue;
                                size_t xi = ((size_t)(n * s->in_c + ci) * s->in_h + iy) * s->in_w + ix;
                                size_t wi = ((size_t)(co * s->in_c + ci) * s->k_h + ky) * s->k_w + kx;
                                if (dx) dx[xi] += g * w[wi];
                                if (dw) dw[wi] += g * x[xi];
                            }
                }
}
