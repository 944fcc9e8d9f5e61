#!/bin/bash
# Builds switchyard and switchyard-bench (release) and packs them, with every shared library they
# load that is not part of the C library itself (the Swift runtime and Foundation, the OpenCL ICD
# loader, OpenBLAS, CLBlast, Open MPI and what those load), into one tarball that runs on an x86-64
# Linux machine without a Swift toolchain, whose glibc and libstdc++ are at least this machine's:
#
#   scripts/bundle.sh switchyard-bundle.tar.gz
#   # on the other machine (its OpenCL driver registered under /etc/OpenCL/vendors, or in the
#   # folder OCL_ICD_VENDORS names):
#   mkdir sy && tar xzf switchyard-bundle.tar.gz -C sy && sy/run switchyard conformance
#
# `run NAME ARGS...` starts bin/NAME with lib/ first on the library path. The benchmark's PyTorch
# peer is Benchmarks/peers/torch_moe.py: run the bench from a checkout, or set SWITCHYARD_TORCH_SCRIPT.
set -euo pipefail
out=$(realpath -m "${1:?usage: scripts/bundle.sh OUT.tar.gz}")
cd "$(dirname "$0")/.."
swift=${SWIFT:-$(command -v swift || echo /opt/swift/usr/bin/swift)}
"$swift" build -c release --product switchyard
"$swift" build -c release --product switchyard-bench
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
cp .build/release/switchyard .build/release/switchyard-bench "$stage/bin/"
strip "$stage/bin/"* 2>/dev/null || true
# Every library ldd resolves, less glibc's own (matched by exact name: libswiftGlibc.so is not one)
# and the C++ runtime and zlib: the GPU driver the ICD loader opens links those too, and an older
# copy first on the library path would be the one it gets (a newer one on the target serves both).
system='^(libc|libm|libdl|libpthread|librt|libutil|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s|libz)\.so'
for b in "$stage/bin/"*; do
    if ldd "$b" | grep -q 'not found'; then ldd "$b" | grep 'not found' >&2; exit 1; fi
    ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
done | sort -u | while read -r path; do
    name=$(basename "$path")
    [[ $name =~ $system ]] && continue
    cp -L "$path" "$stage/lib/$name"
done
cat > "$stage/run" <<'RUN'
#!/bin/sh
# run NAME ARGS...: bin/NAME with this bundle's libraries first on the library path.
here=$(dirname "$(readlink -f "$0")")
name=$1; shift
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/$name" "$@"
RUN
chmod +x "$stage/run"
cp scripts/device-check.sh "$stage/check"  # the device checks in one run (see that script)
# Check that, with only the bundle on the library path, nothing resolves into the toolchain or is missing.
toolchain=$(dirname "$(dirname "$(readlink -f "$swift")")")
for b in switchyard switchyard-bench; do
    listing=$(env -i LD_LIBRARY_PATH="$stage/lib" ldd "$stage/bin/$b")
    missing=$(awk -v t="$toolchain/" 'index($3, t) == 1 || /not found/' <<<"$listing")
    if [ -n "$missing" ]; then echo "bundle: $b still loads from outside the bundle:" >&2; echo "$missing" >&2; exit 1; fi
done
tar czf "$out" -C "$stage" bin lib run check
echo "$out: $(du -h "$out" | cut -f1) ($(ls "$stage/lib" | wc -l) libraries)"
