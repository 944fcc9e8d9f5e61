#!/usr/bin/env python3
"""Compiles every kernel in Kernels/ with clang for the x86 CPUs PoCL targets and fails on any
warning (PoCL prints a kernel's warnings on the user's terminal as "N warnings generated").

The usual culprit is clang's -Wpsabi: a vector wider than the target's registers (float16 on
AVX2, float8 on SSE) passed to or returned from a function that is not inlined, OpenCL's
built-in functions included. The kernels keep such vectors out of calls: they use vectors of
the device's width (a -D from the host) or operators.

Targets: skylake-avx512 (the host picks 16-float vectors), haswell (8) and x86-64 (SSE, 4); each
is compiled with the -D sets the host passes for a device of that width and for every narrower
one (a 4-wide, NEON-like geometry on all three), plus the lane-style sets (width 1, rusticl).
The -D sets follow Sources/Switchyard/**/*+OpenCL.swift, Matmul.swift and OpenCLRouting.swift
(Tuning.defaults, registerTile, DType.defines): keep them in step when the host changes.

Usage: scripts/check-kernel-warnings.py [--clang clang-15] [--jobs N] [--verbose] [--counts]
Exit status 0 when every compile is warning- and error-free.
"""
import argparse
import concurrent.futures
import itertools
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "Kernels")

# -march and the float vector width the host derives on such a device (CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT).
TARGETS = [("skylake-avx512", 16), ("haswell", 8), ("x86-64", 4)]
FLOATS = ["f32", "f16", "bf16"]


def dt(prefix, t):
    """DType.defines(prefix)."""
    typ, access, code = {
        "f32": ("float", "F32", 0), "f16": ("half", "F16", 1), "bf16": ("ushort", "BF16", 2),
        "i32": ("int", "I32", 3), "u8": ("uchar", "I32", 4),
    }[t]
    return {f"{prefix}_T": typ, f"{prefix}_LOAD": f"LOAD_{access}", f"{prefix}_STORE": f"STORE_{access}",
            f"{prefix}_DT": str(code)}


def merge(*ds):
    out = {}
    for d in ds:
        out.update(d)
    return out


def raw_copy(output, sources):
    """rawCopyDefines(output:sources:)."""
    d = {name: "1" for name, t in sources.items() if t == output}
    if d:
        size = 4 if output in ("f32", "i32") else 2
        d["RAW_T"] = "uint" if size == 4 else "ushort"
        d["RAW_SIZE"] = str(size)
    return d


