// Device ceilings for the benchmarks (Sources/Switchyard/Ceilings.swift launches these):
// a fill that writes hashed pseudo-random data (so nothing is timed on zeros or fresh pages),
// streaming copies with plain and with non-temporal stores, and an FMA-throughput loop.
// OpenCL C 1.2.
//
// Options (-D):
//   CEILINGS_NONTEMPORAL=1   use clang's __builtin_nontemporal_store in ceilings_stream_nt where
//                            the compiler has it (PoCL, and most OpenCL compilers, are clang);
//                            otherwise, or with 0, that kernel falls back to a plain store.
//                            ceilings_features reports which one was compiled.
//   CEILINGS_INTERLEAVED=1   work-item i touches vectors i, i + global, i + 2·global, ... (GPUs:
//                            neighbouring work-items read neighbouring addresses). Default 0:
//                            work-item i owns one contiguous chunk of `per_item` vectors (CPUs:
//                            a work-group runs on one core, which then streams one contiguous
//                            range through its prefetchers).

#ifndef CEILINGS_NONTEMPORAL
#define CEILINGS_NONTEMPORAL 0
#endif
#ifndef CEILINGS_INTERLEAVED
#define CEILINGS_INTERLEAVED 0
#endif

#if CEILINGS_NONTEMPORAL && defined(__clang__) && defined(__has_builtin)
#if __has_builtin(__builtin_nontemporal_store)
#define CEILINGS_STORE_NT(p, v) __builtin_nontemporal_store((v), (p))
#define CEILINGS_NT_ACTIVE 1
#endif
#endif
#ifndef CEILINGS_NT_ACTIVE
#define CEILINGS_STORE_NT(p, v) (*(p) = (v))
#define CEILINGS_NT_ACTIVE 0
#endif

// The loop over the vectors work-item `gid` owns: [first, end) stepping by `step`.
#if CEILINGS_INTERLEAVED
#define CEILINGS_RANGE(n, per_item)                                                            \
    const int first = (int)get_global_id(0);                                                   \
    const int end = (n);                                                                       \
    const int step = (int)get_global_size(0)
#else
#define CEILINGS_RANGE(n, per_item)                                                            \
    const int first = (int)get_global_id(0) * (per_item);                                      \
    const int end = min(first + (per_item), (n));                                              \
    const int step = 1
#endif

// 1 when ceilings_stream_nt was compiled with non-temporal stores.
__kernel void ceilings_features(__global int* out) {
    if (get_global_id(0) == 0) out[0] = CEILINGS_NT_ACTIVE;
}

// dst[0, n) (in float16 vectors) := uniform values in [-1, 1) hashed from the index and seed.
__kernel void ceilings_fill(__global float16* dst, int n, int per_item, int seed) {
    CEILINGS_RANGE(n, per_item);
    const uint16 lane = (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = first; i < end; i += step) {
        uint16 x = (uint16)((uint)i * 16u) + lane + (uint16)((uint)seed * 0x9E3779B9u);
        x ^= x >> 16;
        x *= (uint16)0x7FEB352Du;
        x ^= x >> 15;
        x *= (uint16)0x846CA68Bu;
        x ^= x >> 16;
        dst[i] = convert_float16(x >> 8) * (float16)(0x1.0p-23f) - (float16)1.0f;
    }
}

// dst := src · scale over n float16 vectors (the host passes scale = 1: a copy the compiler
// cannot turn into a memcpy call, which would pick its own store kind).
__kernel void ceilings_stream(__global const float16* restrict src, __global float16* restrict dst, int n,
                              int per_item, float scale) {
    CEILINGS_RANGE(n, per_item);
    const float16 s = (float16)scale;
    for (int i = first; i < end; i += step) dst[i] = src[i] * s;
}

// The same with non-temporal stores (written around the caches straight to memory).
__kernel void ceilings_stream_nt(__global const float16* restrict src, __global float16* restrict dst, int n,
                                 int per_item, float scale) {
    CEILINGS_RANGE(n, per_item);
    const float16 s = (float16)scale;
    for (int i = first; i < end; i += step) CEILINGS_STORE_NT(&dst[i], src[i] * s);
}

// FMA throughput: 16 independent chains of float16 FMAs per work-item (enough independent
// work to cover the FMA latency on every unit), `iterations` steps each, 2 · 16 · 16 flops a
// step. x ← x·a + b with a just below 1 converges to b / (1 − a), so values stay normal. The
// lanes' sum is written so the loop is not removed.
__kernel void ceilings_fma(__global float* out, int iterations, float a, float b) {
    const float base = (float)get_global_id(0) * 1.0e-3f;
    const float16 va = (float16)a;
    const float16 vb = (float16)b;
    const float16 lane = (float16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) * 1.0e-2f;
    float16 x0 = lane + base + 0.0f, x1 = lane + base + 0.1f, x2 = lane + base + 0.2f, x3 = lane + base + 0.3f;
    float16 x4 = lane + base + 0.4f, x5 = lane + base + 0.5f, x6 = lane + base + 0.6f, x7 = lane + base + 0.7f;
    float16 x8 = lane + base + 0.8f, x9 = lane + base + 0.9f, x10 = lane + base + 1.0f, x11 = lane + base + 1.1f;
    float16 x12 = lane + base + 1.2f, x13 = lane + base + 1.3f, x14 = lane + base + 1.4f, x15 = lane + base + 1.5f;
    for (int i = 0; i < iterations; ++i) {
        x0 = fma(x0, va, vb);
        x1 = fma(x1, va, vb);
        x2 = fma(x2, va, vb);
        x3 = fma(x3, va, vb);
        x4 = fma(x4, va, vb);
        x5 = fma(x5, va, vb);
        x6 = fma(x6, va, vb);
        x7 = fma(x7, va, vb);
        x8 = fma(x8, va, vb);
        x9 = fma(x9, va, vb);
        x10 = fma(x10, va, vb);
        x11 = fma(x11, va, vb);
        x12 = fma(x12, va, vb);
        x13 = fma(x13, va, vb);
        x14 = fma(x14, va, vb);
        x15 = fma(x15, va, vb);
    }
    const float16 s = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) + ((x8 + x9) + (x10 + x11)) +
                      ((x12 + x13) + (x14 + x15));
    const float8 s8 = s.lo + s.hi;
    const float4 s4 = s8.lo + s8.hi;
    out[get_global_id(0)] = (s4.x + s4.y) + (s4.z + s4.w);
}
