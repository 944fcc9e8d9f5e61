// Shared helpers of Switchyard's kernels. OpenCL C 1.2, no extensions: 16-bit storage is read
// and written through vload_half/vstore_half (f16) and bit shifts (bf16); arithmetic is f32.
#ifndef SWITCHYARD_COMMON_H
#define SWITCHYARD_COMMON_H

// Typed access by storage type. The host passes, per tensor argument P, the defines P_T (the
// pointer's element type), P_LOAD and P_STORE naming one of these.
#define LOAD_F32(p, i) ((float)(p)[i])
#define STORE_F32(p, i, v) ((p)[i] = (v))
#define LOAD_F16(p, i) vload_half((i), (p))
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
#ifndef A_T
#define A_T float
#define A_LOAD LOAD_F32
#define A_STORE STORE_F32
#endif
#ifndef GROUP
#define GROUP 1
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
