#!/usr/bin/env python3
"""Writes a tiny Hugging Face MoE model folder with the `safetensors` package (config.json,
one file or shards with model.safetensors.index.json), an input x.safetensors, and the block's
output computed independently in float64 numpy from the stored weights (y_ref.safetensors).

  hf_moe.py make DIR MODEL_TYPE f32|bf16 single|sharded [SEED]   -> prints the MoE layer index
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
    """tensors: name -> (float32 array, 'f32'|'bf16'); stored as F32 or BF16."""
    keep, specs = [], {}
    for name, (a, dt) in tensors.items():
        data = np.ascontiguousarray(a, dtype=np.float32) if dt == "f32" else to_bf16_bits(a)
        keep.append(data)
        specs[name] = TensorSpec(dtype="float32" if dt == "f32" else "bfloat16", shape=list(a.shape),
                                 data_ptr=data.ctypes.data, data_len=data.nbytes)
    serialize_file(specs, path, metadata={"format": "pt"})


def stored(a, dt):
    return a.astype(np.float32) if dt == "f32" else from_bf16_bits(to_bf16_bits(a))


def silu(v):
    return v / (1 + np.exp(-v))


def top(values, k):
    # descending, ties to the lower index
    return np.argsort(-values, kind="stable")[:k]


def make(folder, model_type, dt, layout, seed):
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
    print(layer)


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
