/*
 * millrace_kernels.h — the C kernel library under Millrace.
 *
 * Read this file as the manual. Every op states the shapes of its arguments. Conventions:
 *
 *  - All tensors are contiguous float32, row-major. Feature maps are NCHW: [B, C, H, W], and
 *    "HW" means H*W. A weight of a linear layer is [out, in] (PyTorch's layout).
 *  - Outputs are overwritten, except parameter gradients (dw, db, dgamma, dbeta), which are
 *    ACCUMULATED (+=) so that a caller can sum gradients over calls. Zero them before a step.
 *  - A pointer documented as "nullable" may be NULL: that output is not computed.
 *  - Every fast op `mr_X` has a plain reference `mr_ref_X` with the same arguments, written as the
 *    definition reads (nested loops, double accumulators where it matters). Tests compare the two;
 *    the references are not meant to be fast.
 *  - Nothing here allocates memory that outlives a call, except the per-thread convolution
 *    workspace (see mr_conv2d_forward), which is bounded and reused. Attention allocates a
 *    bounded scratch buffer within a call (see mr_attention_forward).
 *  - exp in the fast SiLU, GroupNorm + SiLU, softmax and attention is a vectorised approximation
 *    (relative error <= 1e-6, see mr_exp_approx); the references use libm.
 *
 * Threads: see mr_set_threads. Convolutions split over Millrace's pool; the other kernels run on
 * the calling thread. Pipelines above serialise model calls on one lock.
 */
#ifndef MILLRACE_KERNELS_H
#define MILLRACE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * CPU features, threads
 * ------------------------------------------------------------------------------------------ */

/** 1 if the CPU and the OS support AVX-512F (zmm state enabled in XCR0), else 0. */
int mr_cpu_has_avx512f(void);
/** 1 if the CPU and the OS support AVX2 and FMA, else 0. */
int mr_cpu_has_avx2_fma(void);
/** The name of the kernel set OpenBLAS chose when it loaded ("Haswell", "SkylakeX", ...). */
const char *mr_blas_corename(void);
/**
 * Threads. Millrace's worker pool owns the cores: kernels split their work into
 * mr_get_threads() parts (default: the number of online CPUs), each part calling single-threaded
 * BLAS. OpenBLAS itself is set to one thread when the library loads and stays there: its results
 * depend on its thread count (different roundings), so leaving it fixed keeps every result
 * reproducible, whatever else the process is doing.
 */
int mr_get_threads(void);
/** Sets the number of parts kernels split work into (1 .. 16). */
void mr_set_threads(int n);
/** Marks the calling thread serial (1): kernels called from it do not split (for callers that
 *  are themselves one of several parallel workers, such as data-parallel training). */
void mr_set_thread_serial(int serial);
/** Whether the calling thread is marked serial (mr_set_thread_serial), whatever mr_get_threads() is. */
int mr_thread_serial(void);
/** Parts the calling thread's kernels split into: 1 on a serial thread, else mr_get_threads(). */
int mr_parallel_parts(void);
/** Makes glibc keep freed memory (up to blocks of 32 MB, and a freed heap of up to 1 GB) for
    reuse instead of returning it to the kernel: a training loop, which frees and reallocates the
    same activations every step, then stops paying page faults for them. Process-wide; the memory
    a process has held stays held. No effect without glibc. */
void mr_keep_freed_memory(void);
/** OpenBLAS's own thread count, for measuring its multi-threaded sgemm peak only. */
void mr_set_blas_threads(int n);
int mr_get_blas_threads(void);

/**
 * OpenBLAS picks its kernels when the library loads, before main(). Debian's 0.3.21 does not know
 * newer AMD CPUs with AVX-512 and falls back to its AVX2 kernels there. When the CPU has AVX-512F,
 * OPENBLAS_CORETYPE is unset and the loaded core is not an AVX-512 one, this sets
 * OPENBLAS_CORETYPE=SKYLAKEX and re-executes the running program (/proc/self/exe) with the same
 * arguments; it returns only when nothing needs doing, or when the re-exec failed.
 * Set MILLRACE_NO_REEXEC=1 to turn it off.
 */
void mr_prefer_avx512_blas(int argc, char **argv);

