#include "common.h"

// Quantized expert weights: quantizing float weights [E, N_w, K] once on the device (int8 with
// one f32 scale per row; int4 in groups along K with an f16 scale and an optional zero point),
// and repacking codes and scales (quantized here, or read from a checkpoint: MXFP4, FP8) into
// the panel layout the grouped matmul reads (Kernels/matmul.cl, QFMT):
//   codes  [E, panels, K, PANEL]    one byte per value (int8, FP8), or
//          [E, panels, K, PANEL/2]  two 4-bit values per byte (int4, MXFP4): byte j holds
//                                   panel column j (low nibble) and j + PANEL/2 (high nibble);
//   scales [E, panels, groups, PANEL], zeros (int4 with a zero point) likewise: a panel's are
//   contiguous, group-major.
// The codes and scales are defined by Sources/SwitchyardReference/QuantizedWeights.swift and
// must match it bit for bit. No work-item loops longer than one group (at most 32768).
//
// Defines: W_DT (0 f32, 1 f16, 2 bf16) of the float weights; PANEL; SRC_NIBBLES / DST_NIBBLES
// (4-bit source / destination codes); SCALE_T the raw type copied by pack_scales.

#ifndef W_DT
#define W_DT 0
#endif
#ifndef PANEL
#define PANEL 64
#endif
#ifndef SRC_NIBBLES
#define SRC_NIBBLES 0
#endif
#ifndef DST_NIBBLES
#define DST_NIBBLES 0
#endif
#ifndef SCALE_T
#define SCALE_T uint
#endif

#if W_DT == 0
#define W_T float
#define W_LOAD1(p, i) ((p)[i])
#elif W_DT == 1
#define W_T half
#define W_LOAD1(p, i) vload_half((i), (p))
#else
#define W_T ushort
#define W_LOAD1(p, i) as_float(((uint)(p)[i]) << 16)
#endif

#define INV127 as_float(0x3C010204u)
#define INV7 as_float(0x3E124925u)
#define INV15 as_float(0x3D888889u)

// round-to-nearest-even of the exact quotient w / s (s > 0 finite, w finite, |w / s| small),
// clamped to lo...hi. The division only gives a first guess (OpenCL allows it 2.5 ulp); the
// guess is corrected with exact signs: fma((q ± 1/2), s, −w) is the exact (q ± 1/2)·s − w
// rounded once, so its sign and whether it is zero (a tie) are exact.
inline int rounded_quotient(float w, float s, int lo, int hi) {
    float q = clamp(rint(w / s), (float)(lo - 4), (float)(hi + 4));
    for (int i = 0; i < 2; ++i) {
        const float up = fma(q + 0.5f, s, -w);  // < 0: w/s above q + 1/2
        const float down = fma(q - 0.5f, s, -w);  // > 0: w/s below q − 1/2
        const int odd = ((int)q) & 1;
        if (up < 0.0f || (up == 0.0f && odd)) q += 1.0f;
        else if (down > 0.0f || (down == 0.0f && odd)) q -= 1.0f;
    }
    return clamp((int)q, lo, hi);
}

// f32 rounded to f16 (nearest even) and back.
inline float round_f16(float v, ushort* bits) {
    ushort h[1];
    vstore_half_rte(v, 0, (half*)h);
    *bits = h[0];
    return vload_half(0, (const half*)h);
}

