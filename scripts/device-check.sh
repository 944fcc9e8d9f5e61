#!/bin/bash
# The device checks of a GPU machine lent for minutes, in one prepared run from an unpacked
# bundle (scripts/bundle.sh puts this script in it as `check`):
#
#   mkdir sy && tar xzf switchyard-bundle.tar.gz -C sy && sy/check OUT [CONFORMANCE_S BENCH_S TUNE_S]
#
# 1. registers NVIDIA's OpenCL driver for the ICD loader when no vendor file names it
#    (OCL_ICD_VENDORS pointed at OUT/icd);
# 2. `switchyard devices`;
# 3. the conformance suite (SWITCHYARD_BUILD_LOG: every program build and its seconds), JSON;
# 4. issue 17's decode rows of the layer benchmark (bf16, int8, int4 and MXFP4 weights, T = 1 and
#    16), JSON;
# 5. `switchyard tune --quick --dry-run` (the geometry and the split-k threshold, timed there).
# Each step runs under its own time limit with its output line-buffered into OUT, so a step cut
# off by its limit still leaves what it printed, and the next step still runs.
set -uo pipefail
here=$(dirname "$(readlink -f "$0")")
out=$(realpath -m "${1:?usage: check OUT [CONFORMANCE_S BENCH_S TUNE_S]}")
conformance_s=${2:-240}
bench_s=${3:-240}
tune_s=${4:-120}
mkdir -p "$out"
# (with OCL_ICD_VENDORS set, the ICD loader reads that folder only)
vendors=${OCL_ICD_VENDORS:-/etc/OpenCL/vendors}
if ! grep -qs nvidia "$vendors"/*.icd 2>/dev/null; then
    lib=$(ldconfig -p 2>/dev/null | awk '/libnvidia-opencl\.so\.1 .*x86-64/ {print $NF; exit}')
    for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -z "$lib" ] && [ -e "$d/libnvidia-opencl.so.1" ] && lib="$d/libnvidia-opencl.so.1"
    done
    if [ -n "$lib" ]; then
        mkdir -p "$out/icd" && echo "$lib" > "$out/icd/nvidia.icd"
        export OCL_ICD_VENDORS="$out/icd"
        echo "check: registered $lib through OCL_ICD_VENDORS=$OCL_ICD_VENDORS"
    fi
fi
step() {  # step NAME SECONDS COMMAND...: the command's output line-buffered into OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "check: $name (limit ${limit} s)"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" stdbuf -oL -eL "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "check: $name exit $rc after $((SECONDS - start)) s; last lines:"
    tail -n 5 "$out/$name.log"
    [ "$rc" -gt "$worst" ] && worst=$rc
    return 0
}
worst=0
step devices 60 "$here/run" switchyard devices
SWITCHYARD_BUILD_LOG="$out/builds.tsv" step conformance "$conformance_s" \
    "$here/run" switchyard conformance --json "$out/conformance.json"
# (16 rows: bf16 weights, int8, int4-g128 and MXFP4 at T = 1 and 16 of mixtral-small and
# deepseek-like; each row draws its cold weight copies on the host first, 3-50 s a row here, so a
# short limit gets the first rows; each prints its median as it ends. The host BLAS peers measure
# the host CPU, not the device, and CLBlast's first call compiles for ~17 s: skipped.)
step bench "$bench_s" "$here/run" switchyard-bench \
    --filter 'moe_layer (mixtral-small|deepseek-like) T=(1|16) bf16 (packed|int8|int4-g128|mxfp4) decode' --no-gemm \
    --no-scaling --skip-peer openblas --skip-peer clblast --json "$out/bench.json"
step tune "$tune_s" "$here/run" switchyard tune --quick --dry-run
echo "check: done; files in $out; worst exit status $worst"
exit "$worst"
