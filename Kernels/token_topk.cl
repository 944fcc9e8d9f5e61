#include "common.h"
#include "token_scan.h"

// Token selection (mixture-of-depths): per sequence of scores [B, L], the C best positions in
// ascending position order. Each score becomes a 32-bit key that sorts best first
// (descending_key: NaN first, then +inf ... -inf, -0 = +0). A radix select finds the C-th
// smallest key T, 8 bits a pass over 4 passes (token_topk_hist counts the keys that match the
// digits found so far, all chunks of a sequence adding into one histogram with integer atomics;
// token_topk_digit picks the next digit), leaving in `state [B, 2]` the key T and how many keys
// equal to T are taken (the lowest positions among them: ties to the lower position). Then a
// stable compaction (token_scan.h) writes positions with key < T and the first `take` with key ==
// T in position order.

#define BINS 256

// Adds the keys of positions [begin, end) of a sequence that match `prefix` above digit `shift`
// to that digit's bin (local integer atomics).
inline void topk_hist_range(__global const X_T* scores, size_t row, int begin, int end, uint prefix, int shift,
                            __local int* bins) {
    const uint high = shift >= 24 ? 0u : ~((1u << (uint)(shift + 8)) - 1u);
    for (int p = begin; p < end; ++p) {
        const uint key = descending_key(X_LOAD(scores, row + p));
        if (((key ^ prefix) & high) == 0u) atomic_inc(&bins[(key >> (uint)shift) & 255u]);
    }
}

// (keys below T, keys equal to T) among positions [begin, end).
inline int2 topk_count_range(__global const X_T* scores, size_t row, int begin, int end, uint threshold) {
    int2 mine = (int2)(0, 0);
    for (int p = begin; p < end; ++p) {
        const uint key = descending_key(X_LOAD(scores, row + p));
        mine.x += key < threshold;
        mine.y += key == threshold;
    }
    return mine;
}

// Writes the chosen positions of [begin, end) and their weights. A position's slot is the number
// of chosen positions before it: the keys below T before it plus min(ties before it, take);
// `before` counts both before `begin`.
inline void topk_place_range(__global const X_T* scores, size_t row, int begin, int end, uint threshold, int take,
                             int2 before, __global int* indices, __global X_T* weights, size_t out, int capacity,
                             int sigmoid) {
    int below = before.x;
    int ties = before.y;
    for (int p = begin; p < end; ++p) {
        const float v = X_LOAD(scores, row + p);
        const uint key = descending_key(v);
        int slot = -1;
        if (key < threshold) {
            slot = below + min(ties, take);
            below += 1;
        } else if (key == threshold) {
            if (ties < take) slot = below + ties;
            ties += 1;
        }
        // Slots come from counts in buffers: checked before the store.
        if (slot >= 0 && slot < capacity) {
            indices[out + slot] = p;
            X_STORE(weights, out + slot, sigmoid ? 1.0f / (1.0f + exp(-v)) : v);
        }
    }
}

__kernel void token_topk_init(__global uint* state, __global int* hist, int batch, int capacity) {
    const size_t i = get_global_id(0);
    if (i < (size_t)batch * BINS) hist[i] = 0;
    if (i < (size_t)batch) {
        state[2 * i] = 0u;
        state[2 * i + 1] = (uint)capacity;
    }
}

// Grid [nchunks * GROUP, B], local [GROUP, 1].
__kernel void token_topk_hist(__global const X_T* scores, __global const uint* state, __global int* hist, int length,
                              int shift) {
    const int b = get_global_id(1);
    const int lid = get_local_id(0);
    __local int bins[BINS];
    for (int i = lid; i < BINS; i += GROUP) bins[i] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    int begin, end;
    token_range(get_group_id(0), lid, length, &begin, &end);
    topk_hist_range(scores, (size_t)b * (size_t)length, begin, end, state[2 * b], shift, bins);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = lid; i < BINS; i += GROUP) {
        const int h = bins[i];
        if (h) atomic_add(&hist[(size_t)b * BINS + i], h);  // integer counts: any order, same sums
    }
}

// One work-item per sequence: the digit at `shift` of the (remaining)-th smallest matching key;
// clears the histogram for the next pass.
__kernel void token_topk_digit(__global uint* state, __global int* hist, int batch, int shift) {
    const int b = get_global_id(0);
    if (b >= batch) return;
    __global int* h = hist + (size_t)b * BINS;
    int remaining = (int)state[2 * b + 1];
    uint digit = 255u;
    int found = 0;
    for (int d = 0; d < BINS; ++d) {
        const int n = h[d];
        h[d] = 0;
        if (!found) {
            if (n < remaining) {
                remaining -= n;
            } else {
                digit = (uint)d;
                found = 1;
            }
        }
    }
    state[2 * b] |= digit << (uint)shift;
    state[2 * b + 1] = (uint)remaining;
}

