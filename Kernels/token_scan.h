// Shared by the token selection (token_topk.cl) and compaction (compact.cl) kernels: a
// sequence's positions are split into chunks of CHUNK = GROUP * PER, one work-group per chunk,
// work-item lid owning the PER consecutive positions from lid * PER. Per-chunk counts are
// scanned per sequence (one work-group per sequence), then each chunk's work-group scans its
// work-items' counts and every work-item walks its positions in order: a stable compaction with
// no host read and no loop longer than PER or nchunks / GROUP per work-item.
#ifndef SWITCHYARD_TOKEN_SCAN_H
#define SWITCHYARD_TOKEN_SCAN_H

#ifndef PER
#define PER 16
#endif
#define CHUNK ((long)GROUP * (long)PER)

// The positions [*begin, *end) of this work-item in chunk `chunk` of a sequence of `length`.
inline void token_range(int chunk, int lid, int length, int* begin, int* end) {
    const long first = (long)chunk * CHUNK + (long)lid * PER;
    *begin = (int)min(first, (long)length);
    *end = (int)min(first + PER, (long)length);
}

// Exclusive scan of v over the work-group (Hillis–Steele in local memory, GROUP a power of two);
// *total gets the sum. Every work-item must call it (it has barriers).
inline int2 group_exclusive_scan2(int2 v, __local int2* scratch, int2* total) {
    const int lid = get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int offset = 1; offset < GROUP; offset <<= 1) {
        const int2 add = lid >= offset ? scratch[lid - offset] : (int2)(0, 0);
        barrier(CLK_LOCAL_MEM_FENCE);
        scratch[lid] += add;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int2 inclusive = scratch[lid];
    *total = scratch[GROUP - 1];
    barrier(CLK_LOCAL_MEM_FENCE);
    return inclusive - v;
}

// One work-group per sequence: the exclusive scan, in place, of the sequence's per-chunk counts
// `counts [nchunks]`; returns the sequence's total. Each work-item sums a contiguous run of
// ceil(nchunks / GROUP) chunks, the work-group scans the sums, each run is rewritten in order.
inline int2 scan_chunks(__global int2* counts, int nchunks, __local int2* scratch) {
    const int lid = get_local_id(0);
    const int per = (nchunks + GROUP - 1) / GROUP;
    const int begin = min(lid * per, nchunks);
    const int end = min(begin + per, nchunks);
    int2 sum = (int2)(0, 0);
    for (int c = begin; c < end; ++c) sum += counts[c];
    int2 total;
    int2 running = group_exclusive_scan2(sum, scratch, &total);
    for (int c = begin; c < end; ++c) {
        const int2 v = counts[c];
        counts[c] = running;
        running += v;
    }
    return total;
}

#endif
