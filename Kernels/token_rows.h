// Row copies of the token gather/scatter/expand kernels. RAW_T (the host passes it when a copy's
// source and destination have one storage type: uint for 32-bit, ushort for 16-bit) copies bits,
// no conversion; RAW_A / RAW_X say which sources (A: rows of f or packed; X: x or base) share the
// output's type.
#ifndef SWITCHYARD_TOKEN_ROWS_H
#define SWITCHYARD_TOKEN_ROWS_H

#ifdef RAW_T
// Copies n words, work-items striding over them, 16 at a time when n % 16 == 0.
#define COPY_WORDS(src, dst, n, lid)                                                          \
    do {                                                                                         \
        if ((n) % 16 == 0) {                                                                     \
            for (int q = (lid); q < (n) / 16; q += GROUP) SY_COPY16((src), q, (dst));               \
        } else {                                                                                 \
            for (int c = (lid); c < (n); c += GROUP) (dst)[c] = (src)[c];                        \
        }                                                                                        \
    } while (0)

// Copies the d elements at element offsets src_off of src and dst_off of dst bit for bit. A row
// of a 16-bit type with d even (its offsets, multiples of d, are then even) moves as d/2 32-bit
// words: 64 bytes per 16-wide step instead of 32.
inline void copy_row_raw(__global const RAW_T* src, size_t src_off, __global RAW_T* dst, size_t dst_off, int d,
                         int lid) {
#if RAW_SIZE == 2
    if ((d & 1) == 0) {
        __global const uint* s = (__global const uint*)(src + src_off);
        __global uint* t = (__global uint*)(dst + dst_off);
        COPY_WORDS(s, t, d / 2, lid);
        return;
    }
#endif
    __global const RAW_T* s = src + src_off;
    __global RAW_T* t = dst + dst_off;
    COPY_WORDS(s, t, d, lid);
}
#endif

#endif
