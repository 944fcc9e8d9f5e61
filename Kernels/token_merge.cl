#include "common.h"

// Token merging (ToMe bipartite soft matching) and unmerging. The definition is
// Reference.tokenMerge (Sources/SwitchyardReference/TokenMerge.swift); the host chains
//   merge_normalize → merge_match (one or more column ranges) → top-k of the scores (topk.cl;
//   merge_choose on CPU-class devices) → merge_plan → top-k of the merge keys (the merged A
//   tokens by partner, then position; merge_order on CPU-class devices) → merge_rows,
// and token_unmerge on its own. Per batch, A token i sits at position 2i and B token j at 2j + 1.
// Flags (shared layout, see ComputeBackend.raise): [2] a key NaN or infinite, [3] a size not
// positive and finite, [4] a source-map entry out of range.
//
// Defines: K_T/K_LOAD keys; X_T/X_LOAD x (and y of the unmerge); RAW_T the storage word of x
// (uint or ushort: copies move bits); GROUP work-items per work-group where one is used; the
// match tile RA rows × NV vectors of VW floats (PANEL = NV·VW columns).

#ifndef K_T
#define K_T float
#define K_LOAD LOAD_F32
#endif
#ifndef RAW_T
#define RAW_T uint
#endif
#ifndef RA
#define RA 4
#endif
#ifndef VW
#define VW 1
#endif
#ifndef NV
#define NV 4
#endif
#ifndef TS
#define TS 1
#endif
#define PANEL (NV * VW)

#if VW == 1
#define VEC float
#define IVEC int
#define LANE_IDS 0
#define VLOAD(p) (*(p))
#define HMAX(v) (v)
#define HMINI(v) (v)
#else
#define VEC SY_CAT(float, VW)
#define IVEC SY_CAT(int, VW)
#define VLOAD(p) SY_CAT(vload, VW)(0, (p))
#define HMAX(v) SY_HMAX(VW, v)
#if VW == 2
#define LANE_IDS (int2)(0, 1)
#elif VW == 4
#define LANE_IDS (int4)(0, 1, 2, 3)
#elif VW == 8
#define LANE_IDS (int8)(0, 1, 2, 3, 4, 5, 6, 7)
#else
#define LANE_IDS (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#endif
inline int hmini2(int2 v) { return min(v.s0, v.s1); }
inline int hmini4(int4 v) { return hmini2(min(v.lo, v.hi)); }
inline int hmini8(int8 v) { return hmini4(min(v.lo, v.hi)); }
inline int hmini16(int16 v) { return hmini8(min(v.lo, v.hi)); }
#define HMINI(v) SY_CAT(hmini, VW)(v)
#endif

// VW keys from p (K's storage; VW > 1).
#ifndef K_DT
#define K_DT 0
#endif
#if K_DT == 0
#define K_LOADV(p) SY_CAT(vload, VW)(0, (p))
#elif K_DT == 1
#define K_LOADV(p) SY_CAT(vload_half, VW)(0, (__global const half*)(p))
#else
#define K_LOADV(p) SY_CAT(as_float, VW)(SY_CAT(convert_uint, VW)(SY_CAT(vload, VW)(0, (p))) << 16)
#endif

