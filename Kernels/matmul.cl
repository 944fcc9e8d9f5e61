#include "common.h"

// Grouped expert matmul: for every expert e, Y_e = X_e · W_eᵀ over the expert's rows of the
// expert-ordered activations, one launch for all experts, driven by the tile -> expert map of the
// permutation (tiles of ROWS rows; tiles past the padded total exit at once, so the grid is
// sized for the worst case and nothing is read back). Dense mode (a router or a shared expert)
// is the same kernel with one expert and `dense_rows` rows.
//
// Defines: A_T/A_LOAD activations; W_DT (0 f32, 1 f16, 2 bf16) weights; Y_T/Y_STORE output;
// ROWS rows per work-item; EPILOGUE (0 none, 1 SiLU, 2 GELU tanh, 3 GELU erf, 4 SwiGLU, 5 sigmoid).
//
// Every output element is one f32 dot product accumulated in k order by one work-item, so a
// row's result never depends on its tile, its expert's load or the batch (batch invariance).

#ifndef ROWS
#define ROWS 4
#endif
#ifndef EPILOGUE
#define EPILOGUE 0
#endif
#ifndef W_DT
#define W_DT 0
#endif

#if W_DT == 0
#define W_T float
#define W_RAW uint
#define W_LOAD16(p, i) vload16((i), (p))
#define W_LOAD1(p, i) ((p)[i])
#elif W_DT == 1
#define W_T half
#define W_RAW ushort
#define W_LOAD16(p, i) vload_half16((i), (p))
#define W_LOAD1(p, i) vload_half((i), (p))
#else
#define W_T ushort
#define W_RAW ushort
#define W_LOAD16(p, i) as_float16(convert_uint16(vload16((i), (p))) << 16)
#define W_LOAD1(p, i) as_float(((uint)(p)[i]) << 16)
#endif

#define PANEL 64

