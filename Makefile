# The two commands of the README: `make demo` (main job) and `make test` (the tests CI runs);
# `make lint` (ruff, run by CI before the tests) and `make test-all` (the tests plus the slow ones).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= hforge-demo

.PHONY: setup demo lint test test-all test-python test-kernels bench clean

setup:
	@VENV=$(VENV) scripts/setup.sh

demo: setup
	$(VENV)/bin/hforge demo --out $(OUT)

lint: setup
	$(VENV)/bin/ruff check .

test: setup test-kernels test-python

# The slow tests too (minutes each; tests/conftest.py skips `slow` ones unless -m names them).
test-all: PYTEST_ARGS += -m "slow or not slow"
test-all: setup test-kernels test-python

# Host build of kernels/*.cu (emulated launch grid) and the nvcc fatbins where nvcc exists.
test-kernels:
	cmake -S . -B build/ctest -DHFORGE_BUILD_TESTS=ON
	cmake --build build/ctest
	ctest --test-dir build/ctest --output-on-failure

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test-python:
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave

clean:
	rm -rf build $(OUT) .pytest_cache .benchmarks .ruff_cache
