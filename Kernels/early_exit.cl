#include "common.h"

// Early exit (Reference.earlyExitStep), three kernels per exit:
// early_exit_rows: one work-group of GROUP work-items per packed row j of logits [rows, classes]
//   (X), the row of sample positions[j] (slots past the active count hold -1 and are skipped).
//   Work-items stride over the classes (classes / GROUP steps per loop: classes <= 2^20), then
//   fixed trees combine: the top-2 keys (descending_key << 32 | class: NaN first, ties to the
//   lower class, as topk.cl orders), the NaN-ignoring max m, then (compensated) S - 1 and
//   T = sum exp(x - m) (x - m) over the other classes (0 where exp is 0). The decision goes to the slot's record;
//   an exiting sample's softmax row (KEEP_PROBS, Y) is written at its original position.
// early_exit_tokens: per sample, through the inverse map inv (token_index_map), the new state
//   from its slot's record, or the old state copied.
// early_exit_histogram: histogram[head] = active before - active after, the rest copied.

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
    // skipped: the same for every work-item, which still meet every barrier (no early return:
    // the loops run over no class and nothing is written).
    const int raw = positions[j];
    const int valid = j < rows && raw >= 0 && raw < samples;
    const int pos = valid ? raw : 0;
    const int n_cls = valid ? classes : 0;
    const size_t base = (size_t)j * (size_t)classes;

    ulong b1 = ~(ulong)0, b2 = ~(ulong)0;
    float m = -INFINITY;
    for (int c = lid; c < n_cls; c += GROUP) {
        const float v = X_LOAD(logits, base + c);
        const ulong k = ((ulong)descending_key(v) << 32) | (ulong)c;
        if (k < b1) {
            b2 = b1;
            b1 = k;
        } else if (k < b2) {
            b2 = k;
        }
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

    // Classes come from keys: checked before they address the row.
    const uint c1 = (uint)(top & 0xFFFFFFFFu);
    const int pred = c1 < (uint)classes ? (int)c1 : 0;
    const float top_value = valid ? X_LOAD(logits, base + pred) : 0.0f;
    const int finite = isfinite(top_value);

    // Over every class but the argmax (whose exp(x - m) is 1 in a finite row): S - 1 and T,
    // compensated (Kahan) so that a large vocabulary of tiny terms is not absorbed.
    float rest = 0.0f, rest_c = 0.0f, ent = 0.0f, ent_c = 0.0f;
    for (int c = lid; c < n_cls; c += GROUP) {
        if (c == pred) continue;
        const float z = X_LOAD(logits, base + c) - m;
        const float e = exp(z);
        float y = e - rest_c;
        float t = rest + y;
        rest_c = (t - rest) - y;
        rest = t;
        if (e > 0.0f) {
            y = e * z - ent_c;
            t = ent + y;
            ent_c = (t - ent) - y;
            ent = t;
        }
    }
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
    rest = red[0];
    ent = red2[0];
    // S = 1 + rest; a non-finite row's softmax is NaN throughout (as Reference.softmax gives).
    const float sum = finite ? 1.0f + rest : NAN;

    float margin = NAN, maxprob = NAN, entropy = NAN;
    if (finite) {
        const uint c2 = (uint)(runner & 0xFFFFFFFFu);
        const float e2 = c2 < (uint)n_cls ? exp(X_LOAD(logits, base + c2) - m) : 0.0f;
        maxprob = 1.0f / sum;
        margin = (1.0f - e2) / sum;
        entropy = log1p(rest) - ent / sum;
    }
    // pos is in range (checked above). Only patience changes the streak. (Branch-free: every
    // criterion's test is computed and one is picked.)
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
    if (!valid) return;
    if (lid == 0) {
        record[j] = (int4)(pred, exits, new_streak, new_last);
        record_conf[j] = statistic;
    }
#ifdef KEEP_PROBS
    if (exits) {
        const size_t out = (size_t)pos * (size_t)classes;
        for (int c = lid; c < classes; c += GROUP) Y_STORE(probs, out + c, exp(X_LOAD(logits, base + c) - m) / sum);
    }
#endif
}

// Grid [roundUp(samples, 64)].
__kernel void early_exit_tokens(__global const int* inv, int rows, __global const int4* record,
                                __global const float* record_conf, __global const int* active,
                                __global const int* pred, __global const int* head_of, __global const float* conf,
                                __global const int* last_pred, __global const int* streak, __global int* active_out,
                                __global int* pred_out, __global int* head_out, __global float* conf_out,
                                __global int* last_out, __global int* streak_out, __global int* flags, int samples,
                                int head) {
    const int i = get_global_id(0);
    if (i >= samples) return;
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
        return;
    }
    if (a != 0 && a != 1) flags[3] = 1;
    if ((a == 1 && j < 0) || (a != 1 && j >= 0)) flags[5] = 1;
    active_out[i] = a;
    pred_out[i] = pred[i];
    head_out[i] = head_of[i];
    conf_out[i] = conf[i];
    last_out[i] = last_pred[i];
    streak_out[i] = streak[i];
}

// Grid [roundUp(heads, 64)].
__kernel void early_exit_histogram(__global const int* histogram, __global int* histogram_out,
                                   __global const int* count_before, __global const int* count_after, int heads,
                                   int head) {
    const int i = get_global_id(0);
    if (i >= heads) return;
    histogram_out[i] = i == head ? count_before[0] - count_after[0] : histogram[i];
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
