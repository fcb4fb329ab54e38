/* A trivial kernel used by the tests of the build-and-load machinery (sparsetrain.native). */
#include <stdint.h>

/* y[i] = a * x[i] + y[i] with an explicit fused multiply-add per element. */
void selftest_axpy(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; ++i) {
        y[i] = __builtin_fmaf(a, x[i], y[i]);
    }
}
