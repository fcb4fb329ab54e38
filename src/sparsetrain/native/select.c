/* Exact selection of the k-th largest float32 value over several arrays taken together (radix select).
 *
 * Each value maps to a 32-bit key whose unsigned order is the float order (NaN above +inf, like torch.kthvalue).
 * Two streaming passes over the data (a histogram of the top key bits, then a copy of the one bucket that holds
 * the answer), then a radix select on that small copy; no sort. Entries whose
 * `eligible` byte is 0 count as +0.0 (the caller's scores are non-negative there), which is what multiplying
 * the scores by the eligibility mask would give, without writing that product.
 *
 * Used by sparsetrain.topk; sparsetrain.native compiles this file on first use.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define HIGH_BITS 12
#define HIGH_BUCKETS (1 << HIGH_BITS)
#define LOW_BITS (32 - HIGH_BITS)

static inline uint32_t key_of(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

static inline float value_of(uint32_t key) {
    uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Branch-free: eligibility is random, so a branch would be mispredicted half the time. */
static inline uint32_t entry_key(const float *x, const uint8_t *e, int64_t i, uint32_t zero_key) {
    uint32_t keep = e ? -(uint32_t)(e[i] != 0) : 0xffffffffu;
    return (key_of(x[i]) & keep) | (zero_key & ~keep);
}

/* Walk a histogram from the top: the bucket holding the k-th largest, and k's rank inside it. */
static int64_t find_bucket(const int64_t *hist, int64_t buckets, int64_t *k) {
    for (int64_t b = buckets - 1; b >= 0; --b) {
        if (hist[b] >= *k) return b;
        *k -= hist[b];
    }
    return -1;
}

/* The k-th largest key among `n` keys (k in 1..n), by radix select on `bits`-bit digits; keys are reordered. */
static uint32_t select_keys(uint32_t *keys, int64_t n, int64_t k) {
    uint32_t prefix = 0;
    int64_t *hist = malloc(((size_t)1 << 10) * sizeof(int64_t));
    for (int shift = LOW_BITS - 10; shift >= -10 && n > 0; shift -= 10) {
        int width = shift >= 0 ? 10 : 10 + shift;
        int s = shift >= 0 ? shift : 0;
        int64_t buckets = (int64_t)1 << width;
        memset(hist, 0, (size_t)buckets * sizeof(int64_t));
        for (int64_t i = 0; i < n; ++i) hist[(keys[i] >> s) & (uint32_t)(buckets - 1)]++;
        int64_t b = find_bucket(hist, buckets, &k);
        int64_t m = 0;
        for (int64_t i = 0; i < n; ++i) {
            if (((keys[i] >> s) & (uint32_t)(buckets - 1)) == (uint32_t)b) keys[m++] = keys[i];
        }
        n = m;
        prefix |= (uint32_t)b << s;
        if (s == 0) break;
    }
    free(hist);
    return prefix;
}

/* The k-th largest (1-based) value over the parts. Returns 0 and writes *out, or -1 if k is out of range.
 * Pass 1: histogram of the top HIGH_BITS key bits (fits in L1). Pass 2: copy the keys of the one bucket that
 * holds the answer (a few percent of the entries), each thread into its own slice of a buffer. Then radix
 * select on the copy. */
int kth_largest(int64_t n_parts, const float *const *parts, const uint8_t *const *eligible, const int64_t *lengths,
                int64_t k, int n_threads, float *out) {
    if (n_threads < 1) n_threads = 1;
    const uint32_t zero_key = key_of(0.0f);
    int64_t *local = calloc((size_t)n_threads * HIGH_BUCKETS, sizeof(int64_t));
    #pragma omp parallel num_threads(n_threads)
    {
        /* Four interleaved sub-histograms, so that runs of equal buckets do not serialise on one counter. */
        uint32_t *sub = calloc(4 * HIGH_BUCKETS, sizeof(uint32_t));
        int64_t *hist = local + (size_t)omp_get_thread_num() * HIGH_BUCKETS;
        for (int64_t p = 0; p < n_parts; ++p) {
            const float *x = parts[p];
            const uint8_t *e = eligible ? eligible[p] : NULL;
            #pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < lengths[p]; ++i) {
                sub[((i & 3) << HIGH_BITS) | (entry_key(x, e, i, zero_key) >> LOW_BITS)]++;
            }
            /* Flush before a 32-bit counter could overflow (parts are at most a few hundred million long). */
            for (int b = 0; b < 4 * HIGH_BUCKETS; ++b) {
                hist[b & (HIGH_BUCKETS - 1)] += sub[b];
                sub[b] = 0;
            }
        }
        free(sub);
    }
    int64_t total[HIGH_BUCKETS];
    int64_t rank = k;
    for (int b = 0; b < HIGH_BUCKETS; ++b) {
        total[b] = 0;
        for (int t = 0; t < n_threads; ++t) total[b] += local[(size_t)t * HIGH_BUCKETS + b];
    }
    int64_t high = find_bucket(total, HIGH_BUCKETS, &rank);
    if (high < 0) {
        free(local);
        return -1;
    }
    /* Thread t copies its matches to offset[t]: the same static schedule gives it the same entries as above. */
    int64_t *offset = malloc(((size_t)n_threads + 1) * sizeof(int64_t));
    offset[0] = 0;
    /* One spare slot per thread: the branch-free append below writes one past a thread's last match. */
    for (int t = 0; t < n_threads; ++t) offset[t + 1] = offset[t] + local[(size_t)t * HIGH_BUCKETS + high] + 1;
    uint32_t *keys = malloc((size_t)offset[n_threads] * sizeof(uint32_t));
    #pragma omp parallel num_threads(n_threads)
    {
        int64_t m = offset[omp_get_thread_num()];
        for (int64_t p = 0; p < n_parts; ++p) {
            const float *x = parts[p];
            const uint8_t *e = eligible ? eligible[p] : NULL;
            #pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < lengths[p]; ++i) {
                uint32_t key = entry_key(x, e, i, zero_key);
                keys[m] = key; /* branch-free append: the slot is kept only when the key matches */
                m += (int64_t)(key >> LOW_BITS) == high;
            }
        }
    }
    int64_t n_keys = 0; /* close the spare-slot gaps */
    for (int t = 0; t < n_threads; ++t) {
        int64_t count = offset[t + 1] - offset[t] - 1;
        memmove(keys + n_keys, keys + offset[t], (size_t)count * sizeof(uint32_t));
        n_keys += count;
    }
    uint32_t low = select_keys(keys, n_keys, rank);
    *out = value_of(((uint32_t)high << LOW_BITS) | low);
    free(keys);
    free(offset);
    free(local);
    return 0;
}

/* out[i] = x[i] >= threshold (and eligible[i], when given); returns the number of true entries. */
int64_t mask_at_least(int64_t n, const float *x, const uint8_t *eligible, float threshold, int n_threads,
                      uint8_t *out) {
    int64_t count = 0;
    if (n_threads < 1) n_threads = 1;
    #pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+ : count)
    for (int64_t i = 0; i < n; ++i) {
        uint8_t keep = x[i] >= threshold;
        if (eligible) keep &= eligible[i];
        out[i] = keep;
        count += keep;
    }
    return count;
}
