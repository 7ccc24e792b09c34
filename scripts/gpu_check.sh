#!/usr/bin/env bash
# Every GPU test and GPU benchmark of HForge in one go, on a machine with a CUDA GPU (made for the
# lent H200: Python 3.12, torch + triton + cupy-cuda13x + numba preinstalled, no network).
#
# Here (a machine with PyPI): scripts/gpu_wheels.sh   # the missing dependencies (23 MB) and the cached
#                                                    # bench cells (LAMMPS-made, absent there) into .whl/
# There, from the repository root, with .whl carried along, in two device calls of about 5 min each:
#   bash scripts/gpu_check.sh tests     # steps 1-3; results under $OUT (or gpu-check/)
#   bash scripts/gpu_check.sh scaling   # steps 1 (cached) and 4
#   (bash scripts/gpu_check.sh all      # everything, about 10 min on an H200)
#
# Steps (each under its own time limit, so that one hang cannot eat the lease; a failing step is
# reported and the next one runs):
#   1. install .whl/*.whl into /tmp/site; build the CUDA fatbins (nvcc) and the host kernel tests (ctest);
#   2. pytest -m gpu: the CUDA tests (CuPy assembly and fill by pairs, fatbin and NVRTC kernel loading, Triton CG blocks at
#      model size, CUDA predictions == CPU ones to float rounding in every mode);
#   3. benchmarks/bench_cg_blocks.py on the GPU: Triton vs the e3nn composition, and vs
#      cuEquivariance's fused kernels when cuequivariance-ops-torch is importable (its two cu13
#      wheels are 73 MB, over the 64 MiB a device call may carry with the repository: carry them
#      in a call of their own into /tmp/cueq-wheels on a warm machine, or skip: the row says why);
#   4. benchmarks/bench_inference_scaling.py on cuda: the default model and abn-dzp from 10^3 atoms to
#      GPU_SIZES (default up to 10^5 atoms: 43 GB of float64 CSR on the device, and on the host).
# Results: $OUT/gpu_check.log, $OUT/cg_blocks.json, $OUT/inference_scaling.md (+ .json).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
PY=${PY:-python3}
GPU_SIZES=${GPU_SIZES:-1000,10000,100000}
PART=${1:-all}
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T), limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
}

# 1. environment
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
if ls /tmp/cueq-wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/cueq-wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
export HFORGE_KERNEL_DIR=/tmp/hforge-build/kernels
mkdir -p /tmp/hforge-cells && cp -n .whl/cells/*.traj /tmp/hforge-cells/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
$PY -c "import torch, triton, cupy; print('torch', torch.__version__, 'triton', triton.__version__, 'cupy', cupy.__version__)" | tee -a "$LOG"
[ -f /tmp/hforge-build/kernels/assemble.fatbin ] || step "build: fatbins (nvcc) and host kernel tests" 150 bash -c \
  "cmake -S . -B /tmp/hforge-build -DHFORGE_BUILD_TESTS=ON -DHFORGE_CUDA_ARCHITECTURES=90 >/dev/null && cmake --build /tmp/hforge-build -j 8 && ctest --test-dir /tmp/hforge-build --output-on-failure"
$PY -m hforge.cli.main info 2>&1 | tee -a "$LOG"

if [ "$PART" = tests ] || [ "$PART" = all ]; then
  # 2. the GPU tests (the files that hold them: the others need what the image lacks, e.g. LAMMPS)
  step "pytest -m gpu" 180 $PY -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_assemble.py tests/test_cuda_loader.py tests/test_cg_blocks.py tests/test_infer.py
  # 3. CG blocks on the GPU: Triton vs e3nn vs cuEquivariance
  step "bench_cg_blocks (cuda)" 150 env HFORGE_BENCH_DEVICE=cuda HFORGE_BENCH_SIZE=full $PY -m pytest -q -p no:cacheprovider \
    benchmarks/bench_cg_blocks.py --benchmark-only --benchmark-json "$OUT/cg_blocks.json" \
    --benchmark-columns=min,median,max --benchmark-group-by=group
fi
if [ "$PART" = scaling ] || [ "$PART" = all ]; then
  # 4. inference scaling on the GPU (every size in a fresh process after a warm-up)
  step "bench_inference_scaling (cuda, $GPU_SIZES atoms)" 270 env HFORGE_BENCH_DEVICE=cuda HFORGE_BENCH_SIZES="$GPU_SIZES" \
    HFORGE_BENCH_OUT="$OUT/inference_scaling" HFORGE_BENCH_CACHE=/tmp/hforge-cells \
    $PY -m pytest -q -s -p no:cacheprovider benchmarks/bench_inference_scaling.py --benchmark-only
  cp "$OUT/inference_scaling/table.md" "$OUT/inference_scaling.md" 2>/dev/null
  cp "$OUT/inference_scaling/results.json" "$OUT/inference_scaling.json" 2>/dev/null
fi
echo "gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED), log $LOG" | tee -a "$LOG"
exit $status