// Normalized keys: one work-group of GROUP work-items per token, `per_group` tokens one after
// the other. n = (k / m) / ‖k / m‖ with m = max |k| (no overflow or underflow for any finite
// key); a zero key stays zero. A tokens go to ka [B][nA][dk] (rows), B tokens to kbt in panels
// of `panel` tokens, [B][nb_pad / panel][dk][panel] (the match streams one panel's keys, its
// consecutive B tokens one vector per key element; the padding columns past the last B token
// are zero).
// With GROUP 1 (CPU-class devices) a work-item walks each key in vectors of VW floats, then
// its tail (the order of the sum of squares depends on dk and VW alone).
__kernel void merge_normalize(__global const K_T* keys, __global float* ka, __global float* kbt,
                              __global int* flags, int total, int tokens, int dk, int na, int nb_pad, int panel, int per_group) {
    const int lid = get_local_id(0);
    __local float red[GROUP];
    const int first = get_group_id(0) * per_group;
    for (int p = first; p < first + per_group && p < total; ++p) {
        const size_t base = (size_t)p * (size_t)dk;
#if GROUP == 1 && VW > 1
        {
            __global const K_T* key = keys + base;
            const int body = dk / VW * VW;
            VEC mv = (VEC)(0.0f), chk = (VEC)(0.0f);
            for (int c = 0; c < body; c += VW) {
                const VEC v = K_LOADV(key + c);
                chk = SY_MAD(v, (VEC)(0.0f), chk);  // NaN at a NaN or an infinity
                mv = fmax(mv, fabs(v));
            }
            float m = HMAX(mv);
            float bad = SY_HSUM(VW, chk);
            for (int c = body; c < dk; ++c) {
                const float v = K_LOAD(key, c);
                bad = SY_MAD(v, 0.0f, bad);
                m = fmax(m, fabs(v));
            }
            if (isnan(bad)) flags[2] = 1;
            const float m_div = m > 0.0f ? m : 1.0f;
            VEC sv = (VEC)(0.0f);
            for (int c = 0; c < body; c += VW) {
                const VEC v = K_LOADV(key + c) / m_div;
                sv = SY_MAD(v, v, sv);
            }
            float sum = SY_HSUM(VW, sv);
            for (int c = body; c < dk; ++c) {
                const float v = K_LOAD(key, c) / m_div;
                sum = SY_MAD(v, v, sum);
            }
            const float inv = sum > 0.0f ? 1.0f / sqrt(sum) : 0.0f;
            const int b = p / tokens;
            const int pos = p - b * tokens;
            if ((pos & 1) == 0) {
                __global float* out = ka + ((size_t)b * (size_t)na + (size_t)(pos >> 1)) * (size_t)dk;
                for (int c = 0; c < body; c += VW) SY_CAT(vstore, VW)(K_LOADV(key + c) / m_div * inv, 0, out + c);
                for (int c = body; c < dk; ++c) out[c] = K_LOAD(key, c) / m_div * inv;
            } else {
                const int j = pos >> 1;
                __global float* out = kbt + (size_t)b * (size_t)dk * (size_t)nb_pad
                    + (size_t)(j / panel) * (size_t)dk * (size_t)panel + (size_t)(j % panel);
                for (int c = 0; c < body; c += VW) {
                    float n[VW];
                    SY_CAT(vstore, VW)(K_LOADV(key + c) / m_div * inv, 0, n);
                    for (int l = 0; l < VW; ++l) out[(size_t)(c + l) * (size_t)panel] = n[l];
                }
                for (int c = body; c < dk; ++c) out[(size_t)c * (size_t)panel] = K_LOAD(key, c) / m_div * inv;
                // The last B token also zeroes the panel's padding columns (never read as partners).
                if (j == tokens / 2 - 1) {
                    for (int q = j + 1; q < nb_pad; ++q) {
                        __global float* pad = kbt + (size_t)b * (size_t)dk * (size_t)nb_pad
                            + (size_t)(q / panel) * (size_t)dk * (size_t)panel + (size_t)(q % panel);
                        for (int c = 0; c < dk; ++c) pad[(size_t)c * (size_t)panel] = 0.0f;
                    }
                }
            }
            continue;
        }
#endif
        float m = 0.0f;
        int bad = 0;
        for (int c = lid; c < dk; c += GROUP) {
            const float v = K_LOAD(keys, base + c);
            bad |= !isfinite(v);
            m = fmax(m, fabs(v));
        }
        if (bad) flags[2] = 1;
        red[lid] = m;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int s = GROUP / 2; s > 0; s >>= 1) {
            if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        m = red[0];
        barrier(CLK_LOCAL_MEM_FENCE);
        // k / m by division (1 / m overflows for a subnormal m); m = 0: a zero key.
        const float m_div = m > 0.0f ? m : 1.0f;
        float sum = 0.0f;
        for (int c = lid; c < dk; c += GROUP) {
            const float v = K_LOAD(keys, base + c) / m_div;
            sum = SY_MAD(v, v, sum);
        }
        red[lid] = sum;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int s = GROUP / 2; s > 0; s >>= 1) {
            if (lid < s) red[lid] += red[lid + s];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        sum = red[0];
        barrier(CLK_LOCAL_MEM_FENCE);
        const float inv = sum > 0.0f ? 1.0f / sqrt(sum) : 0.0f;
        const int b = p / tokens;
        const int pos = p - b * tokens;
        if ((pos & 1) == 0) {
            __global float* out = ka + ((size_t)b * (size_t)na + (size_t)(pos >> 1)) * (size_t)dk;
            for (int c = lid; c < dk; c += GROUP) out[c] = K_LOAD(keys, base + c) / m_div * inv;
        } else {
            const int j = pos >> 1;
            __global float* out = kbt + (size_t)b * (size_t)dk * (size_t)nb_pad + (size_t)(j / panel) * (size_t)dk * (size_t)panel
                + (size_t)(j % panel);
            for (int c = lid; c < dk; c += GROUP) out[(size_t)c * (size_t)panel] = K_LOAD(keys, base + c) / m_div * inv;
            // The last B token also zeroes the panel's padding columns (never read as partners).
            if (j == tokens / 2 - 1) {
                for (int q = j + 1; q < nb_pad; ++q) {
                    __global float* pad = kbt + (size_t)b * (size_t)dk * (size_t)nb_pad
                        + (size_t)(q / panel) * (size_t)dk * (size_t)panel + (size_t)(q % panel);
                    for (int c = lid; c < dk; c += GROUP) pad[(size_t)c * (size_t)panel] = 0.0f;
                }
            }
        }
    }
}

