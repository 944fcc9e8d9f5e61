# Switchyard: `make run` (the main job) and `make test` (the test suite). Both install the
# system packages they need first when they are missing (Debian 12; run as root or with sudo).
# The tests run every conformance case on every OpenCL device found: PoCL and Mesa's rusticl
# over llvmpipe (a second implementation that runs work-items as SIMD lanes, enabled below).
export RUSTICL_ENABLE ?= llvmpipe

SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PACKAGES := ocl-icd-opencl-dev opencl-headers pocl-opencl-icd mesa-opencl-icd pkg-config clinfo libopenblas-dev libclblast-dev python3 python3-numpy python3-pip libopenmpi-dev openmpi-bin

.PHONY: run test deps build bench check-mutants

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

test: deps
	$(SWIFT) test

bench: deps
	$(SWIFT) build -c release --product switchyard-bench
	.build/release/switchyard-bench --quick

# Kernel mutations (store rounding, off-by-one bounds, padding writes, ties, epilogue constants):
# each must make conformance fail. Not part of `make test`.
check-mutants: build
	python3 scripts/check-mutants.py .build/release/switchyard
