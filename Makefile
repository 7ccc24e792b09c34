# The two commands of the README: `make demo` (main job) and `make test` (all tests).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= hforge-demo
# Extras of pyproject.toml each target installs (scripts/setup.sh): the demo needs HForge alone.
DEMO_EXTRAS ?=
TEST_EXTRAS ?= dev,dft
BENCH_EXTRAS ?= dev,bench

.PHONY: setup setup-demo setup-bench demo test test-python test-kernels bench clean

setup:
	@VENV=$(VENV) HFORGE_EXTRAS="$(TEST_EXTRAS)" scripts/setup.sh

setup-demo:
	@VENV=$(VENV) HFORGE_EXTRAS="$(DEMO_EXTRAS)" scripts/setup.sh

setup-bench:
	@VENV=$(VENV) HFORGE_EXTRAS="$(BENCH_EXTRAS)" scripts/setup.sh

demo: setup-demo
	$(VENV)/bin/hforge demo --out $(OUT)

test: setup test-kernels test-python

# Host build of kernels/*.cu (emulated launch grid, needs a C++ compiler) and the nvcc fatbins where nvcc exists.
test-kernels:
	cmake -S . -B build/ctest -DHFORGE_BUILD_TESTS=ON
	cmake --build build/ctest
	ctest --test-dir build/ctest --output-on-failure

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test-python:
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: setup-bench
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave

clean:
	rm -rf build $(OUT) .pytest_cache .benchmarks
