// Shared helpers of Switchyard's kernels. OpenCL C 1.2, no extensions: 16-bit storage is read
// and written through vload_half/vstore_half (f16) and bit shifts (bf16); arithmetic is f32.
#ifndef SWITCHYARD_COMMON_H
#define SWITCHYARD_COMMON_H

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

// The widest vector a call (built-in functions included) may pass or return without clang's
// -Wpsabi warning on x86 ("AVX vector argument ... changes the ABI", which PoCL prints as "N
// warnings generated"): 16 floats with AVX-512, 8 with AVX, 4 with SSE only; 16 elsewhere.
// Element-wise work on a float16 is split into calls of this width (the same per-lane results).
#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX512F__)
#define SY_CALL_W 16
#elif defined(__AVX__)
#define SY_CALL_W 8
#else
#define SY_CALL_W 4
#endif
#else
#define SY_CALL_W 16
#endif

// The multiply-add of the kernels' accumulation chains. fma() where the device fuses a multiply
// and an add in hardware (CL_FP_FMA): one rounding per step. A device without one (the host then
// passes SY_SOFT_FMA: Mesa's llvmpipe) computes fma() in software, correctly rounded, about 30×
// slower than a multiply and an add (1.4 against 48 GFLOP/s on 2 Zen 5 cores); there a step is
// a multiply then an add, two roundings, with contraction off so that no compiler fuses some of
// them. Either way every kernel of a device computes the same chain (batch invariance). Exact
// steps (a decoded weight's q·s + c) give the same bits both ways.
#ifdef SY_SOFT_FMA
#pragma OPENCL FP_CONTRACT OFF
#define SY_MAD(a, b, c) ((a) * (b) + (c))
#else
#define SY_MAD(a, b, c) fma((a), (b), (c))
#endif

// 16-wide access: element i*16 .. i*16+15 of a tensor of storage code DT (0 f32, 1 f16, 2 bf16),
// through SY_CALL_W-wide loads and stores (one call each where SY_CALL_W is 16). The stores are
// statements (the value is computed once, then stored piece by piece).
#define SY_CAT_(a, b) a##b
#define SY_CAT(a, b) SY_CAT_(a, b)
#define SY_VLOADW SY_CAT(vload, SY_CALL_W)
#define SY_VSTOREW SY_CAT(vstore, SY_CALL_W)
// One SY_CALL_W-wide piece q (elements q*SY_CALL_W ...) of a tensor, loaded to floats or stored.
#define LOADW_0(p, q) SY_VLOADW((q), (p))
#define LOADW_1(p, q) SY_CAT(f16_to_f32_, SY_CALL_W)(SY_VLOADW((q), (__global const ushort*)(p)))
#define LOADW_2(p, q) SY_CAT(as_float, SY_CALL_W)(SY_CAT(convert_uint, SY_CALL_W)(SY_VLOADW((q), (p))) << 16)
#define STOREW_0(p, q, v) SY_VSTOREW((v), (q), (p))
#define STOREW_1(p, q, v) SY_CAT(SY_CAT(vstore_half, SY_CALL_W), _rte)((v), (q), (p))
#define STOREW_2(p, q, v) SY_VSTOREW(SY_CAT(f32_to_bf16_, SY_CALL_W)(v), (q), (p))
// SY_JOIN16(T, F, p, i): the T##16 of the pieces F(p, q) of 16-element chunk i;
// SY_SPLIT16(F, p, i, v): F(p, q, piece) for each piece of the float16 v.
#if SY_CALL_W == 16
#define SY_JOIN16(T, F, p, i) F(p, (i))
#define SY_SPLIT16(F, p, i, v) F(p, (i), (v))
#elif SY_CALL_W == 8
#define SY_JOIN16(T, F, p, i) ((SY_CAT(T, 16))(F(p, 2 * (i)), F(p, 2 * (i) + 1)))
#define SY_SPLIT16(F, p, i, v)                     \
    do {                                           \
        const float16 sy_v_ = (v);                 \
        F(p, 2 * (i), sy_v_.lo);                   \
        F(p, 2 * (i) + 1, sy_v_.hi);               \
    } while (0)
