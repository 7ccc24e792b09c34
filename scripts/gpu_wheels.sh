#!/usr/bin/env bash
# Wheels that the GPU machine's image lacks, for Python 3.12 x86-64, and the bench cells, into .whl/ (ignored by git):
# run here (PyPI reachable), then carry .whl to the device run of scripts/gpu_check.sh.
# The image has torch (CUDA 13), triton, cupy-cuda13x, numba, scipy, h5py, typer, rich, pytest,
# pytest-benchmark, hypothesis, pandas, torchmetrics, opt-einsum(-fx); see scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl
platforms=()
for n in 2_39 2_35 2_34 2_31 2_28 2_27 2_24 2_17 2014 1; do
  case $n in 2014|1) platforms+=(--platform "manylinux${n}_x86_64");; *) platforms+=(--platform "manylinux_${n}_x86_64");; esac
done
fetch() { $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl "$@"; }
# hforge's own dependencies missing there (versions as in this project's environment)
fetch e3nn==0.4.4 mace-torch==0.3.16 torch-ema==0.3 sisl==0.20.0 ase==3.29.0 vesin==0.6.2 \
  netCDF4==1.7.2 cftime==1.6.4.post1 pathos multiprocess dill ppft xarray
# the peers of bench_cg_blocks: cuEquivariance's descriptors and torch front end (pure Python); its
# fused CUDA kernels (cuequivariance-ops-torch-cu13) are fetched only when CUEQ_OPS=1 and they fit
fetch cuequivariance==0.13.0 cuequivariance-torch==0.13.0
if [ "${CUEQ_OPS:-0}" = 1 ]; then fetch cuequivariance-ops-torch-cu13==0.13.0 cuequivariance-ops-cu13==0.13.0 || true; fi
# the bench cells, made by LAMMPS here (benchmarks.scaling.scaling_cell), which the image lacks
mkdir -p .whl/cells
PYTHONPATH=. $PY -c "import hforge; from benchmarks.scaling import scaling_cell; import pathlib; [scaling_cell(n, pathlib.Path('.whl/cells')) for n in (100, 1000)]"
du -sh .whl
ls -la .whl
