/* Masked optimizer steps: one pass per tensor over (param, grad, state..., mask).
 *
 * Each kernel reproduces, element for element and bit for bit, what torch.optim's foreach and for-loop
 * implementations (torch 2.13, CPU, float32) compute when the gradient was first multiplied by the float mask:
 * the masked gradient g * (float)mask is formed in a register and never written back. The operation order and
 * the roundings were matched empirically against torch (sparsetrain.fused_step checks them again at run time
 * and falls back to the PyTorch path if they differ):
 *   - add(a, b, alpha=s)         -> fmaf(b, s, a)            (one rounding)
 *   - mul_(s)                    -> a * s
 *   - lerp_(end, w), |w| < 0.5   -> fmaf(w, end - a, a);  otherwise fmaf(w - 1, end - a, end)
 *   - addcmul_(t, t, value=s)    -> fmaf(s * t, t, a)
 *   - addcdiv_(t1, t2, value=s)  -> a + (s * t1) / t2
 *   - sqrt                       -> torch calls MKL's vmsSqrt (high accuracy, not always correctly rounded) when
 *                                   built with MKL; the caller passes that function, or NULL for sqrtf.
 * Build flags include -ffp-contract=off, so only the explicit fmaf calls fuse.
 */
#include <math.h>
#include <stdint.h>

#define BLOCK 512

typedef void (*vsqrt_fn)(int n, const float *a, float *r, long long mode);

static vsqrt_fn g_vsqrt = 0;
static long long g_vsqrt_mode = 0;

/* Use ``fn`` (MKL's vmsSqrt signature) with ``mode`` for square roots; NULL selects sqrtf. */
void masked_step_set_sqrt(void *fn, long long mode) {
    g_vsqrt = (vsqrt_fn)fn;
    g_vsqrt_mode = mode;
}

/* torch.optim.SGD on n elements. buf may be NULL when momentum == 0. */
void masked_sgd(int64_t n, float *restrict p, const float *restrict g, float *restrict buf,
                const uint8_t *restrict mask, float neg_lr, float weight_decay, float momentum, float buf_alpha,
                int nesterov, int maximize, int nthreads) {
    const int use_wd = weight_decay != 0.0f;
    const int use_momentum = buf != 0;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if(n >= 65536 && nthreads > 1)
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = start + BLOCK < n ? start + BLOCK : n;
        if (use_momentum) {
            for (int64_t i = start; i < end; ++i) {
                float d = g[i] * (float)mask[i];
                if (maximize) d = -d;
                if (use_wd) d = fmaf(p[i], weight_decay, d);
                float b = buf[i] * momentum;
                b = fmaf(d, buf_alpha, b);
                buf[i] = b;
                d = nesterov ? fmaf(b, momentum, d) : b;
                p[i] = fmaf(d, neg_lr, p[i]);
            }
        } else {
            for (int64_t i = start; i < end; ++i) {
                float d = g[i] * (float)mask[i];
                if (maximize) d = -d;
                if (use_wd) d = fmaf(p[i], weight_decay, d);
                p[i] = fmaf(d, neg_lr, p[i]);
            }
        }
    }
}

/* torch.optim.Adam / AdamW on n elements (state step already counted by the caller).
 *
 * decay: the factor 1 - lr * weight_decay of decoupled weight decay (AdamW), or 1 for none.
 * weight_decay: coupled weight decay (Adam), or 0. lerp_weight: 1 - beta1. step_size_neg: -lr / (1 - beta1^t).
 * vmax may be NULL (no amsgrad).
 */
void masked_adam(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                 float *restrict vmax, const uint8_t *restrict mask, float decay, float weight_decay,
                 float lerp_weight, float beta2, float one_minus_beta2, float bias_correction2_sqrt, float eps,
                 float step_size_neg, int maximize, int nthreads) {
    const int use_decay = decay != 1.0f;
    const int use_wd = weight_decay != 0.0f;
    const int small = fabsf(lerp_weight) < 0.5f;
    const float coeff = small ? lerp_weight : lerp_weight - 1.0f;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if(n >= 32768 && nthreads > 1)
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = start + BLOCK < n ? start + BLOCK : n;
        const int len = (int)(end - start);
        float root[BLOCK];
        for (int64_t i = start; i < end; ++i) {
            float d = g[i] * (float)mask[i];
            if (maximize) d = -d;
            if (use_wd) d = fmaf(p[i], weight_decay, d);
            const float a = m[i];
            m[i] = fmaf(coeff, d - a, small ? a : d);
            float s = v[i] * beta2;
            s = fmaf(one_minus_beta2 * d, d, s);
            v[i] = s;
            if (vmax) {
                const float old = vmax[i];
                /* torch.maximum: NaN wins */
                s = (old != old || s != s) ? old + s : (s > old ? s : old);
                vmax[i] = s;
            }
            root[i - start] = s;
        }
        if (g_vsqrt) {
            g_vsqrt(len, root, root, g_vsqrt_mode);
        } else {
            for (int i = 0; i < len; ++i) root[i] = sqrtf(root[i]);
        }
        for (int64_t i = start; i < end; ++i) {
            const float denom = root[i - start] / bias_correction2_sqrt + eps;
            const float q = use_decay ? p[i] * decay : p[i];
            p[i] = q + (step_size_neg * m[i]) / denom;
        }
    }
}
