#!/usr/bin/env python3
"""Writes a tiny Hugging Face MoE model folder with the `safetensors` package (config.json,
one file or shards with model.safetensors.index.json), an input x.safetensors, and the block's
output computed independently in float64 numpy from the stored weights (y_ref.safetensors).

  hf_moe.py make DIR MODEL_TYPE f32|bf16 single|sharded [SEED]   -> prints the MoE layer index
  hf_moe.py make DIR deepseek_v3 fp8 single|sharded [SEED]        -> a DeepSeek-V3 FP8 folder (see make_fp8)
  hf_moe.py compare Y.safetensors Y_REF.safetensors               -> prints the normalized error
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
    """tensors: name -> (float32 array, 'f32'|'bf16'), stored as F32 or BF16, or (uint8 e4m3fn
    codes, 'fp8'), stored as F8_E4M3."""
    keep, specs = [], {}
    for name, (a, dt) in tensors.items():
        if dt == "fp8":
            data, st = np.ascontiguousarray(a, dtype=np.uint8), "float8_e4m3fn"
        else:
            data = np.ascontiguousarray(a, dtype=np.float32) if dt == "f32" else to_bf16_bits(a)
            st = "float32" if dt == "f32" else "bfloat16"
        keep.append(data)
        specs[name] = TensorSpec(dtype=st, shape=list(a.shape), data_ptr=data.ctypes.data, data_len=data.nbytes)
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
    write_folder(folder, cfg, tensors, layout, x, "bf16", y)
    print(layer)


def silu(v):
    return v / (1 + np.exp(-v))


def top(values, k):
    # descending, ties to the lower index
    return np.argsort(-values, kind="stable")[:k]


def make(folder, model_type, dt, layout, seed):
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

    write_folder(folder, cfg, tensors, layout, x, dt, y)
    print(layer)


def write_folder(folder, cfg, tensors, layout, x, dt, y):
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
    save({"x": (x, dt)}, os.path.join(folder, "x.safetensors"))
    save({"y": (y.astype(np.float32), "f32")}, os.path.join(folder, "y_ref.safetensors"))


def compare(a, b):
    ya = load_file(a)["y"].astype(np.float64)
    yb = load_file(b)["y"].astype(np.float64)
    assert ya.shape == yb.shape, (ya.shape, yb.shape)
    print(f"{((ya - yb) ** 2).sum() / (yb ** 2).sum():.3e}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]) if len(sys.argv) > 6 else 7)
    else:
        compare(sys.argv[2], sys.argv[3])
