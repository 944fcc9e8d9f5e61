#include "common.h"

// Grouped expert matmul: for every expert e, Y_e = X_e · W_eᵀ over the expert's rows of the
// expert-ordered activations, one launch for all experts, driven by the tile -> expert map of the
// permutation (tiles of ROWS rows; tiles past the padded total exit at once, so the grid is
// sized for the worst case and nothing is read back). Dense mode (a router or a shared expert)
// is the same kernel with one expert and `dense_rows` rows.
//
// Defines: A_T/A_LOAD activations; W_DT (0 f32, 1 f16, 2 bf16) weights; Y_T/Y_STORE output;
// ROWS rows per tile; EPILOGUE (0 none, 1 SiLU, 2 GELU tanh, 3 GELU erf, 4 SwiGLU, 5 sigmoid);
// PANEL output columns per packed panel; VW the float vector width of the register kernel
// (PANEL / VW vectors per row), TRM and TBK the work-group kernel's rows per work-item and k step.
// The host derives them from the device (Sources/Switchyard/OpenCLBackend.swift, `Tuning`).
// The gated epilogue (EPILOGUE 4) takes parameters (Sources/Switchyard/Ops/GatedEpilogue.swift):
// GLU_ACT the gate's activation (an EPILOGUE code: 0 none, 1 SiLU, 2/3 GELU, 5 sigmoid; default
// 1), GLU_ALPHA the gain inside SiLU's / sigmoid's sigmoid, GATE_LIMIT an upper clamp of the
// gate, UP_LIMIT a symmetric clamp of up, UP_OFFSET added to up (gpt-oss: 1.702, 7, 7, 1); each
// absent by default (plain SwiGLU). HAS_BIAS: a per-expert output bias `bias [E, N_w]` (f32,
// gate columns first when gated) is added to the product before the activation.
//
// In the packed, work-group, split-k and narrow kernels every output element is summed in one
// order (the chain order): k is cut into chains of SY_KCHAIN steps from k = 0 (the last one
// shorter when K is not a multiple); each chain is one f32 multiply-add chain over its k in order
// (SY_MAD, common.h: fma, or a multiply and an add on a device without a hardware FMA), started
// from 0; the chains' sums are added in order to a total that starts from 0. So a row's result
// never depends on its tile, its expert's load, the batch, or which of them, which kernel and
// which geometry computed it (batch invariance). The chains are fixed by K alone, not by the row
// count or the device: they let a kernel for a row or few (decode on GPUs,
// `grouped_matmul_splitk`) run an output's chains in parallel and fold them after, and give the
// same bits as a kernel that runs them one after the other. (The unpacked `grouped_matmul_plain`
// sums float8 partial dot products: its own fixed order.)
#define SY_KCHAIN 256
// No contraction of a multiply and an add into an fma in this file (every wanted fma is
// SY_MAD): a compiler that fused, say, int8's scaled total and the bias in one kernel but not in
// another would make their bits differ.
#pragma OPENCL FP_CONTRACT OFF

// MATMUL_ONLY (set by the host for every program it builds from this file): the one kernel the
// program is for, 1 packed (register), 2 tiled (work-group), 3 plain, 4 narrow, 5 pack_weights,
// 6 split-k, 7 its fold;
// the others are left out. A driver compiles every kernel of a program when it builds it, and
// the register kernel fully unrolled for a work-group program's 32-row tile (one `accumulate`
// per row count, 128 float16 accumulators where VW falls back to SY_CALL_W) is code no launch
// of that program runs: clang-15's nvptx64 output for the bf16 SwiGLU work-group program
// (ROWS 32) is 31,362 PTX lines with every kernel, 2,705 with the work-group kernel alone.
// Unset (tools and scripts that compile this file): every kernel.
#ifndef MATMUL_ONLY
#define MATMUL_ONLY 0
#endif
#define MATMUL_PACKED 1
#define MATMUL_TILED 2
#define MATMUL_PLAIN 3
#define MATMUL_NARROW 4
#define MATMUL_PACK_WEIGHTS 5
#define MATMUL_SPLITK 6
#define MATMUL_FOLD 7
#define MATMUL_BUILDS(k) (MATMUL_ONLY == 0 || MATMUL_ONLY == (k))

#ifndef ROWS
#define ROWS 4
#endif
#ifndef EPILOGUE
#define EPILOGUE 0
#endif
#ifndef W_DT
#define W_DT 0
#endif
#ifndef PANEL
#define PANEL 64
#endif
#ifndef VW
#define VW SY_CALL_W  // (kernels launched without VW: no vector wider than a call may carry)
#endif
#ifndef TRM
#define TRM 4
#endif
#ifndef TBK
#define TBK 16
#endif

#ifndef A_DT
#define A_DT 0
#endif
#ifndef QFMT
#define QFMT 0
#endif
#ifndef GLU_ACT
#define GLU_ACT 1
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
#ifndef ZP
#define ZP 0
#endif

#if QFMT > 0
#define W_T uchar
#define W_RAW uchar
#define W_LOAD1(p, i) 0.0f
#elif W_DT == 0
#define W_T float
#define W_RAW uint
#define W_LOAD1(p, i) ((p)[i])
#elif W_DT == 1
#define W_T half
#define W_RAW ushort
#define W_LOAD1(p, i) vload_half((i), (p))
#else
#define W_T ushort
#define W_RAW ushort
#define W_LOAD1(p, i) as_float(((uint)(p)[i]) << 16)
#endif

// VW-wide weight loads of the register kernel: float VW vectors for every storage type.
#if VW == 1
#define VEC float
#define VSTORE(v, i, p) ((p)[i] = (v))
#define CARRY_LOADV(p, i) ((p)[i])
#if W_DT == 0
#define W_LOADV(p, i) ((p)[i])
#elif W_DT == 1
#define W_LOADV(p, i) vload_half((i), (p))
#else
#define W_LOADV(p, i) as_float(((uint)(p)[i]) << 16)
#endif
#else
#define VEC SY_CAT(float, VW)
#define VSTORE(v, i, p) SY_CAT(vstore, VW)((v), (i), (p))
#define CARRY_LOADV(p, i) SY_CAT(vload, VW)((i), (p))
#if W_DT == 0
#define W_LOADV(p, i) SY_CAT(vload, VW)((i), (p))
#elif W_DT == 1
#define W_LOADV(p, i) SY_CAT(vload_half, VW)((i), (p))
#else
#define W_LOADV(p, i) SY_CAT(as_float, VW)(SY_CAT(convert_uint, VW)(SY_CAT(vload, VW)((i), (p))) << 16)
#endif
#endif
#define NV (PANEL >= VW ? PANEL / VW : 1)  // (never a zero-size array when a program is built for another kernel)

// Quantized weights (QFMT 1 int8, 2 int4, 3 MXFP4, 4 FP8 e4m3; layouts in
// Kernels/quantized_weights.cl): the packed kernels read codes `w` (bytes) and per-panel group
// scales `qscale` (SC_T: f32, f16, e8m0 byte, f32), and for int4 with ZP a zero per group
// (`qzero`), and dequantize in registers to exact f32 weights: int4 (q − z)·s as SY_MAD(q, s, −z·s)
// (exact: s is an f16), FP8 e4m3 · s; the multiply-add chain over k is then the float kernel's.
// int8 (one scale per weight row: a single group along K) sums q · a over k and multiplies by the
// row's scale once at the end; MXFP4 sums each group's e2m1 · a (32 along k) and adds that sum
// times the group's scale 2^(e − 127) to the accumulator, one fma per group. Both kernels build
// the same chains, so the geometry still never changes an output; one multiply per output or
// group instead of per weight. (Where a weight e2m1 · 2^(e − 127) is past f32's range, e8m0 253
// and 254 with the larger codes, the group's scaled sum may still be finite, as the exact value
// is; a weight dequantized to f32 first would be infinite.) Formats decode with integer
// operations (no extension).
#if QFMT == 2
#define SC_T half
#elif QFMT == 3
#define SC_T uchar
#else
#define SC_T float
#endif
#if QFMT == 2 || QFMT == 3
#define QROW (PANEL / 2)
#else
#define QROW PANEL
#endif
// e2m1 nibble c (0...15): its magnitude bits shifted into place (m at bit 22, e at 23-24) and
// rebiased, 2^(e−1)·(1 + m/2) for e > 0 (exact); for e = 0 that form gives 1/2 + m/4 where the
// value is m/2 = twice it less 1 (exact). One min picks: 2v − 1 < v below 1 (e = 0) and ≥ v from
// 1 on (e > 0), so no compare and select on the exponent; the sign bit (bit 3) or-ed in last.
#define DEC_E2M1(c, U, F, AS_F, AS_U)                                                                  \
    AS_F(AS_U(min(AS_F(((c) << 22 & (U)0x01C00000u) + (U)(126u << 23)),                                 \
                  SY_MAD((F)2.0f, AS_F(((c) << 22 & (U)0x01C00000u) + (U)(126u << 23)), (F)-1.0f))) |       \
         ((c) << 28 & (U)0x80000000u))
// e8m0 byte s to 2^(s − 127) (s = 0: the subnormal 2^-127), 0xFF NaN.
#define DEC_E8M0(s, U, AS_F) \
    AS_F(select(select((s) << 23, (U)0x00400000u, (s) == (U)0u), (U)0x7FC00000u, (s) == (U)255u))