/**
 * Runs fn(ctx, part) for part = 0 .. parts - 1 concurrently: part 0 on the calling thread, the
 * others on persistent parked worker threads; returns when all have finished. One parallel
 * region runs at a time (a second caller waits).
 */
void mr_run_parts(int parts, void (*fn)(void *ctx, int part), void *ctx);

/** c[m, n] = a[m, k] · b[k, n] through cblas_sgemm (benchmarks use it for the machine's peak). */
void mr_sgemm(int m, int n, int k, const float *a, const float *b, float *c);

/* ------------------------------------------------------------------------------------------
 * Convolution (groups = 1)
 * ------------------------------------------------------------------------------------------ */

/**
 * Shape of a 2-D convolution, NCHW.
 *   x: [batch, in_c, in_h, in_w]   w: [out_c, in_c, k_h, k_w]   b: [out_c]
 *   y: [batch, out_c, out_h, out_w] with
 *      out_h = (in_h + pad_top + pad_bottom - k_h) / stride + 1   (integer division)
 *      out_w = (in_w + pad_left + pad_right - k_w) / stride + 1
 * Padding is zeros and may differ per side (diffusers' Downsample2D with padding 0 pads only the
 * bottom and right by one).
 */
typedef struct mr_conv2d_shape {
    int batch, in_c, in_h, in_w;
    int out_c, k_h, k_w;
    int stride;
    int pad_top, pad_left, pad_bottom, pad_right;
} mr_conv2d_shape;

int mr_conv2d_out_h(const mr_conv2d_shape *s);
int mr_conv2d_out_w(const mr_conv2d_shape *s);

/**
 * Largest workspace (in floats) one convolution call uses, per calling thread: the column tile
 * [K, n_tile] plus the output tile [out_c, n_tile], K = in_c*k_h*k_w, where n_tile (pixels of
 * the batch handled per GEMM) is chosen so that (K + out_c) * n_tile <= MR_CONV_TILE_FLOATS,
 * and at least 64 pixels. So memory stays bounded however large the image: at most
 * max(MR_CONV_TILE_FLOATS, 64 * (K + out_c)) floats (16 MiB at the default).
 */
#define MR_CONV_TILE_FLOATS (1 << 22)

/**
 * Overrides the tile budget (in floats) for the calling process; 0 restores MR_CONV_TILE_FLOATS.
 * Tests use a small budget to exercise tiles that split an image.
 */
void mr_conv2d_set_tile_floats(long floats);

/**
 * y = conv2d(x, w) + b.  b nullable (no bias).
 * Implementation: 3x3 padding-1 convolutions with enough channels and tiles run Winograd
 * F(2x2, 3x3) where the CPU has AVX-512F (see mr_conv2d_winograd_applies); the other stride-1
 * convolutions whose output is as large as the input run the direct kernel there (see
 * mr_conv2d_direct_applies). The others, and every
 * convolution on other CPUs: im2col over a tile of pixels of the whole batch, one cblas_sgemm
 * per tile ([out_c, K] x [K, n_tile]); 1x1 stride-1 unpadded convolutions skip im2col.
 * Threads: the work is split over mr_parallel_parts() parts (mr_run_parts): whole images evenly
 * by images, and the images left over when the batch does not divide (or a batch smaller than
 * the parts) by pixel tiles of the image or, for small images, by output channels, so an odd
 * batch still keeps every core busy. Each part is computed exactly as it would be serially, and
 * the weight and bias gradients of the parts are added in part order, so results do not depend
 * on timing. (On the im2col + sgemm path an image's result may differ in rounding between the
 * two splits: a batch of 3 does not give bit-for-bit the images of a batch of 2 plus a batch of
 * 1. The direct kernel sums every output in one fixed order, so there it does.)
 */
