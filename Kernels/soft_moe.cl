#include "common.h"

// Soft MoE (Puigcerver et al. 2023) dispatch and combine; the definition is Reference.softMoEDispatch
// and Reference.softMoECombine (Sources/SwitchyardReference/SoftMoE.swift). The host computes the
// logits X·Φ with the dense matmul and the combine weights with softmax_rows; these kernels add
// the dispatch weights (softmax over tokens) and the two token/slot mixes:
//   slots X̃ = Dᵀ · X   (softmoe_mix with A = Dᵀ [B][n][T], rows of x)
//   y     = C · Ỹ      (softmoe_mix with A = C [B][T][n], rows of the expert outputs, optionally
//                       read through the fixed routing's row map)
// Every output element is one f32 fma chain in k order, so it never depends on its tile.
//
// Defines: X_T/X_LOAD/X_DT the mixed rows' storage, Y_T/Y_STORE the output's; RA rows × NV
// vectors of VW floats per work-item (CPU-class devices), GROUP the work-group size where used.

#ifndef RA
#define RA 4
#endif
#ifndef VW
#define VW 1
#endif
#ifndef NV
#define NV 4
#endif
#define PANEL (NV * VW)

#if VW == 1
#define VEC float
#define LOADV(p) X_LOAD((p), 0)
#define VSTORE_PRIVATE(v, i, p) ((p)[i] = (v))
#else
#define VEC SY_CAT(float, VW)
#define VSTORE_PRIVATE(v, i, p) SY_CAT(vstore, VW)((v), (i), (p))
#if X_DT == 0
#define LOADV(p) SY_CAT(vload, VW)(0, (p))
#elif X_DT == 1
#define LOADV(p) SY_CAT(vload_half, VW)(0, (__global const half*)(p))
#else
#define LOADV(p) SY_CAT(as_float, VW)(SY_CAT(convert_uint, VW)(SY_CAT(vload, VW)(0, (p))) << 16)
#endif
#endif