// e4m3fn byte c: its magnitude bits shifted into place and rebiased, 2^(e−7)·(1 + m/8) for
// e > 0 (exact); for e = 0 that form gives (8 + m)·2^-10 where the value is m·2^-9 = twice it
// less 2^-6 (exact). One min picks: 2v − 2^-6 < v below 2^-6 (e = 0) and ≥ v from there on (e > 0;
// equal at 2^-6), so no compare and select on the exponent. S.1111.111 NaN; sign bit or-ed in last.
#define DEC_E4M3(c, U, F, AS_F, AS_U)                                                                          \
    AS_F(AS_U(select(min(AS_F((((c) & 0x7Fu) << 20) + (U)(120u << 23)),                                       \
                         SY_MAD((F)2.0f, AS_F((((c) & 0x7Fu) << 20) + (U)(120u << 23)), (F)-0x1p-6f)),              \
                     (F)NAN, ((c) & 0x7Fu) == (U)0x7Fu)) |                                                   \
         (((c) & 0x80u) << 24))

#if QFMT > 0
// The weight at (k, panel column j) of a panel's codes `wq`, scales `sq`, zeros `zq` (int8: the
// code, the row's scale multiplies the sum; MXFP4: the e2m1 value, its group's scale multiplies
// the group's sum).
inline float dequant1(__global const uchar* wq, __global const SC_T* sq, __global const uchar* zq, int k, int j,
                      int qgroup) {
    const size_t gj = (size_t)(k / qgroup) * PANEL + j;
#if QFMT == 1
    (void)gj;
    return (float)(((__global const char*)wq)[(size_t)k * PANEL + j]);  // the row's scale comes after the sum
#elif QFMT == 4
    const uint c = wq[(size_t)k * PANEL + j];
    return DEC_E4M3(c, uint, float, as_float, as_uint) * sq[gj];
#else
    const uint b = wq[(size_t)k * (PANEL / 2) + (j % (PANEL / 2))];
    const uint c = j < PANEL / 2 ? (b & 15u) : (b >> 4);
#if QFMT == 2
    const float s = vload_half(gj, sq);
#if ZP
    const float zs = -(float)zq[gj] * s;
#else
    const float zs = -8.0f * s;
#endif
    return SY_MAD((float)c, s, zs);
#else
    (void)gj;
    return DEC_E2M1(c, uint, float, as_float, as_uint);
#endif
#endif
}

// VW-wide forms for the register kernel.
#if VW == 1
#define VS
#define LOADB(p, i) ((p)[i])
#else
#define VS VW
#define LOADB(p, i) SY_CAT(vload, VW)((i), (p))
#endif
#define UV SY_CAT(uint, VS)
#define CVT_UV SY_CAT(convert_uint, VS)
#define CVT_FV SY_CAT(convert_float, VS)
#define AS_FV SY_CAT(as_float, VS)
#define AS_UV SY_CAT(as_uint, VS)
#if VW == 2
#define HLOAD(p, i) ((uint)(p)[i])
#elif VW > 2
#define HLOAD(p, i) SY_CAT(convert_uint, SY_CAT(H, VW))(SY_CAT(vload, SY_CAT(H, VW))((i), (p)))
#define H4 2
#define H8 4
#define H16 8
#endif
// VW-wide e2m1 decode: DEC_E2M1V of 4-bit codes c (UV lanes, each ≤ 15), DEC_E2M1_LO and
// DEC_E2M1_HI of a byte's low and high nibble. Where the compiler targets an x86 CPU whose
// variable permute covers the table (AVX2 for 8 lanes, AVX-512 for 16), the lanes look the value
// up in a vector: AVX-512 the 16 signed values, a vector built from variable-index elements of
// one vector, which clang turns into one vpermps; AVX2 vpermd itself (below), a lookup, a shift
// and a xor a lane, against DEC_E2M1's 8. Elsewhere (GPUs, other CPUs, narrower vectors, where
// that lowering is not known) DEC_E2M1. The values are the same (exact; code 8 is −0), so the
// output does not depend on the path.
#if QFMT == 3 && VW == 8 && defined(__x86_64__) && defined(__AVX2__)
// AVX2: vpermd reads an index's low 3 bits only, so the low nibble needs no mask. Entry i holds
// the magnitude's bits xor i << 28, so that xor-ing the code shifted to the top (bits 0-2 at
// 28-30, the sign bit 3 at 31) restores the magnitude and sets the sign: a lookup, a shift and
// a xor a lane.
#define E2M1_T int8
#define E2M1_TABLE \
    (int8)(0, 0x2F000000, 0x1F800000, 0x0FC00000, 0x00000000, 0x10400000, 0x20800000, 0x30C00000)
#define DEC_E2M1_LO(t, b) AS_FV(as_uint8(__builtin_ia32_permvarsi256((t), as_int8(b))) ^ ((b) << 28))
#define DEC_E2M1V(t, c) DEC_E2M1_LO(t, c)
#elif QFMT == 3 && VW == 16 && defined(__x86_64__) && defined(__AVX512F__)
#define E2M1_T float16
#define E2M1_TABLE \
    (float16)(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f)
#define E2M1_AT(t, i)                                                                                            \
    (float16)(t[(i).s0], t[(i).s1], t[(i).s2], t[(i).s3], t[(i).s4], t[(i).s5], t[(i).s6], t[(i).s7], t[(i).s8], \
              t[(i).s9], t[(i).sa], t[(i).sb], t[(i).sc], t[(i).sd], t[(i).se], t[(i).sf])
#define DEC_E2M1V(t, c) E2M1_AT(t, (c) & 15u)
#else
#define E2M1_T float
#define E2M1_TABLE 0.0f
#define DEC_E2M1V(t, c) DEC_E2M1(c, UV, VEC, AS_FV, AS_UV)
#endif
// The low and high nibbles of bytes b (UV lanes, each ≤ 255).
#ifndef DEC_E2M1_LO
#define DEC_E2M1_LO(t, b) DEC_E2M1V(t, (b) & 15u)
#endif
#define DEC_E2M1_HI(t, b) DEC_E2M1V(t, (b) >> 4)
#endif