void mr_conv2d_forward(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                       float *y);
/**
 * Direct convolution (conv_direct.c): stride-1 convolutions whose output is as large as the input
 * (3x3 with padding 1 and the like) computed straight from the input, with no im2col and no GEMM
 * packing. Two kernels: AVX-512F (masked vector loads from the flat input plane), taken by default
 * where the CPU has it; AVX2 + FMA (from a zero-padded copy of each image), taken only when asked
 * for, because on AVX2-only CPUs im2col + OpenBLAS's Haswell sgemm measured faster.
 * mr_conv2d_direct_applies says whether a shape takes the direct path (on this CPU, in this mode);
 * mr_conv2d_direct_kernel says which kernel runs now: 512, 256 (AVX2) or 0 (none).
 * mr_conv2d_set_direct(mode): 0 off (im2col + sgemm everywhere), 1 the AVX-512 kernel where the
 * CPU has it (the default), 2 the AVX2 kernel (where the CPU has AVX2 + FMA). Process-wide.
 * mr_conv2d_direct_forward computes output channels [co0, co1) and flat pixels [p0, p1) (p0 a
 * multiple of 16) of every image of the batch; it returns 0, leaving y untouched, when out of
 * memory or when no kernel runs. Each output element is summed in one fixed order (taps, then
 * input channels) whatever the batch, tile or split.
 */
int mr_conv2d_direct_applies(const mr_conv2d_shape *s);
int mr_conv2d_direct_kernel(void);
void mr_conv2d_set_direct(int on);
int mr_conv2d_direct_forward(const mr_conv2d_shape *s, const float *x, const float *w, const float *b,
                             float *y, int co0, int co1, int p0, int p1);
/**
 * Winograd F(2x2, 3x3) (conv_winograd.c): 3x3, stride-1, padding-1 convolutions with at least 16
 * input and 16 output channels and 32 2x2 tiles in the call (two 8x8 images), on CPUs with
 * AVX-512F, with 16 multiplies per 2x2 outputs instead of 36. mr_conv2d_forward takes it first
 * wherever it applies; mr_conv2d_set_winograd(0) turns it off process-wide (benchmarks compare),
 * mr_conv2d_winograd_applies says whether a shape takes it. The weights are transformed to U (16 x
 * out_c x in_c values, mr_conv2d_winograd_weights_count floats) by mr_conv2d_winograd_weights;
 * mr_conv2d_forward_prepared takes a U the caller keeps for fixed weights (NULL: transformed per
 * call); its layout is private to conv_winograd.c (blocks of 6 output channels).
 * mr_conv2d_winograd_forward computes output channels [co0, co1) (co0 a multiple of 6) of the 2x2
 * output tiles [t0, t1) of the batch (tile t: image t / tpi, then row-major over the ceil(H/2) x
 * ceil(W/2) tiles of an image; mr_conv2d_winograd_tiles counts them) on the calling thread; it
 * returns 0 when it does not apply or memory ran out. An image's result does not depend on its
 * batch position or the split over cores; it can depend on the batch size where the tile count
 * crosses the threshold (one 8x8 image runs the direct kernel, two run Winograd).
 */
int mr_conv2d_winograd_applies(const mr_conv2d_shape *s);
void mr_conv2d_set_winograd(int on);
int mr_conv2d_winograd_enabled(void);
size_t mr_conv2d_winograd_weights_count(const mr_conv2d_shape *s);
void mr_conv2d_winograd_weights(const mr_conv2d_shape *s, const float *w, float *u);
void mr_ref_conv2d_winograd_weights(const mr_conv2d_shape *s, const float *w, float *u); /* plain twin */
int mr_conv2d_winograd_tiles(const mr_conv2d_shape *s);
int mr_conv2d_winograd_forward(const mr_conv2d_shape *s, const float *x, const float *u, const float *b,
                               float *y, int t0, int t1, int co0, int co1);
/* dw += the weight gradient of a convolution Winograd applies to, for the whole batch on the calling
   thread (the backward pass takes it there); 0 when it does not apply or memory ran out. */
int mr_conv2d_winograd_weight_gradient(const mr_conv2d_shape *s, const float *x, const float *dy, float *dw);
void mr_conv2d_forward_prepared(const mr_conv2d_shape *s, const float *x, const float *w, const float *u,
                                const float *b, float *y);
/**
 * Gradients of mr_conv2d_forward given dy: [batch, out_c, out_h, out_w].
 *   dx: [batch, in_c, in_h, in_w]  overwritten; nullable
 *   dw: [out_c, in_c, k_h, k_w]    accumulated; nullable
 *   db: [out_c]                    accumulated; nullable
 */
