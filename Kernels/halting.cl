#include "common.h"

// Adaptive computation time, one step (Reference.haltingStep): per token t of N, through the
// inverse map inv [N] of the packed positions (token_index_map: inv[t] = the slot j whose row
// of p [rows] and h [rows, d] belongs to t, or -1), a running token adds q = p[j] (or its
// sigmoid: LOGIT) to its cumulative sum and halts at c + q >= threshold or on the last step,
// with weight R = 1 - c, else weight q; acc_out[t] = acc[t] + weight * h[j]. Halted tokens and
// the rest of the state are copied. Every output element is written (a gather, not a scatter),
// so a step reads acc once and writes it once.
//
// Grid [nblocks * GROUP, ceil(N / rows_per_group)]: work-group (b, g) handles rows_per_group
// tokens and the column block b of COLS elements; each work-item strides over the block, so no
// loop passes COLS / GROUP = 1,024 iterations (16-wide: 64) whatever d, and the host gives a
// work-group at most 16 rows (a loop nest of 16,384 iterations at most). The per-token
// scalars are computed by every work-item of the row (no barrier) and written by block 0's
// work-item 0. X: h's storage type; Y: the accumulator's; P: p's.
#ifndef P_T
#define P_T float
#define P_LOAD LOAD_F32
#endif
#define COLS (1024 * GROUP)

__kernel void halting_step(__global const P_T* p, __global const X_T* h, int rows, __global const int* inv,
                           __global const int* running, __global const float* cum, __global const int* steps,
                           __global const float* rem, __global const float* ponder, __global const Y_T* acc,
                           __global int* running_out, __global float* cum_out, __global int* steps_out,
                           __global float* rem_out, __global float* ponder_out, __global Y_T* acc_out,
                           __global int* flags, int tokens, int d, int rows_per_group, float threshold, int last) {
    const int lid = get_local_id(0);
    const int block = get_group_id(0);
    const int writer = block == 0 && lid == 0;
    const long first = (long)get_group_id(1) * rows_per_group;
    const long end = min(first + rows_per_group, (long)tokens);
    const long c0 = (long)block * COLS;
    const long c1 = min(c0 + COLS, (long)d);
    const int vec = d % 16 == 0;
    for (long t = first; t < end; ++t) {
        const int r = running[t];
        const int j = inv[t];
        // A slot read from inv is checked before it addresses p or h.
        const int has_row = j >= 0 && j < rows;
        const int update = r == 1 && has_row;
        float w = 0.0f;
        if (update) {
            float q = P_LOAD(p, j);
#ifdef LOGIT
            q = 1.0f / (1.0f + exp(-q));
#endif
            const int nan = isnan(q);
            q = nan ? 1.0f : clamp(q, 0.0f, 1.0f);
            const float c = cum[t];
            const float c_next = c + q;
            const int n = steps[t] + 1;
            const int halts = c_next >= threshold || last;
            const float remainder = 1.0f - c;
            w = halts ? remainder : q;
            if (writer) {
                if (nan) flags[4] = 1;
                running_out[t] = halts ? 0 : 1;
                cum_out[t] = c_next;
                steps_out[t] = n;
                rem_out[t] = halts ? remainder : rem[t];
                ponder_out[t] = halts ? (float)n + remainder : (float)n;
            }
        } else if (writer) {
            if (r != 0 && r != 1) flags[3] = 1;
            if ((r == 1 && j < 0) || (r != 1 && j >= 0)) flags[5] = 1;
            running_out[t] = r;
            cum_out[t] = cum[t];
            steps_out[t] = steps[t];
            rem_out[t] = rem[t];
            ponder_out[t] = ponder[t];
        }
        const size_t out = (size_t)t * (size_t)d;
        const size_t src = (size_t)(update ? j : 0) * (size_t)d;
        if (vec) {
            for (long q = c0 / 16 + lid; q < c1 / 16; q += GROUP) {
                float16 a = Y_LOAD16(acc + out, q);
                if (update) a += w * X_LOAD16(h + src, q);
                Y_STORE16(acc_out + out, q, a);
            }
        } else {
            for (long c = c0 + lid; c < c1; c += GROUP) {
                float a = Y_LOAD(acc, out + c);
                if (update) a += w * X_LOAD(h, src + c);
                Y_STORE(acc_out, out + c, a);
            }
        }
    }
}

// The state before the first step's accumulator and positions: acc zero, positions[t] = t.
// Same grid as halting_step.
__kernel void halting_init(__global Y_T* acc, __global int* positions, int tokens, int d, int rows_per_group) {
    const int lid = get_local_id(0);
    const int block = get_group_id(0);
    const long first = (long)get_group_id(1) * rows_per_group;
    const long end = min(first + rows_per_group, (long)tokens);
    const long c0 = (long)block * COLS;
    const long c1 = min(c0 + COLS, (long)d);
    for (long t = first; t < end; ++t) {
        if (block == 0 && lid == 0) positions[t] = (int)t;
        const size_t out = (size_t)t * (size_t)d;
        for (long c = c0 + lid; c < c1; c += GROUP) Y_STORE(acc, out + c, 0.0f);
    }
}
