#!/usr/bin/env python3
"""Writes a tiny Hugging Face MoE model folder with the `safetensors` package (config.json,
one file or shards with model.safetensors.index.json), an input x.safetensors, and the block's
output computed independently in float64 numpy from the stored weights (y_ref.safetensors).

  hf_moe.py make DIR MODEL_TYPE f32|bf16 single|sharded [SEED]   -> prints the MoE layer index
  hf_moe.py make DIR gpt_oss mxfp4 single|sharded [SEED [HOSTILE]]
  hf_moe.py make DIR deepseek_v3 fp8 single|sharded [SEED]        -> a DeepSeek-V3 FP8 folder (see make_fp8)
  hf_moe.py compare Y.safetensors Y_REF.safetensors               -> prints the normalized error

gpt_oss: f32/bf16 write the dequantized layout (experts.gate_up_proj [E, hidden, 2*ffn],
experts.down_proj [E, ffn, hidden]); mxfp4 writes *_blocks/*_scales (e2m1 pairs, low nibble
first, e8m0 scales, quantized here) with bf16 router and biases. HOSTILE breaks one tensor:
scales-short, blocks-15, blocks-f32, bias-shape, router-bias-missing, scale-nan, untransposed (f32/bf16).
"""
import json
import os
import sys

import numpy as np
from safetensors import TensorSpec, serialize_file
from safetensors.numpy import load_file


def to_bf16_bits(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def save(tensors, path):
    """tensors: name -> (array, 'f32'|'bf16'|'u8'|'fp8'); stored as F32, BF16, U8 or F8_E4M3
    (uint8 e4m3fn codes)."""
    keep, specs = [], {}
    for name, (a, dt) in tensors.items():
        if dt in ("u8", "fp8"):
            data = np.ascontiguousarray(a, dtype=np.uint8)
        else:
            data = np.ascontiguousarray(a, dtype=np.float32) if dt == "f32" else to_bf16_bits(a)
        keep.append(data)
        specs[name] = TensorSpec(dtype={"f32": "float32", "bf16": "bfloat16", "u8": "uint8", "fp8": "float8_e4m3fn"}[dt], shape=list(a.shape),
                                 data_ptr=data.ctypes.data, data_len=data.nbytes)
    serialize_file(specs, path, metadata={"format": "pt"})


def stored(a, dt):
    return a.astype(np.float32) if dt == "f32" else from_bf16_bits(to_bf16_bits(a))


def e4m3_encode(v):
    """OCP FP8 e4m3fn codes of float values (round to nearest even, saturating at +-448: the
    values are scaled into range first). 4 significant bits; binades 2^-6...2^8 with exponent
    bias 7; below 2^-6 subnormals in steps of 2^-9; no infinities (S.1111.111 is NaN)."""
    v = np.asarray(v, dtype=np.float64)
    sign = np.signbit(v).astype(np.uint8) << 7
    a = np.minimum(np.abs(v), 448.0)
    _, ex = np.frexp(np.maximum(a, 2.0 ** -6))  # a = m * 2^ex, m in [0.5, 1): binade 2^(ex - 1)
    quantum = np.ldexp(1.0, ex - 4)  # 3 mantissa bits (2^-9 for subnormals)
    q = np.minimum(np.round(a / quantum) * quantum, 448.0)  # np.round: ties to even
    normal = q >= 2.0 ** -6
    _, qe = np.frexp(np.where(normal, q, 1.0))
    e = qe - 1
    mant = np.where(normal, q / np.ldexp(1.0, e) * 8 - 8, q / 2.0 ** -9)
    codes = np.where(normal, (e + 7) * 8 + mant, mant)
    return codes.astype(np.uint8) | sign


def e4m3_decode(c):
    c = np.asarray(c, dtype=np.uint8)
    e = ((c >> 3) & 15).astype(np.int64)
    m = (c & 7).astype(np.float64)
    mag = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8) * np.ldexp(1.0, e - 7))
    mag = np.where((e == 15) & (m == 7), np.nan, mag)
    return np.where(c & 0x80, -mag, mag)


