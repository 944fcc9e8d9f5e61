// Row copies of the token gather/scatter/expand kernels. RAW_T (the host passes it when a copy's
// source and destination have one storage type: uint for 32-bit, ushort for 16-bit) copies bits,
// no conversion; RAW_A / RAW_X say which sources (A: rows of f or packed; X: x or base) share the
// output's type.
#ifndef SWITCHYARD_TOKEN_ROWS_H
#define SWITCHYARD_TOKEN_ROWS_H

#ifdef RAW_T
// Copies d elements bit for bit; work-items stride over the row, 16 at a time when d % 16 == 0.
inline void copy_row_raw(__global const RAW_T* src, __global RAW_T* dst, int d, int lid) {
    if (d % 16 == 0) {
        for (int q = lid; q < d / 16; q += GROUP) vstore16(vload16(q, src), q, dst);
    } else {
        for (int c = lid; c < d; c += GROUP) dst[c] = src[c];
    }
}
#endif

#endif