inline float silu(float v) { return v / (1.0f + exp(-v)); }
inline float gelu_tanh(float v) {
    return 0.5f * v * (1.0f + tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}
inline float gelu_erf(float v) { return 0.5f * v * (1.0f + erf(v * 0.7071067811865476f)); }

// The gate's activation in the gated epilogue, with its gain α.
#ifdef GLU_ALPHA
#define GLU_GAIN(v) ((GLU_ALPHA) * (v))
#else
#define GLU_GAIN(v) (v)
#endif
inline float glu_act(float v) {
#if GLU_ACT == 1
    return v / (1.0f + exp(-GLU_GAIN(v)));
#elif GLU_ACT == 2
    return gelu_tanh(v);
#elif GLU_ACT == 3
    return gelu_erf(v);
#elif GLU_ACT == 5
    return 1.0f / (1.0f + exp(-GLU_GAIN(v)));
#else
    return v;
#endif
}

// The gated epilogue on a gate/up pair (biases added): clamps (comparisons, so NaN stays NaN),
// then act(gate) · (up + offset).
inline float glu(float g, float u) {
#ifdef GATE_LIMIT
    g = g > (GATE_LIMIT) ? (GATE_LIMIT) : g;
#endif
#ifdef UP_LIMIT
    u = u > (UP_LIMIT) ? (UP_LIMIT) : (u < -(UP_LIMIT) ? -(UP_LIMIT) : u);
#endif
#ifdef UP_OFFSET
    u = u + (UP_OFFSET);
#endif
    return glu_act(g) * u;
}

inline float activate(float v) {
#if EPILOGUE == 1
    return silu(v);
#elif EPILOGUE == 2
    return gelu_tanh(v);
#elif EPILOGUE == 3
    return gelu_erf(v);
#elif EPILOGUE == 5
    return 1.0f / (1.0f + exp(-v));
#else
    return v;
#endif
}

// Source row of A for output row `row`, or -1 when the row is padding (its output is zero).
// gather_k > 0: A is x [T, K] read through the permutation (fused gather); else A is xs.
// Every index read from a buffer is checked before it becomes an address.
inline int source_row(int row, int dense_rows, __global const int* assignment_of, int gather_k, int tokens_k) {
    if (dense_rows > 0) return row < dense_rows ? row : -1;
    if (gather_k > 0) {
        const int a = assignment_of[row];
        return (a >= 0 && a < tokens_k) ? a / gather_k : -1;
    }
    const int a = assignment_of[row];
    return (a >= 0 && a < tokens_k) ? row : -1;
}

inline float row_scale_of(int row, int scale_mode, __global const float* scale, __global const int* assignment_of,
                          int tokens_k) {
    if (scale_mode == 1) return scale[row];
    if (scale_mode == 2) {
        const int a = assignment_of[row];
        return (a >= 0 && a < tokens_k) ? scale[a] : 0.0f;
    }
    return 1.0f;
}

// The expert of row tile `tile`, or -1 past the padded total (or for an id out of range).
inline int tile_expert_of(int tile, int dense_rows, __global const int* tile_expert, int block, int experts) {
    if (dense_rows > 0) return 0;
    const int e = tile_expert[tile * ROWS / block];
    return (e >= 0 && e < experts) ? e : -1;
}

// Output column of panel position j (for SwiGLU, j < PANEL / 2 are the gate columns, each
// paired with the up column at j + PANEL / 2), and how many outputs a panel holds.
#if EPILOGUE == 4
#define PANEL_OUT (PANEL / 2)
#define WROWS_OF(n) (2 * (n))
#else
#define PANEL_OUT PANEL
#define WROWS_OF(n) (n)
#endif
// The output bias of expert e's weight row c (0 without HAS_BIAS; `bias` and N in scope).
#if HAS_BIAS
#define BIAS(e, c) bias[(size_t)(e) * (size_t)WROWS_OF(N) + (size_t)(c)]
#else
#define BIAS(e, c) 0.0f
#endif

#if MATMUL_BUILDS(MATMUL_PACKED)
#if MATMUL_ONLY == MATMUL_PACKED && ROWS > 8
#error "the register kernel takes at most 8 rows a tile (panel_run has a case per row count up to 7)"
#endif
// Register kernel (CPU-class devices, where one work-item runs on one SIMD core).
// Packed weights: per expert, panels of PANEL output columns, each stored k-major
// ([panel][k][PANEL]), so one k step reads PANEL consecutive weights (NV loads of VW floats)
// that every row of the tile reuses from registers. The tile is ROWS × NV accumulator vectors,
// sized by the host to the device's register file (AVX-512: 6 × 4 × float16 = 24 of 32 zmm;
// AVX2: 6 × 2 × float8 = 12 of 16 ymm). For SwiGLU a panel holds PANEL/2 gate then PANEL/2 up
// columns.
//
// Only the tile's rows up to its last real one are accumulated (`accumulate` with NR rows, a
// constant after inlining: one k loop per row count): at decode an expert has a row or two in
// a tile of ROWS, and the padding rows would cost ROWS / NR times the FMAs per weight byte.
// A work-item takes PANEL_GROUP (1, 2 or 4) consecutive panels; the host sets it above 1 when
// tiles are expected to hold a row or two (decode). A row or two of one panel is only NR · NV
// multiply-add chains, each waiting on its previous FMA (AVX2 at one row: 2 chains, a quarter
// of what two FMA units of latency 4 can take), so a tile with few rows runs 4 or 2 of its
// panels in one k loop (NP, `SY_JOINT`) and the rest one after the other (NP = 1). Each
// output's multiply-add chain is the same whatever NR and NP, so the result depends on neither.
#ifndef PANEL_GROUP
#define PANEL_GROUP 1
#endif
// Activations in chunks (quantized loop, 16-bit activations, two rows or more): each chunk of
// ACH k steps first converts the rows' f16 or bf16 activations to f32 in `af` (stage_rows), with
// SY_CALL_W-wide loads, so that a k step broadcasts a row's value from memory (a load) where it
// converted one scalar and broadcast it from a register (on AVX2: vmovd and vpbroadcastd, on
// the shuffle ports the weights' decode needs). Each panel run still converts its rows once per
// k: the saving is the vector conversion and the load-port broadcast. MXFP4 2048 × 4096, hot,
// AVX2 (old and new launches alternated, 300 each, medians): 4 rows +4 to +19 % in each of 8
// runs (e.g. 7.4 -> 7.8 and 7.5 -> 8.9 G weights/s), 6 rows +5 to +25 % in 3 runs of 4 (one
// -5 %), 2 rows no clear change (a noisy VM: whole runs moved 30 %). One row keeps its per-step
// conversion (the chunk's copy measured 6 % slower there) and its group as one chunk
// (SY_STAGED says which). The same bits either way (LOADW_ and
// A_LOAD convert alike). Lane-style devices run this kernel only where tune picked it for them
// (there `af` is private scratch memory; not measured).
#define ACH 32
// Whether a run of NR rows stages its activations (the k loop then runs in chunks of ACH).
#define SY_STAGED(nr) (A_DT != 0 && (nr) >= 2)
#if A_DT != 0
// (Called only where SY_STAGED: kn ≤ ACH.)
static __attribute__((always_inline)) inline void stage_rows(float* af, const int NR, __global const A_T** ap, int kc,
                                                              int kn) {
    if (kn == ACH) {
#pragma unroll
        for (int r = 0; r < NR; ++r)
#pragma unroll
            for (int q = 0; q < ACH / SY_CALL_W; ++q) SY_VSTOREW(SY_CAT(LOADW_, A_DT)(ap[r] + kc, q), q, af + r * ACH);
    } else {
#pragma unroll
        for (int r = 0; r < NR; ++r)
            for (int i = 0; i < kn; ++i) af[r * ACH + i] = A_LOAD(ap[r], kc + i);
    }
}
#endif
#ifndef JOINT_ACC
#define JOINT_ACC 8
#endif
// NR rows run NP panels together when their accumulators fit the tile's and JOINT_ACC vectors
// (the host: half the register file, the rest for weights, scales and the broadcast row).
#define SY_JOINT(nr, np) ((nr) * (np) <= ROWS && (nr) * (np) * NV <= JOINT_ACC)
// Rows a run of NP panels accumulates (rows from there on are padding, see SY_JOINT). A constant
// expression (no builtin min()), so that the loops it bounds unroll.
#define SY_RUN_ROWS(np) \
    ((np) == 1 ? ROWS : (ROWS / (np) < JOINT_ACC / ((np) * NV) ? ROWS / (np) : JOINT_ACC / ((np) * NV)))
// acc: row r's vector v of the run's panel p at acc[(r · NP + p) · NV + v].
static __attribute__((always_inline)) inline void accumulate(const int NR, const int NP, VEC* acc,
                                                      __global const A_T** ap, __global const W_T* w, int e,
                                                      int panel, int K, int panels, __global const SC_T* qscale,
                                                      __global const uchar* qzero, int qgroup, int qgroups, int kb,
                                                      int ke) {
#if QFMT == 0
    __global const W_T* wp = w + ((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K * PANEL;
    const size_t wstride = (size_t)K * PANEL;
    for (int k = kb; k < ke; ++k) {
        VEC wv[PANEL_GROUP * NV];  // (NP ≤ PANEL_GROUP: a size known to the compiler)
#pragma unroll
        for (int p = 0; p < NP; ++p)
#pragma unroll
            for (int v = 0; v < NV; ++v) wv[p * NV + v] = W_LOADV(wp + p * wstride, NV * k + v);
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const VEC av = (VEC)A_LOAD(ap[r], k);
#pragma unroll
            for (int x = 0; x < NP * NV; ++x) acc[r * NP * NV + x] = SY_MAD(av, wv[x], acc[r * NP * NV + x]);
        }
    }
#else
    const size_t pq = (size_t)e * (size_t)panels + (size_t)panel;
    __global const uchar* wq = w + pq * (size_t)K * QROW;
    __global const SC_T* sq = qscale + pq * (size_t)qgroups * PANEL;
    __global const uchar* zq = qzero + pq * (size_t)qgroups * PANEL;
    const size_t wstride = (size_t)K * QROW;
    const size_t sstride = (size_t)qgroups * PANEL;
#if QFMT == 1
    (void)sq;
    (void)sstride;
#endif
#if QFMT == 3
    const E2M1_T e2m1 = E2M1_TABLE;
    (void)e2m1;
#endif
    for (int g = kb / qgroup; g < min(qgroups, (ke + qgroup - 1) / qgroup); ++g) {
        // (int8 loads no scales here: the row's scale multiplies the chains' total, panel_run)
#if QFMT != 1
        VEC sv[PANEL_GROUP * NV];
#endif
#if QFMT == 2
        VEC zv[PANEL_GROUP * NV];
#endif
#if QFMT != 1
#pragma unroll
        for (int p = 0; p < NP; ++p)
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                const size_t at = (size_t)g * NV + v;
                const int x = p * NV + v;
#if QFMT == 4
                sv[x] = LOADB(sq + p * sstride, at);
#elif QFMT == 2
                sv[x] = SY_CAT(vload_half, VS)(at, sq + p * sstride);
#if ZP
                zv[x] = -CVT_FV(LOADB(zq + p * sstride, at)) * sv[x];
#else
                zv[x] = -8.0f * sv[x];
#endif
#else
                sv[x] = DEC_E8M0(CVT_UV(LOADB(sq + p * sstride, at)), UV, AS_FV);
#endif
            }
#endif
        const int k1 = min(ke, (g + 1) * qgroup);
#if QFMT == 3
        // MXFP4: each group's products summed unscaled, then the group's scale (a power of two)
        // applied to that sum once, instead of to each weight: a multiply a weight fewer. (Chains
        // and K slices are multiples of 256, so a group of 32 never spans two.)
        VEC gacc[ROWS * NV];
#pragma unroll
        for (int x = 0; x < NR * NP * NV; ++x) gacc[x] = (VEC)0.0f;
#define QACC gacc
#else
#define QACC acc
#endif
        // The group's k steps in chunks (see stage_rows; one row: the group in one chunk).
        const int kstep = SY_STAGED(NR) ? ACH : qgroup;
        for (int kc = max(kb, g * qgroup); kc < k1; kc += kstep) {
            const int kn = min(kstep, k1 - kc);
#if A_DT != 0
            float af[ROWS * ACH];
            if (SY_STAGED(NR)) stage_rows(af, NR, ap, kc, kn);
#endif
            for (int k = kc; k < kc + kn; ++k) {
                VEC wv[PANEL_GROUP * NV];  // (NP ≤ PANEL_GROUP: a size known to the compiler)
#pragma unroll
                for (int p = 0; p < NP; ++p) {
                    __global const uchar* wk = wq + p * wstride;
#if QFMT == 1
#pragma unroll
                    for (int v = 0; v < NV; ++v) wv[p * NV + v] = CVT_FV(LOADB((__global const char*)wk, (size_t)k * NV + v));
#elif QFMT == 4
#pragma unroll
                    for (int v = 0; v < NV; ++v) {
                        const UV c = CVT_UV(LOADB(wk, (size_t)k * NV + v));
                        wv[p * NV + v] = DEC_E4M3(c, UV, VEC, AS_FV, AS_UV) * sv[p * NV + v];
                    }
#elif NV >= 2
#pragma unroll
                    for (int v = 0; v < NV / 2; ++v) {
                        const UV b = CVT_UV(LOADB(wk, (size_t)k * (NV / 2) + v));
                        const int x = p * NV + v;
#if QFMT == 2
                        wv[x] = SY_MAD(CVT_FV(b & 15u), sv[x], zv[x]);
                        wv[x + NV / 2] = SY_MAD(CVT_FV(b >> 4), sv[x + NV / 2], zv[x + NV / 2]);
#else
                        wv[x] = DEC_E2M1_LO(e2m1, b);
                        wv[x + NV / 2] = DEC_E2M1_HI(e2m1, b);
#endif
                    }
#else
                    {  // one vector per row: its low half from the low nibbles, its high half from the high ones
                        const UV b0 = HLOAD(wk, k);
                        const UV c = (UV)(b0 & 15u, b0 >> 4);
#if QFMT == 2
                        wv[p] = SY_MAD(CVT_FV(c), sv[p], zv[p]);
#else
                        wv[p] = DEC_E2M1V(e2m1, c);
#endif
                    }
#endif
                }
#pragma unroll
                for (int r = 0; r < NR; ++r) {
#if A_DT != 0
                    const VEC av = SY_STAGED(NR) ? (VEC)af[r * ACH + (k - kc)] : (VEC)A_LOAD(ap[r], k);
#else
                    const VEC av = (VEC)A_LOAD(ap[r], k);
#endif
#pragma unroll
                    for (int x = 0; x < NP * NV; ++x) QACC[r * NP * NV + x] = SY_MAD(av, wv[x], QACC[r * NP * NV + x]);
                }
            }
        }
#undef QACC
#if QFMT == 3
#pragma unroll
        for (int r = 0; r < NR; ++r)
#pragma unroll
            for (int x = 0; x < NP * NV; ++x)
                acc[r * NP * NV + x] = SY_MAD(gacc[r * NP * NV + x], sv[x], acc[r * NP * NV + x]);
#endif
    }
#endif
}

// Zeros for rows row0 ... of panels [panel0, panel0 + np) (a tile past the padded total or of
// padding rows only: a cheap write, no weight read).
inline void zero_tile(__global Y_T* y, int row0, int max_rows, int panel0, int np, int N) {
    for (int r = 0; r < ROWS && row0 + r < max_rows; ++r)
        for (int j = 0; j < np * PANEL_OUT; ++j) {
            const int col = panel0 * PANEL_OUT + j;
            if (col < N) Y_STORE(y, (size_t)(row0 + r) * (size_t)N + col, 0.0f);
        }
}

// One run of NP panels from `panel` over the tile's rows (rows RT and up are padding when NP > 1:
// the caller runs NP panels together only when SY_JOINT(nr, NP)): accumulate, then leave the
// sums in `carry` (a k slice before the last) or store the outputs.
static __attribute__((always_inline)) inline void panel_run(
    const int NP, const int nr, __global const A_T** ap, const int* src, __global const W_T* w, int e, int panel,
    int row0, __global Y_T* y, __global const float* scale, int scale_mode, __global const int* assignment_of,
    int tokens_k, int K, int N, int panels, int max_rows, __global const SC_T* qscale, __global const uchar* qzero,
    int qgroup, int qgroups, __global const float* bias, int kb, int ke, __global float* carry, int carry_width) {
    const int RT = SY_RUN_ROWS(NP);
    // The chains' total (see SY_KCHAIN). A k slice after the first (devices with a loop limit,
    // see K slices in Matmul.swift) goes on from the total the previous slice left in `carry`
    // (slices are whole chains).
    VEC tot[ROWS * NV];
#pragma unroll
    for (int x = 0; x < ROWS * NV; ++x) tot[x] = (VEC)0.0f;
    if (kb > 0)
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            if (row0 + r >= max_rows) continue;
#pragma unroll
            for (int x = 0; x < NP * NV; ++x)
                tot[r * NP * NV + x] =
                    CARRY_LOADV(carry + (size_t)(row0 + r) * (size_t)carry_width + (size_t)panel * PANEL, x);
        }
    VEC acc[ROWS * NV];
    for (int c0 = kb; c0 < ke; c0 += SY_KCHAIN) {
        const int c1 = min(ke, c0 + SY_KCHAIN);
#pragma unroll
        for (int x = 0; x < ROWS * NV; ++x) acc[x] = (VEC)0.0f;
#define SY_ACCUMULATE(n) \
    accumulate((n), NP, acc, ap, w, e, panel, K, panels, qscale, qzero, qgroup, qgroups, c0, c1)
#define SY_CASE(n) \
    case n:        \
        if ((n) < RT) SY_ACCUMULATE((n) < RT ? (n) : 1); \
        break;
    switch (nr) {
    SY_CASE(1)
#if ROWS >= 3
    SY_CASE(2)
#endif
#if ROWS >= 4
    SY_CASE(3)
#endif
#if ROWS >= 5
    SY_CASE(4)
#endif
#if ROWS >= 6
    SY_CASE(5)
#endif
#if ROWS >= 7
    SY_CASE(6)
#endif
#if ROWS >= 8
    SY_CASE(7)
#endif
    default: break;
    }
    if (nr >= RT) SY_ACCUMULATE(RT);
#undef SY_CASE
#undef SY_ACCUMULATE
#pragma unroll
        for (int x = 0; x < RT * NP * NV; ++x) tot[x] = tot[x] + acc[x];
    }
    if (ke < K) {  // not the last slice: leave the total for the next one
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            if (row0 + r >= max_rows) continue;
#pragma unroll
            for (int x = 0; x < NP * NV; ++x)
                VSTORE(tot[r * NP * NV + x], x, carry + (size_t)(row0 + r) * (size_t)carry_width + (size_t)panel * PANEL);
        }
        return;
    }