#else
#define SY_JOIN16(T, F, p, i) \
    ((SY_CAT(T, 16))(F(p, 4 * (i)), F(p, 4 * (i) + 1), F(p, 4 * (i) + 2), F(p, 4 * (i) + 3)))
#define SY_SPLIT16(F, p, i, v)                     \
    do {                                           \
        const float16 sy_v_ = (v);                 \
        F(p, 4 * (i), sy_v_.lo.lo);                \
        F(p, 4 * (i) + 1, sy_v_.lo.hi);            \
        F(p, 4 * (i) + 2, sy_v_.hi.lo);            \
        F(p, 4 * (i) + 3, sy_v_.hi.hi);            \
    } while (0)
#endif
// An element-wise built-in f on float16/int16 operands (T: the result's element type, float or
// int), as SY_CALL_W-wide calls (one call where SY_CALL_W is 16; each operand is evaluated per
// piece, so pass variables or cheap expressions). SY_CALL8_*: the same for 8-wide operands.
#if SY_CALL_W >= 8
#define SY_CALL8_1(T, f, a) f(a)
#define SY_CALL8_2(T, f, a, b) f(a, b)
#define SY_CALL8_3(T, f, a, b, c) f(a, b, c)
#else
#define SY_CALL8_1(T, f, a) ((SY_CAT(T, 8))(f((a).lo), f((a).hi)))
#define SY_CALL8_2(T, f, a, b) ((SY_CAT(T, 8))(f((a).lo, (b).lo), f((a).hi, (b).hi)))
#define SY_CALL8_3(T, f, a, b, c) ((SY_CAT(T, 8))(f((a).lo, (b).lo, (c).lo), f((a).hi, (b).hi, (c).hi)))
#endif
#if SY_CALL_W >= 16
#define SY_CALL16_1(T, f, a) f(a)
#define SY_CALL16_2(T, f, a, b) f(a, b)
#define SY_CALL16_3(T, f, a, b, c) f(a, b, c)
#else
#define SY_CALL16_1(T, f, a) ((SY_CAT(T, 16))(SY_CALL8_1(T, f, (a).lo), SY_CALL8_1(T, f, (a).hi)))
#define SY_CALL16_2(T, f, a, b) ((SY_CAT(T, 16))(SY_CALL8_2(T, f, (a).lo, (b).lo), SY_CALL8_2(T, f, (a).hi, (b).hi)))
#define SY_CALL16_3(T, f, a, b, c) \
    ((SY_CAT(T, 16))(SY_CALL8_3(T, f, (a).lo, (b).lo, (c).lo), SY_CALL8_3(T, f, (a).hi, (b).hi, (c).hi)))
#endif
// float8 loads, stores and fma in calls of at most SY_CALL_W floats (the same per-lane results).
#if SY_CALL_W >= 8
#define SY_VLOAD8(q, p) vload8((q), (p))
#define SY_VSTORE8(v, q, p) vstore8((v), (q), (p))
#define SY_FMA8(a, b, c) SY_MAD((a), (b), (c))
#else
#define SY_VLOAD8(q, p) ((float8)(vload4(2 * (q), (p)), vload4(2 * (q) + 1, (p))))
#define SY_VSTORE8(v, q, p)                         \
    do {                                            \
        const float8 sy_v8_ = (v);                  \
        vstore4(sy_v8_.lo, 2 * (q), (p));           \
        vstore4(sy_v8_.hi, 2 * (q) + 1, (p));       \
    } while (0)
