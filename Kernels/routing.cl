#include "common.h"

// MoE routing: gating, capacity, the stable counting sort by expert, dispatch and combine,
// expert choice scores and routing statistics. Sizes are arguments; -D carries dtypes only.
// Flags (int[2]): [0] a logit was NaN or infinite, [1] an expert id was out of range.

// 64-bit rank key: smaller is better. Descending value, then ascending index.
inline ulong rank_key(float v, uint index) { return ((ulong)descending_key(v) << 32) | (ulong)index; }

// The largest logit of a token's row; a NaN or infinite logit raises flag 0.
inline float row_max_flagging(__global const X_T* logits, size_t base, int experts, __global int* flags) {
    float m = -INFINITY;
    int bad = 0;
    for (int e = 0; e < experts; ++e) {
        const float v = X_LOAD(logits, base + e);
        bad |= !isfinite(v);
        m = fmax(m, v);
    }
    if (bad) flags[0] = 1;
    return m;
}

// Softmax's denominator of a token's row.
inline float exp_sum(__global const X_T* logits, size_t base, int experts, float m) {
    float s = 0.0f;
    for (int e = 0; e < experts; ++e) s += exp(X_LOAD(logits, base + e) - m);
    return s;
}

inline float router_score(float v, float m, float denom, int sigmoid) {
    return sigmoid ? 1.0f / (1.0f + exp(-v)) : exp(v - m) / denom;
}

// The value experts are chosen by: the logit without a bias (softmax and sigmoid are monotonic),
// else score + bias (DeepSeek-V3's score correction).
inline float choice_value(float v, float m, float denom, int sigmoid, int has_bias, __global const float* bias,
                          int e) {
    return has_bias ? router_score(v, m, denom, sigmoid) + bias[e] : v;
}

#define SMALL_K 64
#define MAX_GROUPS 64

// The kept expert groups of a token as a bit mask (all ones without groups). A group's value is
// its best choice value, or with a bias the sum of its best two (DeepSeek-V3); the topk_groups
// best groups are kept, ties to the lower group. One pass over the experts, then at most
// 64 × 64 steps over the groups (every loop stays short, as lane-style devices need).
inline ulong kept_groups(__global const X_T* logits, size_t base, int experts, float m, float denom, int sigmoid,
                         int has_bias, __global const float* bias, int groups, int topk_groups) {
    if (groups <= 1) return ~(ulong)0;
    const int gs = experts / groups;
    ulong group_key[MAX_GROUPS];
    for (int g = 0; g < groups && g < MAX_GROUPS; ++g) {
        ulong k1 = ~(ulong)0, k2 = ~(ulong)0;
        float v1 = 0.0f, v2 = 0.0f;
        for (int e = g * gs; e < (g + 1) * gs; ++e) {
            const float c = choice_value(X_LOAD(logits, base + e), m, denom, sigmoid, has_bias, bias, e);
            const ulong key = rank_key(c, (uint)e);
            if (key < k1) {
                k2 = k1;
                v2 = v1;
                k1 = key;
                v1 = c;
            } else if (key < k2) {
                k2 = key;
                v2 = c;
            }
        }
        const float gv = (has_bias && gs > 1) ? v1 + v2 : v1;
        group_key[g] = rank_key(gv, (uint)g);
    }
    ulong keep = 0;
    ulong prev = 0;
    for (int pick = 0; pick < topk_groups && pick < MAX_GROUPS; ++pick) {
        ulong best = ~(ulong)0;
        for (int g = 0; g < groups && g < MAX_GROUPS; ++g) {
            const ulong key = group_key[g];
            if ((pick == 0 || key > prev) && key < best) best = key;
        }
        prev = best;
        const uint g = (uint)(best & 0xFFFFFFFFu);
        if (g < MAX_GROUPS) keep |= (ulong)1 << g;
    }
    return keep;
}

// The chosen weights of a token: renormalized over its k slots (summed in slot order) when asked,
// then scaled.
inline void finish_weights(__global float* weights, size_t out, int k, int renormalize, float routed_scale) {
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += weights[out + j];
    for (int j = 0; j < k; ++j) {
        const float w = renormalize ? weights[out + j] / (sum + 1e-20f) : weights[out + j];
        weights[out + j] = w * routed_scale;
    }
}

