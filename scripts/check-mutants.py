#!/usr/bin/env python3
"""Mutation check: applies one small kernel mutation at a time (store rounding, off-by-one bounds,
a dropped padding write, swapped ties, wrong epilogue constants) to a copy of Kernels/ read through
SWITCHYARD_KERNEL_DIR, runs the conformance cases of the op it touches, and requires every
mutation to make conformance fail. A mutation whose text is no longer in its kernel is an error
too (update the list with the kernel).

    scripts/check-mutants.py [path/to/switchyard]            (default .build/release/switchyard)
    SWITCHYARD_DEVICE=1 RUSTICL_ENABLE=llvmpipe scripts/check-mutants.py     (on rusticl)
"""
import os, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, text, replacement, conformance filter[, environment: e.g. SWITCHYARD_VECTOR_WIDTH for
# code one vector width runs, with "cpu flag" naming the /proc/cpuinfo flag its code needs])
MUTANTS = [
    ("quantize_codes skips every other stride of rows", "quantized_weights.cl",
     "r += get_global_size(1))\n        quantize_code(", "r += 2 * get_global_size(1))\n        quantize_code(",
     r"^quantize_weights.*rows=(400000|800001)"),
    ("quantize_scales skips every other stride of rows", "quantized_weights.cl",
     "r += get_global_size(1))\n        quantize_group(", "r += 2 * get_global_size(1))\n        quantize_group(",
     r"^quantize_weights.*rows=(400000|800001)"),
    ("gating_rank skips every other stride of tokens", "routing.cl",
     "t += get_global_size(1))", "t += 2 * get_global_size(1))", r"^gating.*T=50000"),
    ("int4 scale past f16 not flagged", "quantized_weights.cl",
     "    if (finite && !isfinite(s)) atomic_min(status, (int)r);", "    ;", r"^quantize_weights.*past f16"),
    ("f16 store rounds toward zero", "common.h",
     "#define STORE_F16(p, i, v) vstore_half_rte((v), (i), (p))",
     "#define STORE_F16(p, i, v) vstore_half_rtz((v), (i), (p))", r"^softmax.*f16|^grouped_matmul.*f16"),
    ("bf16 store truncates", "common.h",
     "    u += 0x7FFFu + ((u >> 16) & 1u);", "    u += 0u;", r"^softmax.*bf16|^grouped_matmul.*bf16"),
    ("bf16 16-wide store truncates", "common.h",
     "    u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;", "    u = u >> 16;",
     r"^(gather|combine|softmax|grouped_matmul|moe_layer).*bf16"),
    ("int8 row scale not applied to the total (register)", "matmul.cl",
     "                for (int r = 0; r < RT; ++r) tot[(r * NP + p) * NV + v] *= sv;", "                ;",
     r"^quantized_matmul.*int8"),
    ("e2m1 code 1 decodes as 0.75 (the min's second form off)", "matmul.cl",
     "(F)-1.0f)))", "(F)-0.5f)))", r"mxfp4", {"SWITCHYARD_VECTOR_WIDTH": "4"}),
    ("e2m1 table: 3 decodes as 2.5 (AVX2 8-lane table)", "matmul.cl",
     "0x00000000, 0x10400000, 0x20800000", "0x00000000, 0x10200000, 0x20800000",
     r"mxfp4", {"SWITCHYARD_VECTOR_WIDTH": "8", "cpu flag": "avx2"}),
    ("e2m1 table: the sign dropped (AVX2 8-lane table)", "matmul.cl",
     "as_int8(b))) ^ ((b) << 28))", "as_int8(b))) ^ ((b) << 28 & 0x7FFFFFFFu))",
     r"mxfp4", {"SWITCHYARD_VECTOR_WIDTH": "8", "cpu flag": "avx2"}),
    ("e2m1 table: the high nibble's sign dropped (AVX2 8-lane table)", "matmul.cl",
     "#define DEC_E2M1_HI(t, b) DEC_E2M1V(t, (b) >> 4)", "#define DEC_E2M1_HI(t, b) DEC_E2M1V(t, (b) >> 4 & 7u)",
     r"mxfp4", {"SWITCHYARD_VECTOR_WIDTH": "8", "cpu flag": "avx2"}),
    ("MXFP4 group sum (register) not scaled", "matmul.cl",
     "acc[r * NP * NV + x] = SY_MAD(gacc[r * NP * NV + x], sv[x], acc[r * NP * NV + x]);",
     "acc[r * NP * NV + x] = gacc[r * NP * NV + x] + acc[r * NP * NV + x];", r"mxfp4"),
    ("work-group matmul MXFP4 group sum scaled at every other group's end", "matmul.cl",
     "if (k0 + kk + 1 == gend) gend = min(K, gend + qgroup);", "if (k0 + kk + 1 == gend) gend = min(K, gend + 2 * qgroup);",
     r"mxfp4"),
    ("e2m1 table: -6 decodes as -4 (AVX-512 16-lane table)", "matmul.cl",
     "-2.0f, -3.0f, -4.0f, -6.0f)", "-2.0f, -3.0f, -4.0f, -4.0f)",
     r"mxfp4", {"SWITCHYARD_VECTOR_WIDTH": "16", "cpu flag": "avx512f"}),
    ("e4m3 subnormals off (the min's second form off)", "matmul.cl",
     "(F)-0x1p-6f))", "(F)-0x1p-7f))", r"fp8"),
    ("matmul k loop stops one short", "matmul.cl",
     "    for (int k = kb; k < ke; ++k) {", "    for (int k = kb; k < ke - 1; ++k) {", r"^grouped_matmul"),
    ("matmul row block skips its last tile", "matmul.cl",
     "    for (int step = 0; step < tile_step; ++step) {", "    for (int step = 0; step < tile_step - 1; ++step) {",
     r"^grouped_matmul"),
    ("narrow matmul k loop stops one short", "matmul.cl",
     "for (int k = c0; k < min(K, c0 + SY_KCHAIN); ++k) {", "for (int k = c0; k < min(K, c0 + SY_KCHAIN) - 1; ++k) {",
     r"^grouped_matmul.*out=1 "),
    ("work-group matmul k slices restart from zero (k slices)", "matmul.cl",
     "            tot[i][j] = kb > 0 && row < max_rows", "            tot[i][j] = 0 && row < max_rows",
     r"^grouped_matmul.*in=(14336|20000)"),
    ("plain matmul k slices restart from zero (k slices)", "matmul.cl",
     "float8 acc = kb > 0 ? SY_VLOAD8(0, cp) : (float8)0.0f;", "float8 acc = (float8)0.0f;",
     r"^grouped_matmul.*in=(14336|20000)"),
    ("matmul drops the zero write of tiles past the total", "matmul.cl",
     "            if (col < N) Y_STORE(y, (size_t)(row0 + r) * (size_t)N + col, 0.0f);", "            ;",
     r"^grouped_matmul|^moe_layer"),
    ("matmul padding rows get a value", "matmul.cl",
     "        const int real = r < RT && src[r] >= 0;", "        const int real = r < RT;", r"^grouped_matmul"),
    ("matmul panel group (joint run) reads its first panel's weights for all", "matmul.cl",
     "wv[p * NV + v] = W_LOADV(wp + p * wstride, NV * k + v);", "wv[p * NV + v] = W_LOADV(wp, NV * k + v);",
     r"^grouped_matmul"),
    ("matmul panel group (joint run) stores its first panel's sums for all", "matmul.cl",
     "tot[(r < RT ? r * NP + p : 0) * NV + q]", "tot[(r < RT ? r * NP : 0) * NV + q]", r"^grouped_matmul"),
    ("quantized matmul panel group (register, joint run) reads its first panel's int4 scales for all", "matmul.cl",
     "sv[x] = SY_CAT(vload_half, VS)(at, sq + p * sstride);", "sv[x] = SY_CAT(vload_half, VS)(at, sq);",
     r"^quantized_matmul.*int4"),
    ("quantized matmul panel group (register, joint run) reads its first panel's codes for all", "matmul.cl",
     "__global const uchar* wk = wq + p * wstride;", "__global const uchar* wk = wq;", r"^quantized_matmul"),
    ("quantized matmul (register) stages the first row's activations for every row (full chunk)", "matmul.cl",
     "SY_VSTOREW(SY_CAT(LOADW_, A_DT)(ap[r] + kc, q), q, af + r * ACH);",
     "SY_VSTOREW(SY_CAT(LOADW_, A_DT)(ap[0] + kc, q), q, af + r * ACH);", r"^quantized_matmul.*(bf16|f16)"),
    ("quantized matmul (register) stages the first row's activations for every row (chunk tail)", "matmul.cl",
     "af[r * ACH + i] = A_LOAD(ap[r], kc + i);", "af[r * ACH + i] = A_LOAD(ap[0], kc + i);",
     r"^quantized_matmul.*(bf16|f16)"),
    ("quantized matmul (register) broadcasts the first row's staged activations to every row", "matmul.cl",
     "(VEC)af[r * ACH + (k - kc)]", "(VEC)af[k - kc]", r"^quantized_matmul.*(bf16|f16)"),
    ("work-group matmul k step one short", "matmul.cl",
     "        for (int kk = 0; mine && kk < kn; ++kk) {", "        for (int kk = 0; mine && kk < kn - 1; ++kk) {",
     r"^grouped_matmul"),
    ("work-group matmul skips the FMAs of a work-item whose real rows read source row 0", "matmul.cl",
     "    for (int i = 0; i < TRM; ++i) mine |= srcs[TROW(i)] >= 0;",
     "    for (int i = 0; i < TRM; ++i) mine |= srcs[TROW(i)] > 0;", r"^grouped_matmul"),
    ("work-group matmul drops the zero write of tiles past the total", "matmul.cl",
     "                if (p < PANEL_OUT && col < N) Y_STORE(y, (size_t)row * (size_t)N + col, 0.0f);", "                ;",
     r"^grouped_matmul|^moe_layer"),
    ("work-group matmul padding rows get a value", "matmul.cl",
     "        const int real = srcs[TROW(i)] >= 0;", "        const int real = 1;", r"^grouped_matmul"),
    ("matmul chains: a chain's sums dropped from the total after the first (register)", "matmul.cl",
     "        for (int x = 0; x < RT * NP * NV; ++x) tot[x] = tot[x] + acc[x];",
     "        for (int x = 0; x < RT * NP * NV; ++x) tot[x] = c0 == kb ? acc[x] : tot[x];",
     r"^(grouped|quantized)_matmul.*in=(259|4100|4160|10000|14336|20000) "),
    ("work-group matmul chain's sums added to the total one k early", "matmul.cl",
     "            if (k0 + kk + 1 == cend) {", "            if (k0 + kk + 2 == cend) {",
     r"^(grouped|quantized)_matmul.*in=(259|4100|4160|10000|14336|20000) "),
    ("work-group matmul int8 column scale not applied to the total", "matmul.cl",
     "        for (int i = 0; i < TRM; ++i) tot[i][j] *= s;", "        ;", r"^quantized_matmul.*int8"),
    ("work-group matmul split-k chain stops one short", "matmul.cl",
     "sk_chain((n), a, K, ps, pr, out, row_stride, wl, stride, c0, c1, q,",
     "sk_chain((n), a, K, ps, pr, out, row_stride, wl, stride, c0, c1 - 1, q,",
     r"^(grouped|quantized)_matmul"),
    ("work-group matmul split-k pass reads its first row's activations for every row", "matmul.cl",
     "            ps.c = src[r0 + (i)];", "            ps.c = src[r0];", r"^(grouped|quantized)_matmul|^moe_layer"),
    ("work-group matmul split-k skips a chain's last k step past its loaded batches", "matmul.cl",
     "        for (; k < ge; ++k) {", "        for (; k < ge - 1; ++k) {",
     r"^(grouped|quantized)_matmul"),
    ("work-group matmul split-k loads every batch's first k step", "matmul.cl",
     "            for (int u = 0; u < SK_U; ++u) raw[u] = wk[u * stride];",
     "            for (int u = 0; u < SK_U; ++u) raw[u] = wk[0];",
     r"^(grouped|quantized)_matmul"),
    ("work-group matmul split-k runs a pass of 4 rows as 3", "matmul.cl",
     "        switch (min(SK_R, nr - r0)) {", "        switch (min(SK_R - 1, nr - r0)) {",
     r"^(grouped|quantized)_matmul|^moe_layer"),
    ("work-group matmul split-k int4 code to float off by one", "matmul.cl",
     "#define SY_U2F4(u) (as_float4((u) | (uint4)0x4B000000u) - (float4)0x1p23f)",
     "#define SY_U2F4(u) (as_float4((u) | (uint4)0x4B000000u) - (float4)0x1.000002p23f)",
     r"^quantized_matmul.*int4"),
    ("work-group matmul split-k int8 code to float off by one", "matmul.cl",
     "#define SY_I2F4(c) (as_float4((c) + (int4)0x4B400000) - (float4)0x1.8p23f)",
     "#define SY_I2F4(c) (as_float4((c) + (int4)0x4B400001) - (float4)0x1.8p23f)",
     r"^quantized_matmul.*int8"),
    ("work-group matmul split-k fold drops the last chain", "matmul.cl",
     "    for (int c = 0; c < chains; ++c) t = t + pp[(size_t)c * width];",
     "    for (int c = 0; c + 1 < chains; ++c) t = t + pp[(size_t)c * width];",
     r"^(grouped|quantized)_matmul.*in=(4100|4160|14336|20000) "),
    ("work-group matmul split-k fold drops the up projection's last chain", "matmul.cl",
     "    for (int c = 0; c < chains; ++c) u = u + pp[(size_t)c * width + PANEL / 2];",
     "    for (int c = 0; c + 1 < chains; ++c) u = u + pp[(size_t)c * width + PANEL / 2];",
     r"^(grouped|quantized)_matmul.*in=(4100|4160|14336) "),
    ("work-group matmul split-k computes only a tile's first 4 rows", "matmul.cl",
     "    for (int r0 = 0; r0 < nr; r0 += SK_R) {", "    for (int r0 = 0; r0 < min(nr, SK_R); r0 += SK_R) {",
     r"^(grouped|quantized)_matmul|^moe_layer"),
    ("work-group matmul split-k scale groups run two at a time", "matmul.cl",
     "        const int ge = min(c1, (kg / qgroup + 1) * qgroup);",
     "        const int ge = min(c1, (kg / qgroup + 2) * qgroup);", r"mxfp4|int4|fp8"),
    ("work-group matmul split-k MXFP4 group sums scaled by the first group's scale", "matmul.cl",
     "            const float s = DEC_E8M0((uint)sq[g + SK_COL(v)], uint, as_float);",
     "            const float s = DEC_E8M0((uint)sq[SK_COL(v)], uint, as_float);", r"mxfp4"),
    ("work-group matmul split-k int4 reads the first group's scales for all", "matmul.cl",
     "            sv[v] = vload_half(g + SK_COL(v), sq);", "            sv[v] = vload_half(SK_COL(v), sq);",
     r"^quantized_matmul.*int4"),
    ("work-group matmul split-k FP8 keeps its first group's scales", "matmul.cl",
     "            sv[v] = sq[g + SK_COL(v)];", "            sv[v] = sq[SK_COL(v)];", r"fp8"),
    ("work-group matmul split-k high nibbles' columns reversed", "matmul.cl",
     "PANEL / 2 + 4 * q + (v) - 4)", "PANEL / 2 + 4 * q + 7 - (v))", r"^quantized_matmul.*(int4|mxfp4)"),
    ("work-group matmul split-k fold: int8 column scale not applied", "matmul.cl",
     "        t *= sq[j];", "        ;", r"^quantized_matmul.*int8"),
    ("GELU tanh constant off", "matmul.cl", "tanh(0.7978845608028654f *", "tanh(0.797f *",
     r"^grouped_matmul.*geluTanh"),
    ("SiLU becomes identity", "matmul.cl",
     "inline float silu(float v) { return v / (1.0f + exp(-v)); }", "inline float silu(float v) { return v; }",
     r"^grouped_matmul.*(silu|swiglu)"),
    ("row scale ignored", "matmul.cl",
     "    if (scale_mode == 1) return scale[row];", "    if (scale_mode == 1) return 1.0f;",
     r"^grouped_matmul.*scale=row|^moe_layer"),
    ("softmax skips the last column", "softmax.cl",
     "for (int c = lid; c < cols; c += GROUP) sum += exp(", "for (int c = lid; c < cols - 1; c += GROUP) sum += exp(",
     r"^softmax"),
    ("top-k ties go to the higher index", "topk.cl",
     "<< 32) | (ulong)c)", "<< 32) | (ulong)(cols - 1 - c))", r"^topk"),
    ("NaN no longer ranks first", "common.h", "    if (isnan(v)) return 0u;", "    if (isnan(v)) return ~0u - 1u;",
     r"^topk"),
    ("merge match (register) ties in a lane go to the higher index", "token_merge.cl",
     "IVEC gt = acc[r][v] > bv;", "IVEC gt = acc[r][v] >= bv;", r"^token_merge"),
    ("merge match (register) ties across lanes go to the higher index", "token_merge.cl",
     "const int j = HMINI(select((IVEC)(INT_MAX), lane_col[t][r], bv == (VEC)(v)));",
     "const int j = -HMINI(select((IVEC)(INT_MAX), -lane_col[t][r], bv == (VEC)(v)));", r"^token_merge"),
    ("merge match (register) a later column range wins ties", "token_merge.cl",
     "if (v > best && j != INT_MAX) {", "if (v >= best && j != INT_MAX) {", r"^token_merge"),
    ("merge match (register) padding columns count", "token_merge.cl",
     "if (!full) gt = gt & (col < (IVEC)(nb));", "if (!full) gt = gt;", r"^token_merge"),
    ("merge match (lanes) ties go to the higher index", "token_merge.cl",
     "(v == vals[lid] && j < idxs[lid])", "(v == vals[lid] && j > idxs[lid])", r"^token_merge"),
    ("merge normalize misses a bad value in a key's vectors (register)", "token_merge.cl",
     "chk = SY_MAD(v, (VEC)(0.0f), chk);  // NaN at a NaN or an infinity", ";", r"^token_merge"),
    ("merge choose (register) ties go to the higher index", "token_merge.cl",
     "        k0[i] = descending_key(v[i]);\n        i0[i] = i;",
     "        k0[na - 1 - i] = descending_key(v[i]);\n        i0[na - 1 - i] = i;", r"^token_merge"),
    ("merge choose (register) sorts on three bytes of the key", "token_merge.cl",
     "for (int shift = 0; shift < 32; shift += 8) {", "for (int shift = 0; shift < 24; shift += 8) {", r"^token_merge"),
    ("merge order (register) runs reversed", "token_merge.cl",
     "if (at < r) out[at] = i;", "if (at < r) out[r - 1 - at] = i;", r"^token_merge"),
    ("merge leaves the B token's own size out of the average", "token_merge.cl",
     "float acc = s_own * X_LOAD(own, c);", "float acc = X_LOAD(own, c);", r"^token_merge"),
    ("merge plan numbers the unmerged tokens from 1", "token_merge.cl",
     "    int row = counts[lid];", "    int row = counts[lid] + 1;", r"^token_merge"),
    ("unmerge copies one column short", "token_merge.cl",
     "        for (; c < c1; ++c) dst[c] = src[c];", "        for (; c < c1 - 1; ++c) dst[c] = src[c];",
     r"^token_(un)?merge"),
    ("soft MoE dispatch softmax skips the last token", "soft_moe.cl",
     "        for (int t = 0; t < tokens; ++t) {\n            const size_t at = (size_t)t * (size_t)slots + s0;\n            const VEC e",
     "        for (int t = 0; t < tokens - 1; ++t) {\n            const size_t at = (size_t)t * (size_t)slots + s0;\n            const VEC e",
     r"^softmoe_dispatch|^soft_moe_layer"),
    ("soft MoE mix (register) k loop stops one short", "soft_moe.cl",
     "        for (int k = 0; k < K; ++k) {\n            const int row = mix_row",
     "        for (int k = 0; k < K - 1; ++k) {\n            const int row = mix_row", r"^softmoe|^soft_moe_layer"),
    ("soft MoE mix (lanes) k loop stops one short", "soft_moe.cl",
     "    for (int k = 0; k < K; ++k) {\n        const int row = mix_row(b, k, K, row_of, use_map, rows);\n        if (row >= 0)",
     "    for (int k = 0; k < K - 1; ++k) {\n        const int row = mix_row(b, k, K, row_of, use_map, rows);\n        if (row >= 0)",
     r"^softmoe|^soft_moe_layer"),
    ("token top-k rank off by one per digit", "token_topk.cl", "                remaining -= n;",
     "                remaining -= n - 1;", r"^token_topk"),
    ("token top-k prefix mask one digit short", "token_topk.cl", "~((1u << (uint)(shift + 8)) - 1u)",
     "~((1u << (uint)(shift + 4)) - 1u)", r"^token_topk"),
    ("token top-k counts every tie before a chosen position", "token_topk.cl",
     "            slot = below + min(ties, take);", "            slot = below + ties;", r"^token_topk"),
    # (register: where work-groups have 256 work-items, as lanes devices' do, each holds one bin
    # and the walk never subtracts, so the mutation is equivalent there)
    ("token top-k one-group rank off by one per digit (register)", "token_topk.cl", "                    r -= n;",
     "                    r -= n - 1;", r"^token_topk"),
    ("token top-k one-group count not carried across chunks", "token_topk.cl", "        base += total;",
     "        base.x += total.x;", r"^token_topk"),
    ("compact one-group count not carried across chunks", "compact.cl", "        base += total.x;",
     "        base = total.x;", r"^compact"),
    ("token chunk scan inclusive", "token_scan.h", "        counts[c] = running;", "        counts[c] = running + v;",
     r"^(token_topk|compact)"),
    ("compact drops the -1 fill", "compact.cl", "            if ((uint)slot < (uint)length) positions[row + slot] = -1;",
     "            ;", r"^compact"),
    ("token index map misses repeats", "token_index.cl",
     "    if (atomic_cmpxchg(&inv[(size_t)b * (size_t)length + p], -1, j) != -1) flags[1] = 1;",
     "    atomic_cmpxchg(&inv[(size_t)b * (size_t)length + p], -1, j);", r"^(gather|scatter|expand)_tokens"),
    ("gather tokens reads sequence 0", "gather_tokens.cl",
     "        const size_t in = ((size_t)b * (size_t)length + (size_t)(valid ? p : 0)) * (size_t)d;",
     "        const size_t in = ((size_t)(valid ? p : 0)) * (size_t)d;", r"^gather_tokens"),
    ("scatter tokens ignores the weights", "scatter_tokens.cl",
     "            const float g = has_weights ? W_LOAD(w, (size_t)b * (size_t)slots + j) : 1.0f;",
     "            const float g = 1.0f;", r"^scatter_tokens"),
    ("token raw row copy drops the last 16 columns", "token_rows.h",
     "for (int q = (lid); q < (n) / 16; q += GROUP)", "for (int q = (lid); q < (n) / 16 - 1; q += GROUP)",
     r"^(gather|scatter|expand)_tokens"),
    ("expand tokens fills instead of the base", "scatter_tokens.cl", "        } else if (has_base) {",
     "        } else if (0) {", r"^expand_tokens"),
    ("halting weighs the halting step by p, not the remainder", "halting.cl", "            w = halts ? remainder : q;",
     "            w = q;", r"^halting"),
    ("halting ties at 1 - eps keep running", "halting.cl", "c_next >= threshold || last;",
     "c_next > threshold || last;", r"^halting"),
    ("halting ignores the last step", "halting.cl", "c_next >= threshold || last;", "c_next >= threshold;",
     r"^halting"),
    ("halting 16-wide row drops its last vector", "halting.cl", "q < c1 / 16; q += GROUP)",
     "q < c1 / 16 - 1; q += GROUP)", r"^halting"),
    ("early exit patience off by one", "early_exit.cl", "patience_streak >= patience", "patience_streak > patience",
     r"^early_exit"),
    ("early exit entropy compares the wrong way", "early_exit.cl", "criterion == 1 ? statistic <= tau",
     "criterion == 1 ? statistic >= tau", r"^early_exit"),
    ("early exit argmax ties go to the higher class (lanes)", "early_exit.cl",
     "const ulong k = ((ulong)descending_key(v) << 32) | (ulong)c;",
     "const ulong k = ((ulong)descending_key(v) << 32) | (ulong)(~(uint)c);", r"^early_exit"),
    ("early exit runner-up kept wrong (lanes)", "early_exit.cl", "    *b2 = min(*b2, max(*b1, k));", "    *b2 = min(*b2, k);",
     r"^early_exit"),
    ("early exit histogram off by one", "early_exit.cl", "count_before[0] - total.x",
     "count_before[0] - total.x + 1", r"^early_exit"),
    ("early exit compaction counts the exiting samples as active", "early_exit.cl", "kept += r.y ? 0 : 1;",
     "kept += 1;", r"^early_exit"),
    ("early exit stays early below the threshold's bound (register)", "early_exit.cl",
     "(1.0f / tau - 1.0f) * 1.001f + 1e-6f", "(1.0f / tau - 1.0f) * 0.5f", r"^early_exit"),
    ("early exit lower bound counts the argmax (register)", "early_exit.cl",
     "const EIVEC none = lane == (EIVEC)(top - qp * EW) || m == (EVEC)(-INFINITY);",
     "const EIVEC none = m == (EVEC)(-INFINITY);", r"^early_exit"),
    ("early exit patience stays early one streak too long (register)", "early_exit.cl",
     "pat_streak + 1 : 1) < pat_need;", "pat_streak + 1 : 1) <= pat_need;", r"^early_exit"),
    ("early exit probabilities skip the last class (lanes)", "early_exit.cl",
     "for (int c = lid; c < classes; c += GROUP) Y_STORE(probs,", "for (int c = lid; c < classes - 1; c += GROUP) Y_STORE(probs,",
     r"^early_exit"),
    ("early exit probabilities drop the last vector (register)", "early_exit.cl",
     "for (int q = 0; q < vecs; ++q) {\n            const float16 z = X_LOAD16(row, q) - m;",
     "for (int q = 0; q < vecs - 1; ++q) {\n            const float16 z = X_LOAD16(row, q) - m;",
     r"^early_exit"),
    ("early exit argmax ties in a lane go to the higher class (register)", "early_exit.cl",
     "const int16 gt = (x) > m;", "const int16 gt = (x) >= m;", r"^early_exit"),
    ("early exit argmax ties across lanes go to the higher class (register)", "early_exit.cl",
     "const int16 idx_max = SY_CALL16_3(int, select, (int16)(INT_MAX), idx, at_max);\n    const int top = min16i(&idx_max);",
     "const int16 nidx = -idx;\n    const int16 idx_max = SY_CALL16_3(int, select, (int16)(INT_MAX), nidx, at_max);\n"
     "    const int top = -min16i(&idx_max);", r"^early_exit"),
    ("early exit runner-up in the argmax's lane dropped (register)", "early_exit.cl",
     "const float16 ms = SY_CALL16_3(float, select, m, m2, win);",
     "const float16 ms = SY_CALL16_3(float, select, m, (float16)(-INFINITY), win);",
     r"^early_exit"),
    ("early exit runner-up misses a lane's later values (register)", "early_exit.cl",
     "m2 = SY_CALL16_3(float, select, mx2, m, gt);", "m2 = SY_CALL16_3(float, select, m2, m, gt);", r"^early_exit"),
    ("early exit sum forgets the old max when the max moves (register)", "early_exit.cl",
     "const float16 se = s + e, s1e = s1 * e;", "const float16 se = s + e, s1e = s * e;", r"^early_exit"),
    ("early exit entropy sum not shifted when the max moves (register)", "early_exit.cl",
     "const float16 de = -d * e, et = e * (t - d * s1);", "const float16 de = -d * e, et = e * t;", r"^early_exit"),
    ("early exit lanes combined without the other lanes' max terms (register)", "early_exit.cl",
     "const float16 s1el = s1 * el;", "const float16 s1el = s * el;", r"^early_exit"),
    ("early exit fast path: argmax ties in a lane go to the higher class (register)", "early_exit.cl",
     "const EIVEC gt = x > m;  // a NaN never", "const EIVEC gt = x >= m;", r"^early_exit"),
    ("early exit fast path: argmax ties across lanes go to the higher class (register)", "early_exit.cl",
     "const int top = EX_HMINI(select((EIVEC)(INT_MAX), at * EW + lane, m == mxv));",
     "const int top = -EX_HMINI(select((EIVEC)(INT_MAX), -(at * EW + lane), m == mxv));", r"^early_exit"),
    ("early exit fast path: the argmax's own term summed (register)", "early_exit.cl",
     "EXIT_FAST_FOLD_MASKED(xp, lane != (EIVEC)(top - qp * EW) &&", "EXIT_FAST_FOLD_MASKED(xp, lane != (EIVEC)(-1) &&",
     r"^early_exit"),
    ("early exit fast path: the argmax is its own runner-up (register)", "early_exit.cl",
     "const EVEC xk = select((EVEC)(-INFINITY), (x), (keep));", "const EVEC xk = (x);", r"^early_exit"),
    ("early exit fast path: the vector after the argmax's skipped (register)", "early_exit.cl",
     "for (int q = qp + 1; q < vecs; ++q) {", "for (int q = qp + 2; q < vecs; ++q) {", r"^early_exit"),
    ("early exit fast path: the tail skipped after the argmax (register)", "early_exit.cl",
     "if (tail && qp < vecs) EXIT_FAST_FOLD_MASKED", "if (0) EXIT_FAST_FOLD_MASKED", r"^early_exit"),
    ("early exit fast path: exp without its last coefficient (register)", "early_exit.cl",
     "fma(e##_f, (EVEC)(1.32647273e-3f),", "fma(e##_f, (EVEC)(0.0f),", r"^early_exit"),
    ("early exit fast path: an infinity not sent to the exact path (register)", "early_exit.cl",
     "chk = SY_MAD(x, (EVEC)(0.0f), chk);", "chk = chk;", r"^early_exit"),
    ("early exit row tree drops the upper half (lanes)", "early_exit.cl", "            red2[lid] += red2[lid + s];",
     "            ;", r"^early_exit"),
]


# Mutants of one matmul kernel only run where the device runs that kernel: the names say which.
# The token-merge and Soft MoE "(register)" and "(lanes)" kernels run on CPU-class devices and
# where work-items are lanes, which run the register and work-group matmul kernels by default.
def kernel_of(name):
    if name.startswith("work-group matmul") or "(lanes)" in name:
        return "work-group"
    if name.startswith("matmul") or "(register" in name:
        return "register"
    return None


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build/release/switchyard")
    if not os.access(binary, os.X_OK):
        sys.exit(f"no {binary}: build it first (swift build -c release --product switchyard)")
    env0 = dict(os.environ, SWITCHYARD_NO_TUNING="1")
    header = subprocess.run([binary, "conformance", "--filter", "^$"], env=env0, capture_output=True, text=True).stdout
    kernel = "work-group" if "matmul: work-group kernel" in header else "register"
    print(header.strip().splitlines()[0] if header.strip() else "device: ?")
    print(f"the device runs the {kernel} matmul kernel")
    failed = 0
    skipped = 0
    host_flags = cpu_flags()
    with tempfile.TemporaryDirectory() as work:
        for name, file, text, replacement, filt, *extra in MUTANTS:
            if kernel_of(name) not in (None, kernel):
                skipped += 1
                continue
            # a mutant of one vector width's code: that width (CPU-class devices; the
            # register kernel), on a host CPU with the instructions that code is built for
            extra_env = dict(extra[0]) if extra else {}
            flag = extra_env.pop("cpu flag", None)
            if extra_env and (kernel != "register" or (flag and flag not in host_flags)):
                skipped += 1
                continue
            # k slices run only on a device with a loop limit (llvmpipe): elsewhere K is one launch
            if "(k slices)" in name and "llvmpipe" not in header:
                skipped += 1
                continue
            kernels = os.path.join(work, "k")
            shutil.rmtree(kernels, ignore_errors=True)
            shutil.copytree(os.path.join(ROOT, "Kernels"), kernels)
            path = os.path.join(kernels, file)
            src = open(path).read()
            if text not in src:
                print(f"STALE   {name}: its text is no longer in Kernels/{file}")
                failed += 1
                continue
            open(path, "w").write(src.replace(text, replacement))
            env = dict(os.environ, SWITCHYARD_KERNEL_DIR=kernels, SWITCHYARD_NO_TUNING="1", **extra_env)
            out = subprocess.run([binary, "conformance", "--filter", filt], env=env, capture_output=True, text=True)
            lines = out.stdout.strip().splitlines()
            summary = lines[-1] if lines else out.stderr.strip()[-200:]
            if out.returncode == 0:
                print(f"MISSED  {name} ({file}): conformance '{filt}' still says: {summary}")
                failed += 1
            else:
                print(f"caught  {name} ({file}): {summary}")
    tried = len(MUTANTS) - skipped
    print(f"{tried - failed} of {tried} mutations caught ({skipped} not tried: of the other matmul kernel, of k slices, "
          "or of a vector width this device or CPU does not run)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