#define SY_FMA8(a, b, c) ((float8)(SY_MAD((a).lo, (b).lo, (c).lo), SY_MAD((a).hi, (b).hi, (c).hi)))
#endif
// fma of float16 operands (variables: each is read once per piece) in SY_CALL_W-wide calls.
#if SY_CALL_W == 16
#define SY_FMA16(a, b, c) SY_MAD((a), (b), (c))
#elif SY_CALL_W == 8
#define SY_FMA16(a, b, c) ((float16)(SY_MAD((a).lo, (b).lo, (c).lo), SY_MAD((a).hi, (b).hi, (c).hi)))
#else
#define SY_FMA16(a, b, c) ((float16)(SY_FMA8((a).lo, (b).lo, (c).lo), SY_FMA8((a).hi, (b).hi, (c).hi)))
#endif
// Raw copy of 16-element chunk q from src to dst (any element type), in SY_CALL_W-wide pieces.
#if SY_CALL_W == 16
#define SY_COPY16(src, q, dst) vstore16(vload16((q), (src)), (q), (dst))
#elif SY_CALL_W == 8
#define SY_COPY16(src, q, dst)                                          \
    do {                                                                \
        vstore8(vload8(2 * (q), (src)), 2 * (q), (dst));                \
        vstore8(vload8(2 * (q) + 1, (src)), 2 * (q) + 1, (dst));        \
    } while (0)
#else
#define SY_COPY16(src, q, dst)                                          \
    do {                                                                \
        vstore4(vload4(4 * (q), (src)), 4 * (q), (dst));                \
        vstore4(vload4(4 * (q) + 1, (src)), 4 * (q) + 1, (dst));        \
        vstore4(vload4(4 * (q) + 2, (src)), 4 * (q) + 2, (dst));        \
        vstore4(vload4(4 * (q) + 3, (src)), 4 * (q) + 3, (dst));        \
    } while (0)
#endif
#define LOAD16_0(p, i) SY_JOIN16(float, LOADW_0, p, i)
#define LOAD16_1(p, i) SY_JOIN16(float, LOADW_1, p, i)
#define LOAD16_2(p, i) SY_JOIN16(float, LOADW_2, p, i)
#define STORE16_0(p, i, v) SY_SPLIT16(STOREW_0, p, i, v)
#define STORE16_1(p, i, v) SY_SPLIT16(STOREW_1, p, i, v)
#define STORE16_2(p, i, v) SY_SPLIT16(STOREW_2, p, i, v)
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

// The vector forms, W lanes (4, 8 and 16; only the widths a call may carry, SY_CALL_W and below):
// f16_to_f32_W (IEEE half bits to floats, as f16_to_f32) and f32_to_bf16_W (as f32_to_bf16).
#define SY_HALF_HELPERS(W)                                                                         \
    inline SY_CAT(float, W) SY_CAT(f16_to_f32_, W)(SY_CAT(ushort, W) h) {                        \
        const SY_CAT(uint, W) bits = SY_CAT(convert_uint, W)(h);                                  \
        const SY_CAT(uint, W) magnitude = (bits & 0x7FFFu) << 13;                                 \
        SY_CAT(float, W) v = SY_CAT(as_float, W)(magnitude) * 0x1.0p112f;                         \
        v = select(v, SY_CAT(as_float, W)(magnitude | 0x7F800000u),                               \
                   (SY_CAT(int, W))((bits & 0x7C00u) == 0x7C00u));                                \
        return SY_CAT(as_float, W)(SY_CAT(as_uint, W)(v) | ((bits & 0x8000u) << 16));             \
    }                                                                                             \
    inline SY_CAT(ushort, W) SY_CAT(f32_to_bf16_, W)(SY_CAT(float, W) v) {                        \
        SY_CAT(uint, W) u = SY_CAT(as_uint, W)(v);                                                \
        const SY_CAT(uint, W) nan_bits = (u >> 16) | 0x40u;                                       \
        u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;                                               \
        return SY_CAT(convert_ushort, W)(select(u, nan_bits, SY_CAT(as_uint, W)(isnan(v))));      \
    }
SY_HALF_HELPERS(4)
#if SY_CALL_W >= 8
SY_HALF_HELPERS(8)
#endif
#if SY_CALL_W >= 16
SY_HALF_HELPERS(16)
#endif

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
