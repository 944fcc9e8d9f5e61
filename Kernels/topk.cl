#include "common.h"

#ifdef SCRATCH_GLOBAL
#define SCRATCH __global
#define FENCE (CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE)
#else
#define SCRATCH __local
#define FENCE CLK_LOCAL_MEM_FENCE
#endif

// Row-wise top-k, one work-group of GROUP work-items per row. Each column becomes a 64-bit key
// (descending value key, then column index), the row's keys are sorted ascending by a bitonic
// network over `padded` (a power of two >= cols) slots, and the first k are written out. Keys
// are unique, so the order is total and ties go to the lower index. The scratch is local memory
// (rows that fit) or a global buffer of rows * padded keys (SCRATCH_GLOBAL).
//
// The network's stages (one per (size, stride) pair, log2(padded) * (log2(padded) + 1) / 2 of
// them) run from stage_begin up to stage_end: all of them in one launch, or, on a device that
// stops a work-item's loops after a fixed number of iterations (llvmpipe), in several launches
// over the global scratch, the first writing the keys and the last the outputs. Every stage is
// the same compare-exchanges either way, so the result never depends on the split.
__kernel void topk_rows(__global const X_T* x, __global X_T* values, __global int* indices, int rows,
                        int cols, int k, int padded, SCRATCH ulong* scratch, int stage_begin, int stage_end) {
    const int row = get_group_id(0);
    const int lid = get_local_id(0);

#ifdef SCRATCH_GLOBAL
    SCRATCH ulong* keys = scratch + (size_t)row * (size_t)padded;
#else
    SCRATCH ulong* keys = scratch;
#endif
    const size_t base = (size_t)row * (size_t)cols;
    if (stage_begin == 0) {
        for (int c = lid; c < padded; c += GROUP) {
            keys[c] = c < cols ? (((ulong)descending_key(X_LOAD(x, base + c)) << 32) | (ulong)c) : ~(ulong)0;
        }
    }
    barrier(FENCE);
    const uint half_n = (uint)padded >> 1;
    // Stage s is stride number j (strides size/2, size/4, ..., 1) of size 2^i, where the stages
    // of sizes 2^1 ... 2^(i-1) number 1 + 2 + ... + (i - 1).
    uint i = 1, j = (uint)stage_begin;
    while (j >= i) {
        j -= i;
        ++i;
    }
    for (int s = stage_begin; s < stage_end; ++s) {
        const uint size = 1u << i;
        const uint stride = 1u << (i - 1 - j);
        for (uint t = lid; t < half_n; t += GROUP) {
            const uint a = 2 * t - (t & (stride - 1));
            const uint b = a + stride;
            const bool ascending = (a & size) == 0;
            const ulong ka = keys[a];
            const ulong kb = keys[b];
            if ((ka > kb) == ascending) {
                keys[a] = kb;
                keys[b] = ka;
            }
        }
        barrier(FENCE);
        if (++j == i) {
            j = 0;
            ++i;
        }
    }
    const int log_padded = 31 - clz(padded);
    if (stage_end < log_padded * (log_padded + 1) / 2) return;  // not the last launch
    const size_t out = (size_t)row * (size_t)k;
    for (int q = lid; q < k; q += GROUP) {
        // Columns come from the sorted keys; a padding key (only with k > cols, which the host
        // refuses) would name column 0xFFFFFFFF: checked, column 0 instead.
        const uint key_c = (uint)(keys[q] & 0xFFFFFFFFu);
        const int c = key_c < (uint)cols ? (int)key_c : 0;
        indices[out + q] = c;
        X_STORE(values, out + q, X_LOAD(x, base + c));
    }
}
