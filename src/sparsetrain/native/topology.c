/* Growth candidates for the topology updates of TrainableSparseLinear (sparsetrain.streaming_topk).
 *
 * A RigL update ranks every inactive position of a layer by its dense gradient, block of rows by block of rows.
 * select_above keeps, in one pass over a block, the entries that can still make the top k: those above the current
 * k-th best score (or, with `absolute`, whose magnitude is above it). NaN never passes. Where AVX-512 is available,
 * 16 scores are compared at once and the few that pass are written with compress-stores; a block where nothing
 * passes (most of them, once the threshold has settled) costs one load and one compare per 16 entries.
 * exclude_rows marks the positions that may not grow (the kept ones) NaN in a block of rows, straight from the CSR
 * indices. keep_best compacts the candidates to the k best in place once they are many (after select.c's kth_largest gave
 * the k-th best value), and union_i64 merges the positions a layer ever had active with its current ones (ITOP).
 */
#include <math.h>
#include <stdint.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* For i < n with score(i) > threshold, where score(i) = |scores[i]| if `absolute` else scores[i]: writes score(i)
 * to out_values and offset + i to out_positions, in increasing i. Returns how many were written (at most n). */
int64_t select_above(int64_t n, const float *scores, float threshold, int absolute, int64_t offset,
                     float *out_values, int64_t *out_positions) {
    int64_t count = 0, i = 0;
#ifdef __AVX512F__
    const __m512 limit = _mm512_set1_ps(threshold);
    const __m512 magnitude = _mm512_castsi512_ps(_mm512_set1_epi32(absolute ? 0x7fffffff : -1));
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_and_ps(_mm512_loadu_ps(scores + i), magnitude);
        const __mmask16 pass = _mm512_cmp_ps_mask(v, limit, _CMP_GT_OQ);
        if (!pass) continue;
        _mm512_mask_compressstoreu_ps(out_values + count, pass, v);
        const __m512i base = _mm512_add_epi64(_mm512_set1_epi64(offset + i), lanes);
        const __mmask8 low = (__mmask8)(pass & 0xff), high = (__mmask8)(pass >> 8);
        _mm512_mask_compressstoreu_epi64(out_positions + count, low, base);
        const int n_low = __builtin_popcount(low);
        _mm512_mask_compressstoreu_epi64(out_positions + count + n_low, high,
                                         _mm512_add_epi64(base, _mm512_set1_epi64(8)));
        count += n_low + __builtin_popcount(high);
    }
#endif
    for (; i < n; ++i) {
        const float v = absolute ? fabsf(scores[i]) : scores[i];
        if (v > threshold) {
            out_values[count] = v;
            out_positions[count++] = offset + i;
        }
    }
    return count;
}


/* Keep, in place at the front of values / positions (in their order), the k best of the first `count`
 * candidates, whose k-th largest value is `kth`: every value above it, then the first ones equal to it until k are
 * kept (the candidates are in increasing position, so ties go to the lowest positions). Returns how many were
 * kept (k, unless fewer than k are >= kth). */
int64_t keep_best(int64_t count, float *values, int64_t *positions, float kth, int64_t k) {
    int64_t above = 0, i = 0;
#ifdef __AVX512F__
    const __m512 limit = _mm512_set1_ps(kth);
    for (; i + 16 <= count; i += 16)
        above += __builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(values + i), limit, _CMP_GT_OQ));
#endif
    for (; i < count; ++i) above += values[i] > kth;
    int64_t ties = k - above, kept = 0;
    i = 0;
#ifdef __AVX512F__
    /* Compress-store the lanes above kth, 16 at a time; a group holding a value equal to kth goes lane by lane,
     * in order, so that the ties kept are the first ones. Writes never overtake reads (kept <= i). */
    for (; i + 16 <= count && kept < k; i += 16) {
        const __m512 v = _mm512_loadu_ps(values + i);
        if (_mm512_cmp_ps_mask(v, limit, _CMP_EQ_OQ)) {
            for (int64_t j = i; j < i + 16 && kept < k; ++j) {
                const float x = values[j];
                if (x > kth || (x == kth && ties-- > 0)) {
                    values[kept] = x;
                    positions[kept++] = positions[j];
                }
            }
            continue;
        }
        const __mmask16 pass = _mm512_cmp_ps_mask(v, limit, _CMP_GT_OQ);
        if (!pass) continue;
        const __mmask8 low = (__mmask8)(pass & 0xff), high = (__mmask8)(pass >> 8);
        const __m512i lo = _mm512_loadu_si512(positions + i), hi = _mm512_loadu_si512(positions + i + 8);
        _mm512_mask_compressstoreu_ps(values + kept, pass, v);
        _mm512_mask_compressstoreu_epi64(positions + kept, low, lo);
        const int n_low = __builtin_popcount(low);
        _mm512_mask_compressstoreu_epi64(positions + kept + n_low, high, hi);
        kept += n_low + __builtin_popcount(high);
    }
#endif
    for (; i < count && kept < k; ++i) {
        const float v = values[i];
        if (v > kth || (v == kth && ties-- > 0)) {
            values[kept] = v;
            positions[kept++] = positions[i];
        }
    }
    return kept;
}

/* The increasing union of the increasing int64 arrays a (na entries) and b (nb), without duplicates, written to
 * out (room for na + nb). Returns its length. */
int64_t union_i64(int64_t na, const int64_t *a, int64_t nb, const int64_t *b, int64_t *out) {
    int64_t i = 0, j = 0, n = 0;
    while (i < na && j < nb) {
        const int64_t x = a[i], y = b[j];
        out[n++] = x < y ? x : y;
        i += x <= y;
        j += y <= x;
    }
    while (i < na) out[n++] = a[i++];
    while (j < nb) out[n++] = b[j++];
    return n;
}

/* Set block[(r - first) * in + col[k]] = NaN for the entries k of rows first..last-1 of a CSR structure (crow,
 * col), those with kept[k] != 0 only when `kept` is given: the positions of a block of rows that may not grow. */
void exclude_rows(float *block, const int32_t *crow, const int32_t *col, const uint8_t *kept, int64_t first,
                  int64_t last, int64_t in) {
    for (int64_t r = first; r < last; ++r) {
        float *row = block + (r - first) * in;
        for (int32_t k = crow[r]; k < crow[r + 1]; ++k)
            if (!kept || kept[k]) row[col[k]] = NAN;
    }
}
