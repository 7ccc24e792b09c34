#!/usr/bin/env bash
# Create (or update) the virtual environment of HForge: torch first, then HForge with its extras.
#
# On a machine without an NVIDIA GPU it installs torch 2.13.0 before anything else, so that
# no dependency pulls a multi-GB CUDA build of torch; with a GPU, pip's default torch
# (a CUDA build) is taken.  Override with HFORGE_TORCH_SPEC (e.g. "torch==2.11.0") and
# point pip elsewhere with the usual PIP_INDEX_URL / PIP_EXTRA_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${HFORGE_EXTRAS:-dev,dft,bench}
stamp="$VENV/.hforge-installed"

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt CMakeLists.txt ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if [ -n "${HFORGE_TORCH_SPEC:-}" ]; then
  torch_spec=$HFORGE_TORCH_SPEC
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_spec="torch>=2.4"
else
  torch_spec="torch==2.13.0"
fi
echo "hforge setup: installing $torch_spec into $VENV"
"${pip[@]}" "$torch_spec"
echo "hforge setup: installing hforge[$EXTRAS] (editable; compiles kernels/*.cu where nvcc exists)"
"${pip[@]}" -e ".[$EXTRAS]"
touch "$stamp"