#if QFMT == 1
    {  // int8: one group along K (the row's scale), applied once to the total of the codes' chains
        __global const SC_T* sq = qscale + ((size_t)e * (size_t)panels + (size_t)panel) * (size_t)qgroups * PANEL;
#pragma unroll
        for (int p = 0; p < NP; ++p)
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                const VEC sv = LOADB(sq + p * (size_t)qgroups * PANEL, v);
#pragma unroll
                for (int r = 0; r < RT; ++r) tot[(r * NP + p) * NV + v] *= sv;
            }
    }
#endif

#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        if (row >= max_rows) continue;
        const int real = r < RT && src[r] >= 0;
        const float s = real ? row_scale_of(row, scale_mode, scale, assignment_of, tokens_k) : 0.0f;
        const size_t out = (size_t)row * (size_t)N;
#pragma unroll
        for (int p = 0; p < NP; ++p) {
            float v[PANEL];
#pragma unroll
            for (int q = 0; q < NV; ++q) VSTORE(tot[(r < RT ? r * NP + p : 0) * NV + q], q, v);  // (rows from RT on: padding, not read)
            for (int j = 0; j < PANEL_OUT; ++j) {
                const int col = (panel + p) * PANEL_OUT + j;
#if EPILOGUE == 4
                if (col < N)
                    Y_STORE(y, out + col, real ? glu(v[j] + BIAS(e, col), v[j + PANEL / 2] + BIAS(e, N + col)) * s : 0.0f);
#else
                if (col < N) Y_STORE(y, out + col, real ? activate(v[j] + BIAS(e, col)) * s : 0.0f);
#endif
            }
        }
    }
}

inline void packed_tile(__global const A_T* a, __global const int* assignment_of, int gather_k,
                        __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                        __global const float* scale, int scale_mode, int K, int N, int panels, int dense_rows,
                        int tokens_k, int block, int max_rows, int experts, const int tile, const int panel0,
                        __global const SC_T* qscale, __global const uchar* qzero, int qgroup, int qgroups,
                        __global const float* bias, int kb, int ke, __global float* carry, int carry_width) {
    const int row0 = tile * ROWS;
    if (dense_rows > 0 && row0 >= dense_rows) return;
    const int np = min(PANEL_GROUP, panels - panel0);
    const int e = tile_expert_of(tile, dense_rows, tile_expert, block, experts);
    if (e < 0) {  // past the padded total: defined as zeros
        zero_tile(y, row0, max_rows, panel0, np, N);
        return;
    }

    // Padding rows below the last real one read a valid row (the tile's first real one) and
    // store zeros, so the k loop has no branch; rows past the last real one are not computed.
    int src[ROWS];
    __global const A_T* ap[ROWS];
    int fallback = 0;
    int nr = 0;  // rows up to the last real one
#pragma unroll
    for (int r = ROWS - 1; r >= 0; --r) {
        src[r] = row0 + r < max_rows ? source_row(row0 + r, dense_rows, assignment_of, gather_k, tokens_k) : -1;
        if (src[r] >= 0) fallback = src[r];
        if (src[r] >= 0 && nr == 0) nr = r + 1;
    }
    if (nr == 0) {  // a tile of padding rows only (decode: most of an expert's block)
        zero_tile(y, row0, max_rows, panel0, np, N);
        return;
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) ap[r] = a + (size_t)(src[r] >= 0 ? src[r] : fallback) * (size_t)K;

#define SY_PANEL_RUN(np_, panel_)                                                                                    \
    panel_run((np_), nr, ap, src, w, e, (panel_), row0, y, scale, scale_mode, assignment_of, tokens_k, K, N, panels, \
              max_rows, qscale, qzero, qgroup, qgroups, bias, kb, ke, carry, carry_width)
    int p = 0;
#if PANEL_GROUP >= 4
    if (np == 4 && SY_JOINT(nr, 4)) {
        SY_PANEL_RUN(4, panel0);
        return;
    }
#endif
#if PANEL_GROUP >= 2
    if (SY_JOINT(nr, 2))
        for (; p + 2 <= np; p += 2) SY_PANEL_RUN(2, panel0 + p);
#endif
    for (; p < np; ++p) SY_PANEL_RUN(1, panel0 + p);
#undef SY_PANEL_RUN
}

