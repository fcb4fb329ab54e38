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
#define ADAM_BLOCK 4096

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
/* One block of masked_adam (the arguments as there). */
static void adam_block(int64_t start, int64_t n, float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, float *restrict vmax, const uint8_t *restrict mask, float decay,
                       int use_decay, int use_wd, float weight_decay, int small, float coeff, float beta2,
                       float one_minus_beta2, float bias_correction2_sqrt, float eps, float step_size_neg,
                       int maximize) {
    const int64_t end = start + ADAM_BLOCK < n ? start + ADAM_BLOCK : n;
    const int len = (int)(end - start);
    float root[ADAM_BLOCK];
    float *restrict pp = p + start, *restrict mp = m + start, *restrict vp = v + start;
    const float *restrict gp = g + start;
    const uint8_t *restrict kp = mask + start;
    for (int i = 0; i < len; ++i) {
        float d = gp[i] * (float)kp[i];
        d = maximize ? -d : d;
        d = use_wd ? fmaf(pp[i], weight_decay, d) : d;
        const float a = mp[i];
        mp[i] = fmaf(coeff, d - a, small ? a : d);
        const float s = fmaf(one_minus_beta2 * d, d, vp[i] * beta2);
        vp[i] = s;
        root[i] = s;
    }
    if (vmax) {
        float *restrict xp = vmax + start;
        for (int i = 0; i < len; ++i) {
            const float old = xp[i], s = root[i];
            /* torch.maximum: NaN wins */
            const float top = (old != old || s != s) ? old + s : (s > old ? s : old);
            xp[i] = top;
            root[i] = top;
        }
    }
    if (g_vsqrt) {
        /* MKL is very slow on zeros, and most entries of a sparse tensor's state are zero: take the roots of
           the nonzero entries only (sqrt(+-0) = +-0 exactly). */
        float packed[ADAM_BLOCK];
        int where[ADAM_BLOCK];
        int count = 0;
        for (int i = 0; i < len; ++i) {  /* branch-free: the pattern of zeros is random */
            where[count] = i;
            packed[count] = root[i];
            count += root[i] != 0.0f;
        }
        if (count > 0) g_vsqrt(count, packed, packed, g_vsqrt_mode);
        for (int k = 0; k < count; ++k) root[where[k]] = packed[k];
    } else {
        for (int i = 0; i < len; ++i) root[i] = sqrtf(root[i]);
    }
    for (int i = 0; i < len; ++i) {
        const float denom = root[i] / bias_correction2_sqrt + eps;
        const float q = use_decay ? pp[i] * decay : pp[i];
        pp[i] = q + (step_size_neg * mp[i]) / denom;
    }
}

void masked_adam(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                 float *restrict vmax, const uint8_t *restrict mask, float decay, float weight_decay,
                 float lerp_weight, float beta2, float one_minus_beta2, float bias_correction2_sqrt, float eps,
                 float step_size_neg, int maximize, int nthreads) {
    const int use_decay = decay != 1.0f;
    const int use_wd = weight_decay != 0.0f;
    const int small = fabsf(lerp_weight) < 0.5f;
    const float coeff = small ? lerp_weight : lerp_weight - 1.0f;
    /* Outside an OpenMP region unless threads are used: MKL's sqrt costs more when called inside one. */
    if (nthreads > 1 && n >= 32768) {
        #pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t start = 0; start < n; start += ADAM_BLOCK) {
            adam_block(start, n, p, g, m, v, vmax, mask, decay, use_decay, use_wd, weight_decay, small, coeff, beta2,
                       one_minus_beta2, bias_correction2_sqrt, eps, step_size_neg, maximize);
        }
    } else {
        for (int64_t start = 0; start < n; start += ADAM_BLOCK) {
            adam_block(start, n, p, g, m, v, vmax, mask, decay, use_decay, use_wd, weight_decay, small, coeff, beta2,
                       one_minus_beta2, bias_correction2_sqrt, eps, step_size_neg, maximize);
        }
    }
}

/* torch.optim.Adam / AdamW with fused=True (torch's fused CPU kernel) on n elements.
 *
 * Matched empirically against torch 2.13: in its vector loops that kernel computes what the foreach kernel above
 * does, except that square roots are correctly rounded (sqrtf, not MKL). Its scalar tail loops (the last few
 * elements of each per-thread chunk) round differently in a way not reproduced here, so the caller only uses
 * this for tensors that have no tail elements (see sparsetrain.fused_step._torch_fused_tails).
 */
/* One element of masked_adam_torch_fused; `vmax` NULL for no amsgrad (inlined into two branch-free loops). */
static inline void adam_torch_fused_element(int64_t i, float *restrict p, const float *restrict g,
                                            float *restrict m, float *restrict v, float *restrict vmax,
                                            const uint8_t *restrict mask, float decay, float weight_decay,
                                            float base_is_mean, float coeff, float beta2, float one_minus_beta2,
                                            float bias_correction2_sqrt, float eps, float step_size_neg, float sign,
                                            int use_wd) {
    const float masked = (g[i] * (float)mask[i]) * sign;
    const float d = use_wd ? fmaf(p[i], weight_decay, masked) : masked;
    const float a = m[i];
    const float mean = fmaf(coeff, d - a, base_is_mean != 0.0f ? a : d);
    m[i] = mean;
    const float s = fmaf(one_minus_beta2 * d, d, v[i] * beta2);
    v[i] = s;
    float r = s;
    if (vmax) {
        const float old = vmax[i];
        r = (old != old || s != s) ? old + s : (s > old ? s : old); /* maximum(): NaN wins */
        vmax[i] = r;
    }
    const float denom = sqrtf(r) / bias_correction2_sqrt + eps;
    p[i] = p[i] * decay + (step_size_neg * mean) / denom;
}

void masked_adam_torch_fused(int64_t n, float *restrict p, const float *restrict g, float *restrict m,
                             float *restrict v, float *restrict vmax, const uint8_t *restrict mask, float decay,
                             float weight_decay, float lerp_weight, float beta2, float one_minus_beta2,
                             float bias_correction2_sqrt, float eps, float step_size_neg, int maximize, int nthreads) {
    /* Options as exact arithmetic where that is safe (x * 1 == x and x * -1 == -x, NaN and -0 included), so the
       loops stay branch-free and vectorise; coupled weight decay stays a select (fmaf(p, 0, d) is not d when p
       is infinite or d is -0). */
    const int use_wd = weight_decay != 0.0f;
    const int small = fabsf(lerp_weight) < 0.5f;
    const float coeff = small ? lerp_weight : lerp_weight - 1.0f;
    const float base_is_mean = small ? 1.0f : 0.0f;
    const float sign = maximize ? -1.0f : 1.0f;
    const int threads = nthreads > 1 && n >= 32768 ? nthreads : 1;
    if (vmax) {
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            adam_torch_fused_element(i, p, g, m, v, vmax, mask, decay, weight_decay, base_is_mean, coeff, beta2,
                                     one_minus_beta2, bias_correction2_sqrt, eps, step_size_neg, sign, use_wd);
        }
    } else {
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            adam_torch_fused_element(i, p, g, m, v, 0, mask, decay, weight_decay, base_is_mean, coeff, beta2,
                                     one_minus_beta2, bias_correction2_sqrt, eps, step_size_neg, sign, use_wd);
        }
    }
}
