#include "common.h"

// Soft MoE (Puigcerver et al. 2023) dispatch and combine; the definition is Reference.softMoEDispatch
// and Reference.softMoECombine (Sources/SwitchyardReference/SoftMoE.swift). The host computes the
// logits X·Φ `[B][T][n]` f32 with the dense matmul; these kernels add the two softmaxes and the
// two token/slot mixes:
//   C     = softmax over the slots of each token's row      (softmoe_softmax_slots)
//   D     = softmax over the tokens of each slot's column   (softmoe_softmax_tokens, layout [B][T][n])
//   slots X̃ = Dᵀ · X   (softmoe_mix with A = D read transposed, rows of x)
//   y     = C · Ỹ      (softmoe_mix with A = C [B][T][n], rows of the expert outputs, optionally
//                       read through the fixed routing's row map)
// Every mixed output element is one f32 multiply-add (SY_MAD) chain in k order, so it never depends on its tile.
// Each softmax exponentiates an element once (stored, then divided by the sum in place).
//
// Defines: X_T/X_LOAD/X_DT the mixed rows' storage, Y_T/Y_STORE the output's; VW the float vector
// width (the device's native one on CPU-class devices, 1 where work-items are SIMD lanes); RA rows
// × NV vectors of VW floats per softmoe_mix work-item; ROWS_PER_ITEM rows per
// softmoe_softmax_slots work-item.

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

// The f32 logits [B][T][n] (row-major, as the matmul writes them) in VW-wide runs.
#if VW == 1
#define LOADF(p) (*(p))
#define STOREF(v, p) (*(p) = (v))
#else
#define LOADF(p) SY_CAT(vload, VW)(0, (p))
#define STOREF(v, p) SY_CAT(vstore, VW)((v), 0, (p))
#endif

// Dispatch weights D[b][t][s] = exp(l[b][t][s] − max_t) / Σ_t exp(l[b][t][s] − max_t) (softmax over
// the tokens, each slot's column, NaN-ignoring maximum), in the logits' layout [B][T][n]. A
// work-item owns VW consecutive slots of one batch (get_global_id(0) the slot run, (1) the batch)
// as the lanes of one vector: it walks down the tokens three times (maximum; exp, stored, and
// its sum; division), each column's sum in token order. Where work-items are SIMD lanes VW is 1:
// one column per lane, consecutive lanes on consecutive slots; its loops run 3·T ≤ 49,152
// iterations (T ≤ 16,384), below llvmpipe's 65,535.
__kernel void softmoe_softmax_tokens(__global const float* logits, __global float* d, int tokens, int slots, int runs) {
    const int run = get_global_id(0);
    const int b = get_global_id(1);
    if (run >= runs) return;
    const int s0 = run * VW;
    const size_t base = (size_t)b * (size_t)tokens * (size_t)slots;
    __global const float* l = logits + base;
    __global float* o = d + base;
    if (s0 + VW <= slots) {
        VEC m = (VEC)(-INFINITY);
        for (int t = 0; t < tokens; ++t) m = fmax(m, LOADF(l + (size_t)t * (size_t)slots + s0));
        VEC sum = (VEC)(0.0f);
        for (int t = 0; t < tokens; ++t) {
            const size_t at = (size_t)t * (size_t)slots + s0;
            const VEC e = exp(LOADF(l + at) - m);
            STOREF(e, o + at);
            sum += e;
        }
        for (int t = 0; t < tokens; ++t) {
            const size_t at = (size_t)t * (size_t)slots + s0;
            STOREF(LOADF(o + at) / sum, o + at);
        }
        return;
    }
    // The last, partial run (VW > 1 only): its columns one at a time, the same chains.
    for (int s = s0; s < slots; ++s) {
        float m = -INFINITY;
        for (int t = 0; t < tokens; ++t) m = fmax(m, l[(size_t)t * (size_t)slots + s]);
        float sum = 0.0f;
        for (int t = 0; t < tokens; ++t) {
            const size_t at = (size_t)t * (size_t)slots + s;
            const float e = exp(l[at] - m);
            o[at] = e;
            sum += e;
        }
        for (int t = 0; t < tokens; ++t) o[(size_t)t * (size_t)slots + s] /= sum;
    }
}

