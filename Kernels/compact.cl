#include "common.h"
#include "token_scan.h"

// Token dropping by a keep mask [B, L]: per sequence, the kept positions in order, then -1 for
// the dropped ones, and the kept count. A stable compaction (token_scan.h): per-chunk counts,
// a per-sequence scan of them (which writes the counts), then each chunk's positions placed.
// MASK_I32: the mask is i32 0/1 (any other value is dropped and raises flags[3]); otherwise it
// is X_T scores, kept where score > threshold (NaN dropped).

#ifdef MASK_I32
#define KEEP_T int
#else
#define KEEP_T X_T
#endif

inline int is_kept(__global const KEEP_T* keep, size_t i, float threshold) {
#ifdef MASK_I32
    return keep[i] == 1;
#else
    return X_LOAD(keep, i) > threshold;
#endif
}

// Places positions [begin, end) of a sequence: kept p at slot (kept before p), dropped p at
// slot count + (dropped before p), filled with -1; `before` is the kept count before `begin`.
inline void compact_place_range(__global const KEEP_T* keep, size_t row, int begin, int end, float threshold,
                                int before, int count, int length, __global int* positions) {
    for (int p = begin; p < end; ++p) {
        // Slots come from counts in buffers: checked before the store.
        if (is_kept(keep, row + p, threshold)) {
            if ((uint)before < (uint)length) positions[row + before] = p;
            before += 1;
        } else {
            const int slot = count + (p - before);
            if ((uint)slot < (uint)length) positions[row + slot] = -1;
        }
    }
}

// The kept positions among [begin, end). `flags` non-null: an i32 mask value other than 0 or 1
// raises flags[3] (the first walk over the mask checks it).
inline int compact_count_range(__global const KEEP_T* keep, size_t row, int begin, int end, float threshold,
                               __global int* flags) {
    int n = 0;
    for (int p = begin; p < end; ++p) {
#ifdef MASK_I32
        const int v = keep[row + p];
        if (flags && v != 0 && v != 1) flags[3] = 1;
#else
        (void)flags;
#endif
        n += is_kept(keep, row + p, threshold);
    }
    return n;
}

// Grid [nchunks * GROUP, B].
__kernel void compact_count(__global const KEEP_T* keep, __global int2* counts, __global int* flags, int length,
                            int nchunks, float threshold) {
    const int b = get_global_id(1);
    const int lid = get_local_id(0);
    __local int2 scratch[GROUP];
    const size_t row = (size_t)b * (size_t)length;
    int begin, end;
    token_range(get_group_id(0), lid, length, &begin, &end);
    int2 total;
    group_exclusive_scan2((int2)(compact_count_range(keep, row, begin, end, threshold, flags), 0), scratch, &total);
    if (lid == 0) counts[(size_t)b * nchunks + get_group_id(0)] = total;
}

// Grid [GROUP, B]: one work-group per sequence; writes the kept count.
__kernel void compact_scan(__global int2* counts, __global int* kept, int nchunks) {
    __local int2 scratch[GROUP];
    const int b = get_group_id(1);
    const int2 total = scan_chunks(counts + (size_t)b * nchunks, nchunks, scratch);
    if (get_local_id(0) == 0) kept[b] = total.x;
}

// Grid [nchunks * GROUP, B]: kept position p goes to slot (kept before p), dropped p to slot
// count + (dropped before p), which it fills with -1.
__kernel void compact_emit(__global const KEEP_T* keep, __global const int2* counts, __global const int* kept,
                           __global int* positions, int length, int nchunks, float threshold) {
    const int b = get_global_id(1);
    const int lid = get_local_id(0);
    __local int2 scratch[GROUP];
    const size_t row = (size_t)b * (size_t)length;
    int begin, end;
    token_range(get_group_id(0), lid, length, &begin, &end);
    int2 total;
    const int before = group_exclusive_scan2((int2)(compact_count_range(keep, row, begin, end, threshold, 0), 0), scratch,
                                             &total).x +
                       counts[(size_t)b * nchunks + get_group_id(0)].x;
    compact_place_range(keep, row, begin, end, threshold, before, kept[b], length, positions);
}

// The whole compaction of one sequence by one work-group, in one launch (grid [GROUP, B]), for
// sequences of a few chunks: a first walk counts the kept positions (and checks the mask), a
// second places them chunk by chunk with a running count, as compact_emit does.
__kernel void compact_one(__global const KEEP_T* keep, __global int* kept, __global int* flags,
                          __global int* positions, int length, int nchunks, float threshold) {
    const int b = get_group_id(1);
    const int lid = get_local_id(0);
    __local int2 scratch[GROUP];
    const size_t row = (size_t)b * (size_t)length;
    int mine = 0;
    for (int c = 0; c < nchunks; ++c) {
        int begin, end;
        token_range(c, lid, length, &begin, &end);
        mine += compact_count_range(keep, row, begin, end, threshold, flags);
    }
    int2 total;
    group_exclusive_scan2((int2)(mine, 0), scratch, &total);
    const int count = total.x;
    if (lid == 0) kept[b] = count;
    int base = 0;  // kept in the chunks before
    for (int c = 0; c < nchunks; ++c) {
        int begin, end;
        token_range(c, lid, length, &begin, &end);
        const int chunk = compact_count_range(keep, row, begin, end, threshold, 0);
        const int before = group_exclusive_scan2((int2)(chunk, 0), scratch, &total).x + base;
        base += total.x;
        compact_place_range(keep, row, begin, end, threshold, before, count, length, positions);
    }
}
