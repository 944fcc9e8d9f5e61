# Switchyard: `make run` (the main job) and `make test` (the test suite). Both install the
# system packages they need first when they are missing (Debian 12; run as root or with sudo).
# The tests run every conformance case on every OpenCL device found: PoCL and Mesa's rusticl
# over llvmpipe (a second implementation that runs work-items as SIMD lanes, enabled below).
export RUSTICL_ENABLE ?= llvmpipe

SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PACKAGES := ocl-icd-opencl-dev opencl-headers pocl-opencl-icd mesa-opencl-icd pkg-config clinfo libopenblas-dev libclblast-dev python3 python3-numpy python3-pip libopenmpi-dev openmpi-bin

.PHONY: run test deps build bench bundle check-mutants check-kernels fuzz fault-walk check-large check-load check-leaks docs fma-peak

deps:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi
	@# The checkpoint tests write model folders with Python's safetensors package.
	@python3 -c "import numpy, safetensors" 2>/dev/null || python3 -m pip install --quiet safetensors numpy \
	  || python3 -m pip install --quiet --break-system-packages safetensors numpy

build: deps
	$(SWIFT) build -c release --product switchyard

run: build
	.build/release/switchyard run --config mixtral-tiny --check

# Optimized (-c release): the CPU reference that every conformance case is checked against, and
# the host code, run about twice as fast as in debug; that saves more than the longer build costs
# (2 cores, warm driver caches: the registry's 935 cases on both devices took 404 s in debug, 213 s
# optimized; a clean build of the tests took 99 s in debug, 246 s optimized). Without testable
# imports (no test uses @testable), so the modules are the ones `make run` and `make bench` build.
test: deps
	$(SWIFT) test -c release --disable-testable-imports

bench: deps
	$(SWIFT) build -c release --product switchyard-bench
	.build/release/switchyard-bench --quick

# switchyard and switchyard-bench with the libraries they load, for a machine without Swift
# (README.md, "On a machine without Swift"). Not part of `make test`.
bundle: deps
	SWIFT=$(SWIFT) scripts/bundle.sh switchyard-bundle.tar.gz

# Kernel mutations (store rounding, off-by-one bounds, padding writes, ties, epilogue constants):
# each must make conformance fail. Not part of `make test`.
check-mutants: build
	python3 scripts/check-mutants.py .build/release/switchyard

# Every kernel compiled with clang-15 for AVX-512, AVX2 and SSE-only x86 CPUs (the host's -D values
# per vector width): any warning fails (PoCL prints them on the user's terminal). Not part of `make test`.
check-kernels:
	@command -v clang-15 >/dev/null 2>&1 || { echo "installing: clang-15"; $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends clang-15; }
	python3 scripts/check-kernel-warnings.py --clang clang-15

# A hand-written FMA loop (x86: 8-wide AVX2 and 16-wide AVX-512 where the CPU has it), one thread per
# core, to hold the benchmark's FMA ceiling (`ceilings_fma`) against. Not part of `make test`.
fma-peak:
	@command -v gcc >/dev/null 2>&1 || { echo "installing: gcc"; $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends gcc libc6-dev; }
	mkdir -p .build && gcc -O2 -fopenmp scripts/fma-peak.c -o .build/fma-peak
	OMP_NUM_THREADS=$$(nproc) .build/fma-peak 8; OMP_NUM_THREADS=$$(nproc) .build/fma-peak 16

# 2000 random valid configurations against the reference on every device (case i replays
# with `switchyard conformance --fuzz 1 --seed $$((1000 + i))`). Not part of `make test`.
DEVICES = $$(seq 0 $$(( $$(clinfo -l 2>/dev/null | grep -c 'Device \#') - 1 )))

fuzz: build
	for d in $(DEVICES); do .build/release/switchyard conformance --device $$d --fuzz 2000 --seed 1000 || exit 1; done

# Every OpenCL call of an MoE layer forward made to fail in turn, on every device (also in `make test`).
fault-walk: build
	for d in $(DEVICES); do .build/release/switchyard fault-walk --device $$d || exit 1; done

# A batch of 1,048,576 tokens through mixtral-small on the default device: its intermediates
# exceed one allocation, so the layer runs in chunks (about 12.5 GB peak RSS on PoCL, minutes).
check-large: build
	.build/release/switchyard run --config mixtral-small --tokens 1048576 --iterations 1

# A Mixtral-8x7B MoE layer (8 experts, hidden 4096, ffn 14336, bf16: about 2.8 GB, written to
# $$TMPDIR by Tests/Fixtures/big_moe.py, or kept in SWITCHYARD_CHECK_LOAD_DIR) loaded onto every
# device that holds it, the loader's peak host memory checked against 1.2 × its largest tensor
# + 3 × the staging buffer + 16 MiB (`switchyard load`). Not part of `make test`, which checks
# the same bound on a 201 MB layer.
check-load: deps
	SWITCHYARD_CHECK_LOAD=1 $(SWIFT) test --filter LoadMemoryTests

# A quick conformance subset under valgrind on PoCL: no invalid access and no definite or indirect
# leak outside the drivers' own state (scripts/valgrind-drivers.supp says what is suppressed and
# why). Installs valgrind when missing. Takes minutes (LLVM compiles kernels under valgrind).
check-leaks: deps
	@command -v valgrind >/dev/null || ($(SUDO) apt-get install -y --no-install-recommends valgrind)
	$(SWIFT) build --product switchyard
	valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect \
	  --errors-for-leak-kinds=definite,indirect --suppressions=scripts/valgrind-drivers.supp --num-callers=40 \
	  .build/debug/switchyard conformance --device 0 \
	  --filter '^(softmax rows=3 cols=16|topk rows=3 cols=7 k=7|gating T=0|permute T=5 E=8 k=8 block=16|moe_layer mixtral-tiny T=1 f32|tensor refused)'

# DocC documentation of Switchyard and OpenCLHost (the catalogs in Sources/*/*.docc and the doc
# comments), into .build/plugins/Swift-DocC/outputs/*.doccarchive. Any DocC warning (an unresolved
# link, a malformed topic group) fails the target. The code blocks are compiled and run by
# `swift test --filter DocSampleTests`. Needs no OpenCL device and nothing beyond Swift.
docs:
	$(SWIFT) package generate-documentation --target Switchyard --target OpenCLHost --warnings-as-errors
