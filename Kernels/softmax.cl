#include "common.h"

// Row-wise softmax, one work-group of GROUP work-items per row. Each work-item reduces its
// strided columns in order, then a fixed tree combines them: the summation order depends on
// GROUP alone, never on the number of rows, so results are reproducible and batch-invariant.
__kernel void softmax_rows(__global const X_T* x, __global Y_T* y, int rows, int cols) {
    const int row = get_group_id(0);
    const int lid = get_local_id(0);
    __local float red[GROUP];

    const size_t base = (size_t)row * (size_t)cols;

    float m = -INFINITY;
    for (int c = lid; c < cols; c += GROUP) m = fmax(m, X_LOAD(x, base + c));
    red[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = GROUP / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);

    float sum = 0.0f;
    for (int c = lid; c < cols; c += GROUP) sum += exp(X_LOAD(x, base + c) - m);
    red[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = GROUP / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    sum = red[0];

    for (int c = lid; c < cols; c += GROUP) Y_STORE(y, base + c, exp(X_LOAD(x, base + c) - m) / sum);
}