// Each work-item computes `tile_step` consecutive row tiles (a row block) of its PANEL_GROUP
// panels: the panels stay in cache across the block's tiles. Panel groups are dimension 0, so
// consecutive work-groups run the same row block against the next panels and its activations
// stay in cache across all of them (the host sizes the step so the block fits the device's
// per-core cache): each activation row is read from memory once per block, not once per panel.
// The step is an argument, not a -D value: it follows the row count, and a program per row
// count would be a driver compile for each new batch size.
__kernel void grouped_matmul_packed(__global const A_T* a, __global const int* assignment_of, int gather_k,
                                    __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                                    __global const float* scale, int scale_mode, int K, int N, int panels,
                                    int dense_rows, int tokens_k, int tiles, int tile_step, int block,
                                    int max_rows, int experts, __global const SC_T* qscale,
                                    __global const uchar* qzero, int qgroup, int qgroups, __global const float* bias,
                                    int kb, int ke, __global float* carry, int carry_width) {
    const int first = get_global_id(1) * tile_step;
    const int panel0 = get_global_id(0) * PANEL_GROUP;
    if (panel0 >= panels) return;
    for (int step = 0; step < tile_step; ++step) {
        const int tile = first + step;
        if (tile >= tiles) break;
        packed_tile(a, assignment_of, gather_k, w, tile_expert, y, scale, scale_mode, K, N, panels, dense_rows,
                    tokens_k, block, max_rows, experts, tile, panel0, qscale, qzero, qgroup, qgroups, bias, kb, ke,
                    carry, carry_width);
    }
}
#endif  // MATMUL_BUILDS(MATMUL_PACKED)

