/* Sparse (CSR) weight times dense input, the forward of a pruned nn.Linear: y = x @ W.T + b.
 *
 * x is (batch, in) and y is (batch, out), both row-major with leading dimensions ldx / ldy, exactly what
 * nn.Linear gets and returns, so no transpose is ever materialised. W is CSR over output rows (int32 row
 * pointers and column indices, float32 values).
 *
 * The batch is cut into tiles of T = 16, 32 or 64 rows (1, 2 or 4 vectors of 16 floats). Each tile of x is
 * first packed, transposed, into a per-thread buffer xt (in x T, T contiguous floats per input feature),
 * which stays in L2. Then for each output row the kernel walks its nonzeros and accumulates, in registers,
 * the T outputs of that row: one vector multiply-add per nonzero and vector, reading xt[col] contiguously.
 * Outputs of 16 consecutive rows are gathered in a small L1 buffer and written back as 16 contiguous floats
 * per batch row, with the bias added there. So a nonzero costs one index, one value and T/16 vector FMAs,
 * the per-element cost of packing is paid once per tile, and W is streamed once per tile.
 *
 * Work items are (tile, row range) pairs, spread over `threads` OpenMP threads; with fewer tiles than
 * threads (small batches) the rows are split so every thread has work (each packs its own copy of the tile,
 * which is cheap when the batch is small). A batch of fewer than 4 rows left over after the tiles skips the
 * packing and reads x directly, one scalar dot product per (batch row, output row).
 *
 * Summation order: for every output, bias + the products in CSR order, summed in two interleaved partial
 * sums (even and odd nonzeros) that are added at the end. Not bitwise equal to a dense GEMM, which sums in
 * another order; the differences are float rounding.
 */
#include "tiles.h"

#define ROWS 16 /* output rows whose results are buffered before the write-back */

/* Row i of a tile of NV vectors packed by pack_tile: the 16 * NV batch values of input i, as NV vectors. The
 * product i * 16 * NV is taken in i's type: a caller whose i may pass 2^31 / 64 casts it to int64_t first. */
#define TILE_ROW(xt, i, NV) ((const v16 *)((xt) + (i) * (16 * (NV))))

/* acc += s * row, vector by vector over the NV vectors of a packed tile row. */
#define MADD_ROW(NV, acc, s, row)                                                                          \
    do {                                                                                                   \
        for (int vec_ = 0; vec_ < (NV); ++vec_) MADD((acc)[vec_], (s), (row)[vec_]);                       \
    } while (0)

/* Two nonzeros into the two interleaved partial sums (even and odd): a += s * p and b += t * q. */
#define MADD_ROW_PAIR(NV, a, s, p, b, t, q)                                                                \
    do {                                                                                                   \
        for (int vec_ = 0; vec_ < (NV); ++vec_) {                                                          \
            MADD((a)[vec_], (s), (p)[vec_]);                                                               \
            MADD((b)[vec_], (t), (q)[vec_]);                                                               \
        }                                                                                                  \
    } while (0)

/* Write ybuf (ROWS x T, rows r0..r0+nr) to y[b0 + j, r0 + i] for j < nb, adding the bias. */
static void write_back(const float *ybuf, int T, int64_t r0, int nr, int64_t b0, int nb, const float *bias,
                       float *y, int64_t ldy) {
#ifdef __AVX512F__
    const __mmask16 mask = (__mmask16)((1u << nr) - 1u);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + r0) : _mm512_setzero_ps();
    for (int g = 0; g < nb; g += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(ybuf + i * T + g);
        transpose16(r);
        const int rows = nb - g > 16 ? 16 : nb - g;
        for (int j = 0; j < rows; ++j)
            _mm512_mask_storeu_ps(y + (b0 + g + j) * ldy + r0, mask, _mm512_add_ps(add, r[j]));
    }
#else
    float add[ROWS];
    for (int i = 0; i < nr; ++i) add[i] = bias ? bias[r0 + i] : 0.0f;
    for (int j = 0; j < nb; ++j) {
        float *dst = y + (b0 + j) * ldy + r0;
        for (int i = 0; i < nr; ++i) dst[i] = add[i] + ybuf[i * T + j];
    }
#endif
}

