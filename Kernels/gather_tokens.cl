#include "common.h"
#include "token_rows.h"

// Gather of chosen tokens: output row r = (b, j) of [B, rows, d] is row indices[b, j] of
// sequence b of x [B, L, d], zeros for an empty slot (-1) or an index outside 0..<L (flagged by
// token_index_map). One work-group per rows_per_group output rows; its work-items stride over
// the row's columns, 16 at a time when d is a multiple of 16. Same storage type in and out
// (RAW_X): rows copied bit for bit.
__kernel void gather_tokens(__global const X_T* x, __global const int* indices, __global Y_T* y, int total_rows,
                            int length, int slots, int rows, int d, int rows_per_group) {
    const int lid = get_local_id(0);
    const long first = (long)get_group_id(0) * rows_per_group;
    const long last = min(first + rows_per_group, (long)total_rows);
    for (long r = first; r < last; ++r) {
        const int b = (int)(r / rows);
        const int j = (int)(r - (long)b * rows);
        const int p = indices[(size_t)b * (size_t)slots + j];
        const int valid = p >= 0 && p < length;
        const size_t out = (size_t)r * (size_t)d;
        const size_t in = ((size_t)b * (size_t)length + (size_t)(valid ? p : 0)) * (size_t)d;
#ifdef RAW_X
        if (valid) {
            copy_row_raw((__global const RAW_T*)x, in, (__global RAW_T*)y, out, d, lid);
            continue;
        }
#endif
        if (d % 16 == 0) {
            for (int q = lid; q < d / 16; q += GROUP) Y_STORE16(y + out, q, valid ? X_LOAD16(x + in, q) : (float16)(0.0f));
        } else {
            for (int c = lid; c < d; c += GROUP) Y_STORE(y, out + c, valid ? X_LOAD(x, in + c) : 0.0f);
        }
    }
}