// Token-choice top-k gating for k <= SMALL_K, one work-item per `tokens_per_item` tokens: one
// pass keeping the k best keys sorted (an element costs one compare unless it enters the list).
// Larger k (and lane-style devices with large k × E) take gating_prepare / gating_rank /
// gating_finish instead, which give the same ids and weights bit for bit.
__kernel void gating_topk(__global const X_T* logits, __global const float* bias, __global int* ids,
                          __global float* weights, __global int* flags, int tokens, int experts, int k,
                          int sigmoid, int has_bias, int renormalize, float routed_scale, int groups,
                          int topk_groups, int tokens_per_item) {
    const int first = get_global_id(0) * tokens_per_item;
    for (int t = first; t < first + tokens_per_item && t < tokens; ++t) {
        const size_t base = (size_t)t * (size_t)experts;
        const float m = row_max_flagging(logits, base, experts, flags);
        // Softmax's denominator cancels when the chosen weights are renormalized and nothing but the
        // logits decides the choice: then the scores are exp(v - max), one exp per chosen expert.
        const float denom = (!sigmoid && (!renormalize || has_bias)) ? exp_sum(logits, base, experts, m) : 1.0f;
        const ulong keep_groups =
            kept_groups(logits, base, experts, m, denom, sigmoid, has_bias, bias, groups, topk_groups);
        const int gs = experts / max(groups, 1);
        const size_t out = (size_t)t * (size_t)k;
        ulong chosen[SMALL_K];
        const int kk = min(k, SMALL_K);
        for (int j = 0; j < kk; ++j) chosen[j] = ~(ulong)0;
        for (int e = 0; e < experts; ++e) {
            if (groups > 1 && !((keep_groups >> (uint)(e / gs)) & 1)) {
                e += gs - 1 - e % gs;  // skip the rest of a dropped group
                continue;
            }
            const float c = choice_value(X_LOAD(logits, base + e), m, denom, sigmoid, has_bias, bias, e);
            const ulong key = rank_key(c, (uint)e);
            if (key < chosen[kk - 1]) {
                int j = kk - 1;
                while (j > 0 && chosen[j - 1] > key) {
                    chosen[j] = chosen[j - 1];
                    --j;
                }
                chosen[j] = key;
            }
        }
        for (int j = 0; j < kk; ++j) {
            // A slot still holding the empty key (fewer candidates than k, which validation rules
            // out) would name expert 0xFFFFFFFF: never an address, expert 0 instead.
            const uint chosen_e = (uint)(chosen[j] & 0xFFFFFFFFu);
            const int e = chosen_e < (uint)experts ? (int)chosen_e : 0;
            ids[out + j] = e;
            weights[out + j] = router_score(X_LOAD(logits, base + e), m, denom, sigmoid);
        }
        finish_weights(weights, out, kk, renormalize, routed_scale);
    }
}

// Large-k gating, step 1: per token, the row max, the softmax denominator (as gating_topk computes
// them) and the kept-group mask.
__kernel void gating_prepare(__global const X_T* logits, __global const float* bias, __global float* row_stats,
                             __global ulong* row_groups, __global int* flags, int tokens, int experts, int sigmoid,
                             int has_bias, int renormalize, int groups, int topk_groups) {
    const int t = get_global_id(0);
    if (t >= tokens) return;
    const size_t base = (size_t)t * (size_t)experts;
    const float m = row_max_flagging(logits, base, experts, flags);
    const float denom = (!sigmoid && (!renormalize || has_bias)) ? exp_sum(logits, base, experts, m) : 1.0f;
    row_stats[2 * t] = m;
    row_stats[2 * t + 1] = denom;
    row_groups[t] = kept_groups(logits, base, experts, m, denom, sigmoid, has_bias, bias, groups, topk_groups);
}

