// Shared helpers of Switchyard's kernels. OpenCL C 1.2, no extensions: 16-bit storage is read
// and written through vload_half/vstore_half (f16) and bit shifts (bf16); arithmetic is f32.
#ifndef SWITCHYARD_COMMON_H
#define SWITCHYARD_COMMON_H

// The 16-wide helpers below pass float16/uint16 values, which on an AVX2 target (PoCL with
// target-cpu haswell) make clang warn that a 64-byte vector argument without avx512f changes the
// ABI (-Wpsabi): every program printed "N warnings generated." there. Kernel and builtins are
// compiled for the same target and linked into one module, so no call crosses that ABI.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#endif

// Typed access by storage type. The host passes, per tensor argument P, the defines P_T (the
// pointer's element type), P_LOAD and P_STORE naming one of these.
#define LOAD_F32(p, i) ((float)(p)[i])
#define STORE_F32(p, i, v) ((p)[i] = (v))
#define LOAD_F16(p, i) f16_to_f32(((__global const ushort*)(p))[i])
#define STORE_F16(p, i, v) vstore_half_rte((v), (i), (p))
#define LOAD_BF16(p, i) as_float(((uint)(p)[i]) << 16)
#define STORE_BF16(p, i, v) ((p)[i] = f32_to_bf16(v))
#define LOAD_I32(p, i) ((p)[i])
#define STORE_I32(p, i, v) ((p)[i] = (v))

// Defaults, so every kernel of a file builds whatever subset of defines its launch passes.
#ifndef X_T
#define X_T float
#define X_LOAD LOAD_F32
#define X_STORE STORE_F32
#endif
#ifndef Y_T
#define Y_T float
#define Y_LOAD LOAD_F32
#define Y_STORE STORE_F32
#endif
#ifndef X_DT
#define X_DT 0
#endif
#ifndef Y_DT
#define Y_DT 0
#endif

// 16-wide access: element i*16 .. i*16+15 of a tensor of storage code DT (0 f32, 1 f16, 2 bf16).
#define SY_CAT_(a, b) a##b
#define SY_CAT(a, b) SY_CAT_(a, b)
#define LOAD16_0(p, i) vload16((i), (p))
#define LOAD16_1(p, i) f16_to_f32_16(vload16((i), (__global const ushort*)(p)))
#define LOAD16_2(p, i) as_float16(convert_uint16(vload16((i), (p))) << 16)
#define STORE16_0(p, i, v) vstore16((v), (i), (p))
#define STORE16_1(p, i, v) vstore_half16_rte((v), (i), (p))
#define STORE16_2(p, i, v) vstore16(f32_to_bf16_16(v), (i), (p))
#define X_LOAD16(p, i) SY_CAT(LOAD16_, X_DT)(p, i)
#define Y_LOAD16(p, i) SY_CAT(LOAD16_, Y_DT)(p, i)
#define Y_STORE16(p, i, v) SY_CAT(STORE16_, Y_DT)(p, i, v)

// Horizontal sum and maximum of a float vector of W lanes (SY_HSUM(W, v), W in 1, 2, 4, 8, 16)
// in a fixed pairwise tree: the halves combined, then their halves, ... (one order per W).
#define SY_HSUM1(v) (v)
#define SY_HSUM2(v) ((v).lo + (v).hi)
#define SY_HSUM4(v) SY_HSUM2((v).lo + (v).hi)
#define SY_HSUM8(v) SY_HSUM4((v).lo + (v).hi)
#define SY_HSUM16(v) SY_HSUM8((v).lo + (v).hi)
#define SY_HSUM(W, v) SY_CAT(SY_HSUM, W)(v)
#define SY_HMAX1(v) (v)
#define SY_HMAX2(v) fmax((v).lo, (v).hi)
#define SY_HMAX4(v) SY_HMAX2(fmax((v).lo, (v).hi))
#define SY_HMAX8(v) SY_HMAX4(fmax((v).lo, (v).hi))
#define SY_HMAX16(v) SY_HMAX8(fmax((v).lo, (v).hi))
#define SY_HMAX(W, v) SY_CAT(SY_HMAX, W)(v)

#ifndef A_T
#define A_T float
#define A_LOAD LOAD_F32
#define A_STORE STORE_F32
#endif
#ifndef GROUP
#define GROUP 1
#endif

// IEEE half bits to float with integer operations only (vectorizes; exact for every value):
// the magnitude bits shifted into place and rescaled by 2^112 cover normals and subnormals;
// infinities and NaNs get the all-ones exponent.
inline float f16_to_f32(ushort h) {
    const uint magnitude = (uint)(h & 0x7FFFu) << 13;
    float v = as_float(magnitude) * 0x1.0p112f;
    if ((h & 0x7C00u) == 0x7C00u) v = as_float(magnitude | 0x7F800000u);
    return as_float(as_uint(v) | ((uint)(h & 0x8000u) << 16));
}

inline float16 f16_to_f32_16(ushort16 h) {
    const uint16 bits = convert_uint16(h);
    const uint16 magnitude = (bits & 0x7FFFu) << 13;
    float16 v = as_float16(magnitude) * 0x1.0p112f;
    v = select(v, as_float16(magnitude | 0x7F800000u), (int16)((bits & 0x7C00u) == 0x7C00u));
    return as_float16(as_uint16(v) | ((bits & 0x8000u) << 16));
}

inline ushort16 f32_to_bf16_16(float16 v) {
    uint16 u = as_uint16(v);
    const uint16 nan_bits = (u >> 16) | 0x40u;
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return convert_ushort16(select(u, nan_bits, as_uint16(isnan(v))));
}

// bfloat16 bits of v, rounded to nearest even; NaN stays a quiet NaN.
inline ushort f32_to_bf16(float v) {
    uint u = as_uint(v);
    if (isnan(v)) return (ushort)((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (ushort)(u >> 16);
}

// A 32-bit key that orders floats descending when sorted ascending: NaN first (above +inf),
// then +inf ... -inf; -0 and +0 share one key (they compare equal).
inline uint descending_key(float v) {
    if (isnan(v)) return 0u;
    if (v == 0.0f) v = 0.0f;
    uint u = as_uint(v);
    uint ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~ascending;  // 0 only for the NaN bit pattern 0x7FFFFFFF, which took the branch above
}

#endif