def register_tile(width):
    """Tuning.registerTile(vectorWidth:registers:) with cpuRegisters."""
    registers = 32 if width >= 16 else 16
    best = (1, 1)
    for vectors in (1, 2, 4):
        rows = min(8, (registers - 2 - vectors) // vectors)
        if rows >= 1 and rows * vectors > best[0] * best[1]:
            best = (rows, vectors)
    return best


def geometry(width):
    """The host's per-device choices for a CPU of `width` floats (width 1: lane-style devices)."""
    if width == 1:
        return dict(lanes=True, rows=32, vw=1, vectors=1, panel=64, group=256, copy=256, tile_width=1,
                    token_group=256)
    rows, vectors = register_tile(width)
    return dict(lanes=False, rows=rows, vw=width, vectors=vectors, panel=vectors * width, group=16, copy=1,
                tile_width=width, token_group=16)


def variants(name, width):
    """The -D sets for Kernels/<name> on a device of `width` (1: lanes)."""
    g = geometry(width)
    lanes = g["lanes"]
    token_chunk = {"GROUP": str(g["token_group"]), "PER": str(max(1, 4096 // g["token_group"]))}
    out = []
    if name == "compact.cl":
        out.append(merge(token_chunk, {"MASK_I32": "1"}))
        out += [merge(token_chunk, dt("X", t)) for t in FLOATS]
    elif name == "early_exit.cl":
        ew = {} if lanes else {"EW": str(width)}
        for x in FLOATS:
            base = merge(dt("X", x), {"GROUP": "16" if not lanes else "64"}, ew)
            out.append(base)
            out += [merge(base, dt("Y", y), {"KEEP_PROBS": "1"}) for y in FLOATS]
        out += [dt("Y", y) for y in FLOATS]  # early_exit_zero
        out.append(token_chunk)  # early_exit_tokens, early_exit_scan
    elif name in ("gather_tokens.cl", "expand_tokens.cl", "scatter_tokens.cl"):
        for x, y in itertools.product(FLOATS, FLOATS):
            d = merge(dt("X", x), dt("Y", y), {"GROUP": str(g["copy"] if not lanes else 64)})
            if name == "gather_tokens.cl":
                d.update(raw_copy(y, {"RAW_X": x}))
            else:
                d.update(dt("A", x))
                d.update(dt("W", "f32"))
                d.update(raw_copy(y, {"RAW_X": x, "RAW_A": x}))
            out.append(d)
    elif name == "halting.cl":
        grid = {"GROUP": str(g["copy"]), "ROWS": str(16)}
        for x in FLOATS:
            out.append(merge(grid, dt("Y", x)))
            for logit in ({}, {"LOGIT": "1"}):
                out.append(merge(grid, dt("X", x), dt("Y", "f32"), dt("P", x), logit))
    elif name == "matmul.cl":
        rows, vw, panel = g["rows"], g["vw"], g["panel"]
        # the decode launches' panel groups (Matmul.swift, panelGroupSize)
        vectors = max(1, panel // max(1, vw))
        group = {"PANEL_GROUP": str(min(4, max(1, 8 // vectors))), "JOINT_ACC": "16" if vw >= 16 else "8"}
        for a, y, w in [("f32", "f32", "f32"), ("f16", "f16", "f16"), ("bf16", "bf16", "bf16"), ("f32", "f16", "bf16")]:
            base = merge(dt("A", a), dt("Y", y), {"W_DT": dt("W", w)["W_DT"], "EPILOGUE": "0"})
            for extra in ({}, {"HAS_BIAS": "1", "EPILOGUE": "1"}, {"EPILOGUE": "2", "GLU_ACT": "1"}):
                d = merge(base, extra)
                # narrow (router) kernel
                out.append(merge(d, {"ROWS": str(max(1, width)), "VW": str(vw), "NW_MAX": "8" if not lanes else "4"}))
                if lanes:
                    out.append(merge(d, {"PANEL": "64", "TRM": "4", "TBK": "16", "ROWS": str(rows)}))
                else:
                    out.append(merge(d, {"PANEL": str(panel), "VW": str(vw), "ROWS": str(rows)}))
                    out.append(merge(d, group, {"PANEL": str(panel), "VW": str(vw), "ROWS": str(rows)}))
                out.append(merge(d, {"ROWS": str(min(4, rows) if lanes else rows)}))  # plain
        for q in ("1", "2", "3", "4", "5"):
            for zp in ({}, {"ZP": "1"}) if q == "2" else ({},):
                d = merge(dt("A", "f32"), dt("Y", "f32"), {"W_DT": "4", "EPILOGUE": "0", "QFMT": q}, zp)
                if lanes:
                    out.append(merge(d, {"PANEL": "64", "TRM": "4", "TBK": "16", "ROWS": str(rows)}))
                else:
                    out.append(merge(d, {"PANEL": str(panel), "VW": str(vw), "ROWS": str(max(1, rows - 2))}))
                    out.append(merge(d, group, {"PANEL": str(panel), "VW": str(vw), "ROWS": str(rows)}))
        out += [{"W_DT": str(c), "PANEL": str(panel)} for c in (0, 1, 2)]  # pack_weights
    elif name == "quantized_weights.cl":
        out += [{"W_DT": str(c)} for c in (0, 1, 2)]
        for src, dst in itertools.product("01", "01"):
            out.append({"PANEL": str(g["panel"]), "SRC_NIBBLES": src, "DST_NIBBLES": dst})
        out += [{"PANEL": str(g["panel"]), "SCALE_T": t} for t in ("uchar", "ushort", "uint")]
    elif name == "routing.cl":
        for x in FLOATS:
            out.append(dt("X", x))
            out.append(merge(dt("X", x), dt("Y", x), {"GROUP": "16"}))
            out.append(merge(dt("X", x), dt("Y", x), {"GROUP": "16", "RAW_COPY": "uint" if x == "f32" else "ushort"}))
        out.append({"GROUP": str(g["group"])})
    elif name == "soft_moe.cl":
        for x in FLOATS:
            base = merge(dt("X", x), dt("Y", x))
            out.append(base)
            if not lanes:
                out.append(merge(base, {"RA": str(g["rows"]), "VW": str(g["tile_width"]), "NV": str(g["vectors"])}))
        out.append({"VW": str(width), "ROWS_PER_ITEM": "4"})
    elif name == "softmax.cl":
        out += [merge(dt("X", x), dt("Y", x), {"GROUP": str(g["group"])}) for x in FLOATS]
    elif name == "token_merge.cl":
        rows, tw, nv = g["rows"], g["tile_width"], g["vectors"]
        for k in FLOATS:
            out.append(merge(dt("K", k), {"GROUP": str(g["copy"]), "VW": str(tw)}))
            out.append(merge(dt("X", k), dt("Y", k), {"GROUP": str(g["copy"])}))
        if lanes:
            out.append({"GROUP": "64"})
        else:
            out.append({"RA": str(rows), "VW": str(tw), "NV": str(nv), "TS": "8"})
        out.append({"GROUP": str(g["group"])})
        out += [{"RAW_T": t} for t in ("uint", "ushort")]
    elif name in ("token_topk.cl", "token_index.cl"):
        out += [merge(dt("X", x), token_chunk) for x in FLOATS]
    elif name == "topk.cl":
        for x in FLOATS:
            out.append(merge(dt("X", x), {"GROUP": str(g["group"])}))
            out.append(merge(dt("X", x), {"GROUP": str(g["group"]), "SCRATCH_GLOBAL": "1"}))
    else:
        out.append({})
    return out


def compile_one(clang, path, march, defines):
    cmd = [clang, "-x", "cl", "-cl-std=CL1.2", "-Xclang", "-finclude-default-header",
           "-target", "x86_64-unknown-linux-gnu", f"-march={march}", "-c", "-o", "/dev/null", "-I", KERNELS]
    cmd += [f"-D{k}={v}" for k, v in sorted(defines.items())]
    cmd.append(path)
    p = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, p.returncode, p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clang", default=os.environ.get("CLANG") or shutil.which("clang-15") or "clang")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--verbose", action="store_true", help="print every warning, not only the first per compile")
    ap.add_argument("--counts", action="store_true", help="print the warning count per file and target")
    ap.add_argument("files", nargs="*", help="kernel file names (default: every Kernels/*.cl)")
    args = ap.parse_args()
    if not shutil.which(args.clang):
        print(f"check-kernel-warnings: {args.clang} not found (apt-get install clang-15)", file=sys.stderr)
        return 2
    files = args.files or sorted(f for f in os.listdir(KERNELS) if f.endswith(".cl"))
    jobs = []
    for name in files:
        for march, native in TARGETS:
            for width in [w for w in (16, 8, 4) if w <= native] + [1]:
                for d in variants(name, width):
                    jobs.append((name, march, width, d))
                    if width == 1:  # a lanes device without a hardware FMA (llvmpipe): SY_MAD as multiply, add
                        jobs.append((name, march, width, merge(d, {"SY_SOFT_FMA": "1"})))
    counts = {}
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(compile_one, args.clang, os.path.join(KERNELS, j[0]), j[1], j[3]) for j in jobs]
        for (name, march, width, d), fut in zip(jobs, futures):
            cmd, rc, err = fut.result()
            warnings = [l for l in err.splitlines() if re.search(r"\b(warning|error):", l)]
            key = (name, march)
            counts[key] = counts.get(key, 0) + len(warnings)
            if rc != 0 or warnings:
                failed += 1
                print(f"{name} -march={march} width {width}: {len(warnings)} warnings/errors, rc {rc}")
                print("  " + " ".join(cmd[cmd.index("-I") + 2:]))
                for l in warnings if args.verbose else warnings[:1]:
                    print("  " + l)
    if args.counts:
        for name in files:
            print(f"{name:24s} " + "  ".join(f"{m}={counts.get((name, m), 0)}" for m, _ in TARGETS))
    total = sum(counts.values())
    print(f"check-kernel-warnings: {len(jobs)} compiles of {len(files)} files, {failed} with warnings or errors "
          f"({total} warnings in all) [{args.clang}]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