void mr_conv2d_backward(const mr_conv2d_shape *s, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db);

void mr_ref_conv2d_forward(const mr_conv2d_shape *s, const float *x, const float *w,
                           const float *b, float *y);
void mr_ref_conv2d_backward(const mr_conv2d_shape *s, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db);

/* ------------------------------------------------------------------------------------------
 * Linear
 * ------------------------------------------------------------------------------------------ */

/**
 * y[n, out] = x[n, in] · w[out, in]^T + b[out].   b nullable.
 */
void mr_linear_forward(int n, int in, int out, const float *x, const float *w, const float *b,
                       float *y);
/**
 * dx[n, in] = dy · w (overwritten, nullable); dw[out, in] += dy^T · x (nullable);
 * db[out] += column sums of dy (nullable).
 */
void mr_linear_backward(int n, int in, int out, const float *x, const float *w, const float *dy,
                        float *dx, float *dw, float *db);

void mr_ref_linear_forward(int n, int in, int out, const float *x, const float *w,
                           const float *b, float *y);
void mr_ref_linear_backward(int n, int in, int out, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db);

/* ------------------------------------------------------------------------------------------
 * GroupNorm, SiLU
 * ------------------------------------------------------------------------------------------ */

/**
 * GroupNorm over x: [batch, channels, hw], `groups` dividing `channels`.
 * For each (b, g): mean and variance (biased) over its channels/groups * hw values;
 *   y = (x - mean) * rstd * gamma[c] + beta[c],  rstd = 1 / sqrt(var + eps).
 *   gamma, beta: [channels], each nullable: NULL means all ones (gamma) / all zeros (beta).
 *   mean, rstd: [batch, groups], written (nullable) for backward.
 * If `fuse_silu` is nonzero, y = silu(groupnorm(x)) instead (the common GroupNorm -> SiLU pair).
 * y may equal x (in place).
 */
void mr_group_norm_forward(int batch, int channels, int hw, int groups, float eps, const float *x,
                           const float *gamma, const float *beta, float *y, float *mean,
                           float *rstd, int fuse_silu);
/**
 * Backward of the un-fused GroupNorm given the saved mean and rstd.
 *   gamma: [channels], nullable (NULL means all ones, as in the forward).
 *   dx: [batch, channels, hw] overwritten (nullable); it may equal dy (in place).
 *   dgamma, dbeta: [channels] accumulated (+=), each nullable.
 */
void mr_group_norm_backward(int batch, int channels, int hw, int groups, const float *x,
                            const float *gamma, const float *mean, const float *rstd,
                            const float *dy, float *dx, float *dgamma, float *dbeta);

void mr_ref_group_norm_forward(int batch, int channels, int hw, int groups, float eps,
                               const float *x, const float *gamma, const float *beta, float *y,
                               float *mean, float *rstd, int fuse_silu);
void mr_ref_group_norm_backward(int batch, int channels, int hw, int groups, const float *x,
                                const float *gamma, const float *mean, const float *rstd,
                                const float *dy, float *dx, float *dgamma, float *dbeta);

/** y[i] = x[i] * sigmoid(x[i]), i < n.  y may equal x.  sigmoid through mr_exp_approx's exp. */
void mr_silu_forward(size_t n, const float *x, float *y);
/** dx[i] = dy[i] * (s + x s (1 - s)), s = sigmoid(x[i]).  dx may equal dy. */
void mr_silu_backward(size_t n, const float *x, const float *dy, float *dx);
void mr_ref_silu_forward(size_t n, const float *x, float *y);
void mr_ref_silu_backward(size_t n, const float *x, const float *dy, float *dx);

/* ------------------------------------------------------------------------------------------
 * Resampling
 * ------------------------------------------------------------------------------------------ */

/** Nearest 2x upsample: x [planes, h, w] -> y [planes, 2h, 2w], y[p, i, j] = x[p, i/2, j/2]. */
void mr_upsample_nearest2x_forward(int planes, int h, int w, const float *x, float *y);
/** dx [planes, h, w] (overwritten) = sum of the 4 entries of dy [planes, 2h, 2w] each feeds. */
void mr_upsample_nearest2x_backward(int planes, int h, int w, const float *dy, float *dx);
void mr_ref_upsample_nearest2x_forward(int planes, int h, int w, const float *x, float *y);
void mr_ref_upsample_nearest2x_backward(int planes, int h, int w, const float *dy, float *dx);