/* One output row over one packed tile of NV vectors: acc = sum_k vals[k] * xt[cols[k]]. */
#define ROW_KERNEL(NV)                                                                                     \
    static inline void row_##NV(const int32_t *cols, const float *vals, int32_t k0, int32_t k1,            \
                                const float *xt, float *out) {                                            \
        v16 a[NV], b[NV];                                                                                  \
        for (int v = 0; v < NV; ++v) a[v] = b[v] = (v16){0};                                               \
        int32_t k = k0;                                                                                    \
        for (; k + 1 < k1; k += 2) {                                                                       \
            const v16 *p = TILE_ROW(xt, (int64_t)cols[k], NV);                                             \
            const v16 *q = TILE_ROW(xt, (int64_t)cols[k + 1], NV);                                         \
            const float s = vals[k], t = vals[k + 1];                                                      \
            MADD_ROW_PAIR(NV, a, s, p, b, t, q);                                                           \
        }                                                                                                  \
        if (k < k1) {                                                                                      \
            const v16 *p = TILE_ROW(xt, (int64_t)cols[k], NV);                                             \
            const float s = vals[k];                                                                       \
            MADD_ROW(NV, a, s, p);                                                                         \
        }                                                                                                  \
        for (int v = 0; v < NV; ++v) *(v16u *)(out + 16 * v) = a[v] + b[v];                                \
    }
ROW_KERNEL(1)
ROW_KERNEL(2)
ROW_KERNEL(4)

/* Rows r0..r1 of the product for one packed tile of width T = 16 * nv. */
static void tile_rows(const int32_t *rowptr, const int32_t *cols, const float *vals, const float *bias,
                      const float *xt, int nv, int64_t r0, int64_t r1, int64_t b0, int nb, float *y, int64_t ldy) {
    const int T = 16 * nv;
    float ybuf[ROWS * 64] __attribute__((aligned(64)));
    for (int64_t rb = r0; rb < r1; rb += ROWS) {
        const int nr = rb + ROWS <= r1 ? ROWS : (int)(r1 - rb);
        for (int i = 0; i < nr; ++i) {
            const int32_t k0 = rowptr[rb + i], k1 = rowptr[rb + i + 1];
            float *out = ybuf + i * T;
            if (nv == 4)
                row_4(cols, vals, k0, k1, xt, out);
            else if (nv == 2)
                row_2(cols, vals, k0, k1, xt, out);
            else
                row_1(cols, vals, k0, k1, xt, out);
        }
        write_back(ybuf, T, rb, nr, b0, nb, bias, y, ldy);
    }
}

/* Batch rows b0..b0+nb read straight from x (no packing): for the last few rows of a batch. */
static void direct_rows(const int32_t *rowptr, const int32_t *cols, const float *vals, const float *bias,
                        const float *x, int64_t ldx, int64_t r0, int64_t r1, int64_t b0, int nb, float *y,
                        int64_t ldy) {
    for (int j = 0; j < nb; ++j) {
        const float *src = x + (b0 + j) * ldx;
        float *dst = y + (b0 + j) * ldy;
        for (int64_t r = r0; r < r1; ++r) {
            float s0 = 0.0f, s1 = 0.0f;
            int32_t k = rowptr[r];
            const int32_t k1 = rowptr[r + 1];
            for (; k + 1 < k1; k += 2) {
                s0 = __builtin_fmaf(vals[k], src[cols[k]], s0);
                s1 = __builtin_fmaf(vals[k + 1], src[cols[k + 1]], s1);
            }
            if (k < k1) s0 = __builtin_fmaf(vals[k], src[cols[k]], s0);
            dst[r] = (bias ? bias[r] : 0.0f) + (s0 + s1);
        }
    }
}

/* Widest tile whose packed buffer (in x 16 * nv floats) stays within 256 KiB, a quarter to an eighth of a
 * typical L2, so that W's stream and the write-back do not evict it: measured on 1024/2048/4096 inputs. */
static int auto_nv(int64_t in) {
    for (int nv = 4; nv > 1; nv /= 2)
        if (in * 64 * nv <= 256 * 1024) return nv;
    return 1;
}

/* The rows r0..r1 of one batch tile, packed into xt (for tile->nv > 0): a kernel's share of one work item. */
typedef void (*rows_fn)(const void *ctx, const tile_t *tile, const float *xt, int64_t r0, int64_t r1);

