"""Loading the CUDA kernels of ``kernels/*.cu`` as CuPy modules.

The CMake build installs ``hforge/_kernels/<name>.fatbin`` (compiled by nvcc for the
architectures in ``HFORGE_CUDA_ARCHITECTURES``) and the sources under
``hforge/_kernels/src``.  :func:`load_module` prefers the fatbin and falls back to
compiling the source with NVRTC (``pip install nvidia-cuda-nvrtc``), so that a GPU
user without nvcc still gets the kernels.  ``HFORGE_KERNEL_DIR`` overrides where
fatbins are looked for.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import hforge
from hforge.errors import BackendUnavailableError

__all__ = ["kernel_search_path", "load_module"]

_REPO_KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def kernel_search_path() -> list[Path]:
    """Folders searched for ``<name>.fatbin`` and ``<name>.cu``, in order."""
    paths = [Path(p) for p in os.environ.get("HFORGE_KERNEL_DIR", "").split(os.pathsep) if p]
    for package_dir in hforge.__path__:
        paths += [Path(package_dir) / "_kernels", Path(package_dir) / "_kernels" / "src"]
    paths.append(_REPO_KERNELS)
    return paths


def _find(filename: str) -> Path | None:
    for folder in kernel_search_path():
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


@cache
def load_module(name: str) -> Any:
    """The ``cupy.RawModule`` of ``kernels/<name>.cu``: its fatbin if built, else NVRTC-compiled source.

    Raises:
        BackendUnavailableError: cupy missing, or neither a fatbin nor a compilable source found.
    """
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(f"cupy is not installed: {exc}") from exc
    fatbin = _find(f"{name}.fatbin")
    if fatbin is not None:
        return cupy.RawModule(path=str(fatbin))
    source = _find(f"{name}.cu")
    if source is None:
        raise BackendUnavailableError(f"kernel {name!r}: no {name}.fatbin or {name}.cu in {kernel_search_path()}")
    try:
        return cupy.RawModule(
            code=source.read_text(), options=("-std=c++17", f"-I{source.parent}"), backend="nvrtc"
        )
    except Exception as exc:  # NVRTC missing or failing
        raise BackendUnavailableError(
            f"kernel {name!r}: no fatbin built and NVRTC compilation of {source} failed: {exc}"
        ) from exc