/* ------------------------------------------------------------------------------------------
 * Softmax and attention
 * ------------------------------------------------------------------------------------------ */

/** Row softmax: x, y [rows, n]; y may equal x.  Subtracts the row max first, then exp as in
 *  mr_exp_approx (an entry more than 87.683 below its row max becomes exactly 0). */
void mr_softmax_forward(int rows, int n, const float *x, float *y);
/** Given y = softmax(x) and dy: dx[r, i] = y[r, i] * (dy[r, i] - sum_j dy[r, j] y[r, j]).
 *  dx may equal y or dy (each row's sum is taken before the row is written). */
void mr_softmax_backward(int rows, int n, const float *y, const float *dy, float *dx);
void mr_ref_softmax_forward(int rows, int n, const float *x, float *y);
void mr_ref_softmax_backward(int rows, int n, const float *y, const float *dy, float *dx);

/**
 * Multi-head scaled dot-product attention over the L pixels of a feature map, in the layout that
 * the q/k/v projections produce: q, k, v, o: [batch, L, heads * d], head h of token l occupying
 * columns h*d .. h*d + d - 1.  For each (b, h):
 *   P = softmax(scale · Q K^T)  [L, L],   O = P V.
 * probs: [batch, heads, L, L], nullable; written when non-NULL (backward can reuse it).
 * Scratch: when probs is NULL, the scores are computed in blocks of rows in a buffer of at most
 * max(2^20, L) floats (4 MiB while L <= 2^20), malloc'ed and freed within the call (on malloc
 * failure the block is halved; the call aborts if even one row, L floats, cannot be had).
 * With probs non-NULL the forward allocates nothing.
 */
void mr_attention_forward(int batch, int heads, int L, int d, float scale, const float *q,
                          const float *k, const float *v, float *o, float *probs);
/**
 * The forward on the channels-first layout: q, k, v, o [batch, heads * d, L] (an image's NCHW
 * activations with the pixels as tokens; head h is channels h*d .. h*d + d - 1), so an attention
 * block needs no transposes. No probabilities are kept (inference); the scores are computed in
 * blocks of query columns with the forward's scratch rule. Agrees with mr_attention_forward to
 * rounding (other GEMM transposes); over the pool by (image, head) pairs.
 */
void mr_attention_forward_cf(int batch, int heads, int L, int d, float scale, const float *q,
                             const float *k, const float *v, float *o);
/**
 * Backward given dO: [batch, L, heads * d] and the probs saved by the forward, or probs = NULL:
 * then P is recomputed from q and k, a block of rows at a time, by the forward's GEMM and
 * softmax (trading that compute for the [batch, heads, L, L] of memory probs takes).
 * dq, dk, dv: [batch, L, heads * d], overwritten.
 * Scratch, malloc'ed and freed within every call: one buffer (dP) of at most max(2^20, L) floats,
 * two (dP and P) when probs is NULL, so at most 2 * max(2^20, L) floats (8 MiB while
 * L <= 2^20); the same halving / abort rule as the forward.
 */
void mr_attention_backward(int batch, int heads, int L, int d, float scale, const float *q,
                           const float *k, const float *v, const float *probs, const float *dout,
                           float *dq, float *dk, float *dv);
void mr_ref_attention_forward(int batch, int heads, int L, int d, float scale, const float *q,
                              const float *k, const float *v, float *o, float *probs);
void mr_ref_attention_backward(int batch, int heads, int L, int d, float scale, const float *q,
                               const float *k, const float *v, const float *probs,
                               const float *dout, float *dq, float *dk, float *dv);

/* ------------------------------------------------------------------------------------------
 * Elementwise, layout
 * ------------------------------------------------------------------------------------------ */