#if MATMUL_BUILDS(MATMUL_TILED)
// Work-group kernel (GPUs, and implementations such as llvmpipe that run work-items as SIMD
// lanes). One work-group computes one tile of ROWS rows × one packed panel of PANEL columns:
// PANEL/4 × ROWS/TRM work-items, each TRM rows × 4 columns (columns tx, tx + PANEL/4, ...,
// so a SwiGLU gate column and its up column land in the same work-item). Per k step of TBK,
// the work-group stages the tile's activations and the panel's TBK × PANEL weights (one
// contiguous, coalesced block of the packed layout) in local memory. No loop runs longer than
// K / TBK iterations.
//
// A work-item's TRM rows are consecutive (TROW), and one whose rows are all padding skips the
// multiply-adds: at decode a tile holds an expert's row or few, padded to ROWS, and a SIMD group
// whose rows are all padding then runs no FMA. With the defaults (ROWS 32, PANEL 64, TRM 4) an
// NVIDIA warp of 32 work-items holds two row groups, rows 0-7: a tile with one real row runs 8
// rows' FMAs a weight, not 32 (an int4 weight, half a byte: 32 flops a byte, not 128). The real
// rows' chains are the same whichever work-item runs them. (Not yet timed on a GPU.)
#define TN (PANEL >= 4 ? PANEL / 4 : 1)
#define TM (ROWS >= TRM ? ROWS / TRM : 1)
#define TNT (TN * TM)
#define TROW(i) (ty * TRM + (i))
__kernel __attribute__((reqd_work_group_size(TN, TM, 1))) void grouped_matmul_tiled(
    __global const A_T* a, __global const int* assignment_of, int gather_k, __global const W_T* w,
    __global const int* tile_expert, __global Y_T* y, __global const float* scale, int scale_mode, int K, int N,
    int panels, int dense_rows, int tokens_k, int tiles, int block, int max_rows, int experts,
    __global const SC_T* qscale, __global const uchar* qzero, int qgroup, int qgroups, __global const float* bias,
    int kb, int ke, __global float* carry, int carry_width) {
    __local float as[TBK][ROWS];
    __local float ws[TBK][PANEL];
    __local int srcs[ROWS];
    const int tx = get_local_id(0);
    const int ty = get_local_id(1);
    const int lid = ty * TN + tx;
    const int panel = get_group_id(0);
    const int tile = get_group_id(1);
    if (panel >= panels || tile >= tiles) return;  // uniform over the work-group
    const int row0 = tile * ROWS;
    if (dense_rows > 0 && row0 >= dense_rows) return;
    const int e = tile_expert_of(tile, dense_rows, tile_expert, block, experts);
    if (e < 0) {
        for (int i = 0; i < TRM; ++i) {
            const int row = row0 + TROW(i);
            if (row >= max_rows) continue;
            for (int j = 0; j < 4; ++j) {
                const int p = tx + j * TN;
                const int col = panel * PANEL_OUT + p;
                if (p < PANEL_OUT && col < N) Y_STORE(y, (size_t)row * (size_t)N + col, 0.0f);
            }
        }
        return;
    }
    for (int r = lid; r < ROWS; r += TNT)
        srcs[r] = row0 + r < max_rows ? source_row(row0 + r, dense_rows, assignment_of, gather_k, tokens_k) : -1;
    barrier(CLK_LOCAL_MEM_FENCE);
    int mine = 0;  // whether any of this work-item's rows is real
    for (int i = 0; i < TRM; ++i) mine |= srcs[TROW(i)] >= 0;

    // acc: the current chain's sums; tot: the chains' total (see SY_KCHAIN), which a later k
    // slice takes up from `carry`, where the previous one left it
    float acc[TRM][4];
    float tot[TRM][4];
    for (int i = 0; i < TRM; ++i)
        for (int j = 0; j < 4; ++j) {
            const int row = row0 + TROW(i);
            acc[i][j] = 0.0f;
            tot[i][j] = kb > 0 && row < max_rows
                            ? carry[(size_t)row * (size_t)carry_width + (size_t)panel * PANEL + tx + j * TN]
                            : 0.0f;
        }
    int cend = min(ke, kb + SY_KCHAIN);  // the k after the current chain's last
#if QFMT == 0
    __global const W_T* wp = w + ((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K * PANEL;
#else
    const size_t pq = (size_t)e * (size_t)panels + (size_t)panel;
    __global const uchar* wq = w + pq * (size_t)K * QROW;
    __global const SC_T* sq = qscale + pq * (size_t)qgroups * PANEL;
    __global const uchar* zq = qzero + pq * (size_t)qgroups * PANEL;
#endif
#if QFMT == 3
    float gacc[TRM][4];  // MXFP4: the group's unscaled sums, as in the register kernel
    for (int i = 0; i < TRM; ++i)
        for (int j = 0; j < 4; ++j) gacc[i][j] = 0.0f;
    int gend = min(K, (kb / qgroup + 1) * qgroup);  // the k after the current group's last
#endif
    for (int k0 = kb; k0 < ke; k0 += TBK) {
        const int kn = min(TBK, ke - k0);
        for (int idx = lid; idx < TBK * ROWS; idx += TNT) {
            const int r = idx / TBK;
            const int kk = idx % TBK;
            const int s = srcs[r];
            as[kk][r] = (s >= 0 && kk < kn) ? A_LOAD(a + (size_t)s * (size_t)K, k0 + kk) : 0.0f;
        }
        for (int idx = lid; idx < TBK * PANEL; idx += TNT) {
            const int kk = idx / PANEL;
#if QFMT == 0
            ws[kk][idx % PANEL] = kk < kn ? W_LOAD1(wp, (size_t)k0 * PANEL + idx) : 0.0f;
#else
            ws[kk][idx % PANEL] = kk < kn ? dequant1(wq, sq, zq, k0 + kk, idx % PANEL, qgroup) : 0.0f;
#endif
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; mine && kk < kn; ++kk) {  // (no barrier inside: the skip may diverge)
            float wv[4];
            for (int j = 0; j < 4; ++j) wv[j] = ws[kk][tx + j * TN];
            for (int i = 0; i < TRM; ++i) {
                const float av = as[kk][TROW(i)];
#if QFMT == 3
                for (int j = 0; j < 4; ++j) gacc[i][j] = SY_MAD(av, wv[j], gacc[i][j]);
#else
                for (int j = 0; j < 4; ++j) acc[i][j] = SY_MAD(av, wv[j], acc[i][j]);
#endif
            }
#if QFMT == 3
            // the group's last k, or the chain's (chains are 256 k, so that is a group's end too
            // with MXFP4's 32; were it not, the partial sum is scaled there, as the register and
            // split-k kernels scale it, and the group goes on in the next chain)
            if (k0 + kk + 1 == gend || k0 + kk + 1 == cend) {
                for (int j = 0; j < 4; ++j) {
                    const size_t at = (size_t)((gend - 1) / qgroup) * PANEL + tx + j * TN;
                    const float s = DEC_E8M0((uint)sq[at], uint, as_float);
                    for (int i = 0; i < TRM; ++i) {
                        acc[i][j] = SY_MAD(gacc[i][j], s, acc[i][j]);
                        gacc[i][j] = 0.0f;
                    }
                }
                if (k0 + kk + 1 == gend) gend = min(K, gend + qgroup);
            }
#endif
            if (k0 + kk + 1 == cend) {  // the chain's last k: its sums go to the total
                for (int i = 0; i < TRM; ++i)
                    for (int j = 0; j < 4; ++j) {
                        tot[i][j] = tot[i][j] + acc[i][j];
                        acc[i][j] = 0.0f;
                    }
                cend = min(ke, cend + SY_KCHAIN);
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (ke < K) {  // not the last slice: leave the total for the next one
        for (int i = 0; i < TRM; ++i) {
            const int row = row0 + TROW(i);
            if (row >= max_rows) continue;
            for (int j = 0; j < 4; ++j)
                carry[(size_t)row * (size_t)carry_width + (size_t)panel * PANEL + tx + j * TN] = tot[i][j];
        }
        return;
    }

#if QFMT == 1
    for (int j = 0; j < 4; ++j) {  // int8: the column's scale (one group), as the register kernel applies it
        const float s = sq[tx + j * TN];
        for (int i = 0; i < TRM; ++i) tot[i][j] *= s;
    }
#endif
    for (int i = 0; i < TRM; ++i) {
        const int row = row0 + TROW(i);
        if (row >= max_rows) continue;
        const int real = srcs[TROW(i)] >= 0;
        const float s = real ? row_scale_of(row, scale_mode, scale, assignment_of, tokens_k) : 0.0f;
        const size_t out = (size_t)row * (size_t)N;
#if EPILOGUE == 4
        for (int j = 0; j < 2; ++j) {
            const int col = panel * PANEL_OUT + tx + j * TN;
            if (col < N) Y_STORE(y, out + col, real ? glu(tot[i][j] + BIAS(e, col), tot[i][j + 2] + BIAS(e, N + col)) * s : 0.0f);
        }
#else
        for (int j = 0; j < 4; ++j) {
            const int col = panel * PANEL_OUT + tx + j * TN;
            if (col < N) Y_STORE(y, out + col, real ? activate(tot[i][j] + BIAS(e, col)) * s : 0.0f);
        }
#endif
    }
}
#endif  // MATMUL_BUILDS(MATMUL_TILED)

#if MATMUL_BUILDS(MATMUL_SPLITK)
// Split-k kernel (decode on GPUs and other lane-style devices: a row or few per expert). The
// work-group kernel gives each output to one work-item, which runs all of K: at decode that is
// a few thousand long chains, too few loads in flight to stream the weights at a GPU's
// bandwidth, and at most 32 rows' FMAs a weight on a tile of one real row. Here a work-item runs
// ONE chain (SY_KCHAIN k steps) of CPI output columns for the tile's real rows, SK_R rows a
// pass over the chain's weights (the rows' loop stops at the last real row, so a tile of one row
// costs one row's FMAs), and leaves the chain's sums in `part` [prow, chain, packed column]; the
// fold kernel adds each output's chains in order and applies the epilogue. An output's chains,
// and the order they are added in, are the other kernels' (SY_KCHAIN): the same bits.
//
// A work-item's columns are one aligned load a k step of its panel's k-major layout: a float4
// (f32), a ushort4 of f16 or bf16 bits (4 columns), or the 4 code bytes as a uint: int8 or FP8
// (4 columns), int4 or MXFP4 (8: the bytes' low nibbles are columns 4q...4q+3, their high ones
// PANEL/2 + 4q ...). Consecutive work-items take consecutive loads of one k row, so a SIMD group
// reads whole rows of the panel. MXFP4 values come from a 16-entry table in local memory (exact;
// the same values DEC_E2M1 computes; 16 words in 16 banks, so lanes never conflict).
//
// What a GPU needs from this loop (its decode streams every weight once):
// - loads in flight: a work-item loads SK_U k steps' weights (64 bytes) before it uses any, and
//   the k steps of a scale group run as one loop (no test a step). At T = 1 the whole grid holds
//   only (bytes of a k row) × chains × tiles bytes per load round, e.g. 0.2 MB for Mixtral-8x7B's
//   int4 down projection, so a latency of a few hundred ns needs a dozen loads in flight each;
// - one load instruction a step: typed, aligned vector loads (vload4 of bytes, halves or floats
//   may only assume the element's alignment: clang's NVPTX output issues 4 scalar loads a step
//   for them); panels are 8...128 columns, so every step's address is a multiple of its load;
// - no int -> float conversion instruction: NVIDIA issues them at 16 a clock per SM against
//   64-128 FP32 FMAs (CUDA programming guide, arithmetic instruction throughput). int4 needs one
//   a weight: 16 × 132 SMs × ~1.8 GHz is 3.8 T conversions a second, 1.9 TB/s of int4 codes,
//   about 40 % of an H200's bandwidth. Codes become floats by or-ing them into the mantissa of
//   2^23 (or adding them to 1.5 · 2^23's bits, signed) and subtracting that power: exact, the
//   same value as a conversion, with integer and add operations.
// Grid: [panels × PANEL / CPI (rounded to the work-group), chains, tiles].
#if QFMT == 2 || QFMT == 3
#define SK_CPI 8
#else
#define SK_CPI 4
#endif
#ifndef SK_R
#define SK_R 4
#endif
#if SK_R < 1 || SK_R > 4
#error "split-k runs passes of 1 to 4 rows (a case of its switch per row count)"
#endif
// One k step's weights as loaded (SK_WT), and k steps loaded before any is used (SK_U, 64 bytes).
#if QFMT == 0 && W_DT == 0
#define SK_WT float4
#define SK_U 4
#elif QFMT == 0
#define SK_WT ushort4
#define SK_U 8
#else
#define SK_WT uint
#define SK_U 16
#endif
// Small integers to exact floats without a conversion instruction (see above): u < 2^23, |c| < 2^22.
#define SY_U2F4(u) (as_float4((u) | (uint4)0x4B000000u) - (float4)0x1p23f)
#define SY_I2F4(c) (as_float4((c) + (int4)0x4B400000) - (float4)0x1.8p23f)

// One k step's SK_CPI weights from its load `raw` (scales sv and zero terms zv of the step's
// group where the format has them; MXFP4's group scale comes after the group's sum).
static __attribute__((always_inline)) inline void sk_decode(SK_WT raw, float* wv, const float* sv, const float* zv,
                                                            __local const float* e2m1) {
    (void)sv;
    (void)zv;
    (void)e2m1;
#if QFMT == 0 && W_DT == 0
    vstore4(raw, 0, wv);
#elif QFMT == 0 && W_DT == 1
    vstore4(vload_half4(0, (const __private half*)&raw), 0, wv);
#elif QFMT == 0
    vstore4(as_float4(convert_uint4(raw) << 16), 0, wv);
#elif QFMT == 1
    vstore4(SY_I2F4(convert_int4(as_char4(raw))), 0, wv);
#else
    const uint4 b = convert_uint4(as_uchar4(raw));
#if QFMT == 4
    vstore4(DEC_E4M3(b, uint4, float4, as_float4, as_uint4) * vload4(0, sv), 0, wv);
#elif QFMT == 2
    vstore4(SY_MAD(SY_U2F4(b & 15u), vload4(0, sv), vload4(0, zv)), 0, wv);
    vstore4(SY_MAD(SY_U2F4(b >> 4), vload4(1, sv), vload4(1, zv)), 1, wv);
#else
    wv[0] = e2m1[b.s0 & 15u];
    wv[1] = e2m1[b.s1 & 15u];
    wv[2] = e2m1[b.s2 & 15u];
    wv[3] = e2m1[b.s3 & 15u];
    wv[4] = e2m1[b.s0 >> 4];
    wv[5] = e2m1[b.s1 >> 4];
    wv[6] = e2m1[b.s2 >> 4];
    wv[7] = e2m1[b.s3 >> 4];
#endif
#endif
}

// One k step for a pass's first NR rows: acc[r][v] += a[r][k] · wv[v], one fma chain an output.
static __attribute__((always_inline)) inline void sk_step(const int NR, float* acc, const float* wv,
                                                          __global const A_T** ap, int k) {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        const float av = A_LOAD(ap[r], k);
#pragma unroll
        for (int v = 0; v < SK_CPI; ++v) acc[r * SK_CPI + v] = SY_MAD(av, wv[v], acc[r * SK_CPI + v]);
    }
}

// column of a work-item's value v (0 ... SK_CPI - 1) in its panel (q: its place in the panel)
#if SK_CPI == 8
#define SK_COL(v) ((v) < 4 ? 4 * q + (v) : PANEL / 2 + 4 * q + (v) - 4)
#else
#define SK_COL(v) (4 * q + (v))
#endif

// A pass's chain [c0, c1) for its first NR rows (a constant after inlining: one loop per row
// count, no test a row a step), stored at out + prow · row_stride (rows whose prow is -1 are not
// stored). Row r reads activation row src.s<r>. The k steps run a scale group at a time (int4,
// MXFP4, FP8: groups along K, a group that spans a chain's end cut there, as in the other kernels;
// f32/f16/bf16 and int8: the chain at once).
// wl: the work-item's weights, k step k at wl[k · stride]; sq, zq: its panel's scales and zeros.
// The sums stay in this function from zero to store: with them in the caller's array, passed in
// by pointer, rusticl/llvmpipe ran the quantized kernels 3-4× slower (T = 16 int4-g128 layer:
// 524 against 123 ms), its compiler keeping the array in memory.
static __attribute__((always_inline)) inline void sk_chain(const int NR, __global const A_T* a, int K, int4 src,
                                                           int4 prow, __global float* out, size_t row_stride,
                                                           __global const SK_WT* wl, int stride, int c0, int c1,
                                                           int q, __global const SC_T* sq, __global const uchar* zq,
                                                           int qgroup, __local const float* e2m1) {
    (void)q;
    (void)sq;
    (void)zq;
    (void)qgroup;
    __global const A_T* ap[SK_R];
    const int srcs[4] = {src.s0, src.s1, src.s2, src.s3};
#pragma unroll
    for (int r = 0; r < SK_R; ++r) ap[r] = a + (size_t)srcs[r] * (size_t)K;
    float acc[SK_R * SK_CPI];
#pragma unroll
    for (int x = 0; x < SK_R * SK_CPI; ++x) acc[x] = 0.0f;
    for (int kg = c0; kg < c1;) {
#if QFMT == 2 || QFMT == 3 || QFMT == 4
        const int ge = min(c1, (kg / qgroup + 1) * qgroup);
        const size_t g = (size_t)(kg / qgroup) * PANEL;
#else
        const int ge = c1;
#endif
        float sv[SK_CPI];
        float zv[SK_CPI];
#if QFMT == 2 || QFMT == 4
#pragma unroll
        for (int v = 0; v < SK_CPI; ++v) {  // the group's scales (and zeros)
#if QFMT == 2
            sv[v] = vload_half(g + SK_COL(v), sq);
#if ZP
            zv[v] = -(float)zq[g + SK_COL(v)] * sv[v];
#else
            zv[v] = -8.0f * sv[v];
#endif
#else
            sv[v] = sq[g + SK_COL(v)];
#endif
        }
#endif
#if QFMT == 3
        // MXFP4: the group's products summed unscaled, then times its scale, as the other kernels do
        float gacc[SK_R * SK_CPI];
#pragma unroll
        for (int x = 0; x < SK_R * SK_CPI; ++x) gacc[x] = 0.0f;
#define SK_ACC gacc
#else
#define SK_ACC acc
#endif
        int k = kg;
        for (; k + SK_U <= ge; k += SK_U) {
            __global const SK_WT* wk = wl + (size_t)k * stride;
            SK_WT raw[SK_U];
#pragma unroll
            for (int u = 0; u < SK_U; ++u) raw[u] = wk[u * stride];
#pragma unroll
            for (int u = 0; u < SK_U; ++u) {
                float wv[SK_CPI];
                sk_decode(raw[u], wv, sv, zv, e2m1);
                sk_step(NR, SK_ACC, wv, ap, k + u);
            }
        }
        for (; k < ge; ++k) {
            float wv[SK_CPI];
            sk_decode(wl[(size_t)k * stride], wv, sv, zv, e2m1);
            sk_step(NR, SK_ACC, wv, ap, k);
        }
#undef SK_ACC
#if QFMT == 3
#pragma unroll
        for (int v = 0; v < SK_CPI; ++v) {  // the group's sums times its scale 2^(s − 127)
            const float s = DEC_E8M0((uint)sq[g + SK_COL(v)], uint, as_float);
#pragma unroll
            for (int r = 0; r < NR; ++r) acc[r * SK_CPI + v] = SY_MAD(gacc[r * SK_CPI + v], s, acc[r * SK_CPI + v]);
        }
#endif
        kg = ge;
    }
    const int prows[4] = {prow.s0, prow.s1, prow.s2, prow.s3};
#pragma unroll
    for (int r = 0; r < NR; ++r) {
        if (prows[r] < 0) continue;
        __global float* o = out + (size_t)prows[r] * row_stride;
#pragma unroll
        for (int v = 0; v < SK_CPI; ++v) o[SK_COL(v)] = acc[r * SK_CPI + v];
    }
}

__kernel void grouped_matmul_splitk(__global const A_T* a, __global const int* assignment_of, int gather_k,
                                    __global const W_T* w, __global const int* tile_expert, __global float* part,
                                    int K, int panels, int dense_rows, int tokens_k, int tiles, int block,
                                    int max_rows, int experts, __global const SC_T* qscale,
                                    __global const uchar* qzero, int qgroup, int qgroups) {
#if QFMT == 3
    __local float e2m1[16];
    for (uint c = get_local_id(0); c < 16u; c += get_local_size(0)) e2m1[c] = DEC_E2M1(c, uint, float, as_float, as_uint);
    barrier(CLK_LOCAL_MEM_FENCE);  // (before any return: every work-item reaches it)
#else
    __local const float* e2m1 = 0;
#endif
    const int item = get_global_id(0);
    const int chain = get_global_id(1);
    const int tile = get_global_id(2);
    const int panel = item / (PANEL / SK_CPI);
    const int q = item % (PANEL / SK_CPI);
    const int c0 = chain * SY_KCHAIN;
    if (panel >= panels || tile >= tiles || c0 >= K) return;
    const int row0 = tile * ROWS;
    if (dense_rows > 0 && row0 >= dense_rows) return;
    const int e = tile_expert_of(tile, dense_rows, tile_expert, block, experts);
    if (e < 0) return;  // past the padded total: the fold writes its zeros
    const int c1 = min(K, c0 + SY_KCHAIN);
    const int chains = (K + SY_KCHAIN - 1) / SY_KCHAIN;
    const size_t width = (size_t)panels * PANEL;
    // The tile's rows: source row and the row's place in `part` (its assignment, or its row when dense).
    int src[ROWS];
    int prow[ROWS];
    int nr = 0;
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        src[r] = row < max_rows ? source_row(row, dense_rows, assignment_of, gather_k, tokens_k) : -1;
        prow[r] = src[r] < 0 ? -1 : (dense_rows > 0 ? row : assignment_of[row]);
        if (src[r] >= 0) nr = r + 1;
    }
    // The work-item's weights: k step k is wl[k · stride] (SK_WT loads).
#if QFMT == 0
    __global const SK_WT* wl = (__global const SK_WT*)(w + ((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K * PANEL) + q;
    const int stride = PANEL / 4;
    __global const SC_T* sq = 0;
    __global const uchar* zq = 0;
#else
    const size_t pq = (size_t)e * (size_t)panels + (size_t)panel;
    __global const SK_WT* wl = (__global const SK_WT*)(w + pq * (size_t)K * QROW) + q;
    const int stride = QROW / 4;
    __global const SC_T* sq = qscale + pq * (size_t)qgroups * PANEL;
    __global const uchar* zq = qzero + pq * (size_t)qgroups * PANEL;
#endif
    // Passes of SK_R rows. A tile's real rows come first (an expert's rows, then its block's
    // padding), so a pass's rows up to the last real one are real; a row that is not (none
    // expected) reads the last real row's activations and is not stored.
    for (int r0 = 0; r0 < nr; r0 += SK_R) {
        int4 ps = (int4)(src[nr - 1]);
        int4 pr = (int4)(-1);
#define SK_ROW(i, c)                                                       \
        if (r0 + (i) < nr && src[r0 + (i)] >= 0) {                         \
            ps.c = src[r0 + (i)];                                          \
            pr.c = prow[r0 + (i)];                                         \
        }
        SK_ROW(0, s0)
        SK_ROW(1, s1)
        SK_ROW(2, s2)
        SK_ROW(3, s3)
#undef SK_ROW
        __global float* out = part + (size_t)chain * width + (size_t)panel * PANEL;
        const size_t row_stride = (size_t)chains * width;
#define SK_PASS(n)                                                                                          \
    case n:                                                                                                 \
        sk_chain((n), a, K, ps, pr, out, row_stride, wl, stride, c0, c1, q, sq, zq, qgroup, e2m1);         \
        break;
        switch (min(SK_R, nr - r0)) {
        SK_PASS(1)
#if SK_R >= 2
        SK_PASS(2)
#endif
#if SK_R >= 3
        SK_PASS(3)
#endif
#if SK_R >= 4
        SK_PASS(4)
#endif
        }
#undef SK_PASS
    }
}
#undef SK_COL

#endif  // MATMUL_BUILDS(MATMUL_SPLITK)

#if MATMUL_BUILDS(MATMUL_FOLD)
// The split-k kernel's second half: output (row, col) is the total of its chains' sums in chain
// order (from 0), then int8's row scale, bias, activation and row scale as the other kernels
// apply them; padding rows and tiles past the padded total are zeros. Grid: [N, rows].
__kernel void grouped_matmul_fold(__global const float* part, __global const int* assignment_of, int gather_k,
                                  __global const int* tile_expert, __global Y_T* y, __global const float* scale,
                                  int scale_mode, int K, int N, int panels, int dense_rows, int tokens_k, int block,
                                  int max_rows, int experts, __global const SC_T* qscale, int qgroups,
                                  __global const float* bias) {
    const int col = get_global_id(0);
    const int row = get_global_id(1);
    if (col >= N || row >= max_rows) return;
    const size_t out = (size_t)row * (size_t)N + col;
    const int src = source_row(row, dense_rows, assignment_of, gather_k, tokens_k);
    int e = 0;
    if (dense_rows == 0 && src >= 0) {
        e = tile_expert[row / block];
        if (e >= experts) e = -1;
    }
    if (src < 0 || e < 0) {
        Y_STORE(y, out, 0.0f);
        return;
    }
    const int prow = dense_rows > 0 ? row : assignment_of[row];
    const int chains = (K + SY_KCHAIN - 1) / SY_KCHAIN;
    const size_t width = (size_t)panels * PANEL;
    // the packed column of output col (SwiGLU: its gate column; its up column is PANEL / 2 on)
    const int panel = col / PANEL_OUT;
    const int j = col % PANEL_OUT;
    __global const float* pp = part + (size_t)prow * (size_t)chains * width + (size_t)panel * PANEL + j;
    float t = 0.0f;
    for (int c = 0; c < chains; ++c) t = t + pp[(size_t)c * width];
#if EPILOGUE == 4
    float u = 0.0f;
    for (int c = 0; c < chains; ++c) u = u + pp[(size_t)c * width + PANEL / 2];
#endif
#if QFMT == 1
    {  // int8: the column's scale (one group along K)
        __global const SC_T* sq = qscale + ((size_t)e * (size_t)panels + (size_t)panel) * (size_t)qgroups * PANEL;
        t *= sq[j];
#if EPILOGUE == 4
        u *= sq[j + PANEL / 2];
#endif
    }
#endif
    const float s = row_scale_of(row, scale_mode, scale, assignment_of, tokens_k);
#if EPILOGUE == 4
    Y_STORE(y, out, glu(t + BIAS(e, col), u + BIAS(e, N + col)) * s);
#else
    Y_STORE(y, out, activate(t + BIAS(e, col)) * s);
#endif
}
#endif  // MATMUL_BUILDS(MATMUL_FOLD)

#if MATMUL_BUILDS(MATMUL_PLAIN)
// Unpacked weights in the checkpoint layout [E, N_w, K] (N_w = N, or 2N for SwiGLU with the
// gate rows first): each work-item computes ROWS rows × 8 output columns as dot products along
// k (float8 partial sums, then their lanes in a fixed order, then the k tail).
#define COLS 8
__kernel void grouped_matmul_plain(__global const A_T* a, __global const int* assignment_of, int gather_k,
                                   __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                                   __global const float* scale, int scale_mode, int K, int N, int col_groups,
                                   int dense_rows, int tokens_k, int tiles, int block, int max_rows, int experts,
                                   __global const float* bias, int kb, int ke, __global float* carry) {
    const int tile = get_global_id(0);
    const int cg = get_global_id(1);
    if (tile >= tiles || cg >= col_groups) return;
    const int e = tile_expert_of(tile, dense_rows, tile_expert, block, experts);
    const int row0 = tile * ROWS;
    if (e < 0) {  // past the padded total: zeros
        for (int r = 0; r < ROWS && row0 + r < max_rows; ++r)
            for (int c = 0; c < COLS; ++c)
                if (cg * COLS + c < N) Y_STORE(y, (size_t)(row0 + r) * (size_t)N + cg * COLS + c, 0.0f);
        return;
    }
    if (dense_rows > 0 && row0 >= dense_rows) return;
#if EPILOGUE == 4
    const int wrows = 2 * N;
#else
    const int wrows = N;
#endif
    __global const W_T* we = w + (size_t)e * (size_t)wrows * (size_t)K;
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        if (row >= max_rows) break;
        const int s_row = source_row(row, dense_rows, assignment_of, gather_k, tokens_k);
        const size_t out = (size_t)row * (size_t)N;
        const float s = s_row >= 0 ? row_scale_of(row, scale_mode, scale, assignment_of, tokens_k) : 0.0f;
        for (int c = 0; c < COLS; ++c) {
            const int col = cg * COLS + c;
            if (col >= N) break;
            if (s_row < 0) {
                Y_STORE(y, out + col, 0.0f);
                continue;
            }
            __global const A_T* ar = a + (size_t)s_row * (size_t)K;
#if EPILOGUE == 4
            const int nw = 2;
#else
            const int nw = 1;
#endif
            float dots[2];
            for (int h = 0; h < nw; ++h) {
                __global const W_T* wr = we + (size_t)(col + h * N) * (size_t)K;
                // K slices (devices with a loop limit): a slice after the first goes on from the
                // partial sums the previous one left in `carry` (16 floats per output element);
                // slices start on a multiple of 8, so the vector steps are the same as in one pass.
                __global float* cp = carry + ((size_t)row * (size_t)N + col) * 16 + h * 8;
                float8 acc = kb > 0 ? SY_VLOAD8(0, cp) : (float8)0.0f;
                int k = kb;
                for (; k + 8 <= ke; k += 8) {
                    float8 av;
                    av.s0 = A_LOAD(ar, k + 0);
                    av.s1 = A_LOAD(ar, k + 1);
                    av.s2 = A_LOAD(ar, k + 2);
                    av.s3 = A_LOAD(ar, k + 3);
                    av.s4 = A_LOAD(ar, k + 4);
                    av.s5 = A_LOAD(ar, k + 5);
                    av.s6 = A_LOAD(ar, k + 6);
                    av.s7 = A_LOAD(ar, k + 7);
                    float8 wv;
                    wv.s0 = W_LOAD1(wr, k + 0);
                    wv.s1 = W_LOAD1(wr, k + 1);
                    wv.s2 = W_LOAD1(wr, k + 2);
                    wv.s3 = W_LOAD1(wr, k + 3);
                    wv.s4 = W_LOAD1(wr, k + 4);
                    wv.s5 = W_LOAD1(wr, k + 5);
                    wv.s6 = W_LOAD1(wr, k + 6);
                    wv.s7 = W_LOAD1(wr, k + 7);
                    acc = SY_FMA8(av, wv, acc);
                }
                if (ke < K) {
                    SY_VSTORE8(acc, 0, cp);
                    continue;
                }
                float d = ((acc.s0 + acc.s1) + (acc.s2 + acc.s3)) + ((acc.s4 + acc.s5) + (acc.s6 + acc.s7));
                for (; k < K; ++k) d = SY_MAD(A_LOAD(ar, k), W_LOAD1(wr, k), d);
                dots[h] = d + BIAS(e, col + h * N);
            }
            if (ke < K) continue;
#if EPILOGUE == 4
            Y_STORE(y, out + col, glu(dots[0], dots[1]) * s);
#else
            Y_STORE(y, out + col, activate(dots[0]) * s);
#endif
        }
    }
}
#endif  // MATMUL_BUILDS(MATMUL_PLAIN)

// Narrow outputs (a router's one score per token, a few columns): the unpacked weights
// [E, N_w, K] read as rows, so no panel of columns is computed for one. A work-item computes
// ROWS rows (ROWS ≤ VW: the lanes of one VW-float vector, VW the device's float vector width on
// CPU-class devices, 1 where work-items are lanes) × all N_w ≤ NW_MAX weight rows: per k, the
// rows' activations gathered into one vector and one fma per weight row with its broadcast
// weight. So each output element is, as in the packed kernels, summed in the chain order
// (SY_KCHAIN), then bias, activation and scale in the same order: bit for bit what the packed and
// work-group kernels give. Float weights only (not built with QFMT).
#ifndef NW_MAX
#define NW_MAX 8
#endif
#if QFMT == 0 && MATMUL_BUILDS(MATMUL_NARROW)
__kernel void grouped_matmul_narrow(__global const A_T* a, __global const int* assignment_of, int gather_k,
                                    __global const W_T* w, __global const int* tile_expert, __global Y_T* y,
                                    __global const float* scale, int scale_mode, int K, int N, int dense_rows,
                                    int tokens_k, int tiles, int block, int max_rows, int experts,
                                    __global const float* bias) {
    const int tile = get_global_id(0);
    if (tile >= tiles) return;
    const int row0 = tile * ROWS;
    if (dense_rows > 0 && row0 >= dense_rows) return;
    const int e = tile_expert_of(tile, dense_rows, tile_expert, block, experts);
    // Padding rows (and lanes past ROWS) read a valid row and store nothing or zeros.
    int src[VW];
    int fallback = -1;
    for (int r = VW - 1; r >= 0; --r) {
        src[r] = (e >= 0 && r < ROWS && row0 + r < max_rows)
                     ? source_row(row0 + r, dense_rows, assignment_of, gather_k, tokens_k)
                     : -1;
        if (src[r] >= 0) fallback = src[r];
    }
    if (fallback < 0) {  // past the padded total, or padding rows only: zeros, no weight read
        for (int r = 0; r < ROWS && row0 + r < max_rows; ++r)
            for (int c = 0; c < N; ++c) Y_STORE(y, (size_t)(row0 + r) * (size_t)N + c, 0.0f);
        return;
    }
    __global const A_T* ap[VW];
    for (int r = 0; r < VW; ++r) ap[r] = a + (size_t)(src[r] >= 0 ? src[r] : fallback) * (size_t)K;
    const int nw = WROWS_OF(N);
    __global const W_T* we = w + (size_t)e * (size_t)nw * (size_t)K;
    VEC tot[NW_MAX];  // the chains' total (SY_KCHAIN)
#pragma unroll
    for (int c = 0; c < NW_MAX; ++c) tot[c] = (VEC)0.0f;
    for (int c0 = 0; c0 < K; c0 += SY_KCHAIN) {
        VEC acc[NW_MAX];
#pragma unroll
        for (int c = 0; c < NW_MAX; ++c) acc[c] = (VEC)0.0f;
        for (int k = c0; k < min(K, c0 + SY_KCHAIN); ++k) {
            float av[VW];
#pragma unroll
            for (int r = 0; r < VW; ++r) av[r] = A_LOAD(ap[r], k);
#if VW == 1
            const VEC ak = av[0];
#else
            const VEC ak = SY_CAT(vload, VW)(0, av);
#endif
#pragma unroll
            for (int c = 0; c < NW_MAX; ++c)
                if (c < nw) acc[c] = SY_MAD(ak, (VEC)W_LOAD1(we, (size_t)c * (size_t)K + k), acc[c]);
        }
#pragma unroll
        for (int c = 0; c < NW_MAX; ++c) tot[c] = tot[c] + acc[c];
    }
    float v[NW_MAX][VW];
#pragma unroll
    for (int c = 0; c < NW_MAX; ++c) {
#if VW == 1
        v[c][0] = tot[c];
#else
        SY_CAT(vstore, VW)(tot[c], 0, v[c]);
#endif
    }
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        if (row >= max_rows) break;
        const int real = src[r] >= 0;
        const float s = real ? row_scale_of(row, scale_mode, scale, assignment_of, tokens_k) : 0.0f;
        const size_t out = (size_t)row * (size_t)N;
        for (int c = 0; c < N; ++c) {
#if EPILOGUE == 4
            Y_STORE(y, out + c, real ? glu(v[c][r] + BIAS(e, c), v[N + c][r] + BIAS(e, N + c)) * s : 0.0f);
#else
            Y_STORE(y, out + c, real ? activate(v[c][r] + BIAS(e, c)) * s : 0.0f);
#endif
        }
    }
}
#endif  // QFMT == 0 && MATMUL_BUILDS(MATMUL_NARROW)

#if MATMUL_BUILDS(MATMUL_PACK_WEIGHTS)
// One-time repack of [E, N_w, K] weights into the panel layout above (bits copied, so the
// packed weights keep their storage type). One work-item per (k, panel, expert).
__kernel void pack_weights(__global const W_RAW* w, __global W_RAW* packed, int K, int N, int panels, int swiglu) {
    const int k = get_global_id(0);
    const int panel = get_global_id(1);
    const int e = get_global_id(2);
    if (k >= K || panel >= panels) return;
    const int wrows = swiglu ? 2 * N : N;
    __global const W_RAW* we = w + (size_t)e * (size_t)wrows * (size_t)K;
    __global W_RAW* out = packed + (((size_t)e * (size_t)panels + (size_t)panel) * (size_t)K + (size_t)k) * PANEL;
    for (int j = 0; j < PANEL; ++j) {
        int src;
        if (swiglu) {
            const int col = panel * (PANEL / 2) + (j % (PANEL / 2));
            src = col < N ? (j < PANEL / 2 ? col : N + col) : -1;
        } else {
            const int col = panel * PANEL + j;
            src = col < N ? col : -1;
        }
        out[j] = src >= 0 ? we[(size_t)src * (size_t)K + k] : (W_RAW)0;
    }
}
#endif  // MATMUL_BUILDS(MATMUL_PACK_WEIGHTS)
