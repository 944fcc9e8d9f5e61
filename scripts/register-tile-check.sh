#!/usr/bin/env bash
# Compiles the register kernel of Kernels/matmul.cl for a CPU (-march) and a tile geometry with
# clang, and reports what the k loop holds: FMA instructions, and spills/reloads and stack
# accesses (a tile that does not fit the register file spills in its hottest loop). It checks a
# geometry for an ISA this machine does not have (e.g. AVX2 on an AVX-512 host).
#
#   scripts/register-tile-check.sh haswell 8 16 6          # -march, vector width, panel, rows
#   scripts/register-tile-check.sh skylake-avx512 16 64 6
#
# Needs clang (Debian: clang-15). The kernel's OpenCL builtins are only declared by clang's
# header, so vloads become plain vector loads and fma() becomes a contracted multiply-add here;
# the register pressure of the tile is the same.
set -euo pipefail
march=${1:?-march}; vw=${2:?vector width}; panel=${3:?panel}; rows=${4:?rows}
cd "$(dirname "$0")/.."
clang=$(command -v clang-15 || command -v clang)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/k.cl" <<'PY'
import sys
src = open('Kernels/matmul.cl').read().replace('#include "common.h"', open('Kernels/common.h').read())
src = src.replace('#define W_LOADV(p, i) SY_CAT(vload, VW)((i), (p))',
                  '#define W_LOADV(p, i) (*(__global const VEC*)((p) + (size_t)(i) * VW))', 1)
src = src.replace('#define SY_MAD(a, b, c) fma((a), (b), (c))', '#define SY_MAD(a, b, c) ((a) * (b) + (c))', 1)
open(sys.argv[1], 'w').write(src)
PY
"$clang" -x cl -cl-std=CL1.2 -Xclang -finclude-default-header --target=x86_64-unknown-linux-gnu -march="$march" \
  -O2 -ffp-contract=fast -S -DVW="$vw" -DPANEL="$panel" -DROWS="$rows" -DEPILOGUE=0 -Dinline= \
  "$tmp/k.cl" -o "$tmp/k.s" 2>/dev/null
python3 - "$tmp/k.s" "$march" "$rows x $panel (float$vw)" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
body = text[text.index('\npacked_tile:'):]
body = body[:body.index('.Lfunc_end')]
blocks, cur = [], []
for line in body.split('\n'):
    if re.match(r'^\S+:', line):
        if cur: blocks.append(cur)
        cur = [line]
    else:
        cur.append(line)
blocks.append(cur)
loop = max(blocks, key=lambda b: sum(('vfmadd' in l or 'mulps' in l) for l in b))
fma = sum(('vfmadd' in l or 'mulps' in l) for l in loop)
stack = sum(bool(re.search(r'\((%rsp|%rbp)\)', l)) for l in loop)
n = sum(1 for l in loop if l.startswith('\t') and not l.startswith(('\t.', '\t#')))
print(f"{sys.argv[2]} {sys.argv[3]}: k loop {n} instructions, {fma} FMA (or SSE multiply), {stack} stack accesses (spills/reloads)")
PY
