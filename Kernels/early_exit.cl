#include "common.h"
#include "token_scan.h"

// Early exit (Reference.earlyExitStep), three kernels per exit:
// early_exit_rows (devices whose work-items are lanes): one work-group of GROUP work-items per
//   packed row j of logits [rows, classes] (X), the row of sample positions[j] (slots past the
//   active count hold -1 and are skipped). Work-items stride over the classes (at most 8,192
//   steps per loop: the host widens GROUP), then fixed trees combine their partial results.
// early_exit_rows_item (CPU-class devices): one work-item per packed row, the classes in order
//   in vectors (a work-group per row costs a CPU driver more in work-group overhead than the
//   row's work).
//   Either way, per row: the top-2 keys (descending_key << 32 | class: NaN first, ties to the
//   lower class, as topk.cl orders), the NaN-ignoring max m, then (compensated) S - 1 and
//   T = sum exp(x - m) (x - m) over the classes but the argmax (0 where exp is 0); the decision
//   goes to the slot's record; an exiting sample's softmax row (KEEP_PROBS, Y) is written at
//   its original position.
// The state stage, four launches (with token_index_map between the first two; then
// compact.cl's compact_emit places the still-active samples):
// early_exit_prepare: the inverse map's -1 fill, the depth flags' zeroing and the copy of the
//   histogram's other heads in one launch.
// early_exit_tokens: per sample, through the inverse map inv (token_index_map), the new state
//   from its slot's record, or the old state copied; in chunks (token_scan.h), each chunk's
//   count of still-active samples (compact_count's work, fused).
// early_exit_scan: the scan of those counts and the active count (compact_scan's work), and
//   histogram[head] = active before - active after.

// Folds v (class c) into the two best keys so far.
inline void exit_top2(float v, int c, ulong* b1, ulong* b2) {
    const ulong k = ((ulong)descending_key(v) << 32) | (ulong)c;
    const ulong lo = min(*b1, k);
    *b2 = min(*b2, max(*b1, k));
    *b1 = lo;
}

// Adds a class's terms to the compensated (Kahan) sums of S - 1 and T: the argmax adds none.
inline void exit_terms(float x, int c, int pred, float m, float* rest, float* rest_c, float* ent, float* ent_c) {
    const float z = x - m;
    const float e = c == pred ? 0.0f : exp(z);
    const float ez = e > 0.0f ? e * z : 0.0f;
    float y = e - *rest_c;
    float t = *rest + y;
    *rest_c = (t - *rest) - y;
    *rest = t;
    y = ez - *ent_c;
    t = *ent + y;
    *ent_c = (t - *ent) - y;
    *ent = t;
}

// The decision of packed row j (sample pos, in range): the statistics from the row's argmax
// `pred`, the runner-up's term e2 = exp(x2 - m) (0 with one class), max m, S - 1 = rest and T = ent; writes the slot's record when
// `writer`; returns S for the kept softmax row, or 0 when the sample stays (a non-finite row's S
// is NaN: its softmax is NaN throughout, as Reference.softmax gives).
inline float exit_decide(int j, int pos, int pred, float e2, int classes, int finite, float m, float rest, float ent,
                         __global const X_T* logits, size_t base, __global const int* last_pred,
                         __global const int* streak, __global int4* record, __global float* record_conf, int criterion,
                         float tau, int patience, int last, int writer) {
    const float sum = finite ? 1.0f + rest : NAN;
    float margin = NAN, maxprob = NAN, entropy = NAN;
    if (finite) {
        maxprob = 1.0f / sum;
        margin = (1.0f - e2) / sum;
        if (criterion == 1) entropy = log1p(rest) - ent / sum;  // (a library call: only when asked)
    }
    // Only patience changes the streak. (Branch-free: every criterion's test is computed and
    // one is picked.)
    const int old_streak = streak[pos];
    const int old_last = last_pred[pos];
    const int is_patience = criterion == 3;
    const int patience_streak = finite ? (pred == old_last ? old_streak + 1 : 1) : 0;
    const int new_streak = is_patience ? patience_streak : old_streak;
    const int new_last = is_patience ? (finite ? pred : -1) : old_last;
    const float statistic = criterion == 1 ? entropy : (criterion == 2 ? margin : maxprob);
    const int above = criterion == 1 ? statistic <= tau : statistic >= tau;
    const int confident = is_patience ? patience_streak >= patience : finite && above;
    const int exits = confident || last;
    if (writer) {
        record[j] = (int4)(pred, exits, new_streak, new_last);
        record_conf[j] = statistic;
    }
    return exits ? sum : 0.0f;
}