inline float silu(float v) { return v / (1.0f + exp(-v)); }
inline float gelu_tanh(float v) {
    return 0.5f * v * (1.0f + tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}
inline float gelu_erf(float v) { return 0.5f * v * (1.0f + erf(v * 0.7071067811865476f)); }

inline float activate(float v) {
#if EPILOGUE == 1
    return silu(v);
#elif EPILOGUE == 2
    return gelu_tanh(v);
#elif EPILOGUE == 3
    return gelu_erf(v);
#elif EPILOGUE == 5
    return 1.0f / (1.0f + exp(-v));
#else
    return v;
#endif
}

// Source row of A for output row `row`, or -1 when the row is padding (its output is zero).
// gather_k > 0: A is x [T, K] read through the permutation (fused gather); else A is xs.
inline int source_row(int row, int dense_rows, __global const int* assignment_of, int gather_k, int tokens_k) {
    if (dense_rows > 0) return row < dense_rows ? row : -1;
    if (gather_k > 0) {
        const int a = assignment_of[row];
        return (a >= 0 && a < tokens_k) ? a / gather_k : -1;
    }
    const int a = assignment_of[row];
    return (a >= 0 && a < tokens_k) ? row : -1;
}

inline float row_scale_of(int row, int scale_mode, __global const float* scale, __global const int* assignment_of,
                          int tokens_k) {
    if (scale_mode == 1) return scale[row];
    if (scale_mode == 2) {
        const int a = assignment_of[row];
        return (a >= 0 && a < tokens_k) ? scale[a] : 0.0f;
    }
    return 1.0f;
}

// Packed weights: per expert, panels of 64 output columns, each stored k-major
// ([panel][k][64]), so one k step reads 64 consecutive weights (four float16 loads) that every
// row of the tile reuses from registers. For SwiGLU a panel holds 32 gate then 32 up columns.
inline void packed_tile(__global const A_T* a, __global const int* assignment_of, int gather_k,
                        __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                        __global const float* scale, int scale_mode, int K, int N, int panels, int dense_rows,
                        int tokens_k, int block, int max_rows, const int tile, const int panel) {
    const int e = dense_rows > 0 ? 0 : tile_expert[tile * ROWS / block];
    const int row0 = tile * ROWS;
    if (e < 0) {  // past the padded total: defined as zeros (a cheap write, no weight read)
#if EPILOGUE == 4
        const int width = PANEL / 2;
#else
        const int width = PANEL;
#endif
        for (int r = 0; r < ROWS && row0 + r < max_rows; ++r)
            for (int j = 0; j < width; ++j) {
                const int col = panel * width + j;
                if (col < N) Y_STORE(y, (size_t)(row0 + r) * (size_t)N + col, 0.0f);
            }
        return;
    }
    if (dense_rows > 0 && row0 >= dense_rows) return;

    // Padding rows read a valid row (the tile's first real one, or row 0) and store zeros, so
    // the k loop has no branch.
    int src[ROWS];
    __global const A_T* ap[ROWS];
    int fallback = 0;
#pragma unroll
    for (int r = ROWS - 1; r >= 0; --r) {
        src[r] = source_row(row0 + r, dense_rows, assignment_of, gather_k, tokens_k);
        if (src[r] >= 0) fallback = src[r];
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) ap[r] = a + (size_t)(src[r] >= 0 ? src[r] : fallback) * (size_t)K;

    float16 acc0[ROWS], acc1[ROWS], acc2[ROWS], acc3[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        acc0[r] = (float16)0.0f;
        acc1[r] = (float16)0.0f;
        acc2[r] = (float16)0.0f;
        acc3[r] = (float16)0.0f;
    }
    __global const W_T* wp = w + ((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K * PANEL;
    for (int k = 0; k < K; ++k) {
        const float16 w0 = W_LOAD16(wp, 4 * k + 0);
        const float16 w1 = W_LOAD16(wp, 4 * k + 1);
        const float16 w2 = W_LOAD16(wp, 4 * k + 2);
        const float16 w3 = W_LOAD16(wp, 4 * k + 3);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const float av = A_LOAD(ap[r], k);
            acc0[r] = fma((float16)av, w0, acc0[r]);
            acc1[r] = fma((float16)av, w1, acc1[r]);
            acc2[r] = fma((float16)av, w2, acc2[r]);
            acc3[r] = fma((float16)av, w3, acc3[r]);
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        if (row >= max_rows) continue;
        const float s = src[r] >= 0 ? row_scale_of(row, scale_mode, scale, assignment_of, tokens_k) : 0.0f;
        float v[PANEL];
        vstore16(acc0[r], 0, v);
        vstore16(acc1[r], 1, v);
        vstore16(acc2[r], 2, v);
        vstore16(acc3[r], 3, v);
        const size_t out = (size_t)row * (size_t)N;
#if EPILOGUE == 4
        for (int j = 0; j < PANEL / 2; ++j) {
            const int col = panel * (PANEL / 2) + j;
            if (col < N) Y_STORE(y, out + col, src[r] >= 0 ? silu(v[j]) * v[j + PANEL / 2] * s : 0.0f);
        }
#else
        for (int j = 0; j < PANEL; ++j) {
            const int col = panel * PANEL + j;
            if (col < N) Y_STORE(y, out + col, src[r] >= 0 ? activate(v[j]) * s : 0.0f);
        }
#endif
    }
}

#ifndef TILE_STEP
#define TILE_STEP 1
#endif

// Each work-item computes TILE_STEP consecutive row tiles of one panel (fewer, longer
// work-items: the panel stays in cache and the per-work-group cost is paid less often).
__kernel void grouped_matmul_packed(__global const A_T* a, __global const int* assignment_of, int gather_k,
                                    __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                                    __global const float* scale, int scale_mode, int K, int N, int panels,
                                    int dense_rows, int tokens_k, int tiles, int block, int max_rows) {
    const int first = get_global_id(0) * TILE_STEP;
    const int panel = get_global_id(1);
    if (panel >= panels) return;
    for (int tile = first; tile < first + TILE_STEP && tile < tiles; ++tile)
        packed_tile(a, assignment_of, gather_k, w, tile_expert, y, scale, scale_mode, K, N, panels, dense_rows,
                    tokens_k, block, max_rows, tile, panel);
}

// Unpacked weights in the checkpoint layout [E, N_w, K] (N_w = N, or 2N for SwiGLU with the
// gate rows first): each work-item computes ROWS rows × 8 output columns as dot products along
// k (float8 partial sums, then their lanes in a fixed order, then the k tail).
#define COLS 8
__kernel void grouped_matmul_plain(__global const A_T* a, __global const int* assignment_of, int gather_k,
                                   __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                                   __global const float* scale, int scale_mode, int K, int N, int col_groups,
                                   int dense_rows, int tokens_k, int tiles, int block, int max_rows) {
    const int tile = get_global_id(0);
    const int cg = get_global_id(1);
    if (tile >= tiles || cg >= col_groups) return;
    const int e = dense_rows > 0 ? 0 : tile_expert[tile * ROWS / block];
    const int row0 = tile * ROWS;
    if (e < 0) {  // past the padded total: zeros
        for (int r = 0; r < ROWS && row0 + r < max_rows; ++r)
            for (int c = 0; c < COLS; ++c)
                if (cg * COLS + c < N) Y_STORE(y, (size_t)(row0 + r) * (size_t)N + cg * COLS + c, 0.0f);
        return;
    }
    if (dense_rows > 0 && row0 >= dense_rows) return;
#if EPILOGUE == 4
    const int wrows = 2 * N;
#else
    const int wrows = N;
#endif
    __global const W_T* we = w + (size_t)e * (size_t)wrows * (size_t)K;
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        if (row >= max_rows) break;
        const int s_row = source_row(row, dense_rows, assignment_of, gather_k, tokens_k);
        const size_t out = (size_t)row * (size_t)N;
        const float s = s_row >= 0 ? row_scale_of(row, scale_mode, scale, assignment_of, tokens_k) : 0.0f;
        for (int c = 0; c < COLS; ++c) {
            const int col = cg * COLS + c;
            if (col >= N) break;
            if (s_row < 0) {
                Y_STORE(y, out + col, 0.0f);
                continue;
            }
            __global const A_T* ar = a + (size_t)s_row * (size_t)K;
#if EPILOGUE == 4
            const int nw = 2;
#else
            const int nw = 1;
#endif
            float dots[2];
            for (int h = 0; h < nw; ++h) {
                __global const W_T* wr = we + (size_t)(col + h * N) * (size_t)K;
                float8 acc = (float8)0.0f;
                int k = 0;
                for (; k + 8 <= K; k += 8) {
                    float8 av;
                    av.s0 = A_LOAD(ar, k + 0);
                    av.s1 = A_LOAD(ar, k + 1);
                    av.s2 = A_LOAD(ar, k + 2);
                    av.s3 = A_LOAD(ar, k + 3);
                    av.s4 = A_LOAD(ar, k + 4);
                    av.s5 = A_LOAD(ar, k + 5);
                    av.s6 = A_LOAD(ar, k + 6);
                    av.s7 = A_LOAD(ar, k + 7);
                    float8 wv;
                    wv.s0 = W_LOAD1(wr, k + 0);
                    wv.s1 = W_LOAD1(wr, k + 1);
                    wv.s2 = W_LOAD1(wr, k + 2);
                    wv.s3 = W_LOAD1(wr, k + 3);
                    wv.s4 = W_LOAD1(wr, k + 4);
                    wv.s5 = W_LOAD1(wr, k + 5);
                    wv.s6 = W_LOAD1(wr, k + 6);
                    wv.s7 = W_LOAD1(wr, k + 7);
                    acc = fma(av, wv, acc);
                }
                float d = ((acc.s0 + acc.s1) + (acc.s2 + acc.s3)) + ((acc.s4 + acc.s5) + (acc.s6 + acc.s7));
                for (; k < K; ++k) d = fma(A_LOAD(ar, k), W_LOAD1(wr, k), d);
                dots[h] = d;
            }
#if EPILOGUE == 4
            Y_STORE(y, out + col, silu(dots[0]) * dots[1] * s);
#else
            Y_STORE(y, out + col, activate(dots[0]) * s);
#endif
        }
    }
}

// One-time repack of [E, N_w, K] weights into the panel layout above (bits copied, so the
// packed weights keep their storage type). One work-item per (k, panel, expert).
__kernel void pack_weights(__global const W_RAW* w, __global W_RAW* packed, int K, int N, int panels, int swiglu) {
    const int k = get_global_id(0);
    const int panel = get_global_id(1);
    const int e = get_global_id(2);
    if (k >= K || panel >= panels) return;
    const int wrows = swiglu ? 2 * N : N;
    __global const W_RAW* we = w + (size_t)e * (size_t)wrows * (size_t)K;
    __global W_RAW* out = packed + (((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K + (size_t)k) * PANEL;
    for (int j = 0; j < PANEL; ++j) {
        int src;
        if (swiglu) {
            const int col = panel * (PANEL / 2) + (j % (PANEL / 2));
            src = col < N ? (j < PANEL / 2 ? col : N + col) : -1;
        } else {
            const int col = panel * PANEL + j;
            src = col < N ? col : -1;
        }
        out[j] = src >= 0 ? we[(size_t)src * (size_t)K + k] : (W_RAW)0;
    }
}
