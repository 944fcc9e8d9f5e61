#!/usr/bin/env python3
"""Writes a Mixtral-style model folder of any size with the `safetensors` package: config.json
and one model.safetensors holding layer 0's router and E experts' w1/w3/w2, for checking how
much host memory loading a layer takes. The content is cheap but real: one random block (values
N(0, 0.02) in the stored type) tiled over a buffer as large as the largest tensor, each tensor
starting at its own offset into it, so every tensor's bytes differ and the generator holds about
one tensor of memory however large the file is.

  big_moe.py DIR EXPERTS HIDDEN FFN f32|bf16 [SEED]
      e.g. big_moe.py /tmp/mixtral-layer 8 4096 14336 bf16   (Mixtral-8x7B's layer: ~2.8 GB)
Prints the file's size in bytes and the largest tensor's.
"""
import json
import os
import sys

import numpy as np
from safetensors import TensorSpec, serialize_file


def to_bf16_bits(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def make(folder, experts, hidden, ffn, dt, seed):
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(1 << 20) * 0.02).astype(np.float32)
    block = to_bf16_bits(block) if dt == "bf16" else block
    prefix = "model.layers.0.block_sparse_moe."
    shapes = {f"{prefix}gate.weight": (experts, hidden)}
    for e in range(experts):
        shapes[f"{prefix}experts.{e}.w1.weight"] = (ffn, hidden)
        shapes[f"{prefix}experts.{e}.w3.weight"] = (ffn, hidden)
        shapes[f"{prefix}experts.{e}.w2.weight"] = (hidden, ffn)
    largest = max(a * b for a, b in shapes.values())
    stride = 257  # elements between the starts of consecutive tensors
    base = np.resize(block, largest + stride * len(shapes))
    specs = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        count = shape[0] * shape[1]
        specs[name] = TensorSpec(dtype="bfloat16" if dt == "bf16" else "float32", shape=list(shape),
                                 data_ptr=base.ctypes.data + i * stride * base.itemsize,
                                 data_len=count * base.itemsize)
    os.makedirs(folder, exist_ok=True)
    cfg = {"model_type": "mixtral", "hidden_size": hidden, "intermediate_size": ffn, "num_local_experts": experts,
           "num_experts_per_tok": 2, "num_hidden_layers": 1, "torch_dtype": "bfloat16" if dt == "bf16" else "float32"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    path = os.path.join(folder, "model.safetensors")
    serialize_file(specs, path, metadata={"format": "pt"})
    print(os.path.getsize(path), largest * base.itemsize)


if __name__ == "__main__":
    a = sys.argv
    make(a[1], int(a[2]), int(a[3]), int(a[4]), a[5], int(a[6]) if len(a) > 6 else 7)