__kernel void early_exit_rows(__global const X_T* logits, int rows, int classes, __global const int* positions,
                              int samples, __global const int* last_pred, __global const int* streak,
                              __global int4* record, __global float* record_conf, __global Y_T* probs,
                              int criterion, float tau, int patience, int last) {
    const int j = get_group_id(0);
    const int lid = get_local_id(0);
    __local ulong best[GROUP];
    __local ulong second[GROUP];
    __local float red[GROUP];
    __local float red2[GROUP];
    // An empty slot (past the active count) or a bad position (flagged by token_index_map) is
    // skipped: the same for every work-item, which still meet every barrier (no early return
    // before them: the loops run over no class).
    const int raw = positions[j];
    const int valid = j < rows && raw >= 0 && raw < samples;
    const int pos = valid ? raw : 0;
    const int n_cls = valid ? classes : 0;
    const size_t base = (size_t)j * (size_t)classes;

    ulong b1 = ~(ulong)0, b2 = ~(ulong)0;
    float m = -INFINITY;
    for (int c = lid; c < n_cls; c += GROUP) {
        const float v = X_LOAD(logits, base + c);
        exit_top2(v, c, &b1, &b2);
        m = fmax(m, v);
    }
    best[lid] = b1;
    second[lid] = b2;
    red[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = GROUP / 2; s > 0; s >>= 1) {
        if (lid < s) {
            const ulong x1 = best[lid], x2 = second[lid], y1 = best[lid + s], y2 = second[lid + s];
            best[lid] = min(x1, y1);
            second[lid] = min(max(x1, y1), min(x2, y2));
            red[lid] = fmax(red[lid], red[lid + s]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const ulong top = best[0];
    const ulong runner = second[0];
    m = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);

    // The argmax's class comes from a key: checked before it addresses the row.
    const uint c1 = (uint)(top & 0xFFFFFFFFu);
    const int pred = c1 < (uint)classes ? (int)c1 : 0;
    const int finite = valid && isfinite(X_LOAD(logits, base + pred));

    float rest = 0.0f, rest_c = 0.0f, ent = 0.0f, ent_c = 0.0f;
    for (int c = lid; c < n_cls; c += GROUP)
        exit_terms(X_LOAD(logits, base + c), c, pred, m, &rest, &rest_c, &ent, &ent_c);
    red[lid] = rest - rest_c;
    red2[lid] = ent - ent_c;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = GROUP / 2; s > 0; s >>= 1) {
        if (lid < s) {
            red[lid] += red[lid + s];
            red2[lid] += red2[lid + s];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (!valid) return;
    // The runner-up's class comes from a key: checked before it addresses the row.
    const uint c2 = (uint)(runner & 0xFFFFFFFFu);
    const float e2 = finite && c2 < (uint)classes ? exp(X_LOAD(logits, base + c2) - m) : 0.0f;
    const float sum = exit_decide(j, pos, pred, e2, classes, finite, m, red[0], red2[0], logits, base, last_pred,
                                  streak, record, record_conf, criterion, tau, patience, last, lid == 0);
#ifdef KEEP_PROBS
    if (sum != 0.0f) {
        const size_t out = (size_t)pos * (size_t)classes;
        for (int c = lid; c < classes; c += GROUP) Y_STORE(probs, out + c, exp(X_LOAD(logits, base + c) - m) / sum);
    }
#endif
}

// The lanes of a float16 combined in a fixed pairwise order (halves, then halves of those). The
// vectors come by pointer and wide built-in calls are split (SY_CALL8_*): no float16 or int16
// crosses a call (clang's -Wpsabi on x86 CPUs without AVX-512).
inline float sum16(const float16* v) {
    const float8 a = v->lo + v->hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}

inline float max16(const float16* v) {
    const float8 a = SY_CALL8_2(float, fmax, v->lo, v->hi);
    const float4 b = fmax(a.lo, a.hi);
    const float2 c = fmax(b.lo, b.hi);
    return fmax(c.x, c.y);
}

inline int min16i(const int16* v) {
    const int8 a = SY_CALL8_2(int, min, v->lo, v->hi);
    const int4 b = min(a.lo, a.hi);
    const int2 c = min(b.lo, b.hi);
    return min(c.x, c.y);
}

// Folds 16 classes x (class cls) into the 16 lanes' running statistics, one pass (online
// softmax): per lane the max m (its first class idx), s = sum of exp(x - m) over the lane's
// other classes, and (ENT) t = sum of exp(x - m)(x - m) over them, both rescaled when the max
// moves: a new max x turns the old one into an "other" term e = exp(m_old - x), so
// s' = (s + 1) e and t' = e (t + (m_old - x)(s + 1)); (MARGIN) m2, the lane's second largest
// value (a tie of the max counts). A NaN never becomes the max (its terms are NaN: the row
// is not finite); nanc keeps the first NaN class. One exp per class.
#define EXIT_FOLD(x, cls, ENT, MARGIN)                                                            \
    do {                                                                                          \
        const int16 gt = (x) > m;                                                                 \
        const float16 xm = (x) - m;                                                               \
        const float16 d = SY_CALL16_1(float, fabs, xm);                                           \
        const float16 nd = -d;                                                                    \
        float16 e = SY_CALL16_1(float, exp, nd);                                                  \
        const int16 dnan = SY_CALL16_1(int, isnan, d);                                            \
        e = SY_CALL16_3(float, select, e, (float16)(0.0f), dnan); /* both -inf (or a NaN) */      \
        const int16 live = e > (float16)(0.0f);                                                   \
        const float16 s1 = s + 1.0f;                                                              \
        if (ENT) {                                                                                \
            const float16 de = -d * e, et = e * (t - d * s1);                                     \
            const float16 grow = t + SY_CALL16_3(float, select, (float16)(0.0f), de, live);       \
            const float16 moved = SY_CALL16_3(float, select, (float16)(0.0f), et, live);          \
            t = SY_CALL16_3(float, select, grow, moved, gt);                                      \
        }                                                                                         \
        if (MARGIN) {                                                                             \
            const float16 mx2 = SY_CALL16_2(float, fmax, m2, (x));                                \
            m2 = SY_CALL16_3(float, select, mx2, m, gt);                                          \
        }                                                                                         \
        const float16 se = s + e, s1e = s1 * e;                                                   \
        s = SY_CALL16_3(float, select, se, s1e, gt);                                              \
        const int16 cv = (cls);                                                                   \
        idx = SY_CALL16_3(int, select, idx, cv, gt);                                              \
        m = SY_CALL16_3(float, select, m, (x), gt);                                               \
        const int16 xnan = SY_CALL16_1(int, isnan, (x));                                          \
        const int16 cn = SY_CALL16_3(int, select, (int16)(INT_MAX), cv, xnan);                    \
        nanc = SY_CALL16_2(int, min, nanc, cn);                                                   \
    } while (0)

// The row's statistics, classes in order (loops over ceil(classes / 16) ≤ 1,024 vectors: the
// host sends wider rows to early_exit_rows): the NaN-ignoring max *m_out, the argmax *pred (the
// first NaN, else the first class equal to the max; class 0 for an all -inf row), *has_nan,
// *rest = S - 1 = sum of exp(x - m) over the classes but the argmax, *ent = T (ENT), and
// *x2 = the runner-up's value (MARGIN). f32 sums per lane, lanes combined in a fixed order.
inline void exit_row_stats(__global const X_T* row, int classes, const int ENT, const int MARGIN, float* m_out,
                           int* pred, int* has_nan, float* rest, float* ent, float* x2) {
    const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const int vecs = classes / 16;
    float16 m = (float16)(-INFINITY), s = (float16)(0.0f), t = (float16)(0.0f), m2 = (float16)(-INFINITY);
    int16 idx = (int16)(INT_MAX), nanc = (int16)(INT_MAX);
    for (int q = 0; q < vecs; ++q) {
        const float16 x = X_LOAD16(row, q);
        EXIT_FOLD(x, lane + q * 16, ENT, MARGIN);
    }
    if (vecs * 16 < classes) {
        // The tail as one more vector, the lanes past the row -inf (never a max, no term).
        float v[16];
        for (int i = 0; i < 16; ++i) v[i] = vecs * 16 + i < classes ? X_LOAD(row, vecs * 16 + i) : -INFINITY;
        const float16 x = LOAD16_0(v, 0);
        EXIT_FOLD(x, lane + vecs * 16, ENT, MARGIN);
    }
    // Lanes combined: the max, the lowest class holding it, then each lane's terms rescaled to
    // the row's max (the argmax's lane keeps s and t; another lane adds its own max as a term).
    const float mx = max16(&m);
    const int first_nan = min16i(&nanc);
    const int16 at_max = m == (float16)(mx);
    const int16 idx_max = SY_CALL16_3(int, select, (int16)(INT_MAX), idx, at_max);
    const int top = min16i(&idx_max);
    *has_nan = first_nan != INT_MAX;
    *pred = *has_nan ? first_nan : (top == INT_MAX ? 0 : top);
    *m_out = mx;
    const int16 win = idx == (int16)(top);
    const float16 dl = m - mx;
    const float16 edl = SY_CALL16_1(float, exp, dl);
    const int16 dlnan = SY_CALL16_1(int, isnan, dl);
    const float16 el = SY_CALL16_3(float, select, edl, (float16)(0.0f), dlnan);
    const int16 lv = el > (float16)(0.0f);
    const float16 s1 = s + 1.0f;
    const float16 s1el = s1 * el;
    const float16 rs = SY_CALL16_3(float, select, s1el, s, win);
    *rest = sum16(&rs);
    if (ENT) {
        const float16 term = el * (t + dl * s1);
        const float16 live_term = SY_CALL16_3(float, select, (float16)(0.0f), term, lv);
        const float16 es = SY_CALL16_3(float, select, live_term, t, win);
        *ent = sum16(&es);
    }
    if (MARGIN) {
        const float16 ms = SY_CALL16_3(float, select, m, m2, win);
        *x2 = max16(&ms);
    }
}

// The fast path's vectors: EW floats (the device's native float width, from the host; 1 to 16).
#ifndef EW
#define EW SY_CALL_W  // (programs built for another kernel: no vector wider than a call may carry)
#endif
#if EW == 1
#define EVEC float
#define EIVEC int
#define ELANES 0
#define EX_LOADV(p, q) X_LOAD(p, q)
#define EX_VLOAD_PRIVATE(p) (*(p))
#define EX_HMINI(v) (v)
#define EX_AS_FLOAT(v) as_float(v)
#define EX_AS_INT(v) as_int(v)
#else
#define EX_AS_FLOAT(v) SY_CAT(as_float, EW)(v)
#define EX_AS_INT(v) SY_CAT(as_int, EW)(v)
#define EVEC SY_CAT(float, EW)
#define EIVEC SY_CAT(int, EW)
#define EX_VLOAD_PRIVATE(p) SY_CAT(vload, EW)(0, (p))
#if X_DT == 0
#define EX_LOADV(p, q) SY_CAT(vload, EW)((q), (p))
#elif X_DT == 1
#define EX_LOADV(p, q) SY_CAT(vload_half, EW)((q), (__global const half*)(p))
#else
#define EX_LOADV(p, q) SY_CAT(as_float, EW)(SY_CAT(convert_uint, EW)(SY_CAT(vload, EW)((q), (p))) << 16)
#endif
#if EW == 2
#define ELANES (int2)(0, 1)
#elif EW == 4
#define ELANES (int4)(0, 1, 2, 3)
#elif EW == 8
#define ELANES (int8)(0, 1, 2, 3, 4, 5, 6, 7)
#else
#define ELANES (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#endif
// The least lane of an int vector (statements of macros, no vector-typed function arguments).
#define EX_HMINI2(v) min((v).lo, (v).hi)
#define EX_HMINI4(v) EX_HMINI2(min((v).lo, (v).hi))
#define EX_HMINI8(v) EX_HMINI4(min((v).lo, (v).hi))
#define EX_HMINI16(v) EX_HMINI8(min((v).lo, (v).hi))
#define EX_HMINI(v) SY_CAT(EX_HMINI, EW)(v)
#endif

// e = exp(z) for z in [-87.3, 0] (the caller clamps), EW lanes, a few ulp (measured against exp
// in double: relative error ≤ 2.7e-7 for z > -10, 1.3e-6 down to -87.3): 2^(z log2 e) as
// 2^n · p(f), n the nearest integer, f in [-1/2, 1/2] from one fma with z log2 e exact in it,
// p a degree-5 fit of 2^f (p(0) = 1 exactly), 2^n from n + 127 in the exponent bits; about a
// third of the library exp's instructions (no special cases: the input range excludes them).
// u = z log2 e + 1.5 · 2^23 + 127 holds n + 127 in its low bits.
#define EXIT_EXP(z, e)                                                                            \
    const EVEC e##_u = fma((z), (EVEC)(1.44269504f), (EVEC)(12583039.0f));                        \
    const EVEC e##_f = fma((z), (EVEC)(1.44269504f), (EVEC)(12583039.0f) - e##_u);                \
    EVEC e##_p = fma(e##_f, (EVEC)(1.32647273e-3f), (EVEC)(9.67151299e-3f));                      \
    e##_p = fma(e##_p, e##_f, (EVEC)(5.55073358e-2f));                                            \
    e##_p = fma(e##_p, e##_f, (EVEC)(2.40222424e-1f));                                            \
    e##_p = fma(e##_p, e##_f, (EVEC)(6.93147004e-1f));                                            \
    e##_p = fma(e##_p, e##_f, (EVEC)(1.0f));                                                      \
    const EVEC e = e##_p * EX_AS_FLOAT(EX_AS_INT(e##_u) << 23)

// One vector x of the fast path's second pass: its terms with the row max mxv, all lanes
// (EXIT_FAST_FOLD) or the lanes of `keep` (the others add nothing and are no runner-up).
#define EXIT_FAST_TERMS(x, e, z)                                                                  \
    const EVEC z = fmax((x) - mxv, (EVEC)(-87.3f));                                               \
    EXIT_EXP(z, e)
#define EXIT_FAST_ADD(x, e, z)                                                                    \
    s += e;                                                                                       \
    if (ENT) t = fma(e, z, t);                                                                    \
    if (MARGIN) m2 = select(m2, (x), (x) > m2)
#define EXIT_FAST_FOLD(x)                                                                         \
    do {                                                                                          \
        EXIT_FAST_TERMS(x, e, z);                                                                 \
        EXIT_FAST_ADD(x, e, z);                                                                   \
    } while (0)
#define EXIT_FAST_FOLD_MASKED(x, keep)                                                            \
    do {                                                                                          \
        EXIT_FAST_TERMS(x, e0, z);                                                                \
        const EVEC e = select((EVEC)(0.0f), e0, (keep));                                          \
        const EVEC xk = select((EVEC)(-INFINITY), (x), (keep));                                   \
        EXIT_FAST_ADD(xk, e, z);                                                                  \
    } while (0)

// The row's statistics as exit_row_stats gives them, for a row of finite values, in two passes
// over the row (which the first leaves in cache) in vectors of EW classes, with far fewer
// instructions per class. First: per lane the max and the vector q where it first appears (so
// the argmax is the lowest class equal to the row max), and chk = sum of x·0, which turns NaN
// at any NaN or infinity. Then exp(x - m) of every class but the argmax with EXIT_EXP, clamping
// x - m at -87.3 (a class below that adds ~1e-38 instead of 0). Returns 0, having set nothing,
// when the row holds a NaN or an infinity: exit_row_stats gives those rows. Inlined into each
// criterion's copy, so ENT and MARGIN are constants there. Loops of classes / EW ≤ 16,384
// steps (`exitItemClasses`; CPU-class devices only).
static __attribute__((always_inline)) inline int exit_row_fast(__global const X_T* row, int classes, const int ENT,
                                                               const int MARGIN, float lim, int pat_last, int pat_streak,
                                                               int pat_need, float* m_out, int* pred, float* rest,
                                                               float* ent, float* x2) {
    const EIVEC lane = ELANES;
    const int vecs = classes / EW;
    const int tail = classes - vecs * EW;
    EVEC m = (EVEC)(-INFINITY), chk = (EVEC)(0.0f);
    EIVEC at = (EIVEC)(0), qv = (EIVEC)(0);
    for (int q = 0; q < vecs; ++q) {
        const EVEC x = EX_LOADV(row, q);
        const EIVEC gt = x > m;  // a NaN never
        m = select(m, x, gt);
        at = select(at, qv, gt);
        qv += 1;
        chk = SY_MAD(x, (EVEC)(0.0f), chk);
    }
    EVEC xt = (EVEC)(-INFINITY);  // the tail, lanes past the row -inf
    if (tail) {
        float v[EW];
        for (int i = 0; i < EW; ++i) v[i] = i < tail ? X_LOAD(row, vecs * EW + i) : -INFINITY;
        xt = EX_VLOAD_PRIVATE(v);
        const EIVEC gt = xt > m;
        m = select(m, xt, gt);
        at = select(at, qv, gt);
        chk = SY_MAD(select((EVEC)(0.0f), xt, lane < (EIVEC)(tail)), (EVEC)(0.0f), chk);
    }
    if (isnan(SY_HSUM(EW, chk))) return 0;
    const float mx = SY_HMAX(EW, m);
    const EVEC mxv = (EVEC)(mx);
    const int top = EX_HMINI(select((EIVEC)(INT_MAX), at * EW + lane, m == mxv));
    const int qp = top / EW;
    // The decision before the second pass, where it is already known that the sample stays
    // (then only the argmax matters: the statistic is kept for exiting samples alone).
    // Patience: the streak from the argmax alone (pat_need 0 when the exit must be taken).
    // Max probability and margin (both at most 1 / S): S - 1 is at least the sum of the other
    // lanes' maxima's terms, each a distinct class; past `lim` (the threshold's bound, widened
    // by the host-independent margin below) no rounding of the full sums could make it exit.
    int stays = pat_need > 0 && (top == pat_last ? pat_streak + 1 : 1) < pat_need;
    float rest_lb = 0.0f;
    if (lim < INFINITY) {
        const EVEC zl = fmax(m - mxv, (EVEC)(-87.3f));
        EXIT_EXP(zl, el);
        const EIVEC none = lane == (EIVEC)(top - qp * EW) || m == (EVEC)(-INFINITY);
        const EVEC terms = select(el, (EVEC)(0.0f), none);
        rest_lb = SY_HSUM(EW, terms);
        stays = stays || rest_lb > lim;
    }
    if (stays) {
        *m_out = mx;
        *pred = top;
        *rest = rest_lb;
        if (ENT) *ent = 0.0f;
        if (MARGIN) *x2 = -INFINITY;
        return 1;
    }
    const EVEC xp = qp < vecs ? EX_LOADV(row, qp) : xt;
    EVEC s = (EVEC)(0.0f), t = (EVEC)(0.0f), m2 = (EVEC)(-INFINITY);
    for (int q = 0; q < qp; ++q) {
        const EVEC x = EX_LOADV(row, q);
        EXIT_FAST_FOLD(x);
    }
    EXIT_FAST_FOLD_MASKED(xp, lane != (EIVEC)(top - qp * EW) && (qp < vecs || lane < (EIVEC)(tail)));
    for (int q = qp + 1; q < vecs; ++q) {
        const EVEC x = EX_LOADV(row, q);
        EXIT_FAST_FOLD(x);
    }
    if (tail && qp < vecs) EXIT_FAST_FOLD_MASKED(xt, lane < (EIVEC)(tail));
    *m_out = mx;
    *pred = top;
    *rest = SY_HSUM(EW, s);
    if (ENT) *ent = SY_HSUM(EW, t);
    if (MARGIN) *x2 = SY_HMAX(EW, m2);
    return 1;
}

// Grid [roundUp(rows, GROUP)]: one work-item per packed row (CPU-class devices, classes ≤
// EW · 1,024): a row of finite values by exit_row_fast (vectors of the device's float width),
// any other by exit_row_stats (the row walked once, 16 classes at a time in float16 vectors,
// one online-softmax fold with the library exp). The criterion picks which sums are kept
// (entropy: T too; margin: the runner-up), a uniform branch around three copies of each.
__kernel void early_exit_rows_item(__global const X_T* logits, int rows, int classes, __global const int* positions,
                                   int samples, __global const int* last_pred, __global const int* streak,
                                   __global int4* record, __global float* record_conf, __global Y_T* probs,
                                   int criterion, float tau, int patience, int last) {
    const int j = get_global_id(0);
    if (j >= rows) return;
    const int raw = positions[j];
    if (raw < 0 || raw >= samples) return;
    const size_t base = (size_t)j * (size_t)classes;
    __global const X_T* row = logits + base;
    float m = -INFINITY, rest = 0.0f, ent = 0.0f, x2 = -INFINITY;
    int pred = 0, has_nan = 0;
    // Where a sample provably stays, the fast path stops after its first pass (see
    // exit_row_fast): max probability and margin stay when S - 1 > 1 / tau - 1, here with a
    // margin of 1e-3 relative and 1e-6 absolute over the f32 sums' rounding; patience stays
    // when the streak falls short. Never on the last exit, where every sample exits.
    const float lim = !last && (criterion == 0 || criterion == 2) && tau > 0.0f
                          ? (1.0f / tau - 1.0f) * 1.001f + 1e-6f
                          : INFINITY;
    const int pat_need = !last && criterion == 3 ? patience : 0;
    const int pat_last = pat_need ? last_pred[raw] : -1;
    const int pat_streak = pat_need ? streak[raw] : 0;
    if (criterion == 1) {
        if (!exit_row_fast(row, classes, 1, 0, INFINITY, -1, 0, 0, &m, &pred, &rest, &ent, &x2))
            exit_row_stats(row, classes, 1, 0, &m, &pred, &has_nan, &rest, &ent, &x2);
    } else if (criterion == 2) {
        if (!exit_row_fast(row, classes, 0, 1, lim, -1, 0, 0, &m, &pred, &rest, &ent, &x2))
            exit_row_stats(row, classes, 0, 1, &m, &pred, &has_nan, &rest, &ent, &x2);
    } else {
        if (!exit_row_fast(row, classes, 0, 0, lim, pat_last, pat_streak, pat_need, &m, &pred, &rest, &ent, &x2))
            exit_row_stats(row, classes, 0, 0, &m, &pred, &has_nan, &rest, &ent, &x2);
    }
    const int finite = !has_nan && isfinite(m);
    const float e2 = finite && x2 > -INFINITY ? exp(x2 - m) : 0.0f;
    const float sum = exit_decide(j, raw, pred, e2, classes, finite, m, rest, ent, logits, base, last_pred, streak,
                                  record, record_conf, criterion, tau, patience, last, 1);
#ifdef KEEP_PROBS
    if (sum != 0.0f) {
        __global Y_T* out = probs + (size_t)raw * (size_t)classes;
        const int vecs = classes / 16;
        for (int q = 0; q < vecs; ++q) {
            const float16 z = X_LOAD16(row, q) - m;
            Y_STORE16(out, q, SY_CALL16_1(float, exp, z) / sum);
        }
        for (int c = vecs * 16; c < classes; ++c) Y_STORE(out, c, exp(X_LOAD(row, c) - m) / sum);
    }
#endif
}

// Grid [roundUp(max(n, flag_count, heads), 64)]: inv[i] = -1 below n, flags[i] = 0 below
// flag_count, histogram_out[i] = histogram[i] below heads but at head (early_exit_scan's).
__kernel void early_exit_prepare(__global int* inv, int n, __global int* flags, int flag_count,
                                 __global const int* histogram, __global int* histogram_out, int heads, int head) {
    const int i = get_global_id(0);
    if (i < n) inv[i] = -1;
    if (i < flag_count) flags[i] = 0;
    if (i < heads && i != head) histogram_out[i] = histogram[i];
}

// Grid [nchunks * GROUP] (GROUP, PER: token_scan.h's chunks over the samples): each work-item
// its PER samples; counts[chunk] = (still-active samples in the chunk, 0).
__kernel void early_exit_tokens(__global const int* inv, int rows, __global const int4* record,
                                __global const float* record_conf, __global const int* active,
                                __global const int* pred, __global const int* head_of, __global const float* conf,
                                __global const int* last_pred, __global const int* streak, __global int* active_out,
                                __global int* pred_out, __global int* head_out, __global float* conf_out,
                                __global int* last_out, __global int* streak_out, __global int* flags, int samples,
                                int head, __global int2* counts) {
    __local int2 scratch[GROUP];
    int begin, end;
    token_range(get_group_id(0), get_local_id(0), samples, &begin, &end);
    int kept = 0;
    for (int i = begin; i < end; ++i) {
        const int a = active[i];
        const int j = inv[i];
        // A slot read from inv is checked before it addresses the records.
        if (a == 1 && j >= 0 && j < rows) {
            const int4 r = record[j];
            active_out[i] = r.y ? 0 : 1;
            pred_out[i] = r.y ? r.x : pred[i];
            head_out[i] = r.y ? head : head_of[i];
            conf_out[i] = r.y ? record_conf[j] : conf[i];
            streak_out[i] = r.z;
            last_out[i] = r.w;
            kept += r.y ? 0 : 1;
        } else {
            if (a != 0 && a != 1) flags[3] = 1;
            if ((a == 1 && j < 0) || (a != 1 && j >= 0)) flags[5] = 1;
            active_out[i] = a;
            pred_out[i] = pred[i];
            head_out[i] = head_of[i];
            conf_out[i] = conf[i];
            last_out[i] = last_pred[i];
            streak_out[i] = streak[i];
            kept += a == 1;
        }
    }
    int2 total;
    group_exclusive_scan2((int2)(kept, 0), scratch, &total);
    if (get_local_id(0) == 0) counts[get_group_id(0)] = total;
}

// Grid [GROUP], one work-group: the chunk counts scanned in place (scan_chunks), the active
// count kept[0], and histogram_out[head] = count_before - kept (early_exit_prepare copies the
// other heads).
__kernel void early_exit_scan(__global int2* counts, int nchunks, __global int* kept, __global int* histogram_out,
                              __global const int* count_before, int heads, int head) {
    __local int2 scratch[GROUP];
    const int2 total = scan_chunks(counts, nchunks, scratch);
    if (get_local_id(0) == 0) {
        kept[0] = total.x;
        if (head >= 0 && head < heads) histogram_out[head] = count_before[0] - total.x;
    }
}

// Grid [roundUp(n, 64)]: y[i] = 0 (the kept probabilities before the first exit).
__kernel void early_exit_zero(__global Y_T* y, int n) {
    const int i = get_global_id(0);
    if (i < n) Y_STORE(y, i, 0.0f);
}

// Grid [roundUp(n, 64)]: positions[i] = i.
__kernel void early_exit_iota(__global int* positions, int n) {
    const int i = get_global_id(0);
    if (i < n) positions[i] = i;
}
