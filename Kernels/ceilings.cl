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

#ifndef SY_CAT
#define SY_CAT_(a, b) a##b
#define SY_CAT(a, b) SY_CAT_(a, b)
#endif

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

// Read-only stream: each work-item sums its float16 vectors (four independent sums, so the adds
// never limit the reads) and writes one float, so the reads cannot be removed. Bytes counted:
// only those read (what a decode, which reads weights and writes little, is bound by).
__kernel void ceilings_read(__global const float16* restrict src, __global float* out, int n, int per_item) {
    CEILINGS_RANGE(n, per_item);
    float16 s0 = (float16)0.0f, s1 = (float16)0.0f, s2 = (float16)0.0f, s3 = (float16)0.0f;
    int i = first;
    for (; i + 3 * step < end; i += 4 * step) {
        s0 += src[i];
        s1 += src[i + step];
        s2 += src[i + 2 * step];
        s3 += src[i + 3 * step];
    }
    for (; i < end; i += step) s0 += src[i];
    const float16 s = (s0 + s1) + (s2 + s3);
    const float8 s8 = s.lo + s.hi;
    const float4 s4 = s8.lo + s8.hi;
    out[get_global_id(0)] = (s4.x + s4.y) + (s4.z + s4.w);
}

// FMA throughput at the device's native vector width: FMA_CHAINS independent chains of FMA_VW-wide
// FMAs per work-item (defaults: 16 × float16 for AVX-512's 32 registers, the host passes 12 ×
// float8 for AVX2's 16, 12 × float4 for SSE/NEON, 8 × float where work-items are lanes), so
// every FMA unit has independent work to cover its latency and no chain spills. `iterations`
// steps of 2 · FMA_VW · FMA_CHAINS flops; x ← x·a + b with a just below 1 converges to
// b / (1 − a), so values stay normal. The sum is written so the loop is not removed.
#ifndef FMA_VW
#define FMA_VW 16
#endif
#ifndef FMA_CHAINS
#define FMA_CHAINS 16
#endif
#if FMA_VW == 1
#define FMA_T float
#else
#define FMA_T SY_CAT(float, FMA_VW)
#endif
inline float fma_lane_sum(FMA_T v) {
#if FMA_VW == 1
    return v;
#else
    float t[FMA_VW];
    SY_CAT(vstore, FMA_VW)(v, 0, t);
    float s = 0.0f;
    for (int i = 0; i < FMA_VW; ++i) s += t[i];
    return s;
#endif
}
__kernel void ceilings_fma(__global float* out, int iterations, float a, float b) {
    const float base = (float)get_global_id(0) * 1.0e-3f;
    const FMA_T va = (FMA_T)a;
    const FMA_T vb = (FMA_T)b;
    FMA_T x[FMA_CHAINS];
#pragma unroll
    for (int c = 0; c < FMA_CHAINS; ++c) x[c] = (FMA_T)(base + 0.1f * (float)c);
    for (int i = 0; i < iterations; ++i) {
#pragma unroll
        for (int c = 0; c < FMA_CHAINS; ++c) x[c] = fma(x[c], va, vb);
    }
    FMA_T s = x[0];
#pragma unroll
    for (int c = 1; c < FMA_CHAINS; ++c) s += x[c];
    out[get_global_id(0)] = fma_lane_sum(s);
}
