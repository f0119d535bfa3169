/*
 * fastmath.h — private to MillraceKernels: an exp approximation that vectorises.
 *
 * libm's expf is a call per value, so a loop that uses it stays scalar; SiLU, the fused
 * GroupNorm + SiLU and the softmaxes spent nearly all their time there. mr_fast_expf is plain C
 * (no intrinsics, no branches, no calls), so a loop over it is vectorised at -O3 by gcc and clang
 * for whatever vector width the build targets (SSE2 with no -march; checked with clang
 * -Rpass=loop-vectorize and gcc -fopt-info-vec).
 *
 *   exp(x) = 2^n · e^r,   n = round(x / ln 2),   r = x - n ln 2  in [-ln2/2, ln2/2]
 *
 *  - x is clamped to [MR_EXP_LO, MR_EXP_HI] first.
 *  - n is rounded by the magic-add trick: t = x·log2(e) + 1.5·2^23 lands in [2^23, 2^24), where
 *    the float spacing is 1, so the addition rounds to nearest and the low bits of t hold n.
 *  - r uses ln 2 split in two (Cody–Waite): n · LN2_HI is exact (9-bit constant times |n| <= 127)
 *    and x - n · LN2_HI is exact (Sterbenz), so r carries only the tiny error of n · LN2_LO.
 *  - e^r ≈ 1 + r + c2 r^2 + ... + c5 r^5, c2..c5 chosen to minimise the largest relative error
 *    on [-ln2/2, ln2/2] (1.05e-7 in exact arithmetic; a linear program on a dense grid), rounded
 *    to float. Keeping 1 and r exact makes the result exact at 0 and saves a multiplication.
 *  - 2^n is built as a float by writing n + 127 into the exponent field (integer shift and add
 *    on the bits of t), and e^x = p · 2^n, one exact multiplication.
 *
 * Range, with n in [-127, 127] after the clamp:
 *   x in [-87.33, 88.37]:  relative error at most 2.2e-7 (measured over every float in the
 *                          range against exp in double; the test expApproxMatchesLibm bounds it
 *                          by 1e-6 through mr_exp_approx). The result is a normal float.
 *   x in [-87.683, -87.33): a denormal (2^-126 · p, p < 1), rounded as the multiplication rounds.
 *   x < -87.683, -inf:     0 (n = -127, and 2^-127 is built as +0.0); libm gives denormals
 *                          down to -103.97.
 *   x > 88.37, +inf:       e^88.37 ≈ 2.4e38, finite (libm: e^x up to 3.4e38, +inf from 88.73).
 *   NaN:                   NaN (p is NaN, and NaN · 2^n is NaN).
 */
#ifndef MILLRACE_FASTMATH_H
#define MILLRACE_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/*
 * c ? a : b, as bit operations on a mask. gcc (with its default -ftrapping-math) does not
 * if-convert a ?: whose arms hold floating-point arithmetic, and it moves arithmetic that follows
 * a ?: into the arms (where one arm folds to a constant), so a loop over a plain ?: stays scalar.
 * Masks leave no branch to convert; clang turns the pattern back into maxps / minps / blends.
 */
static inline float mr_select_f(int c, float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    const uint32_t m = 0u - (uint32_t)(c != 0);
    const uint32_t r = (ua & m) | (ub & ~m);
    float f;
    memcpy(&f, &r, sizeof f);
    return f;
}

#define MR_EXP_LO (-88.0f)  /* round(-88 / ln 2) = -127: 2^n = +0.0 */
#define MR_EXP_HI 88.37f    /* < 127.5 ln 2 = 88.376: n <= 127, p · 2^127 < FLT_MAX */

static inline float mr_fast_expf(float x) {
    /* Comparisons, not fmaxf / fminf: a NaN fails both and passes through. */
    float c = mr_select_f(x < MR_EXP_LO, MR_EXP_LO, x);
    c = mr_select_f(c > MR_EXP_HI, MR_EXP_HI, c);

    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    const float t = c * 1.44269504088896341f + magic;
    const float nf = t - magic; /* round(c / ln 2), as a float */
    float r = c - nf * 0.693359375f;        /* LN2_HI = 355/512 */
    r = r - nf * -2.12194440054690583e-4f;  /* LN2_LO = ln 2 - LN2_HI */

    /* 1 + r + c2 r^2 + ... + c5 r^5, in Estrin's order (shorter dependency chains than Horner's). */
    const float r2 = r * r;
    const float p01 = r + 1.0f;
    const float p23 = 1.66671142e-1f * r + 4.99992311e-1f;
    const float p45 = 8.31252523e-3f * r + 4.18901145e-2f;
    const float p = p01 + r2 * (p23 + r2 * p45);

    /* n = bits(t) - bits(1.5 * 2^23) for |n| < 2^22; bits(2^n) = (n + 127) << 23, computed in
     * unsigned arithmetic so the shift wraps (and the compiler folds the constants). */
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    const uint32_t sb = (tb - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    return p * scale;
}

/*
 * sigmoid(x) = 1 / (1 + e^-x), through e = exp(-|x|) <= 1 so nothing overflows:
 * s = 1 / (1 + e) is sigmoid(|x|), and sigmoid(x) = s for x >= 0, e·s = 1 - s for x < 0.
 */
static inline float mr_fast_sigmoidf(float x) {
    const float e = mr_fast_expf(-fabsf(x));
    const float s = 1.0f / (1.0f + e);
    return mr_select_f(x >= 0.0f, s, e * s);
}

/*
 * Vector width chosen at run time. The build targets baseline x86-64 (SSE2), so a loop over
 * floats runs 4 lanes wide. Functions marked MR_VECTOR_CLONES are compiled three times — for
 * AVX-512F, for x86-64-v3 (AVX2 + FMA) and for the baseline — and the dynamic loader binds each call to the
 * widest version this CPU runs (an ifunc resolved once at load). Sums keep their fixed MR_LANES
 * partial accumulators in every version, so the order of additions does not depend on the
 * width; a version with FMA may round a multiply-add once where the baseline rounds twice.
 */
#if defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define MR_VECTOR_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define MR_VECTOR_CLONES
#endif

#endif /* MILLRACE_FASTMATH_H */