// Step 2: one work-item per (expert, token): the expert's rank among the token's kept experts
// (keys are unique: value, then index); ranks below k write slot `rank`. Each work-item loops
// over E experts, however large k is.
inline void gating_rank_one(__global const X_T* logits, __global const float* bias, __global const float* row_stats,
                            __global const ulong* row_groups, __global int* ids, __global float* weights, int t,
                            int e, int experts, int k, int sigmoid, int has_bias, int groups) {
    const int gs = experts / max(groups, 1);
    const ulong keep = row_groups[t];
    if (groups > 1 && !((keep >> (uint)(e / gs)) & 1)) return;
    const size_t base = (size_t)t * (size_t)experts;
    const float m = row_stats[2 * t];
    const float denom = row_stats[2 * t + 1];
    const float v = X_LOAD(logits, base + e);
    const ulong mine = rank_key(choice_value(v, m, denom, sigmoid, has_bias, bias, e), (uint)e);
    int rank = 0;
    for (int f = 0; f < experts; ++f) {
        if (groups > 1 && !((keep >> (uint)(f / gs)) & 1)) continue;
        const ulong key = rank_key(choice_value(X_LOAD(logits, base + f), m, denom, sigmoid, has_bias, bias, f), (uint)f);
        rank += key < mine;
    }
    if (rank < k) {
        const size_t out = (size_t)t * (size_t)k + (size_t)rank;
        ids[out] = e;
        weights[out] = router_score(v, m, denom, sigmoid);
    }
}

// Tokens strided over the grid's second dimension (the host caps it: some drivers cap a grid's
// second dimension at 65,535 work-groups, and a prefill may route more tokens).
__kernel void gating_rank(__global const X_T* logits, __global const float* bias, __global const float* row_stats,
                          __global const ulong* row_groups, __global int* ids, __global float* weights, int tokens,
                          int experts, int k, int sigmoid, int has_bias, int groups) {
    const int e = get_global_id(0);
    if (e >= experts) return;
    for (int t = get_global_id(1); t < tokens; t += get_global_size(1))
        gating_rank_one(logits, bias, row_stats, row_groups, ids, weights, t, e, experts, k, sigmoid, has_bias, groups);
}

// Step 3: per token, the weights renormalized and scaled.
__kernel void gating_finish(__global float* weights, int tokens, int k, int renormalize, float routed_scale) {
    const int t = get_global_id(0);
    if (t >= tokens) return;
    finish_weights(weights, (size_t)t * (size_t)k, k, renormalize, routed_scale);
}

__kernel void fill_i32(__global int* x, int value, int n) {
    const int i = get_global_id(0);
    if (i < n) x[i] = value;
}

// Stable counting sort, step 1: per chunk of `chunk` consecutive assignments, the count of
// each expert (only assignments whose keep flag is set, when use_keep). One work-item per chunk;
// it owns row c of `chunk_counts [chunks, E]`.
__kernel void permute_count(__global const int* ids, __global const int* keep, int use_keep,
                            __global int* chunk_counts, __global int* flags, int assignments, int experts, int chunk,
                            int chunks) {
    const int c = get_global_id(0);
    if (c >= chunks) return;
    const int begin = c * chunk;
    const int end = min(begin + chunk, assignments);
    __global int* row = chunk_counts + (size_t)c * (size_t)experts;
    for (int e = 0; e < experts; ++e) row[e] = 0;
    for (int a = begin; a < end; ++a) {
        const int e = ids[a];
        if (e < 0 || e >= experts) {
            flags[1] = 1;
            continue;
        }
        if (use_keep && !keep[a]) continue;
        row[e] += 1;
    }
}

// Step 2: per expert, the exclusive scan of its counts over the chunks (in place) and its total.
__kernel void permute_scan(__global int* chunk_counts, __global int* totals, int chunks, int experts) {
    const int e = get_global_id(0);
    if (e >= experts) return;
    int running = 0;
    for (int c = 0; c < chunks; ++c) {
        const size_t i = (size_t)c * (size_t)experts + (size_t)e;
        const int v = chunk_counts[i];
        chunk_counts[i] = running;
        running += v;
    }
    totals[e] = running;
}