// Dispatch weights, transposed: dt[b][s][t] = exp(l[b][t][s] − max_t) / Σ_t exp(l[b][t][s] − max_t),
// one work-group of GROUP work-items per (slot s, batch b) = (get_group_id(0), get_group_id(1)),
// each striding over the tokens, reductions in a fixed tree (as softmax_rows).
__kernel void softmoe_dispatch_weights(__global const float* logits, __global float* dt, int tokens, int slots) {
    const int s = get_group_id(0);
    const int b = get_group_id(1);
    const int lid = get_local_id(0);
    __local float red[GROUP];
    __global const float* col = logits + (size_t)b * (size_t)tokens * (size_t)slots + s;
    float m = -INFINITY;
    for (int t = lid; t < tokens; t += GROUP) m = fmax(m, col[(size_t)t * (size_t)slots]);
    red[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = GROUP / 2; h > 0; h >>= 1) {
        if (lid < h) red[lid] = fmax(red[lid], red[lid + h]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float sum = 0.0f;
    for (int t = lid; t < tokens; t += GROUP) sum += exp(col[(size_t)t * (size_t)slots] - m);
    red[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = GROUP / 2; h > 0; h >>= 1) {
        if (lid < h) red[lid] += red[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    sum = red[0];
    __global float* out = dt + ((size_t)b * (size_t)slots + s) * (size_t)tokens;
    for (int t = lid; t < tokens; t += GROUP) out[t] = exp(col[(size_t)t * (size_t)slots] - m) / sum;
}

// The memory row of mixed row k of batch b: b·K + k, or row_of[b·K + k] when use_map (−1 when
// out of [0, rows): the row then counts as zero).
inline int mix_row(int b, int k, int K, __global const int* row_of, int use_map, int rows) {
    if (!use_map) return b * K + k;
    const int r = row_of[(size_t)b * (size_t)K + k];
    return (r >= 0 && r < rows) ? r : -1;
}

// y[b][m][:] = Σ_k a[b][m][k] · x[row(b, k)][:] with a f32 [B][M][K] and x [rows][N] (CPU-class
// devices): a work-item computes RA rows × one panel of PANEL columns (get_global_id(0) the row
// tile, (1) the panel, (2) the batch), each element one fma chain over k in order. A panel past
// N's end takes the same chains element by element.
__kernel void softmoe_mix(__global const float* a, __global const X_T* x, __global const int* row_of, int use_map,
                          int rows, __global Y_T* y, int M, int K, int N, int tiles) {
    const int tile = get_global_id(0);
    const int c0 = get_global_id(1) * PANEL;
    const int b = get_global_id(2);
    if (tile >= tiles || c0 >= N) return;
    const int m0 = tile * RA;
    __global const float* ar[RA];
#pragma unroll
    for (int r = 0; r < RA; ++r) ar[r] = a + ((size_t)b * (size_t)M + (size_t)min(m0 + r, M - 1)) * (size_t)K;
    if (c0 + PANEL <= N) {
        VEC acc[RA][NV];
#pragma unroll
        for (int r = 0; r < RA; ++r)
#pragma unroll
            for (int v = 0; v < NV; ++v) acc[r][v] = (VEC)0.0f;
        for (int k = 0; k < K; ++k) {
            const int row = mix_row(b, k, K, row_of, use_map, rows);
            if (row < 0) continue;
            __global const X_T* xr = x + (size_t)row * (size_t)N + c0;
            VEC w[NV];
#pragma unroll
            for (int v = 0; v < NV; ++v) w[v] = LOADV(xr + v * VW);
#pragma unroll
            for (int r = 0; r < RA; ++r) {
                const VEC av = (VEC)ar[r][k];
#pragma unroll
                for (int v = 0; v < NV; ++v) acc[r][v] = fma(av, w[v], acc[r][v]);
            }
        }
#pragma unroll
        for (int r = 0; r < RA; ++r) {
            if (m0 + r >= M) break;
            float out[PANEL];
#pragma unroll
            for (int v = 0; v < NV; ++v) VSTORE_PRIVATE(acc[r][v], v, out);
            __global Y_T* yr = y + ((size_t)b * (size_t)M + (size_t)(m0 + r)) * (size_t)N + c0;
            for (int c = 0; c < PANEL; ++c) Y_STORE(yr, c, out[c]);
        }
        return;
    }
    const int width = N - c0;
    float acc[RA][PANEL];
    for (int r = 0; r < RA; ++r)
        for (int c = 0; c < PANEL; ++c) acc[r][c] = 0.0f;
    for (int k = 0; k < K; ++k) {
        const int row = mix_row(b, k, K, row_of, use_map, rows);
        if (row < 0) continue;
        __global const X_T* xr = x + (size_t)row * (size_t)N + c0;
        for (int r = 0; r < RA; ++r) {
            const float av = ar[r][k];
            for (int c = 0; c < width; ++c) acc[r][c] = fma(av, X_LOAD(xr, c), acc[r][c]);
        }
    }
    for (int r = 0; r < RA && m0 + r < M; ++r) {
        __global Y_T* yr = y + ((size_t)b * (size_t)M + (size_t)(m0 + r)) * (size_t)N + c0;
        for (int c = 0; c < width; ++c) Y_STORE(yr, c, acc[r][c]);
    }
}

// softmoe_mix where work-items are SIMD lanes: one output element per lane (get_global_id(0)
// the column, (1) the row, (2) the batch); consecutive lanes read consecutive columns. A lane's
// only loop is over k (K ≤ 16,384, far below llvmpipe's 65,535).
__kernel void softmoe_mix_lanes(__global const float* a, __global const X_T* x, __global const int* row_of,
                                int use_map, int rows, __global Y_T* y, int M, int K, int N) {
    const int c = get_global_id(0);
    const int m = get_global_id(1);
    const int b = get_global_id(2);
    if (c >= N) return;
    __global const float* ar = a + ((size_t)b * (size_t)M + (size_t)m) * (size_t)K;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const int row = mix_row(b, k, K, row_of, use_map, rows);
        if (row >= 0) acc = fma(ar[k], X_LOAD(x, (size_t)row * (size_t)N + c), acc);
    }
    Y_STORE(y, ((size_t)b * (size_t)M + (size_t)m) * (size_t)N + c, acc);
}
