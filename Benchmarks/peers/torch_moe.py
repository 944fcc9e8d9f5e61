#!/usr/bin/env python3
"""PyTorch eager MoE layer: the peer switchyard-bench sets beside Switchyard's MoELayer.

The same block as `MoELayer` with a Mixtral-style router: router linear -> softmax (f32) ->
top-k -> renormalize -> per-expert SwiGLU FFN over the rows routed to it -> weighted sum.
Weights in the checkpoint layouts Switchyard uses (gate|up [E, 2*ffn, hidden] with the gate rows
first, down [E, hidden, ffn], router [E, hidden]), seeded random values, f32.

    python3 torch_moe.py TOKENS HIDDEN FFN EXPERTS K [--threads N] [--copies C] [--runs R]
                         [--warmup W] [--seconds S] [--device cpu|cuda] [--dtype f32|f16|bf16]

`--copies C` rotates over C copies of the layer's weights (decode: so the last-level cache does
not hold them, as the benchmark does for Switchyard). Prints one JSON object on stdout:
median_ms, samples_ms, runs, threads, torch version, device, dtype.

`--device cuda` runs the layer on the GPU (weights made on the host with the same generator, then
moved), in `--dtype` (bf16 for the bf16 rows); each sample is one forward on the wall clock from
a synchronized start to `torch.cuda.synchronize()`, launches and the per-expert counts' copy to the
host included, as an eager engine pays them. Only switchyard-bench runs this, and only
when `python3 -c 'import torch'` works; it is never a test dependency.
"""

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokens", type=int)
    p.add_argument("hidden", type=int)
    p.add_argument("ffn", type=int)
    p.add_argument("experts", type=int)
    p.add_argument("k", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--runs", type=int, default=10, help="timed runs, at least")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="keep timing until this much time (max 10 x runs)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    a = p.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1234)
    t, h, f, e, k = a.tokens, a.hidden, a.ffn, a.experts, a.k

    device = torch.device(a.device)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    def layer():
        # nn.Linear's default scale, so activations stay O(1) through the FFN.
        return {
            "router": (torch.randn(e, h, generator=g) / h**0.5).to(device, dtype),
            "gate_up": (torch.randn(e, 2 * f, h, generator=g) / h**0.5).to(device, dtype),
            "down": (torch.randn(e, h, f, generator=g) / f**0.5).to(device, dtype),
        }

    layers = [layer() for _ in range(max(1, a.copies))]
    x = torch.randn(t, h, generator=g).to(device, dtype)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def forward(w, x):
        logits = F.linear(x, w["router"])                               # [T, E]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, k, dim=-1)                     # [T, k]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)                        # assignments in expert order
        counts = torch.bincount(flat, minlength=e).tolist()
        token = order // k
        xs = x.index_select(0, token)
        outs = []
        start = 0
        for j, c in enumerate(counts):
            if c == 0:
                continue
            gu = F.linear(xs[start:start + c], w["gate_up"][j])         # [c, 2f]
            gate, up = gu.split(f, dim=-1)
            outs.append(F.linear(F.silu(gate) * up, w["down"][j]))      # [c, h]
            start += c
        ys = torch.cat(outs) * weights.reshape(-1).index_select(0, order).unsqueeze(1).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, ys)

    samples = []
    with torch.inference_mode():
        for i in range(a.warmup):
            forward(layers[i % len(layers)], x)
        sync()
        began = time.perf_counter()
        i = 0
        while True:
            start = time.perf_counter()
            forward(layers[i % len(layers)], x)
            sync()
            samples.append(time.perf_counter() - start)
            i += 1
            if len(samples) >= a.runs and (time.perf_counter() - began >= a.seconds or len(samples) >= 10 * a.runs):
                break
    json.dump({
        "median_ms": statistics.median(samples) * 1e3,
        "samples_ms": [s * 1e3 for s in samples],
        "runs": len(samples),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "dtype": a.dtype,
    }, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