/* Cut the product into (batch tile, output row range) work items and run `rows` on each, over `threads` OpenMP
 * threads; every thread packs its tiles of x into its own buffer first. With fewer tiles than threads (small
 * batches) the rows are split so every thread has work. Returns 0, or -1 when a buffer could not be allocated. */
static int run_items(int64_t batch, int64_t in, int64_t out, int max_nv, int threads, const float *x, int64_t ldx,
                     rows_fn rows, const void *ctx) {
    if (threads < 1) threads = 1;
    tile_t *tiles = malloc(sizeof(tile_t) * (size_t)(batch / 16 + 3));
    if (!tiles) return -1;
    const int64_t ntiles = plan_tiles(batch, max_nv, tiles);
    /* Split the rows into parts so that there are at least `threads` work items. */
    int64_t parts = ntiles >= threads ? 1 : (threads + ntiles - 1) / ntiles;
    const int64_t max_parts = (out + ROWS - 1) / ROWS;
    if (parts > max_parts) parts = max_parts;
    const int64_t chunk = ((out + parts - 1) / parts + ROWS - 1) / ROWS * ROWS;
    const int64_t items = ntiles * parts;
    int failed = 0;
    const size_t buf_bytes = (size_t)(in > 0 ? in : 1) * 64 * sizeof(float);
#pragma omp parallel num_threads(threads) if (items > 1) reduction(| : failed)
    {
        float *xt = scratch(0, buf_bytes);
        if (!xt) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            if (!xt) continue;
            const tile_t tile = tiles[it / parts];
            const int64_t r0 = (it % parts) * chunk;
            const int64_t r1 = r0 + chunk < out ? r0 + chunk : out;
            if (r0 >= r1) continue;
            if (tile.nv != 0) pack_tile(x, ldx, in, tile.b0, tile.nb, 16 * tile.nv, xt, NULL);
            rows(ctx, &tile, xt, r0, r1);
        }
    }
    free(tiles);
    return failed ? -1 : 0;
}

typedef struct {
    const int32_t *rowptr, *cols;
    const float *vals, *bias, *x;
    int64_t ldx, ldy;
    float *y;
} csr_ctx;

static void csr_rows(const void *ctx, const tile_t *tile, const float *xt, int64_t r0, int64_t r1) {
    const csr_ctx *c = ctx;
    if (tile->nv == 0)
        direct_rows(c->rowptr, c->cols, c->vals, c->bias, c->x, c->ldx, r0, r1, tile->b0, tile->nb, c->y, c->ldy);
    else
        tile_rows(c->rowptr, c->cols, c->vals, c->bias, xt, tile->nv, r0, r1, tile->b0, tile->nb, c->y, c->ldy);
}

/* y = x @ W.T + bias for CSR W (out x in). bias may be NULL. max_nv: 1, 2 or 4 (widest tile 16/32/64 rows),
 * or 0 to choose from `in` (auto_nv).
 * Returns 0, or -1 when a buffer could not be allocated or an argument is out of range (y then undefined). */
int spmm_linear_f32(int64_t batch, int64_t in, int64_t out, const int32_t *rowptr, const int32_t *cols,
                    const float *vals, const float *bias, const float *x, int64_t ldx, float *y, int64_t ldy,
                    int max_nv, int threads) {
    if (batch < 0 || in < 0 || out < 0 || (max_nv != 0 && max_nv != 1 && max_nv != 2 && max_nv != 4)) return -1;
    if (max_nv == 0) max_nv = auto_nv(in);
    if (batch == 0 || out == 0) return 0;
    const csr_ctx ctx = {rowptr, cols, vals, bias, x, ldx, ldy, y};
    return run_items(batch, in, out, max_nv, threads, x, ldx, csr_rows, &ctx);
}