// Step 3 (one work-item): kept counts (at most `capacity`), the block-padded offsets [E + 1]
// and the dropped count.
__kernel void permute_offsets(__global const int* totals, __global int* counts, __global int* offsets,
                              __global int* dropped, int experts, int block, int capacity, int assignments) {
    if (get_global_id(0) != 0) return;
    int offset = 0;
    int kept_total = 0;
    offsets[0] = 0;
    for (int e = 0; e < experts; ++e) {
        const int kept = min(totals[e], capacity);
        counts[e] = kept;
        kept_total += kept;
        const int padded = (kept + block - 1) / block * block;
        offset += padded;
        offsets[e + 1] = offset;
    }
    dropped[0] = assignments - kept_total;
}

// Step 3b: one work-item per tile of `block` rows: its expert (the last one whose padded offset is
// at or before the tile's first row, found by binary search), or -1 past the padded total.
__kernel void permute_tiles(__global const int* offsets, __global int* tile_expert, int experts, int block,
                            int max_tiles) {
    const int tile = get_global_id(0);
    if (tile >= max_tiles) return;
    const long row = (long)tile * (long)block;
    if (experts <= 0 || row >= (long)offsets[experts]) {
        tile_expert[tile] = -1;
        return;
    }
    int lo = 0, hi = experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if ((long)offsets[mid] <= row) lo = mid; else hi = mid - 1;
    }
    tile_expert[tile] = lo;
}

// Step 4: per chunk, walk the assignments in order and give each kept one its row: the
// expert's offset plus its rank (the earlier chunks' count, from the scan, plus the running
// count inside this chunk). Token order is kept within each expert. Dropped assignments get
// row -1 and weight 0. Rows are checked against max_rows (assignment_of's length) before use.
__kernel void permute_scatter(__global const int* ids, __global const int* keep, int use_keep,
                              __global int* chunk_counts, __global const int* offsets, __global int* row_of,
                              __global int* assignment_of, __global float* weights, int assignments, int experts,
                              int chunk, int capacity, int max_rows) {
    const int c = get_global_id(0);
    const int begin = c * chunk;
    if (begin >= assignments) return;
    const int end = min(begin + chunk, assignments);
    __global int* running = chunk_counts + (size_t)c * (size_t)experts;
    for (int a = begin; a < end; ++a) {
        const int e = ids[a];
        int row = -1;
        if (e >= 0 && e < experts && (!use_keep || keep[a])) {
            const int rank = running[e]++;
            // offsets and ranks come from the earlier steps: a row outside assignment_of is never
            // written (the assignment counts as dropped; consistent steps never get here).
            const int r = offsets[e] + rank;
            row = ((rank < capacity) & ((uint)r < (uint)max_rows)) ? r : -1;
        }
        row_of[a] = row;
        if (row >= 0) {
            assignment_of[row] = a;
        } else {
            weights[a] = 0.0f;
        }
    }
}

