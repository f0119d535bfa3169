/*
 * optimizer.c — the optimiser's passes over the parameters: the sum of squares behind the
 * gradient norm, and the AdamW update with its EMA.
 *
 * Both are memory-bound streams over every parameter (five arrays for AdamW). Written in Swift
 * they ran one scalar lane at a time: the float sum because it may not be reassociated, the
 * update because of its square root and division. The sum of squares is norm.c's variance pass
 * about 0 (fixed lanes and blocks: the same result at every vector width); the callers split the
 * parameters and run them on all cores.
 */
#include "millrace_kernels.h"

#include <math.h>

#include "fastmath.h"

MR_VECTOR_CLONES void mr_adamw_update(size_t n, float *restrict w, const float *restrict g,
                                      float *restrict m, float *restrict v, float *restrict ema,
                                      const mr_adamw_step *k) {
    const float clip = k->clip, lr = k->lr, wd = k->weight_decay, b1 = k->beta1, b2 = k->beta2;
    const float c1 = k->correction1, c2 = k->correction2, eps = k->epsilon, decay = k->ema_decay;
    for (size_t j = 0; j < n; j++) {
        const float gj = g[j] * clip;
        const float mj = b1 * m[j] + (1 - b1) * gj;
        const float vj = b2 * v[j] + (1 - b2) * gj * gj;
        const float upd = (mj * c1) / (sqrtf(vj * c2) + eps);
        const float wj = w[j] - lr * (upd + wd * w[j]);
        m[j] = mj;
        v[j] = vj;
        w[j] = wj;
        if (ema) ema[j] = decay * ema[j] + (1 - decay) * wj;
    }
}

void mr_ref_adamw_update(size_t n, float *w, const float *g, float *m, float *v, float *ema,
                         const mr_adamw_step *k) {
    for (size_t j = 0; j < n; j++) {
        const double gj = (double)g[j] * k->clip;
        const double mj = (double)k->beta1 * m[j] + (1 - (double)k->beta1) * gj;
        const double vj = (double)k->beta2 * v[j] + (1 - (double)k->beta2) * gj * gj;
        const double upd = (mj * k->correction1) / (sqrt(vj * k->correction2) + k->epsilon);
        const double wj = w[j] - (double)k->lr * (upd + (double)k->weight_decay * w[j]);
        m[j] = (float)mj;
        v[j] = (float)vj;
        w[j] = (float)wj;
        if (ema) ema[j] = (float)((double)k->ema_decay * ema[j] + (1 - (double)k->ema_decay) * wj);
    }
}