// Combine weights C[r][s] = softmax over the slots of logits row r (of B·T rows): a work-item
// owns ROWS_PER_ITEM consecutive rows (get_global_id(0)) and reads each in VW-wide vectors:
// maximum, exp (stored) and its sum, division; the vector lanes' partial sums meet in a fixed
// tree (common.h's SY_HSUM), then the row's tail (n mod VW) in order, so a row's result is the
// same whatever rows share its work-item. Where work-items are lanes VW is 1 and ROWS_PER_ITEM 1:
// a lane per row, its loops 3·n ≤ 49,152 iterations (n ≤ 16,384).
#ifndef ROWS_PER_ITEM
#define ROWS_PER_ITEM 1
#endif
__kernel void softmoe_softmax_slots(__global const float* logits, __global float* c, int rows, int slots) {
    const int r0 = get_global_id(0) * ROWS_PER_ITEM;
    const int body = slots / VW * VW;
    for (int i = 0; i < ROWS_PER_ITEM; ++i) {
        const int r = r0 + i;
        if (r >= rows) return;
        __global const float* l = logits + (size_t)r * (size_t)slots;
        __global float* o = c + (size_t)r * (size_t)slots;
        VEC mv = (VEC)(-INFINITY);
        for (int s = 0; s < body; s += VW) mv = fmax(mv, LOADF(l + s));
        float m = SY_HMAX(VW, mv);
        for (int s = body; s < slots; ++s) m = fmax(m, l[s]);
        VEC sv = (VEC)(0.0f);
        const VEC mb = (VEC)m;
        for (int s = 0; s < body; s += VW) {
            const VEC e = exp(LOADF(l + s) - mb);
            STOREF(e, o + s);
            sv += e;
        }
        float sum = SY_HSUM(VW, sv);
        for (int s = body; s < slots; ++s) {
            const float e = exp(l[s] - m);
            o[s] = e;
            sum += e;
        }
        const VEC sb = (VEC)sum;
        for (int s = 0; s < body; s += VW) STOREF(LOADF(o + s) / sb, o + s);
        for (int s = body; s < slots; ++s) o[s] /= sum;
    }
}

// The memory row of mixed row k of batch b: b·K + k, or row_of[b·K + k] when use_map (−1 when
// out of [0, rows): the row then counts as zero).
inline int mix_row(int b, int k, int K, __global const int* row_of, int use_map, int rows) {
    if (!use_map) return b * K + k;
    const int r = row_of[(size_t)b * (size_t)K + k];
    return (r >= 0 && r < rows) ? r : -1;
}

// y[b][m][:] = Σ_k a[b](m, k) · x[row(b, k)][:] with a f32, batch b's M × K block at a + b·M·K,
// element (m, k) at m·a_sm + k·a_sk (the combine's C [B][T][n]: a_sm = n, a_sk = 1; the dispatch
// weights D [B][T][n] read transposed: a_sm = 1, a_sk = n), and x [rows][N] (CPU-class
// devices): a work-item computes RA rows × one panel of PANEL columns (get_global_id(0) the row
// tile, (1) the panel, (2) the batch), each element one multiply-add (SY_MAD) chain over k in order. A panel past
// N's end takes the same chains element by element.
__kernel void softmoe_mix(__global const float* a, int a_sm, int a_sk, __global const X_T* x, __global const int* row_of,
                          int use_map, int rows, __global Y_T* y, int M, int K, int N, int tiles) {
    const int tile = get_global_id(0);
    const int c0 = get_global_id(1) * PANEL;
    const int b = get_global_id(2);
    if (tile >= tiles || c0 >= N) return;
    const int m0 = tile * RA;
    __global const float* ar[RA];
#pragma unroll
    for (int r = 0; r < RA; ++r)
        ar[r] = a + (size_t)b * (size_t)M * (size_t)K + (size_t)min(m0 + r, M - 1) * (size_t)a_sm;
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
                const VEC av = (VEC)ar[r][(size_t)k * (size_t)a_sk];
#pragma unroll
                for (int v = 0; v < NV; ++v) acc[r][v] = SY_MAD(av, w[v], acc[r][v]);
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
            const float av = ar[r][(size_t)k * (size_t)a_sk];
            for (int c = 0; c < width; ++c) acc[r][c] = SY_MAD(av, X_LOAD(xr, c), acc[r][c]);
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
__kernel void softmoe_mix_lanes(__global const float* a, int a_sm, int a_sk, __global const X_T* x,
                                __global const int* row_of, int use_map, int rows, __global Y_T* y, int M, int K, int N) {
    const int c = get_global_id(0);
    const int m = get_global_id(1);
    const int b = get_global_id(2);
    if (c >= N) return;
    __global const float* ar = a + (size_t)b * (size_t)M * (size_t)K + (size_t)m * (size_t)a_sm;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const int row = mix_row(b, k, K, row_of, use_map, rows);
        if (row >= 0) acc = SY_MAD(ar[(size_t)k * (size_t)a_sk], X_LOAD(x, (size_t)row * (size_t)N + c), acc);
    }
    Y_STORE(y, ((size_t)b * (size_t)M + (size_t)m) * (size_t)N + c, acc);
}