/* ---------------------------------------------------------------------------------------------------------------
 * N:M weight times dense input: y = x @ W.T + b where every run of m consecutive inputs of an output row holds
 * exactly n stored weights (NMLinear). W is vals[out][in / m * n] (float32) and pos[out][in / m * n] (uint8, the
 * position of each value inside its group, rising within a group).
 *
 * Same tiles, packing and write-back as the CSR kernel above. What the pattern adds: every row has the same
 * number of weights in every run of inputs, so the product can be blocked over inputs for free (no per-block
 * row pointers). Rows are taken in blocks of NM_RB; for each block of NM_KB inputs (a 64 KiB slice of the packed
 * tile at the widest tile, which stays near L1 while the NM_RB rows go over it), every row of the block adds its
 * weights of those inputs to its accumulators, kept in a small buffer between input blocks. The CSR kernel reads
 * a random row of the whole packed tile (L2) for every nonzero; this one reads it from the slice.
 *
 * Summation order: for every output, bias + per input block (in order) the products of the block, summed in two
 * interleaved partial sums. Float rounding differs from a dense GEMM's.
 * ------------------------------------------------------------------------------------------------------------- */
#define NM_RB 64  /* output rows per row block */
#define NM_KB 256 /* inputs per input block */

/* acc (16 * NV floats) = (first ? 0 : acc) + sum over groups g0..g1 of the row's weights times xt's rows. */
#define NM_ROW_KERNEL(NV)                                                                                   \
    static inline void nm_row_##NV(const float *v, const uint8_t *p, int64_t g0, int64_t g1, int n, int m,  \
                                   const float *xt, float *acc, int first) {                                \
        v16 a[NV], b[NV];                                                                                   \
        for (int u = 0; u < NV; ++u) {                                                                      \
            a[u] = first ? (v16){0} : *(const v16 *)(acc + 16 * u);                                         \
            b[u] = (v16){0};                                                                                \
        }                                                                                                   \
        if (n == 2) {                                                                                       \
            for (int64_t g = g0; g < g1; ++g) {                                                             \
                const float *base = xt + g * m * (16 * NV);                                                 \
                const v16 *q = TILE_ROW(base, p[2 * g], NV);                                                \
                const v16 *r = TILE_ROW(base, p[2 * g + 1], NV);                                            \
                const float s = v[2 * g], t = v[2 * g + 1];                                                 \
                MADD_ROW_PAIR(NV, a, s, q, b, t, r);                                                        \
            }                                                                                               \
        } else if (n == 1) {                                                                                \
            int64_t g = g0;                                                                                 \
            for (; g + 1 < g1; g += 2) {                                                                    \
                const v16 *q = TILE_ROW(xt, g * m + p[g], NV);                                              \
                const v16 *r = TILE_ROW(xt, (g + 1) * m + p[g + 1], NV);                                    \
                const float s = v[g], t = v[g + 1];                                                         \
                MADD_ROW_PAIR(NV, a, s, q, b, t, r);                                                        \
            }                                                                                               \
            if (g < g1) {                                                                                   \
                const v16 *q = TILE_ROW(xt, g * m + p[g], NV);                                              \
                MADD_ROW(NV, a, v[g], q);                                                                   \
            }                                                                                               \
        } else {                                                                                            \
            for (int64_t g = g0; g < g1; ++g) {                                                             \
                const float *base = xt + g * m * (16 * NV);                                                 \
                for (int j = 0; j < n; ++j) {                                                               \
                    const v16 *q = TILE_ROW(base, p[g * n + j], NV);                                        \
                    const float s = v[g * n + j];                                                           \
                    if (j & 1)                                                                              \
                        MADD_ROW(NV, b, s, q);                                                              \
                    else                                                                                    \
                        MADD_ROW(NV, a, s, q);                                                              \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        for (int u = 0; u < NV; ++u) *(v16 *)(acc + 16 * u) = a[u] + b[u];                                  \
    }
NM_ROW_KERNEL(1)
NM_ROW_KERNEL(2)
NM_ROW_KERNEL(4)

/* Rows r0..r1 of the product for one packed tile of width T = 16 * nv. */
static void nm_tile_rows(const float *vals, const uint8_t *pos, int64_t per_row, int n, int m, int64_t groups,
                         const float *bias, const float *xt, int nv, int64_t r0, int64_t r1, int64_t b0, int nb,
                         float *y, int64_t ldy) {
    const int T = 16 * nv;
    float acc[NM_RB * 64] __attribute__((aligned(64)));
    const int64_t block = NM_KB / m > 0 ? NM_KB / m : 1; /* groups per input block */
    for (int64_t rb = r0; rb < r1; rb += NM_RB) {
        const int64_t re = rb + NM_RB <= r1 ? rb + NM_RB : r1;
        for (int64_t g0 = 0; g0 < groups; g0 += block) {
            const int64_t g1 = g0 + block < groups ? g0 + block : groups;
            for (int64_t r = rb; r < re; ++r) {
                const float *v = vals + r * per_row;
                const uint8_t *p = pos + r * per_row;
                float *out = acc + (r - rb) * T;
                if (nv == 4)
                    nm_row_4(v, p, g0, g1, n, m, xt, out, g0 == 0);
                else if (nv == 2)
                    nm_row_2(v, p, g0, g1, n, m, xt, out, g0 == 0);
                else
                    nm_row_1(v, p, g0, g1, n, m, xt, out, g0 == 0);
            }
        }
        if (groups == 0) memset(acc, 0, sizeof(float) * (size_t)((re - rb) * T));
        for (int64_t i = rb; i < re; i += ROWS) {
            const int nr = i + ROWS <= re ? ROWS : (int)(re - i);
            write_back(acc + (i - rb) * T, T, i, nr, b0, nb, bias, y, ldy);
        }
    }
}

/* Batch rows b0..b0+nb read straight from x (no packing): for the last few rows of a batch. */
static void nm_direct_rows(const float *vals, const uint8_t *pos, int64_t per_row, int n, int m, const float *bias,
                           const float *x, int64_t ldx, int64_t r0, int64_t r1, int64_t b0, int nb, float *y,
                           int64_t ldy) {
    for (int j = 0; j < nb; ++j) {
        const float *src = x + (b0 + j) * ldx;
        float *dst = y + (b0 + j) * ldy;
        for (int64_t r = r0; r < r1; ++r) {
            const float *v = vals + r * per_row;
            const uint8_t *p = pos + r * per_row;
            float s0 = 0.0f, s1 = 0.0f;
            int64_t k = 0;
            for (; k + 1 < per_row; k += 2) {
                s0 = __builtin_fmaf(v[k], src[(k / n) * m + p[k]], s0);
                s1 = __builtin_fmaf(v[k + 1], src[((k + 1) / n) * m + p[k + 1]], s1);
            }
            if (k < per_row) s0 = __builtin_fmaf(v[k], src[(k / n) * m + p[k]], s0);
            dst[r] = (bias ? bias[r] : 0.0f) + (s0 + s1);
        }
    }
}

typedef struct {
    const float *vals;
    const uint8_t *pos;
    int64_t per_row, groups;
    int n, m;
    const float *bias, *x;
    int64_t ldx, ldy;
    float *y;
} nm_ctx;

static void nm_rows(const void *ctx, const tile_t *tile, const float *xt, int64_t r0, int64_t r1) {
    const nm_ctx *c = ctx;
    if (tile->nv == 0)
        nm_direct_rows(c->vals, c->pos, c->per_row, c->n, c->m, c->bias, c->x, c->ldx, r0, r1, tile->b0, tile->nb,
                       c->y, c->ldy);
    else
        nm_tile_rows(c->vals, c->pos, c->per_row, c->n, c->m, c->groups, c->bias, xt, tile->nv, r0, r1, tile->b0,
                     tile->nb, c->y, c->ldy);
}

/* y = x @ W.T + bias for N:M W (out x in, n of every m inputs stored; in a multiple of m, 1 <= n < m <= 256).
 * bias may be NULL. The positions are trusted (the caller checks them once). Widest tile: 64 batch rows.
 * Returns 0, or -1 when a buffer could not be allocated or an argument is out of range (y then undefined). */
int nm_linear_f32(int64_t batch, int64_t in, int64_t out, int n, int m, const float *vals, const uint8_t *pos,
                  const float *bias, const float *x, int64_t ldx, float *y, int64_t ldy, int threads) {
    if (batch < 0 || in < 0 || out < 0 || n < 1 || m <= n || m > 256 || in % m) return -1;
    if (batch == 0 || out == 0) return 0;
    const int64_t groups = in / m;
    const nm_ctx ctx = {vals, pos, groups * n, groups, n, m, bias, x, ldx, ldy, y};
    return run_items(batch, in, out, 4, threads, x, ldx, nm_rows, &ctx);
}