// Weight-priority capacity: one work-group of GROUP work-items per expert, over the expert's
// rows of a first (uncapped) permutation. If the expert has more than `capacity` assignments,
// the capacity-th smallest key (descending weight, then assignment index) is found by a radix
// select over the 64 key bits, 4 bits a pass (16 passes: a work-item's loops take, counted
// cumulatively, 17 · ⌈rows / GROUP⌉ + 850 steps for GROUP ≥ 16; where that could pass a device's loop limit the
// host runs the capacity_select_* kernels below instead), and assignments with larger keys lose
// their keep flag. Rows and
// assignment indices read from the permutation are checked before use (max_rows is
// assignment_of's length); an invalid one is neither counted nor cleared.
__kernel void capacity_by_weight(__global const int* counts, __global const int* offsets,
                                 __global const int* assignment_of, __global const float* weights,
                                 __global int* keep, int capacity, int assignments, int max_rows) {
    const int e = get_group_id(0);
    const int lid = get_local_id(0);
    __local int hist[16];
    const int begin = offsets[e];
    // Experts within capacity keep everything: they scan nothing (no early return, so every
    // work-item reaches every barrier).
    int n = counts[e] > capacity ? counts[e] : 0;
    if (begin < 0 || begin > max_rows) n = 0;
    n = min(n, max_rows - max(begin, 0));
    ulong prefix = 0;          // the digits of the answer found so far
    int remaining = capacity;  // rank (1-based) still to find among keys matching prefix
    for (int shift = 60; shift >= 0; shift -= 4) {
        const ulong high_mask = shift == 60 ? 0 : ~((((ulong)1) << (uint)(shift + 4)) - 1);
        for (int d = lid; d < 16; d += GROUP) hist[d] = 0;  // (GROUP may be below 16)
        barrier(CLK_LOCAL_MEM_FENCE);
        int mine[16];
        for (int d = 0; d < 16; ++d) mine[d] = 0;
        for (int r = lid; r < n; r += GROUP) {
            const int a = assignment_of[begin + r];
            if (a < 0 || a >= assignments) continue;
            const ulong key = rank_key(weights[a], (uint)a);
            if ((key & high_mask) == prefix) mine[(key >> (uint)shift) & 15]++;
        }
        for (int d = 0; d < 16; ++d) {
            if (mine[d]) atomic_add(&hist[d], mine[d]);  // integer counts: any order gives the same sums
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        int digit = 15;
        for (int d = 0; d < 16; ++d) {
            const int h = hist[d];
            if (h < remaining) {
                remaining -= h;
            } else {
                digit = d;
                break;
            }
        }
        prefix |= (ulong)digit << (uint)shift;
        barrier(CLK_LOCAL_MEM_FENCE);  // hist is read by all before the next pass clears it
    }
    for (int r = lid; r < n; r += GROUP) {
        const int a = assignment_of[begin + r];
        if (a < 0 || a >= assignments) continue;
        if (rank_key(weights[a], (uint)a) > prefix) keep[a] = 0;
    }
}

// capacity_by_weight split over work-groups, for a device that stops a work-item's loops after
// a fixed number of iterations (llvmpipe) when an expert may hold more assignments than one
// work-group's loops can walk: the same radix select, its state per expert in `select_state`
// [E] (the prefix found so far, the rank still to find) and a histogram `hist` [E, 16] in
// global memory, one launch per step. capacity_select_init, then per 4-bit digit (shift 60 ...
// 0) capacity_select_hist and capacity_select_digit, then capacity_select_clear: the keep flags
// capacity_by_weight gives, bit for bit (integer counts, any order).

// The rows [begin, begin + n) of expert e's permuted assignments that the select walks (n = 0
// for an expert within capacity), as capacity_by_weight bounds them.
inline int capacity_rows(__global const int* counts, __global const int* offsets, int e, int capacity, int max_rows,
                         int* begin) {
    *begin = offsets[e];
    int n = counts[e] > capacity ? counts[e] : 0;
    if (*begin < 0 || *begin > max_rows) n = 0;
    return min(n, max_rows - max(*begin, 0));
}

// One work-item per expert: prefix 0, rank `capacity`, a zero histogram.
__kernel void capacity_select_init(__global ulong2* select_state, __global int* hist, int experts, int capacity) {
    const int e = get_global_id(0);
    if (e >= experts) return;
    select_state[e] = (ulong2)(0, (ulong)capacity);
    for (int d = 0; d < 16; ++d) hist[e * 16 + d] = 0;
}

// Grid [slices * GROUP, E], local [GROUP, 1]: work-group (s, e) counts the digits at `shift` of
// the keys matching the prefix among rows [s * slice, (s + 1) * slice) of expert e's n.
__kernel void capacity_select_hist(__global const int* counts, __global const int* offsets,
                                   __global const int* assignment_of, __global const float* weights,
                                   __global const ulong2* select_state, __global int* hist, int capacity,
                                   int assignments, int max_rows, int slice, int shift) {
    const int e = get_group_id(1);
    const int lid = get_local_id(0);
    __local int local_hist[16];
    int begin;
    const int n = capacity_rows(counts, offsets, e, capacity, max_rows, &begin);
    const int r0 = get_group_id(0) * slice;
    const int r1 = min(n, r0 + slice);
    const ulong prefix = select_state[e].x;
    const ulong high_mask = shift == 60 ? 0 : ~((((ulong)1) << (uint)(shift + 4)) - 1);
    for (int d = lid; d < 16; d += GROUP) local_hist[d] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    int mine[16];
    for (int d = 0; d < 16; ++d) mine[d] = 0;
    for (int r = r0 + lid; r < r1; r += GROUP) {
        const int a = assignment_of[begin + r];
        if (a < 0 || a >= assignments) continue;
        const ulong key = rank_key(weights[a], (uint)a);
        if ((key & high_mask) == prefix) mine[(key >> (uint)shift) & 15]++;
    }
    for (int d = 0; d < 16; ++d) {
        if (mine[d]) atomic_add(&local_hist[d], mine[d]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int d = lid; d < 16; d += GROUP) {
        if (local_hist[d]) atomic_add(&hist[e * 16 + d], local_hist[d]);
    }
}

// One work-item per expert: the digit at `shift` of the rank-th smallest matching key; clears
// the histogram for the next pass.
__kernel void capacity_select_digit(__global ulong2* select_state, __global int* hist, int experts, int shift) {
    const int e = get_global_id(0);
    if (e >= experts) return;
    ulong2 st = select_state[e];
    int remaining = (int)st.y;
    int digit = 15;
    int found = 0;
    for (int d = 0; d < 16; ++d) {
        const int h = hist[e * 16 + d];
        hist[e * 16 + d] = 0;
        if (!found) {
            if (h < remaining) {
                remaining -= h;
            } else {
                digit = d;
                found = 1;
            }
        }
    }
    st.x |= (ulong)digit << (uint)shift;
    st.y = (ulong)remaining;
    select_state[e] = st;
}

// Grid as capacity_select_hist: assignments whose key is above the selected one lose their
// keep flag.
__kernel void capacity_select_clear(__global const int* counts, __global const int* offsets,
                                    __global const int* assignment_of, __global const float* weights,
                                    __global const ulong2* select_state, __global int* keep, int capacity,
                                    int assignments, int max_rows, int slice) {
    const int e = get_group_id(1);
    const int lid = get_local_id(0);
    int begin;
    const int n = capacity_rows(counts, offsets, e, capacity, max_rows, &begin);
    const int r0 = get_group_id(0) * slice;
    const int r1 = min(n, r0 + slice);
    const ulong prefix = select_state[e].x;
    for (int r = r0 + lid; r < r1; r += GROUP) {
        const int a = assignment_of[begin + r];
        if (a < 0 || a >= assignments) continue;
        if (rank_key(weights[a], (uint)a) > prefix) keep[a] = 0;
    }
}

// Dispatch: one work-group per rows_per_group rows of xs; padding rows (assignment >= tokens*k) become zeros.
__kernel void gather_rows(__global const X_T* x, __global const int* assignment_of, __global Y_T* xs,
                          int rows, int tokens, int k, int d, int rows_per_group) {
    const int lid = get_local_id(0);
    const int first = get_group_id(0) * rows_per_group;
    for (int r = first; r < first + rows_per_group && r < rows; ++r) {
    const int a = assignment_of[r];
    const size_t out = (size_t)r * (size_t)d;
    if (a < 0 || a >= tokens * k) {
        for (int c = lid; c < d; c += GROUP) Y_STORE(xs, out + c, 0.0f);
        continue;
    }
    const size_t in = (size_t)(a / k) * (size_t)d;
#ifdef RAW_COPY
    // Same storage type in and out: copy the bits (no conversion, any NaN payload kept).
    __global const RAW_COPY* src = (__global const RAW_COPY*)x;
    __global RAW_COPY* dst = (__global RAW_COPY*)xs;
    for (int c = lid; c < d; c += GROUP) dst[out + c] = src[in + c];
#else
    for (int c = lid; c < d; c += GROUP) Y_STORE(xs, out + c, X_LOAD(x, in + c));
#endif
    }
}

// Combine: one work-group per rows_per_group tokens; y[t] = sum_j w[t,j] * ys[row_of[t,j]] (+ residual), slots
// summed in order in f32, so every output is bitwise reproducible and independent of the batch.
__kernel void combine_rows(__global const X_T* ys, __global const int* row_of, __global const float* weights,
                           __global const Y_T* residual, int has_residual, __global Y_T* y, int tokens, int k,
                           int d, int rows, int rows_per_group) {
    const int lid = get_local_id(0);
    const int first = get_group_id(0) * rows_per_group;
    for (int t = first; t < first + rows_per_group && t < tokens; ++t) {
    const size_t out = (size_t)t * (size_t)d;
    // Whole 16-column chunks with vector loads (the same per-element order: slots in order,
    // then the residual), then the tail column by column.
    const int chunks = d / 16;
    if (d % 16 == 0 && (out % 16) == 0) {
        for (int q = lid; q < chunks; q += GROUP) {
            float16 acc = (float16)0.0f;
            for (int j = 0; j < k; ++j) {
                const int r = row_of[t * k + j];
                if (r < 0 || r >= rows) continue;
                acc += weights[t * k + j] * X_LOAD16(ys + (size_t)r * (size_t)d, q);
            }
            if (has_residual) acc += Y_LOAD16(residual + out, q);
            Y_STORE16(y + out, q, acc);
        }
        continue;
    }
    for (int c = lid; c < d; c += GROUP) {
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            const int r = row_of[t * k + j];
            if (r < 0 || r >= rows) continue;
            acc += weights[t * k + j] * X_LOAD(ys, (size_t)r * (size_t)d + c);
        }
        if (has_residual) acc += Y_LOAD(residual, out + c);
        Y_STORE(y, out + c, acc);
    }
    }
}

// Router scores transposed to [E, T] (for expert choice, which ranks tokens per expert), one
// work-item per token; also raises the non-finite flag.
__kernel void router_scores_transposed(__global const X_T* logits, __global float* scores_t, __global int* flags,
                                       int tokens, int experts, int sigmoid) {
    const int t = get_global_id(0);
    if (t >= tokens) return;
    const size_t base = (size_t)t * (size_t)experts;
    const float m = row_max_flagging(logits, base, experts, flags);
    const float denom = sigmoid ? 1.0f : exp_sum(logits, base, experts, m);
    for (int e = 0; e < experts; ++e)
        scores_t[(size_t)e * (size_t)tokens + t] = router_score(X_LOAD(logits, base + e), m, denom, sigmoid);
}

// log σ(v) without overflow or underflow to -inf for any finite v.
inline float log_sigmoid(float v) { return fmin(v, 0.0f) - log1p(exp(-fabs(v))); }

// σ(v) / e^ms = e^(min(v, 0) − ms) / (1 + e^−|v|): neither factor overflows or underflows to
// zero before the scaling by the row's max ms = log σ(max v). Exponentials and a division only:
// log or log1p inside these loops made Mesa warn of an argument read in control flow.
inline float scaled_sigmoid(float v, float ms) { return exp(fmin(v, 0.0f) - ms) / (1.0f + exp(-fabs(v))); }

// Routing statistics, step 1: per token, the scoring's max M and scaled sum S, so a token's
// probability is exp(v − M) / S (softmax: M the logits' max m, S = Σ exp(v − m)) or
// scaled_sigmoid(v, M) / S (sigmoid: M = log σ(m), S = Σ scaled_sigmoid): no rounded lse is
// subtracted and no underflowed sum divided. Also lse = m + log Σ exp(v − m) for the z-loss.
// Out: row_stats [T, 4] = M, S, lse, 0.
__kernel void stats_tokens(__global const X_T* logits, __global float* row_stats, int experts, int sigmoid) {
    // Launched with exactly T work-items: no bounds branch (Mesa warns of argument loads in
    // divergent control flow); arguments are read into locals before any loop.
    const int t = get_global_id(0);
    const int n_experts = experts;
    const int by_sigmoid = sigmoid;
    __global const X_T* row = logits + (size_t)t * (size_t)n_experts;
    __global float* out = row_stats;
    float m = -INFINITY;
    for (int e = 0; e < n_experts; ++e) m = fmax(m, X_LOAD(row, e));
    const float ms = log_sigmoid(m);  // log σ is increasing: its max is at the largest logit
    float s = 0.0f, ss = 0.0f;
    for (int e = 0; e < n_experts; ++e) {
        const float v = X_LOAD(row, e);
        s += exp(v - m);
        ss += scaled_sigmoid(v, ms);
    }
    out[4 * t] = by_sigmoid ? ms : m;
    out[4 * t + 1] = by_sigmoid ? ss : s;
    out[4 * t + 2] = m + log(s);
    out[4 * t + 3] = 0.0f;
}

// Step 2: one work-item per (expert, chunk of `chunk` tokens): the chunk's sum of the expert's
// probabilities in token order, and of the chunk's lse². The chunk is a constant, so results
// never depend on the device.
__kernel void stats_partial(__global const X_T* logits, __global const float* row_stats, __global float* partial,
                            __global float* z_partial, int tokens, int experts, int sigmoid, int chunk) {
    // Launched with exactly E × chunks work-items: no bounds branch (see stats_tokens). No branch
    // on the scoring in the loop either: softmax's terms are exp(min(v, +inf) − M) / (S · (1 + 0)),
    // exactly exp(v − M) / S.
    const int e = get_global_id(0);
    const int c = get_global_id(1);
    const int n_experts = experts;
    const int begin = c * chunk;
    const int end = min(begin + chunk, tokens);
    const int by_sigmoid = sigmoid;
    const float upper = by_sigmoid ? 0.0f : INFINITY;
    const float tail = by_sigmoid ? 1.0f : 0.0f;
    float p = 0.0f, z = 0.0f;
    for (int t = begin; t < end; ++t) {
        const float v = X_LOAD(logits, (size_t)t * (size_t)n_experts + e);
        const float4 st = vload4(t, row_stats);  // M, S, lse, 0
        p += exp(fmin(v, upper) - st.s0) / (st.s1 * (1.0f + tail * exp(-fabs(v))));
        z += st.s2 * st.s2;
    }
    // Every work-item writes its own slot (the z sums of one chunk are equal across experts;
    // stats_final reads expert 0's), so no store needs a branch.
    partial[(size_t)c * (size_t)n_experts + e] = p;
    z_partial[(size_t)c * (size_t)n_experts + e] = z;
}

// Step 3: per expert, the mean probability: the chunks' sums in chunk order. One work-item per
// expert, exactly E of them.
__kernel void stats_experts(__global const float* partial, __global float* out, int tokens, int experts, int chunks) {
    // Launched with exactly E work-items: no branch on the id (see stats_final).
    const int e = get_global_id(0);
    const int n_tokens = tokens, n_experts = experts, n_chunks = chunks;
    __global float* result = out;
    float p = 0.0f;
    for (int c = 0; c < n_chunks; ++c) p += partial[(size_t)c * (size_t)n_experts + e];
    result[e] = n_tokens > 0 ? p / (float)n_tokens : 0.0f;
}

// Step 4 (one work-item): balancing loss E * sum_e f_e P_e with f_e = routed_e / (T k), and the
// z-loss mean_t lse_t^2. out = [P_0 .. P_{E-1}, balance, z].
__kernel void stats_final(__global const int* routed, __global const float* z_partial, __global float* out, int tokens,
                          int experts, int k, int chunks) {
    // Launched as one work-item: no branch on the id (an argument read in control flow makes
    // Mesa warn).
    const int n_tokens = tokens, n_experts = experts, n_chunks = chunks;
    const float n = (float)max(tokens * k, 1);
    __global float* result = out;
    float loss = 0.0f;
    for (int e = 0; e < n_experts; ++e) loss += ((float)routed[e] / n) * result[e];
    float z = 0.0f;
    for (int c = 0; c < n_chunks; ++c) z += z_partial[(size_t)c * (size_t)n_experts];
    result[n_experts] = (float)n_experts * loss;
    result[n_experts + 1] = n_tokens > 0 ? z / (float)n_tokens : 0.0f;
}