// Each A token's best B partner over the columns [col_begin, col_end) (col_begin a multiple of
// PANEL), continuing the best so far unless `first`: a work-item takes TS tiles of RA A tokens of
// batch get_global_id(1) and walks the range panel by panel (each panel, dk × PANEL keys, is
// read once for its TS tiles, from cache), each similarity one f32 multiply-add (SY_MAD) chain over the key in
// order (so equal keys give bit-equal similarities wherever they sit). Each row keeps a best
// value and column per vector lane (strictly greater replaces, so a lane keeps its lowest
// column; columns past nb never count), branch-free; at the end the lanes meet (the highest
// value, the lowest column holding it) and only a strictly greater value replaces the earlier
// ranges' best, so ties go to the lower B index. The host sizes each range so a work-item's
// loops stay bounded. With `protect`, A token 0 (the class token) scores −∞.
__kernel void merge_match(__global const float* ka, __global const float* kbt, __global float* best_val,
                          __global int* best_idx, int na, int nb, int nb_pad, int dk, int col_begin, int col_end,
                          int first, int protect) {
    const int group = get_global_id(0);
    const int b = get_global_id(1);
    const int i_first = group * RA * TS;
    if (i_first >= na) return;
    VEC lane_best[TS][RA];
    IVEC lane_col[TS][RA];
    for (int t = 0; t < TS; ++t) {
        for (int r = 0; r < RA; ++r) {
            lane_best[t][r] = (VEC)(-INFINITY);
            lane_col[t][r] = (IVEC)(0);
        }
    }
    __global const float* bt = kbt + (size_t)b * (size_t)dk * (size_t)nb_pad;
    for (int p0 = col_begin; p0 < col_end; p0 += PANEL) {
        __global const float* wp = bt + (size_t)p0 * (size_t)dk;  // panel p0 / PANEL, [dk][PANEL]
        const bool full = p0 + PANEL <= nb;
        for (int t = 0; t < TS; ++t) {
            const int i0 = i_first + t * RA;
            if (i0 >= na) break;
            __global const float* a_rows[RA];
#pragma unroll
            for (int r = 0; r < RA; ++r) a_rows[r] = ka + ((size_t)b * (size_t)na + (size_t)min(i0 + r, na - 1)) * (size_t)dk;
            VEC acc[RA][NV];
#pragma unroll
            for (int r = 0; r < RA; ++r)
#pragma unroll
                for (int v = 0; v < NV; ++v) acc[r][v] = (VEC)0.0f;
            for (int kk = 0; kk < dk; ++kk) {
                VEC w[NV];
#pragma unroll
                for (int v = 0; v < NV; ++v) w[v] = VLOAD(wp + kk * PANEL + v * VW);
#pragma unroll
                for (int r = 0; r < RA; ++r) {
                    const VEC av = (VEC)a_rows[r][kk];
#pragma unroll
                    for (int v = 0; v < NV; ++v) acc[r][v] = SY_MAD(av, w[v], acc[r][v]);
                }
            }
#pragma unroll
            for (int r = 0; r < RA; ++r) {
                VEC bv = lane_best[t][r];
                IVEC bc = lane_col[t][r];
#pragma unroll
                for (int v = 0; v < NV; ++v) {
                    const IVEC col = (IVEC)(p0 + v * VW) + LANE_IDS;
                    IVEC gt = acc[r][v] > bv;
                    if (!full) gt = gt & (col < (IVEC)(nb));
                    bv = select(bv, acc[r][v], gt);
                    bc = select(bc, col, gt);
                }
                lane_best[t][r] = bv;
                lane_col[t][r] = bc;
            }
        }
    }
    for (int t = 0; t < TS; ++t) {
        for (int r = 0; r < RA; ++r) {
            const int i = i_first + t * RA + r;
            if (i >= na) break;
            const size_t at = (size_t)b * (size_t)na + (size_t)i;
            const VEC bv = lane_best[t][r];
            const float v = HMAX(bv);
            const int j = HMINI(select((IVEC)(INT_MAX), lane_col[t][r], bv == (VEC)(v)));
            float best = first ? -INFINITY : best_val[at];
            int idx = first ? 0 : best_idx[at];
            if (v > best && j != INT_MAX) {
                best = v;
                idx = j;
            }
            best_val[at] = (protect && i == 0) ? -INFINITY : best;
            best_idx[at] = idx;
        }
    }
}

