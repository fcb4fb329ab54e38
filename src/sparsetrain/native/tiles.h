/* Batch tiles packed transposed: the pieces shared by the sparse products of spmm.c and sddmm.c.
 *
 * A kernel that multiplies a sparse matrix by a row-major (batch, features) operand cuts the batch into tiles of
 * T = 16 * nv rows and packs each tile transposed (features x T, T contiguous floats per feature), so that one
 * nonzero meets T batch rows in nv contiguous vectors. Included by each kernel source: every library is its own
 * compilation unit, and sparsetrain.native hashes this header into the key of every library it builds.
 */
#ifndef SPARSETRAIN_TILES_H
#define SPARSETRAIN_TILES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

/* acc + s * p as one fused multiply-add where the CPU has one for 16-float vectors (the library is built
 * with -ffp-contract=off, so a * b + c in C is never fused implicitly). */
#ifdef __AVX512F__
#include <immintrin.h>
#define MADD(acc, s, p) ((acc) = _mm512_fmadd_ps(_mm512_set1_ps(s), (p), (acc)))
#else
#define MADD(acc, s, p) ((acc) += (s) * (p))
#endif

#ifdef __AVX512F__
/* In-register transpose of the 16 x 16 block r[0..15] (r[i] = row i): afterwards r[j] = column j. */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* Now r[4q + m] holds, in 128-bit lane l, elements (4 * l + ...) of rows 4q..4q+3, column group m. */
    for (int q = 0; q < 2; ++q)
        for (int m = 0; m < 4; ++m) {
            t[8 * q + m] = _mm512_shuffle_f32x4(r[8 * q + m], r[8 * q + 4 + m], 0x88);
            t[8 * q + 4 + m] = _mm512_shuffle_f32x4(r[8 * q + m], r[8 * q + 4 + m], 0xdd);
        }
    for (int m = 0; m < 8; ++m) {
        r[m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0xdd);
    }
}
#endif

/* Pack x[b0 : b0 + nb, :] transposed into xt (in x T), zero-filling lanes nb..T-1. When `sums` is not NULL, also
 * add the tile's rows to it (sums[i] += x[b, i] for b = b0, b0 + 1, ... in order: the packing has them loaded). */
static void pack_tile(const float *x, int64_t ldx, int64_t in, int64_t b0, int nb, int T, float *xt, float *sums) {
#ifdef __AVX512F__
    for (int g = 0; g < T; g += 16) {
        const int rows = nb - g < 0 ? 0 : (nb - g > 16 ? 16 : nb - g);
        for (int64_t i = 0; i < in; i += 16) {
            const int cols = in - i >= 16 ? 16 : (int)(in - i);
            const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
            __m512 r[16];
            for (int j = 0; j < 16; ++j)
                r[j] = j < rows ? _mm512_maskz_loadu_ps(mask, x + (b0 + g + j) * ldx + i) : _mm512_setzero_ps();
            if (sums && rows > 0) {
                __m512 acc = _mm512_maskz_loadu_ps(mask, sums + i);
                for (int j = 0; j < rows; ++j) acc = _mm512_add_ps(acc, r[j]);
                _mm512_mask_storeu_ps(sums + i, mask, acc);
            }
            transpose16(r);
            for (int c = 0; c < cols; ++c) _mm512_store_ps(xt + (i + c) * T + g, r[c]);
        }
    }
#else
    const int64_t block = 64;
    for (int64_t i0 = 0; i0 < in; i0 += block) {
        const int64_t i1 = i0 + block < in ? i0 + block : in;
        for (int j = 0; j < nb; ++j) {
            const float *src = x + (b0 + j) * ldx;
            for (int64_t i = i0; i < i1; ++i) xt[i * T + j] = src[i];
            if (sums)
                for (int64_t i = i0; i < i1; ++i) sums[i] += src[i];
        }
        for (int j = nb; j < T; ++j)
            for (int64_t i = i0; i < i1; ++i) xt[i * T + j] = 0.0f;
    }
#endif
}

/* A per-thread buffer (one of SCRATCH_SLOTS per thread) of at least `bytes` bytes, 64-byte aligned, kept between
 * calls: a fresh allocation of this size is an mmap whose page faults cost as much as a whole product at high
 * sparsity. OpenMP threads live in a pool, so each holds its buffers (as large as the widest layer seen) for the
 * life of the process. Returns NULL when the allocation fails. */
#define SCRATCH_SLOTS 2
static float *scratch(int slot, size_t bytes) {
    static _Thread_local float *buffer[SCRATCH_SLOTS] = {NULL};
    static _Thread_local size_t size[SCRATCH_SLOTS] = {0};
    if (bytes > size[slot]) {
        free(buffer[slot]);
        size[slot] = (bytes + 4095) / 4096 * 4096;
        buffer[slot] = aligned_alloc(64, size[slot]);
        if (!buffer[slot]) size[slot] = 0;
    }
    return buffer[slot];
}

typedef struct {
    int64_t b0;
    int nb; /* valid batch rows in the tile */
    int nv; /* vectors per tile (width 16 * nv); 0 = direct rows, no packing */
} tile_t;

/* Tiles covering the batch: widest first (up to max_nv vectors), a padded 16-wide tile for a remainder of
 * 4..15 rows, direct rows for a remainder below 4. Returns the count (at most batch / 16 + 3). */
static int64_t plan_tiles(int64_t batch, int max_nv, tile_t *tiles) {
    int64_t n = 0, b = 0;
    for (int nv = max_nv; nv >= 1; nv /= 2) {
        while (batch - b >= 16 * nv) {
            tiles[n++] = (tile_t){b, 16 * nv, nv};
            b += 16 * nv;
        }
    }
    if (batch - b >= 4) {
        tiles[n++] = (tile_t){b, (int)(batch - b), 1};
        b = batch;
    }
    if (batch > b) tiles[n++] = (tile_t){b, (int)(batch - b), 0};
    return n;
}

#endif