// Per chunk: (keys below T, keys equal to T). Grid [nchunks * GROUP, B].
__kernel void token_topk_count(__global const X_T* scores, __global const uint* state, __global int2* counts, int length,
                               int nchunks) {
    const int b = get_global_id(1);
    const int lid = get_local_id(0);
    __local int2 scratch[GROUP];
    int begin, end;
    token_range(get_group_id(0), lid, length, &begin, &end);
    const int2 mine = topk_count_range(scores, (size_t)b * (size_t)length, begin, end, state[2 * b]);
    int2 total;
    group_exclusive_scan2(mine, scratch, &total);
    if (lid == 0) counts[(size_t)b * nchunks + get_group_id(0)] = total;
}

// Grid [GROUP, B]: one work-group per sequence.
__kernel void token_topk_scan(__global int2* counts, int nchunks) {
    __local int2 scratch[GROUP];
    scan_chunks(counts + (size_t)get_group_id(1) * nchunks, nchunks, scratch);
}

// Grid [nchunks * GROUP, B]: each chunk's chosen positions, after the chunks before it.
__kernel void token_topk_emit(__global const X_T* scores, __global const uint* state, __global const int2* counts,
                              __global int* indices, __global X_T* weights, int length, int nchunks, int capacity,
                              int sigmoid) {
    const int b = get_global_id(1);
    const int lid = get_local_id(0);
    __local int2 scratch[GROUP];
    const uint threshold = state[2 * b];
    const size_t row = (size_t)b * (size_t)length;
    int begin, end;
    token_range(get_group_id(0), lid, length, &begin, &end);
    int2 total;
    const int2 before = group_exclusive_scan2(topk_count_range(scores, row, begin, end, threshold), scratch, &total) +
                        counts[(size_t)b * nchunks + get_group_id(0)];
    topk_place_range(scores, row, begin, end, threshold, (int)state[2 * b + 1], before, indices, weights,
                     (size_t)b * (size_t)capacity, capacity, sigmoid);
}

// The whole selection of one sequence by one work-group, in one launch (grid [GROUP, B]), for
// sequences of a few chunks: the same 4 radix passes (the group's histogram in local memory,
// the digit found by a scan of the bins' sums), then the same stable compaction chunk by chunk
// with a running count. The same key T, the same `take`, the same slots as the chunked kernels
// above, without their 11 launches (which dominate at a few thousand positions).
__kernel void token_topk_one(__global const X_T* scores, __global int* indices, __global X_T* weights, int length,
                             int nchunks, int capacity, int sigmoid) {
    const int b = get_group_id(1);
    const int lid = get_local_id(0);
    __local int bins[BINS];
    __local int2 scratch[GROUP];
    __local uint select_state[2];
    const size_t row = (size_t)b * (size_t)length;
    uint prefix = 0u;
    int remaining = capacity;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = lid; i < BINS; i += GROUP) bins[i] = 0;
        if (lid == 0) {  // (never kept: the bins always hold the remaining-th key)
            select_state[0] = prefix | (255u << (uint)shift);
            select_state[1] = (uint)remaining;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int c = 0; c < nchunks; ++c) {
            int begin, end;
            token_range(c, lid, length, &begin, &end);
            topk_hist_range(scores, row, begin, end, prefix, shift, bins);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        // Each work-item sums BINS / GROUP consecutive bins; the one whose slice holds the
        // remaining-th key walks it for the digit.
        const int per = BINS / GROUP > 0 ? BINS / GROUP : 1;
        const int first = min(lid * per, BINS);
        const int last = min(first + per, BINS);
        int sum = 0;
        for (int i = first; i < last; ++i) sum += bins[i];
        int2 total;
        const int before = group_exclusive_scan2((int2)(sum, 0), scratch, &total).x;
        if (before < remaining && remaining <= before + sum) {
            int r = remaining - before;
            for (int i = first; i < last; ++i) {
                const int n = bins[i];
                if (n < r) {
                    r -= n;
                } else {
                    select_state[0] = prefix | ((uint)i << (uint)shift);
                    select_state[1] = (uint)r;
                    break;
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        prefix = select_state[0];
        remaining = (int)select_state[1];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    // The compaction, chunk by chunk: `base` counts the chunks before.
    const size_t out = (size_t)b * (size_t)capacity;
    int2 base = (int2)(0, 0);
    for (int c = 0; c < nchunks; ++c) {
        int begin, end;
        token_range(c, lid, length, &begin, &end);
        int2 total;
        const int2 before = group_exclusive_scan2(topk_count_range(scores, row, begin, end, prefix), scratch, &total) + base;
        base += total;
        topk_place_range(scores, row, begin, end, prefix, remaining, before, indices, weights, out, capacity, sigmoid);
    }
}