/**
 * y[i] ≈ e^x[i], i < n; y may equal x.  The vectorised approximation that the fast SiLU,
 * GroupNorm + SiLU, softmax and attention use (exposed for tests and benchmarks).
 *   x in [-87.33, 88.37]:  relative error <= 1e-6 (2.2e-7 measured over every float there)
 *   x in [-87.683, -87.33): a denormal, e^x to within the precision denormals have
 *   x < -87.683, -inf:     0 (where e^x < 8.32e-39)
 *   x > 88.37, +inf:       e^88.37 ≈ 2.4e38, finite (expf gives up to 3.4e38, +inf from 88.73)
 *   NaN:                   NaN
 */
void mr_exp_approx(size_t n, const float *x, float *y);

/** y = a + b, n elements. y may alias a or b. */
void mr_add(size_t n, const float *a, const float *b, float *y);
/** y = a * b, n elements. y may alias a or b. */
void mr_mul(size_t n, const float *a, const float *b, float *y);
/** y += alpha * x, n elements. */
void mr_axpy(size_t n, float alpha, const float *x, float *y);
/** y = alpha * x, n elements. y may equal x. */
void mr_scale(size_t n, float alpha, const float *x, float *y);

/** y[b, c, :] = x[b, c, :] + bias[b * channels + c] for x, y [batch, channels, hw]; y may equal x. */
void mr_add_channel_bias(int batch, int channels, int hw, const float *x, const float *bias,
                         float *y);
/** dbias[b * channels + c] += sum over hw of dy[b, c, :].  ACCUMULATES into dbias (like every
 *  parameter gradient here): zero dbias [batch * channels] before the first call. */
void mr_channel_bias_backward(int batch, int channels, int hw, const float *dy, float *dbias);

/** y [batch, c1 + c2, hw] = concat(a [batch, c1, hw], b [batch, c2, hw]) along channels. */
void mr_concat_channels(int batch, int c1, int c2, int hw, const float *a, const float *b,
                        float *y);
/** Inverse of concat: da [batch, c1, hw], db [batch, c2, hw] from dy; either nullable. */
void mr_split_channels(int batch, int c1, int c2, int hw, const float *dy, float *da, float *db);

/** Per-batch transpose: x [batch, rows, cols] -> y [batch, cols, rows]  (NCL <-> NLC). */
void mr_transpose(int batch, int rows, int cols, const float *x, float *y);

/* ------------------------------------------------------------------------------------------
 * Optimiser (optimizer.c, and the sum of squares in norm.c)
 * ------------------------------------------------------------------------------------------ */

/** Sum of x[i]², in float over fixed blocks and lanes and in double across blocks: the same
 *  result at every vector width (norm.c: GroupNorm's variance pass about 0). */
double mr_sum_squares(size_t n, const float *x);

/** The coefficients of one AdamW step (AdamW.swift computes them). */
typedef struct {
    float clip;          /* gradient scale from clipping (1: none) */
    float lr;            /* learning rate */
    float weight_decay;  /* decoupled decay (0 for biases and norm scales) */
    float beta1, beta2, epsilon;
    float correction1;   /* 1 / (1 - beta1^step) */
    float correction2;   /* 1 / (1 - beta2^step) */
    float ema_decay;
} mr_adamw_step;

/** One AdamW step over n weights, in place: g' = clip·g; m = β1·m + (1−β1)·g';
 *  v = β2·v + (1−β2)·g'²; w −= lr·(m·c1 / (√(v·c2) + ε) + wd·w); then, unless ema is NULL,
 *  ema = d·ema + (1−d)·w.  No array may overlap another. */
void mr_adamw_update(size_t n, float *w, const float *g, float *m, float *v, float *ema,
                     const mr_adamw_step *k);
/** The same step in double, rounded to float once per value: the reference twin. */
void mr_ref_adamw_update(size_t n, float *w, const float *g, float *m, float *v, float *ema,
                         const mr_adamw_step *k);

void mr_ref_add(size_t n, const float *a, const float *b, float *y);
void mr_ref_mul(size_t n, const float *a, const float *b, float *y);
void mr_ref_concat_channels(int batch, int c1, int c2, int hw, const float *a, const float *b,
                            float *y);
void mr_ref_transpose(int batch, int rows, int cols, const float *x, float *y);

#ifdef __cplusplus
}
#endif
#endif /* MILLRACE_KERNELS_H */