def fp8_blocks(w, rng):
    """DeepSeek-V3's FP8 form of a weight [out, in]: e4m3fn codes and weight_scale_inv
    [ceil(out/128), ceil(in/128)] f32 with w ~ codes * scale_inv per 128 x 128 block (a block at
    the edge is partial); scale_inv = max|w| / 448 over the block. Each block is first multiplied
    by its own factor in [1/4, 4], so blocks differ in scale. Returns the codes, the scales and
    the dequantized weight (float64)."""
    out, inn = w.shape
    bo, bi = -(-out // 128), -(-inn // 128)
    w = w.astype(np.float64).copy()
    scales = np.zeros((bo, bi), dtype=np.float32)
    codes = np.zeros(w.shape, dtype=np.uint8)
    for r in range(bo):
        for c in range(bi):
            blk = np.s_[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128]
            w[blk] *= 2.0 ** rng.uniform(-2, 2)
            scales[r, c] = np.float32(np.abs(w[blk]).max() / 448.0)
            codes[blk] = e4m3_encode(w[blk] / np.float64(scales[r, c]))
    deq = e4m3_decode(codes) * np.repeat(np.repeat(scales.astype(np.float64), 128, 0), 128, 1)[:out, :inn]
    return codes, scales, deq


def make_fp8(folder, layout, seed):
    """A tiny DeepSeek-V3 FP8 folder: routed and shared experts' gate/up/down as F8_E4M3 with a
    weight_scale_inv per 128 x 128 block; the router gate.weight BF16 and the
    e_score_correction_bias F32 (not quantized, as in DeepSeek-V3); hidden 200 and expert width
    136, not multiples of 128, so edge blocks are partial. The reference output is the float64
    forward of the dequantized weights."""
    rng = np.random.default_rng(seed)
    H, F, T, E, K = 200, 136, 12, 16, 4
    layer = 1
    cfg = {"model_type": "deepseek_v3", "hidden_size": H, "num_hidden_layers": 3, "torch_dtype": "bfloat16",
           "moe_intermediate_size": F, "n_routed_experts": E, "num_experts_per_tok": K, "n_group": 4, "topk_group": 2,
           "routed_scaling_factor": 2.5, "norm_topk_prob": True, "n_shared_experts": 1, "first_k_dense_replace": 1,
           "scoring_func": "sigmoid", "topk_method": "noaux_tc",
           "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                   "weight_block_size": [128, 128]}}
    prefix = f"model.layers.{layer}.mlp."
    tensors = {}

    def fp8(name, shape, scale):
        codes, scales, deq = fp8_blocks(rng.standard_normal(shape) * scale, rng)
        tensors[name] = (codes, "fp8")
        tensors[name + "_scale_inv"] = (scales, "f32")
        return deq

    a = rng.standard_normal((E, H)).astype(np.float32) / np.sqrt(H)
    tensors[f"{prefix}gate.weight"] = (a, "bf16")
    router = stored(a, "bf16").astype(np.float64)
    experts = [tuple(fp8(f"{prefix}experts.{e}.{p}_proj.weight", shp, 1 / np.sqrt(shp[1]))
                     for p, shp in (("gate", (F, H)), ("up", (F, H)), ("down", (H, F)))) for e in range(E)]
    b = (rng.standard_normal(E) * 0.1).astype(np.float32)
    tensors[f"{prefix}gate.e_score_correction_bias"] = (b, "f32")
    bias = b.astype(np.float64)
    shared = tuple(fp8(f"{prefix}shared_experts.{p}_proj.weight", shp, 1 / np.sqrt(shp[1]))
                   for p, shp in (("gate", (F, H)), ("up", (F, H)), ("down", (H, F))))
    x = rng.standard_normal((T, H)).astype(np.float32)
    xs = stored(x, "bf16").astype(np.float64)
    y = np.zeros((T, H))
    G = cfg["n_group"]
    for t in range(T):
        s = 1 / (1 + np.exp(-(router @ xs[t])))
        choice = (s + bias).reshape(G, -1)
        gscore = np.sort(choice, axis=1)[:, ::-1][:, :2].sum(axis=1)
        masked = np.full((G, E // G), -np.inf)
        for gi in top(gscore, cfg["topk_group"]):
            masked[gi] = choice[gi]
        idx = top(masked.reshape(-1), K)
        w = s[idx] / (s[idx].sum() + 1e-20) * cfg["routed_scaling_factor"]
        for j, e in enumerate(idx):
            g, u, d = experts[e]
            y[t] += w[j] * (d @ (silu(g @ xs[t]) * (u @ xs[t])))
        sg, su, sd = shared
        y[t] += sd @ (silu(sg @ xs[t]) * (su @ xs[t]))
    write_folder(folder, cfg, tensors, layout)
    save({"x": (x, "bf16")}, os.path.join(folder, "x.safetensors"))
    save({"y": (y.astype(np.float32), "f32")}, os.path.join(folder, "y_ref.safetensors"))
    print(layer)


def silu(v):
    return v / (1 + np.exp(-v))


def top(values, k):
    # descending, ties to the lower index
    return np.argsort(-values, kind="stable")[:k]


FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def quantize_mxfp4(w):
    """w [..., rows, K] -> blocks [..., rows, K/32, 16] u8, scales [..., rows, K/32] u8 (OCP MX:
    shared exponent floor(log2(amax)) - 2, each value to the nearest e2m1, saturating)."""
    g = w.reshape(*w.shape[:-1], w.shape[-1] // 32, 32).astype(np.float64)
    amax = np.abs(g).max(axis=-1, keepdims=True)
    exp = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-300))) - 2, -127)
    exp = np.clip(exp, -127, 127)
    v = g / np.exp2(exp)
    codes = np.abs(v[..., None] - FP4[:8]).argmin(axis=-1) | np.where(v < 0, 8, 0)
    codes = codes.astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.astype(np.uint8), (exp[..., 0] + 127).astype(np.uint8)


def dequantize_mxfp4(blocks, scales):
    lo, hi = FP4[blocks & 15], FP4[blocks >> 4]
    v = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    v = v * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return v.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def make_gpt_oss(folder, dt, layout, seed, hostile):
    rng = np.random.default_rng(seed)
    H, F, T, E, K = 96, 32, 10, 8, 4
    alpha, limit = 1.702, 7.0
    layer = 1
    p = f"model.layers.{layer}.mlp."
    cfg = {"model_type": "gpt_oss", "hidden_size": H, "num_hidden_layers": 2, "intermediate_size": F,
           "num_local_experts": E, "num_experts_per_tok": K, "swiglu_limit": limit,
           "torch_dtype": "float32" if dt == "f32" else "bfloat16"}
    bdt = "f32" if dt == "f32" else "bf16"
    tensors = {}

    def add(name, shape, scale, dtype=bdt):
        a = rng.standard_normal(shape).astype(np.float32) * scale
        tensors[name] = (a, dtype)
        return stored(a, dtype).astype(np.float64)

    router = add(p + "router.weight", (E, H), 1 / np.sqrt(H))
    router_b = add(p + "router.bias", (E,), 0.5)
    # Weights [E, out, in] (out of gate|up interleaved: gate 2c, up 2c + 1) as the numpy forward uses them.
    if dt == "mxfp4":
        wgu = rng.standard_normal((E, 2 * F, H)) * (3 / np.sqrt(H))
        wd = rng.standard_normal((E, H, F)) * (1 / np.sqrt(F))
        gub, gus = quantize_mxfp4(wgu)
        db, ds = quantize_mxfp4(wd)
        tensors[p + "experts.gate_up_proj_blocks"] = (gub, "u8")
        tensors[p + "experts.gate_up_proj_scales"] = (gus, "u8")
        tensors[p + "experts.down_proj_blocks"] = (db, "u8")
        tensors[p + "experts.down_proj_scales"] = (ds, "u8")
        wgu, wd = dequantize_mxfp4(gub, gus), dequantize_mxfp4(db, ds)
    else:
        gu_in_out = add(p + "experts.gate_up_proj", (E, H, 2 * F), 3 / np.sqrt(H))
        d_in_out = add(p + "experts.down_proj", (E, F, H), 1 / np.sqrt(F))
        wgu, wd = gu_in_out.transpose(0, 2, 1), d_in_out.transpose(0, 2, 1)
    bgu = add(p + "experts.gate_up_proj_bias", (E, 2 * F), 1.0)
    bd = add(p + "experts.down_proj_bias", (E, H), 0.3)

    x = rng.standard_normal((T, H)).astype(np.float32)
    xdt = "bf16" if dt == "bf16" else "f32"
    xs = stored(x, xdt).astype(np.float64)
    y = np.zeros((T, H))
    clamped = 0
    for t in range(T):
        logits = router @ xs[t] + router_b
        idx = top(logits, K)
        w = np.exp(logits[idx] - logits[idx].max())
        w /= w.sum()
        for j, e in enumerate(idx):
            gu = wgu[e] @ xs[t] + bgu[e]
            gate, up = gu[0::2], gu[1::2]
            clamped += int((gate > limit).sum() + (np.abs(up) > limit).sum())
            gate = np.minimum(gate, limit)
            up = np.clip(up, -limit, limit)
            h = (up + 1) * gate / (1 + np.exp(-alpha * gate))
            y[t] += w[j] * (wd[e] @ h + bd[e])
    assert clamped > 0, "no pre-activation reached the clamp: the test would not check it"

    if hostile == "scales-short":
        a, d = tensors[p + "experts.gate_up_proj_scales"]
        tensors[p + "experts.gate_up_proj_scales"] = (a[..., :-1], d)
    elif hostile == "blocks-15":
        a, d = tensors[p + "experts.down_proj_blocks"]
        tensors[p + "experts.down_proj_blocks"] = (a[..., :15], d)
    elif hostile == "blocks-f32":
        a, d = tensors[p + "experts.gate_up_proj_blocks"]
        tensors[p + "experts.gate_up_proj_blocks"] = (a.astype(np.float32), "f32")
    elif hostile == "bias-shape":
        a, d = tensors[p + "experts.gate_up_proj_bias"]
        tensors[p + "experts.gate_up_proj_bias"] = (a[:, :F], d)
    elif hostile == "scale-nan":  # one e8m0 scale 0xFF (NaN): expert 5, row 7, block 2 of gate|up
        a, d = tensors[p + "experts.gate_up_proj_scales"]
        a = a.copy()
        a[5, 7, 2] = 255
        tensors[p + "experts.gate_up_proj_scales"] = (a, d)
    elif hostile == "router-bias-missing":
        del tensors[p + "router.bias"]
    elif hostile == "untransposed":
        a, d = tensors[p + "experts.gate_up_proj"]
        tensors[p + "experts.gate_up_proj"] = (a.transpose(0, 2, 1), d)
    elif hostile:
        raise SystemExit(f"unknown hostile variant {hostile}")
    write_folder(folder, cfg, tensors, layout)
    save({"x": (x, xdt)}, os.path.join(folder, "x.safetensors"))
    save({"y": (y.astype(np.float32), "f32")}, os.path.join(folder, "y_ref.safetensors"))
    print(layer)


def write_folder(folder, cfg, tensors, layout):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    if layout == "single":
        save(tensors, os.path.join(folder, "model.safetensors"))
    else:
        keys = sorted(tensors)
        shards = [keys[0::2], keys[1::2]]
        weight_map = {}
        for i, part in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-00002.safetensors"
            save({k: tensors[k] for k in part}, os.path.join(folder, fname))
            weight_map.update({k: fname for k in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)


def make(folder, model_type, dt, layout, seed, hostile=None):
    if model_type == "gpt_oss":
        return make_gpt_oss(folder, dt, layout, seed, hostile)
    if dt == "fp8":
        if model_type != "deepseek_v3":
            raise SystemExit("fp8 folders are deepseek_v3")
        return make_fp8(folder, layout, seed)
    rng = np.random.default_rng(seed)
    H, F, T = 32, 16, 10
    cfg = {"model_type": model_type, "hidden_size": H, "num_hidden_layers": 3, "torch_dtype": "bfloat16" if dt == "bf16" else "float32"}
    layer = 1
    if model_type == "mixtral":
        E, K = 8, 2
        cfg.update(intermediate_size=F, num_local_experts=E, num_experts_per_tok=K)
        prefix = f"model.layers.{layer}.block_sparse_moe."
        names = lambda e: (f"{prefix}experts.{e}.w1.weight", f"{prefix}experts.{e}.w3.weight", f"{prefix}experts.{e}.w2.weight")
    elif model_type in ("qwen2_moe", "qwen3_moe", "olmoe"):
        E, K = 8, 3
        size_key = "intermediate_size" if model_type == "olmoe" else "moe_intermediate_size"
        cfg.update({size_key: F, "num_experts": E, "num_experts_per_tok": K, "norm_topk_prob": model_type == "qwen3_moe"})
        if model_type == "qwen2_moe":
            cfg.update(shared_expert_intermediate_size=24, mlp_only_layers=[0], decoder_sparse_step=1)
        if model_type == "qwen3_moe":
            cfg.update(mlp_only_layers=[0, 2])
        prefix = f"model.layers.{layer}.mlp."
        names = lambda e: tuple(f"{prefix}experts.{e}.{p}_proj.weight" for p in ("gate", "up", "down"))
    elif model_type == "deepseek_v3":
        E, K = 16, 4
        cfg.update(moe_intermediate_size=F, n_routed_experts=E, num_experts_per_tok=K, n_group=4, topk_group=2,
                   routed_scaling_factor=2.5, norm_topk_prob=True, n_shared_experts=1, first_k_dense_replace=1,
                   scoring_func="sigmoid", topk_method="noaux_tc")
        prefix = f"model.layers.{layer}.mlp."
        names = lambda e: tuple(f"{prefix}experts.{e}.{p}_proj.weight" for p in ("gate", "up", "down"))
    else:
        raise SystemExit(f"unknown model type {model_type}")

    tensors = {}
    def add(name, shape, scale, dtype=dt):
        a = rng.standard_normal(shape).astype(np.float32) * scale
        tensors[name] = (a, dtype)
        return stored(a, dtype).astype(np.float64)

    router = add(f"{prefix}gate.weight", (E, H), 1 / np.sqrt(H))
    experts = []
    for e in range(E):
        g, u, d = names(e)
        experts.append((add(g, (F, H), 1 / np.sqrt(H)), add(u, (F, H), 1 / np.sqrt(H)), add(d, (H, F), 1 / np.sqrt(F))))
    shared = None
    if model_type == "qwen2_moe":
        S = 24
        shared = (add(f"{prefix}shared_expert.gate_proj.weight", (S, H), 1 / np.sqrt(H)),
                  add(f"{prefix}shared_expert.up_proj.weight", (S, H), 1 / np.sqrt(H)),
                  add(f"{prefix}shared_expert.down_proj.weight", (H, S), 1 / np.sqrt(S)),
                  add(f"{prefix}shared_expert_gate.weight", (1, H), 1 / np.sqrt(H)))
    if model_type == "deepseek_v3":
        bias = add(f"{prefix}gate.e_score_correction_bias", (E,), 0.1, dtype="f32")
        shared = (add(f"{prefix}shared_experts.gate_proj.weight", (F, H), 1 / np.sqrt(H)),
                  add(f"{prefix}shared_experts.up_proj.weight", (F, H), 1 / np.sqrt(H)),
                  add(f"{prefix}shared_experts.down_proj.weight", (H, F), 1 / np.sqrt(F)), None)

    x = rng.standard_normal((T, H)).astype(np.float32)
    xs = stored(x, dt).astype(np.float64)

    y = np.zeros((T, H))
    for t in range(T):
        logits = router @ xs[t]
        if model_type == "deepseek_v3":
            s = 1 / (1 + np.exp(-logits))
            choice = s + bias
            G = cfg["n_group"]
            groups = choice.reshape(G, -1)
            gscore = np.sort(groups, axis=1)[:, ::-1][:, :2].sum(axis=1)
            keep = top(gscore, cfg["topk_group"])
            masked = np.full(E, -np.inf)
            for gi in keep:
                masked[gi * (E // G):(gi + 1) * (E // G)] = choice[gi * (E // G):(gi + 1) * (E // G)]
            idx = top(masked, K)
            w = s[idx]
            w = w / (w.sum() + 1e-20) * cfg["routed_scaling_factor"]
        else:
            p = np.exp(logits - logits.max())
            p /= p.sum()
            idx = top(p, K)
            w = p[idx]
            if model_type == "mixtral" or cfg.get("norm_topk_prob"):
                w = w / w.sum()
        for j, e in enumerate(idx):
            g, u, d = experts[e]
            y[t] += w[j] * (d @ (silu(g @ xs[t]) * (u @ xs[t])))
        if shared is not None:
            sg, su, sd, gate = shared
            out = sd @ (silu(sg @ xs[t]) * (su @ xs[t]))
            if gate is not None:
                out = out / (1 + np.exp(-(gate @ xs[t])[0]))
            y[t] += out

    write_folder(folder, cfg, tensors, layout)
    save({"x": (x, dt)}, os.path.join(folder, "x.safetensors"))
    save({"y": (y.astype(np.float32), "f32")}, os.path.join(folder, "y_ref.safetensors"))
    print(layer)


def compare(a, b):
    ya = load_file(a)["y"].astype(np.float64)
    yb = load_file(b)["y"].astype(np.float64)
    assert ya.shape == yb.shape, (ya.shape, yb.shape)
    print(f"{((ya - yb) ** 2).sum() / (yb ** 2).sum():.3e}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]) if len(sys.argv) > 6 else 7,
             sys.argv[7] if len(sys.argv) > 7 else None)
    else:
        compare(sys.argv[2], sys.argv[3])