// One (group, row) of quantize_scales.
inline void quantize_group(__global const W_T* w, __global float* scales_f32, __global ushort* scales_f16,
                           __global uchar* zeros, __global int* status, size_t r, int K, int group, int groups,
                           int g, int mode) {
    __global const W_T* p = w + r * (size_t)K;
    const int k0 = g * group;
    const int k1 = min(K, k0 + group);
    float amax = 0.0f, lo = 0.0f, hi = 0.0f;
    int finite = 1;
    for (int k = k0; k < k1; ++k) {
        const float v = W_LOAD1(p, k);
        finite &= isfinite(v);
        amax = fmax(amax, fabs(v));
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    const size_t j = r * (size_t)groups + g;
    if (mode == 0) {
        scales_f32[j] = finite ? amax * INV127 : as_float(0x7FC00000u);
        return;
    }
    ushort bits;
    const float s = round_f16(mode == 1 ? amax * INV7 : (hi - lo) * INV15, &bits);
    if (finite && !isfinite(s)) atomic_min(status, (int)r);  // the first such row (rows fit an int)
    scales_f16[j] = finite ? bits : (ushort)0x7E00;
    if (mode == 2) zeros[j] = (finite && s > 0.0f && isfinite(s)) ? (uchar)rounded_quotient(-lo, s, 0, 15) : (uchar)0;
}

// Scales (and zeros) of every (group, row): one work-item each, one pass over the group; rows
// strided over the grid's second dimension (the host caps it: some drivers cap a grid's second
// and third dimensions at 65,535 work-groups, and a whole stacked layer has more rows).
// MODE 0: int8 (group = K, f32 scale), 1: int4 symmetric, 2: int4 with a zero point.
// status[0] (INT_MAX before) lowered to the row of a group of finite weights that has no finite
// f16 scale (its largest |w| from about 7 · 65520 on, or its range from about 15 · 65520 on): the
// host refuses the weights, naming the first such row.
__kernel void quantize_scales(__global const W_T* w, __global float* scales_f32, __global ushort* scales_f16,
                              __global uchar* zeros, __global int* status, int rows, int K, int group, int groups,
                              int mode) {
    const int g = get_global_id(0);
    if (g >= groups) return;
    for (size_t r = get_global_id(1); r < (size_t)rows; r += get_global_size(1))
        quantize_group(w, scales_f32, scales_f16, zeros, status, r, K, group, groups, g, mode);
}

// One (k, row) of quantize_codes.
inline void quantize_code(__global const W_T* w, __global const float* scales_f32, __global const ushort* scales_f16,
                          __global const uchar* zeros, __global uchar* codes, size_t r, int K, int group, int groups,
                          int k, int mode) {
    const size_t i = r * (size_t)K + k;
    const size_t j = r * (size_t)groups + k / group;
    const float v = W_LOAD1(w, i);
    const float s = mode == 0 ? scales_f32[j] : vload_half(j, (__global const half*)scales_f16);
    const int ok = s > 0.0f && isfinite(s);  // false for NaN
    if (mode == 0) {
        codes[i] = ok ? (uchar)(char)rounded_quotient(v, s, -127, 127) : (uchar)0;
    } else if (mode == 1) {
        codes[i] = ok ? (uchar)(rounded_quotient(v, s, -8, 7) + 8) : (uchar)8;
    } else {
        const int z = zeros[j];
        codes[i] = ok ? (uchar)clamp(rounded_quotient(v, s, -15, 15) + z, 0, 15) : (uchar)0;
    }
}

// Codes: one work-item per weight (k, row), after quantize_scales.
// Rows strided over the grid's second dimension, as in quantize_scales.
__kernel void quantize_codes(__global const W_T* w, __global const float* scales_f32,
                             __global const ushort* scales_f16, __global const uchar* zeros, __global uchar* codes,
                             int rows, int K, int group, int groups, int mode) {
    const int k = get_global_id(0);
    if (k >= K) return;
    for (size_t r = get_global_id(1); r < (size_t)rows; r += get_global_size(1))
        quantize_code(w, scales_f32, scales_f16, zeros, codes, r, K, group, groups, k, mode);
}

// Weight row of panel position j (−1 past the last column). For SwiGLU a panel holds PANEL/2
// gate columns then their PANEL/2 up columns; the source has gate rows first (up at N + c) or,
// `interleaved` (gpt-oss), gate 2c and up 2c + 1.
inline int panel_row(int panel, int j, int N, int swiglu, int interleaved) {
    if (swiglu) {
        const int col = panel * (PANEL / 2) + (j % (PANEL / 2));
        if (col >= N) return -1;
        const int up = j >= PANEL / 2;
        return interleaved ? 2 * col + up : col + up * N;
    }
    const int col = panel * PANEL + j;
    return col < N ? col : -1;
}

// Code of weight (row, k) of one expert's canonical codes [N_w, K]: one per byte, or
// (SRC_NIBBLES) two per byte, low nibble first.
inline uint source_code(__global const uchar* src, int row, int k, int K) {
    if (row < 0) return 0u;
    const size_t i = (size_t)row * (size_t)K + k;
#if SRC_NIBBLES
    return (src[i / 2] >> (4 * (uint)(i & 1))) & 15u;
#else
    return src[i];
#endif
}

// Repack codes [E, N_w, K] into panels: one work-item per (k, panel, expert).
__kernel void pack_codes(__global const uchar* src, __global uchar* packed, int K, int N, int panels, int swiglu,
                         int interleaved) {
    const int k = get_global_id(0);
    const int panel = get_global_id(1);
    const int e = get_global_id(2);
    if (k >= K || panel >= panels) return;
    const int wrows = swiglu ? 2 * N : N;
#if SRC_NIBBLES
    __global const uchar* se = src + (size_t)e * (size_t)wrows * (size_t)K / 2;
#else
    __global const uchar* se = src + (size_t)e * (size_t)wrows * (size_t)K;
#endif
#if DST_NIBBLES
    __global uchar* out = packed + (((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K + (size_t)k) * (PANEL / 2);
    for (int j = 0; j < PANEL / 2; ++j) {
        const uint lo = source_code(se, panel_row(panel, j, N, swiglu, interleaved), k, K);
        const uint hi = source_code(se, panel_row(panel, j + PANEL / 2, N, swiglu, interleaved), k, K);
        out[j] = (uchar)((lo & 15u) | ((hi & 15u) << 4));
    }
#else
    __global uchar* out = packed + (((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K + (size_t)k) * PANEL;
    for (int j = 0; j < PANEL; ++j) out[j] = (uchar)source_code(se, panel_row(panel, j, N, swiglu, interleaved), k, K);
#endif
}

// Repack per-row group values [E, srcRows, groups] (scales or zeros, SCALE_T bits) into
// [E, panels, groups, PANEL]: the value of weight row `row` is source row row / row_div (FP8's
// 128-row blocks; with `split` > 0, rows from `split` on (the up rows) start a new block row
// after the gate's ceil(split / row_div)). One work-item per (group, panel, expert).
__kernel void pack_scales(__global const SCALE_T* src, __global SCALE_T* packed, int groups, int N, int panels,
                          int swiglu, int interleaved, int src_rows, int row_div, int split) {
    const int g = get_global_id(0);
    const int panel = get_global_id(1);
    const int e = get_global_id(2);
    if (g >= groups || panel >= panels) return;
    __global SCALE_T* out = packed + (((size_t)e * (size_t)panels + (size_t)panel) * (size_t)groups + (size_t)g) * PANEL;
    for (int j = 0; j < PANEL; ++j) {
        const int row = panel_row(panel, j, N, swiglu, interleaved);
        const int block = (split > 0 && row >= split) ? (split + row_div - 1) / row_div + (row - split) / row_div
                                                      : row / row_div;
        out[j] = row >= 0 ? src[((size_t)e * (size_t)src_rows + (size_t)block) * (size_t)groups + g] : (SCALE_T)0;
    }
}
