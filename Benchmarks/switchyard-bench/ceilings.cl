// Device ceilings for the benchmarks (Sources/Switchyard/Ceilings.swift launches these):
// a fill that writes hashed pseudo-random data (so nothing is timed on zeros or fresh pages),
// streaming copies with plain and with non-temporal stores, a read-only stream, and an
// FMA-throughput loop. OpenCL C 1.2.
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
//   CEILINGS_VW              the fill's and streaming kernels' vector width (1, 2, 4, 8, 16; default 16).
//   FMA_VW, FMA_CHAINS,      the FMA kernel's vector width (1, 2, 4, 8, 16), independent chains
//   FMA_MAD                  per work-item (1 to 16), and mad() instead of fma(); see ceilings_fma.

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
    (void)(per_item);                                                                          \
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

// r := the lanes of vector variable v added up, per width (statements, not functions: a function
// taking a float16 draws a -Wpsabi warning from clang when compiling for a CPU without AVX-512).
#define LANES_SUM_1(v, r) r = (v);
#define LANES_SUM_2(v, r) r = (v).x + (v).y;
#define LANES_SUM_4(v, r) r = ((v).x + (v).y) + ((v).z + (v).w);
#define LANES_SUM_8(v, r) { const float4 q8_ = (v).lo + (v).hi; LANES_SUM_4(q8_, r) }
#define LANES_SUM_16(v, r) { const float8 h16_ = (v).lo + (v).hi; LANES_SUM_8(h16_, r) }

// The fill's and streaming kernels' element: floatCEILINGS_VW (16 default; the host passes the
// native vector width on CPUs, so no vector is wider than the registers (clang warns, -Wpsabi,
// about a float16 argument to a builtin without AVX-512), and 1 where work-items are lanes, so a
// SIMD group's loads are one contiguous vector). `n` and `per_item` count these.
#ifndef CEILINGS_VW
#define CEILINGS_VW 16
#endif
#if CEILINGS_VW == 1
#define CEIL_T float
#define CEIL_SUFFIX
#else
#define CEIL_T SY_CAT(float, CEILINGS_VW)
#define CEIL_SUFFIX CEILINGS_VW
#endif
#if CEILINGS_VW == 1
#define CEIL_U uint
#define CEIL_LANES 0u
#else
#define CEIL_U SY_CAT(uint, CEILINGS_VW)
#endif
#if CEILINGS_VW == 2
#define CEIL_LANES (uint2)(0, 1)
#elif CEILINGS_VW == 4
#define CEIL_LANES (uint4)(0, 1, 2, 3)
#elif CEILINGS_VW == 8
#define CEIL_LANES (uint8)(0, 1, 2, 3, 4, 5, 6, 7)
#elif CEILINGS_VW == 16
#define CEIL_LANES (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#endif

// dst[0, n) := uniform values in [-1, 1) hashed from the float's index and the seed (the same
// values whatever CEILINGS_VW).
__kernel void ceilings_fill(__global CEIL_T* dst, int n, int per_item, int seed) {
    CEILINGS_RANGE(n, per_item);
    for (int i = first; i < end; i += step) {
        CEIL_U x = (CEIL_U)((uint)i * (uint)CEILINGS_VW) + CEIL_LANES + (CEIL_U)((uint)seed * 0x9E3779B9u);
        x ^= x >> 16;
        x *= (CEIL_U)0x7FEB352Du;
        x ^= x >> 15;
        x *= (CEIL_U)0x846CA68Bu;
        x ^= x >> 16;
        dst[i] = SY_CAT(convert_float, CEIL_SUFFIX)(x >> 8) * (CEIL_T)(0x1.0p-23f) - (CEIL_T)1.0f;
    }
}

// dst := src · scale over n elements (the host passes scale = 1: a copy the compiler cannot
// turn into a memcpy call, which would pick its own store kind).
__kernel void ceilings_stream(__global const CEIL_T* restrict src, __global CEIL_T* restrict dst, int n,
                              int per_item, float scale) {
    CEILINGS_RANGE(n, per_item);
    const CEIL_T s = (CEIL_T)scale;
    for (int i = first; i < end; i += step) dst[i] = src[i] * s;
}

// The same with non-temporal stores (written around the caches straight to memory).
__kernel void ceilings_stream_nt(__global const CEIL_T* restrict src, __global CEIL_T* restrict dst, int n,
                                 int per_item, float scale) {
    CEILINGS_RANGE(n, per_item);
    const CEIL_T s = (CEIL_T)scale;
    for (int i = first; i < end; i += step) CEILINGS_STORE_NT(&dst[i], src[i] * s);
}

