# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-avx2 test-nosimd test-portable bench figure clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ltpa demo --out runs/demo --overwrite

# pytest exits 5 when it collected no tests: the suite vanished, which is a failure, never a pass
# (make then fails too; the message says why).
PYTEST_ARGS ?=
define pytest
	$(1) $(PY) -m pytest -q $(2) $(PYTEST_ARGS) || { status=$$?; \
	  [ $$status -ne 5 ] || echo "make $@: pytest collected no tests (exit 5): that is a failure" >&2; \
	  exit $$status; }
endef

test: $(STAMP)
	$(call pytest,,)

# The suite as users without AVX-512 see it, on any x86 machine: ATen's CPU kernels restricted to
# AVX2 (or to no SIMD at all) and oneDNN to AVX2, so convolutions take other code paths, bf16 is
# emulated, and precision `auto` picks fp32. CI runs both after `make test` (see .ci/run): the
# AVX2 leg, the CPU class most users have, runs the whole suite; the no-SIMD leg, the slowest
# kernels (about 2x native), skips the tests marked slow (the notebooks, a subprocess file-size
# test): they take fp32 paths the AVX2 leg already runs, and their minutes buy no new numerics.
AVX2_KERNELS   := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
NOSIMD_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2

test-avx2: $(STAMP)
	$(call pytest,$(AVX2_KERNELS),)

test-nosimd: $(STAMP)
	$(call pytest,$(NOSIMD_KERNELS),-m "not slow")

test-portable: test-avx2 test-nosimd

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/memory.py

# The README's picture: the demo's overlay grid.
figure: demo
	mkdir -p docs
	cp runs/demo/attention_overlays.png docs/demo_attention.png

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
