#include "common.h"

// Checks token indices [B, slots] for gatherTokens, scatterTokens and expandTokens and builds
// the inverse map inv [B, L] (filled with -1 first): inv[b, p] = the slot naming position p.
// -1 is an empty slot; flags[0]: an index outside -1..<length; flags[1]: a position named twice
// in a sequence (the second compare-and-swap finds the slot taken); flags[2]: a valid index in a
// slot at or past `rows`. A bad index is never used as an address.
__kernel void token_index_map(__global const int* indices, __global int* inv, __global int* flags, int batch,
                              int length, int slots, int rows) {
    const size_t i = get_global_id(0);
    if (i >= (size_t)batch * (size_t)slots) return;
    const int b = (int)(i / (size_t)slots);
    const int j = (int)(i - (size_t)b * (size_t)slots);
    const int p = indices[i];
    if (p == -1) return;
    if (p < -1 || p >= length) {
        flags[0] = 1;
        return;
    }
    if (j >= rows) {
        flags[2] = 1;
        return;
    }
    if (atomic_cmpxchg(&inv[(size_t)b * (size_t)length + p], -1, j) != -1) flags[1] = 1;
}