// Read-only stream: each work-item sums its elements (four independent sums, so the adds never
// limit the reads) and writes one float, so the reads cannot be removed. Bytes counted: only
// those read (what a decode, which reads weights and writes little, is bound by).
__kernel void ceilings_read(__global const CEIL_T* restrict src, __global float* out, int n, int per_item) {
    CEILINGS_RANGE(n, per_item);
    CEIL_T s0 = (CEIL_T)0.0f, s1 = (CEIL_T)0.0f, s2 = (CEIL_T)0.0f, s3 = (CEIL_T)0.0f;
    int i = first;
    for (; i + 3 * step < end; i += 4 * step) {
        s0 += src[i];
        s1 += src[i + step];
        s2 += src[i + 2 * step];
        s3 += src[i + 3 * step];
    }
    for (; i < end; i += step) s0 += src[i];
    const CEIL_T s = (s0 + s1) + (s2 + s3);
    float total;
    SY_CAT(LANES_SUM_, CEILINGS_VW)(s, total)
    out[get_global_id(0)] = total;
}

// FMA throughput at the device's native vector width: FMA_CHAINS (1 to 16) independent chains
// of FMA_T (float, or floatFMA_VW) FMAs per work-item, so every FMA unit has independent work
// to cover its latency and no chain spills. The host picks the shape (Ceilings.swift): 16 ×
// float16 on AVX-512 (32 zmm registers), 12 × float8 on AVX2 (16 ymm), 12 × float4 on SSE/NEON,
// 8 × float where work-items are SIMD lanes (llvmpipe, GPUs: many work-items fill the lanes).
// Each of the `outer` iterations runs FMA_UNROLL steps written out in full, so the only loop is
// the outer one and its count stays small (llvmpipe stops a work-item's loops after 65,535
// iterations in all): 2 · FMA_VW · FMA_CHAINS · FMA_UNROLL flops per work-item and outer
// iteration. FMA_MAD=1 writes mad() instead of fma(): the host times both and keeps the faster
// (llvmpipe computes fma() in software, correctly rounded: 0.16 against 147 GFLOP/s with mad()
// on 2 Zen 5 cores; mad() lets the compiler use the hardware FMA). x ← x·a + b with a just
// below 1 converges to b / (1 − a), so values stay normal. The chains' sum goes to sums[gid] (so nothing is removed) and the outer iterations the loop
// ran to steps[gid] (the host checks them: a loop cut short would overstate the rate).
#ifndef FMA_VW
#define FMA_VW 16
#endif
#ifndef FMA_CHAINS
#define FMA_CHAINS 16
#endif
#ifndef FMA_MAD
#define FMA_MAD 0
#endif
#define FMA_UNROLL 8
#if FMA_VW == 1
#define FMA_T float
#else
#define FMA_T SY_CAT(float, FMA_VW)
#endif
#if FMA_CHAINS < 1 || FMA_CHAINS > 16
#error "FMA_CHAINS must be 1 to 16"
#endif

// Each chain c < FMA_CHAINS; the others are never used (the compiler drops them).
#define FMA_EACH(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) \
                     OP(8) OP(9) OP(10) OP(11) OP(12) OP(13) OP(14) OP(15)
#define FMA_DECLARE(c) FMA_T x##c = (FMA_T)(base + 0.0625f * (float)(c));
#if FMA_MAD
#define FMA_CHAIN(c) if ((c) < FMA_CHAINS) x##c = mad(x##c, va, vb);
#else
#define FMA_CHAIN(c) if ((c) < FMA_CHAINS) x##c = fma(x##c, va, vb);
#endif
#define FMA_STEP FMA_EACH(FMA_CHAIN)
#define FMA_SUM(c) if ((c) > 0 && (c) < FMA_CHAINS) x0 += x##c;

__kernel void ceilings_fma(__global float* sums, __global int* steps, int outer, float a, float b) {
    const float base = (float)get_global_id(0) * 1.0e-3f;
    const FMA_T va = (FMA_T)a;
    const FMA_T vb = (FMA_T)b;
    FMA_EACH(FMA_DECLARE)
    int done = 0;
    for (int i = 0; i < outer; ++i) {
        FMA_STEP FMA_STEP FMA_STEP FMA_STEP FMA_STEP FMA_STEP FMA_STEP FMA_STEP  // FMA_UNROLL
        ++done;
    }
    FMA_EACH(FMA_SUM)
    float total;
    SY_CAT(LANES_SUM_, FMA_VW)(x0, total)
    sums[get_global_id(0)] = total;
    steps[get_global_id(0)] = done;
}
