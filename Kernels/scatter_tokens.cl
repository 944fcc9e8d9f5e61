#include "common.h"
#include "token_rows.h"

// Scatter of a block's output rows back to their tokens, one output row (b, p) of [B, L, d] at a
// time, through the inverse map inv [B, L] (token_index_map): j = inv[b, p] is the slot whose
// row lands at p, or -1. scatterTokens (default): out = x + g * f[b, j] (g = weights[b, j], or 1),
// out = x where no slot lands. expandTokens (SCATTER_REPLACE, expand_tokens.cl): out = f[b, j],
// else the base row (has_base) or `fill`. f is A_T; weights W_T. A slot read from inv is checked
// against `rows` before use. One work-group per rows_per_group output rows; work-items stride
// over columns, 16 at a time when d is a multiple of 16. Rows that are plain copies from a source
// of the output's storage type (RAW_A, RAW_X: see token_rows.h) are copied bit for bit.
#ifndef W_T
#define W_T float
#define W_LOAD LOAD_F32
#endif
#ifndef A_DT
#define A_DT 0
#endif
#define A_LOAD16(p, i) SY_CAT(LOAD16_, A_DT)(p, i)

// One body, two entry points: the kernel is named for the mode it is built in.
#ifdef SCATTER_REPLACE
__kernel void expand_tokens(
#else
__kernel void scatter_tokens(
#endif
    __global const X_T* base, int has_base, float fill, __global const A_T* f, __global const W_T* w, int has_weights,
    __global const int* inv, __global Y_T* y, int total_rows, int length, int slots, int rows, int d,
    int rows_per_group) {
    const int lid = get_local_id(0);
    const long first = (long)get_group_id(0) * rows_per_group;
    const long last = min(first + rows_per_group, (long)total_rows);
    const int vec = d % 16 == 0;
    for (long r = first; r < last; ++r) {
        const int b = (int)(r / length);
        const int j = inv[r];
        const int valid = j >= 0 && j < rows;
        const size_t out = (size_t)r * (size_t)d;
        const size_t src = ((size_t)b * (size_t)rows + (size_t)(valid ? j : 0)) * (size_t)d;
#ifdef SCATTER_REPLACE
#ifdef RAW_A
        if (valid) {
            copy_row_raw((__global const RAW_T*)f, src, (__global RAW_T*)y, out, d, lid);
            continue;
        }
#endif
#ifdef RAW_X
        if (!valid && has_base) {
            copy_row_raw((__global const RAW_T*)base, out, (__global RAW_T*)y, out, d, lid);
            continue;
        }
#endif
        if (valid) {
            if (vec) {
                for (int q = lid; q < d / 16; q += GROUP) Y_STORE16(y + out, q, A_LOAD16(f + src, q));
            } else {
                for (int c = lid; c < d; c += GROUP) Y_STORE(y, out + c, A_LOAD(f, src + c));
            }
        } else if (has_base) {
            if (vec) {
                for (int q = lid; q < d / 16; q += GROUP) Y_STORE16(y + out, q, X_LOAD16(base + out, q));
            } else {
                for (int c = lid; c < d; c += GROUP) Y_STORE(y, out + c, X_LOAD(base, out + c));
            }
        } else {
            if (vec) {
                for (int q = lid; q < d / 16; q += GROUP) Y_STORE16(y + out, q, (float16)(fill));
            } else {
                for (int c = lid; c < d; c += GROUP) Y_STORE(y, out + c, fill);
            }
        }
#else
        if (valid) {
            const float g = has_weights ? W_LOAD(w, (size_t)b * (size_t)slots + j) : 1.0f;
            if (vec) {
                for (int q = lid; q < d / 16; q += GROUP)
                    Y_STORE16(y + out, q, X_LOAD16(base + out, q) + g * A_LOAD16(f + src, q));
            } else {
                for (int c = lid; c < d; c += GROUP) Y_STORE(y, out + c, X_LOAD(base, out + c) + g * A_LOAD(f, src + c));
            }
        } else {
#ifdef RAW_X
            copy_row_raw((__global const RAW_T*)base, out, (__global RAW_T*)y, out, d, lid);
#else
            if (vec) {
                for (int q = lid; q < d / 16; q += GROUP) Y_STORE16(y + out, q, X_LOAD16(base + out, q));
            } else {
                for (int c = lid; c < d; c += GROUP) Y_STORE(y, out + c, X_LOAD(base, out + c));
            }
#endif
        }
#endif
    }
}
