# The two commands of the README: `make demo` (main job) and `make test` (the tests CI runs);
# `make lint` (ruff, run by CI before the tests) and `make test-all` (the tests plus the slow ones);
# `make bench` and `make bench-compare` (benchmarks/README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= hforge-demo
# Extras of pyproject.toml each target installs (scripts/setup.sh): the demo needs HForge alone;
# the tests take bench too, for the graph2mat baseline (hforge/train/graph2mat.py, tests/test_graph2mat.py).
DEMO_EXTRAS ?=
TEST_EXTRAS ?= dev,dft,bench
BENCH_EXTRAS ?= dev,bench
# pytest-benchmark (benchmarks/README.md): BENCH_SIZE small (minutes) or full (the sizes behind
# benchmarks/results/ and the README); saved runs go to .benchmarks/; `make bench-compare` runs
# again and compares with BENCH_BASELINE (a saved run's number or id, default the newest saved),
# failing when a benchmark's BENCH_FAIL statistic grew more than allowed.
BENCH_SIZE ?= small
BENCH_ARGS ?=
BENCH_BASELINE ?=
BENCH_FAIL ?= min:25%

.PHONY: setup setup-demo setup-bench demo lint test test-all test-python test-kernels bench bench-compare clean

setup:
	@VENV=$(VENV) HFORGE_EXTRAS="$(TEST_EXTRAS)" scripts/setup.sh

setup-demo:
	@VENV=$(VENV) HFORGE_EXTRAS="$(DEMO_EXTRAS)" scripts/setup.sh

setup-bench:
	@VENV=$(VENV) HFORGE_EXTRAS="$(BENCH_EXTRAS)" scripts/setup.sh

demo: setup-demo
	$(VENV)/bin/hforge demo --out $(OUT)

lint: setup
	$(VENV)/bin/ruff check .

test: setup test-kernels test-python

# The slow tests too (minutes each; tests/conftest.py skips `slow` ones unless -m names them).
test-all: PYTEST_ARGS += -m "slow or not slow"
test-all: setup test-kernels test-python

# Host build of kernels/*.cu (emulated launch grid, needs a C++ compiler) and the nvcc fatbins where nvcc exists.
test-kernels:
	cmake -S . -B build/ctest -DHFORGE_BUILD_TESTS=ON
	cmake --build build/ctest
	ctest --test-dir build/ctest --output-on-failure

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test-python:
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Every suite (benchmarks/README.md), each result checked against its reference before it is
# timed, saved as .benchmarks/<machine>/NNNN_<commit>.json.
bench: setup-bench
	HFORGE_BENCH_SIZE=$(BENCH_SIZE) $(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave $(BENCH_ARGS)

# Run again and compare with a saved run: fails on a regression beyond BENCH_FAIL.
bench-compare: setup-bench
	HFORGE_BENCH_SIZE=$(BENCH_SIZE) $(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave \
	  --benchmark-compare$(if $(BENCH_BASELINE),=$(BENCH_BASELINE)) --benchmark-compare-fail=$(BENCH_FAIL) $(BENCH_ARGS)

clean:
	rm -rf build $(OUT) .pytest_cache .benchmarks .ruff_cache
