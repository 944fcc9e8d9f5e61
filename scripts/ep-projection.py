#!/usr/bin/env python3
"""Projects the expert-parallel MoE layer time at DeepSeek-V3 sizes for 8-64 ranks from measured
per-rank rates (docs/expert-parallelism.md states the model and where the rates come from).

  scripts/ep-projection.py [--compute GFLOPS] [--exchange GBPS] [--staging GBPS] [--latency US]
                           [--tokens-per-rank T ...]

Model, per rank, each rank holding E/P experts and T tokens, routing balanced (rows = T*k):
  compute  = T * (2*h*E + k*6*h*f + 6*h*f_shared) / R_compute      (router, routed, shared experts)
  staging  = 4 * rows * (P-1)/P * rowBytes / R_staging              (rows for other ranks device->host,
                                                                     host->device; results the same way
                                                                     back; a rank's own rows stay on the
                                                                     device)
  exchange = 7 * (P-1) * latency                                    (7 collectives, P-1 peers each)
           + 2 * rows * (P-1)/P * (2*rowBytes + 12) / R_exchange    (rows+metadata out, results back;
                                                                     R counts bytes sent + received)
  layer    = compute + staging + exchange                           (no overlap in this implementation)
Bytes per token sent to other ranks: k*(P-1)/P*(2*rowBytes + 12); the least possible: the expected
number of other ranks holding one of the token's k experts (uniform routing) times 2*rowBytes.
"""
import argparse
from math import comb

H, F, E, K, F_SHARED, ROW_BYTES = 7168, 2048, 256, 8, 2048, 7168 * 2  # DeepSeek-V3, bf16 activations


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compute", type=float, default=168.7, help="GFLOP/s per rank")
    ap.add_argument("--exchange", type=float, default=1.17, help="GB/s per rank, bytes sent + received")
    ap.add_argument("--staging", type=float, default=4.2, help="GB/s device<->host per rank")
    ap.add_argument("--latency", type=float, default=8.0, help="microseconds per collective and peer")
    ap.add_argument("--tokens-per-rank", type=int, nargs="+", default=[4096, 128])
    a = ap.parse_args()
    print(f"rates: compute {a.compute} GFLOP/s, exchange {a.exchange} GB/s, staging {a.staging} GB/s, "
          f"latency {a.latency} us per collective and peer")
    for t in a.tokens_per_rank:
        rows = t * K
        flops = t * (2 * H * E + K * 6 * H * F + 6 * H * F_SHARED)
        compute = flops / (a.compute * 1e9)
        print(f"\n{t} tokens per rank ({rows} rows, {flops / 1e12:.3f} TFLOP per rank)")
        print("   P  experts/rank  compute s  staging s  exchange s   layer s  exchange share  bytes/token  least")
        for p in (8, 16, 32, 64):
            remote = (p - 1) / p
            staging = 4 * rows * remote * ROW_BYTES / (a.staging * 1e9)
            exchange = 7 * (p - 1) * a.latency * 1e-6 + 2 * rows * remote * (2 * ROW_BYTES + 12) / (a.exchange * 1e9)
            layer = compute + staging + exchange
            per_token = K * remote * (2 * ROW_BYTES + 12)
            block = E // p
            distinct = p * (1 - comb(E - block, K) / comb(E, K))  # expected ranks hit by k distinct experts
            least = distinct * remote * 2 * ROW_BYTES
            print(f"{p:4d}  {block:12d}  {compute:9.3f}  {staging:9.3f}  {exchange:10.3f}  {layer:8.3f}  "
                  f"{exchange / layer:13.1%}  {per_token:11.0f}  {least:5.0f}")
    ratio = (6 * H * F) / (2 * (2 * ROW_BYTES + 12))
    print(f"\nexchange = compute per routed row when R_compute / R_exchange = {ratio:.0f} FLOP per byte "
          f"(measured here: {a.compute / a.exchange:.0f})")


if __name__ == "__main__":
    main()