// merge_match where work-items are SIMD lanes: one work-group of GROUP lanes per A token i
// (get_group_id(1)) of batch get_group_id(2); lane l takes the columns col_begin + l, + GROUP, ...
// (consecutive lanes read consecutive B keys), each similarity one f32 multiply-add (SY_MAD) chain over the key
// in order, and keeps its strictly greater values; the lanes' bests meet in a fixed tree,
// ties to the lower column, then continue the best of the earlier ranges. No loop nests: a
// lane's loop count is (its columns) × (dk + 1), which the host keeps far below 65,535.
__kernel void merge_match_lanes(__global const float* ka, __global const float* kbt, __global float* best_val,
                                __global int* best_idx, int na, int nb, int nb_pad, int panel, int dk,
                                int col_begin, int col_end, int first, int protect) {
    const int lid = get_local_id(0);
    const int i = get_group_id(1);
    const int b = get_group_id(2);
    __local float vals[GROUP];
    __local int idxs[GROUP];
    __global const float* a = ka + ((size_t)b * (size_t)na + (size_t)i) * (size_t)dk;
    __global const float* bt = kbt + (size_t)b * (size_t)dk * (size_t)nb_pad;
    const int none = 0x7FFFFFFF;  // no column yet: loses to any column
    float best = -INFINITY;
    int idx = none;
    for (int j = col_begin + lid; j < col_end; j += GROUP) {
        float acc = 0.0f;
        __global const float* col = bt + (size_t)(j / panel) * (size_t)dk * (size_t)panel + (size_t)(j % panel);
        for (int kk = 0; kk < dk; ++kk) acc = SY_MAD(a[kk], col[(size_t)kk * (size_t)panel], acc);
        if (acc > best || idx == none) {
            best = acc;
            idx = j;
        }
    }
    vals[lid] = best;
    idxs[lid] = idx;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = GROUP / 2; s > 0; s >>= 1) {
        if (lid < s) {
            const float v = vals[lid + s];
            const int j = idxs[lid + s];
            if (j != none && (idxs[lid] == none || v > vals[lid] || (v == vals[lid] && j < idxs[lid]))) {
                vals[lid] = v;
                idxs[lid] = j;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        const size_t at = (size_t)b * (size_t)na + (size_t)i;
        float v = vals[0];
        int j = idxs[0] == none ? 0 : idxs[0];  // (an empty range is never launched)
        if (!first && !(v > best_val[at])) {  // earlier ranges hold lower columns: they win ties
            v = best_val[at];
            j = best_idx[at];
        }
        best_val[at] = (protect && i == 0) ? -INFINITY : v;
        best_idx[at] = j;
    }
}

// The merge plan of batch get_group_id(0) (one work-group of GROUP work-items per batch):
// marks the r chosen A tokens (top_idx, from the top-k of the scores) with their partner in
// dst_of (else −1); numbers the unmerged A tokens in position order (each work-item counts a
// contiguous chunk, one work-item scans the GROUP counts); writes row_source (the A token of
// each unmerged output row), the source map, and merge_key = −partner (−∞ unmerged), whose
// top-k orders the merged A tokens by partner, then position.
__kernel void merge_plan(__global const int* top_idx, __global const int* best_idx, __global int* dst_of,
                         __global float* merge_key, __global int* row_source, __global int* source_map, int na,
                         int nb, int tokens, int r) {
    const int b = get_group_id(0);
    const int lid = get_local_id(0);
    __local int counts[GROUP];
    __global int* dst = dst_of + (size_t)b * (size_t)na;
    for (int i = lid; i < na; i += GROUP) dst[i] = -1;
    barrier(CLK_GLOBAL_MEM_FENCE);
    for (int q = lid; q < r; q += GROUP) {
        const int i = top_idx[(size_t)b * (size_t)r + q];
        if (i < 0 || i >= na) continue;
        const int j = best_idx[(size_t)b * (size_t)na + i];
        dst[i] = (j >= 0 && j < nb) ? j : 0;
    }
    barrier(CLK_GLOBAL_MEM_FENCE);
    const int chunk = (na + GROUP - 1) / GROUP;
    const int lo = min(na, lid * chunk);
    const int hi = min(na, lo + chunk);
    int count = 0;
    for (int i = lo; i < hi; ++i) count += dst[i] < 0;
    counts[lid] = count;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
        int running = 0;
        for (int g = 0; g < GROUP; ++g) {
            const int c = counts[g];
            counts[g] = running;
            running += c;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int first_b = na - r;
    int row = counts[lid];
    __global int* map = source_map + (size_t)b * (size_t)tokens;
    for (int i = lo; i < hi; ++i) {
        const int j = dst[i];
        if (j < 0) {
            if (row < first_b) row_source[(size_t)b * (size_t)first_b + row] = i;
            map[2 * i] = row;
            merge_key[(size_t)b * (size_t)na + i] = -INFINITY;
            ++row;
        } else {
            map[2 * i] = first_b + j;
            merge_key[(size_t)b * (size_t)na + i] = -(float)j;
        }
    }
    for (int j = lid; j < nb; j += GROUP) map[2 * j + 1] = first_b + j;
}

// CPU-class devices (one work-item per batch, get_global_id(0)): the r A tokens with the best
// scores, best first, ties to the lower index (as topk_rows orders them: keys from
// descending_key, a NaN first), by a stable least-significant-digit radix sort of
// (key, index) in four 8-bit passes through the scratch `keys` and `idx` ([B][2][na] each).
__kernel void merge_choose(__global const float* best_val, __global uint* keys, __global int* idx,
                           __global int* top_idx, int batches, int na, int r) {
    const int b = get_global_id(0);
    if (b >= batches) return;
    __global const float* v = best_val + (size_t)b * (size_t)na;
    __global uint* k0 = keys + (size_t)b * 2 * (size_t)na;
    __global uint* k1 = k0 + na;
    __global int* i0 = idx + (size_t)b * 2 * (size_t)na;
    __global int* i1 = i0 + na;
    for (int i = 0; i < na; ++i) {
        k0[i] = descending_key(v[i]);
        i0[i] = i;
    }
    for (int shift = 0; shift < 32; shift += 8) {
        int start[256];
        for (int c = 0; c < 256; ++c) start[c] = 0;
        for (int i = 0; i < na; ++i) start[(k0[i] >> shift) & 255u] += 1;
        int run = 0;
        for (int c = 0; c < 256; ++c) {
            const int n = start[c];
            start[c] = run;
            run += n;
        }
        for (int i = 0; i < na; ++i) {
            const uint k = k0[i];
            const int at = start[(k >> shift) & 255u]++;
            k1[at] = k;
            i1[at] = i0[i];
        }
        __global uint* kt = k0;
        k0 = k1;
        k1 = kt;
        __global int* it = i0;
        i0 = i1;
        i1 = it;
    }
    for (int q = 0; q < r; ++q) top_idx[(size_t)b * (size_t)r + q] = i0[q];
}

// CPU-class devices (one work-item per batch): the merged A tokens (dst_of ≥ 0) ordered by
// partner, then position (what topk_rows of merge_plan's keys gives), by a counting sort over
// the B tokens through the scratch `start` ([B][nb]).
__kernel void merge_order(__global const int* dst_of, __global int* start, __global int* sorted, int batches, int na,
                          int nb, int r) {
    const int b = get_global_id(0);
    if (b >= batches) return;
    __global const int* dst = dst_of + (size_t)b * (size_t)na;
    __global int* st = start + (size_t)b * (size_t)nb;
    __global int* out = sorted + (size_t)b * (size_t)r;
    for (int j = 0; j < nb; ++j) st[j] = 0;
    for (int i = 0; i < na; ++i) {
        const int j = dst[i];
        if (j >= 0 && j < nb) st[j] += 1;
    }
    int run = 0;
    for (int j = 0; j < nb; ++j) {
        const int n = st[j];
        st[j] = run;
        run += n;
    }
    for (int i = 0; i < na; ++i) {
        const int j = dst[i];
        if (j < 0 || j >= nb) continue;
        const int at = st[j]++;
        if (at < r) out[at] = i;
    }
}

// First position q in [0, r) of the partner-sorted merged A tokens whose partner is ≥ j
// (partners ascend along `sorted`; an index out of range counts as past every partner).
inline int run_start(__global const int* sorted, __global const int* dst, int na, int r, int j) {
    int lo = 0;
    int hi = r;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        const int i = sorted[mid];
        const int key = (i >= 0 && i < na) ? dst[i] : 0x7FFFFFFF;
        if (key < j) lo = mid + 1; else hi = mid;
    }
    return lo;
}

inline float size_of(__global const float* sizes, int has_sizes, size_t at, __global int* flags) {
    if (!has_sizes) return 1.0f;
    const float s = sizes[at];
    if (!(s > 0.0f) || isinf(s)) flags[3] = 1;
    return s;
}

// Copies n RAW_T words from src to dst, 16 at a time, then one by one (16-bit words as 32-bit
// ones when n is even and both ends 4-byte aligned: half the operations).
inline void copy_words(__global const RAW_T* src, __global RAW_T* dst, int n) {
    if (sizeof(RAW_T) == 2 && (n & 1) == 0 && (((size_t)src | (size_t)dst) & 3) == 0) {
        __global const uint* s32 = (__global const uint*)src;
        __global uint* d32 = (__global uint*)dst;
        const int n32 = n >> 1;
        int c = 0;
        for (; c + 16 <= n32; c += 16) SY_COPY16(s32 + c, 0, d32 + c);
        for (; c < n32; ++c) d32[c] = s32[c];
        return;
    }
    int c = 0;
    for (; c + 16 <= n; c += 16) SY_COPY16(src + c, 0, dst + c);
    for (; c < n; ++c) dst[c] = src[c];
}

// The merged tokens: output row o of batch b (get_global_id(1) walks rows_per_item rows) over
// the columns [c0, c0 + chunk_cols) (get_global_id(0)): an unmerged A token or a B token nothing
// merged into is copied bit for bit; a B token with merges gets (s_B·x_B + Σ s_i·x_i) / (s_B + Σ
// s_i), its A tokens in ascending position, in f32 (the sum times the reciprocal of the total
// size). A B token's run in `sorted` (its merged A tokens) starts where the previous B token's
// ended when the work-item's previous row was that token, else by binary search. The work-item
// of the first column chunk writes the output size.
__kernel void merge_rows(__global const X_T* x, __global const float* sizes, int has_sizes,
                         __global const int* row_source, __global const int* dst_of, __global const int* sorted,
                         __global X_T* y, __global float* sizes_out, __global int* flags, int batches, int tokens,
                         int d, int na, int nb, int r, int rows_per_item, int chunk_cols) {
    const int m = na - r + nb;
    const int first_b = na - r;
    const int c0 = get_global_id(0) * chunk_cols;
    const int c1 = min(d, c0 + chunk_cols);
    const int g0 = get_global_id(1) * rows_per_item;
    const int total = batches * m;
    int prev_j = -2;  // the B token of the previous row (same batch), and where its run ended
    int prev_b = -1;
    int prev_qe = 0;
    for (int g = g0; g < g0 + rows_per_item && g < total; ++g) {
        const int b = g / m;
        const int o = g - b * m;
        const size_t xb = (size_t)b * (size_t)tokens;
        __global X_T* out = y + (size_t)g * (size_t)d;
        int p;
        int qs = 0;
        int qe = 0;
        __global const int* srt = sorted + (size_t)b * (size_t)r;
        __global const int* dst = dst_of + (size_t)b * (size_t)na;
        if (o < first_b) {
            const int i = row_source[(size_t)b * (size_t)first_b + o];
            p = (i >= 0 && i < na) ? 2 * i : -1;
        } else {
            const int j = o - first_b;
            p = 2 * j + 1;
            if (r > 0) {
                qs = (b == prev_b && j == prev_j + 1) ? prev_qe : run_start(srt, dst, na, r, j);
                qe = qs;
                // Partners ascend along `sorted` (an index out of range counts past every one).
                while (qe < r) {
                    const int i = srt[qe];
                    if (((i >= 0 && i < na) ? dst[i] : 0x7FFFFFFF) > j) break;
                    ++qe;
                }
                prev_b = b;
                prev_j = j;
                prev_qe = qe;
            }
        }
        if (p < 0) {  // never from a well-formed plan; no read through a bad index
            for (int c = c0; c < c1; ++c) X_STORE(out, c, 0.0f);
            continue;
        }
        const float s_own = size_of(sizes, has_sizes, xb + p, flags);
        __global const X_T* own = x + (xb + p) * (size_t)d;
        if (qs == qe) {
            copy_words((__global const RAW_T*)own + c0, (__global RAW_T*)out + c0, c1 - c0);
            if (c0 == 0) sizes_out[g] = s_own;
            continue;
        }
        float total_size = s_own;
        for (int q = qs; q < qe; ++q) {
            const int i = srt[q];
            if (i >= 0 && i < na) total_size += size_of(sizes, has_sizes, xb + 2 * i, flags);
        }
        const float inv = 1.0f / total_size;
        int c = c0;
        if (d % 16 == 0 && c0 % 16 == 0) {
            for (; c + 16 <= c1; c += 16) {
                float16 acc = s_own * X_LOAD16(own, c / 16);
                for (int q = qs; q < qe; ++q) {
                    const int i = srt[q];
                    if (i < 0 || i >= na) continue;
                    const float s = has_sizes ? sizes[xb + 2 * i] : 1.0f;
                    const float16 xv = X_LOAD16(x + (xb + 2 * i) * (size_t)d, c / 16);
                    acc = SY_FMA16((float16)s, xv, acc);
                }
                Y_STORE16(out, c / 16, acc * inv);
            }
        }
        for (; c < c1; ++c) {
            float acc = s_own * X_LOAD(own, c);
            for (int q = qs; q < qe; ++q) {
                const int i = srt[q];
                if (i < 0 || i >= na) continue;
                const float s = has_sizes ? sizes[xb + 2 * i] : 1.0f;
                acc = SY_MAD(s, X_LOAD(x, (xb + 2 * i) * (size_t)d + c), acc);
            }
            X_STORE(out, c, acc * inv);
        }
        if (c0 == 0) sizes_out[g] = total_size;
    }
}

// Unmerge: output row g = b·tokens + p (get_global_id(1) walks rows_per_item rows) copies row
// source_map[g] of batch b of y [B, rows, d] over the columns [c0, c0 + chunk_cols), bit for bit;
// an entry outside [0, rows) writes zeros and raises flags[4].
__kernel void token_unmerge(__global const RAW_T* y, __global const int* source_map, __global RAW_T* out,
                            __global int* flags, int batches, int rows, int tokens, int d, int rows_per_item,
                            int chunk_cols) {
    const int c0 = get_global_id(0) * chunk_cols;
    const int c1 = min(d, c0 + chunk_cols);
    const int g0 = get_global_id(1) * rows_per_item;
    const int total = batches * tokens;
    for (int g = g0; g < g0 + rows_per_item && g < total; ++g) {
        const int b = g / tokens;
        const int s = source_map[g];
        __global RAW_T* dst = out + (size_t)g * (size_t)d;
        if (s < 0 || s >= rows) {
            if (c0 == 0) flags[4] = 1;
            for (int c = c0; c < c1; ++c) dst[c] = 0;
            continue;
        }
        __global const RAW_T* src = y + ((size_t)b * (size_t)rows + (size_t)s) * (size_t)d;
        int c = c0;
        if (d % 16 == 0 && c0 % 16 == 0) {
            for (; c + 16 <= c1; c += 16) SY_COPY16(src + c, 0, dst + c);
        }
        for (; c < c1; ++c) dst[c] = src[c];
    }
}
