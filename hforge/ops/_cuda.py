"""Loading the CUDA kernels of ``kernels/*.cu`` as CuPy modules.

The CMake build installs ``hforge/_kernels/<name>.fatbin`` (compiled by nvcc: SASS for every
architecture of ``HFORGE_CUDA_ARCHITECTURES``, plus PTX of the newest one, which the driver
compiles for newer GPUs), ``hforge/_kernels/fatbins.json`` (those architectures) and the
sources under ``hforge/_kernels/src``.  :func:`load_module` uses the fatbin when
:func:`choose_kernel` says it fits, and otherwise compiles the source at run time with NVRTC
(``pip install nvidia-cuda-nvrtc``, or the ``gpu-cuda13`` extra), so that a GPU user without
nvcc, with an older GPU than the fatbins hold, or with freshly edited kernels still gets them.
``HFORGE_KERNEL_DIR`` overrides where fatbins are looked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Sequence

import hforge
from hforge.errors import BackendUnavailableError

__all__ = ["FatbinArchitectures", "KernelChoice", "choose_kernel", "kernel_search_path", "load_module"]

_REPO_KERNELS = Path(__file__).resolve().parents[2] / "kernels"
_ARCHITECTURES_FILE = "fatbins.json"
_HEADER_SUFFIXES = (".h", ".cuh")


@dataclass(frozen=True)
class FatbinArchitectures:
    """What a fatbin holds: SASS (machine code) per ``sm_XX`` and PTX per ``compute_XX`` (numbers as 80, 90)."""

    sass: tuple[int, ...]
    ptx: tuple[int, ...]

    def fits(self, capability: int) -> bool:
        """Whether a GPU of compute capability ``capability`` (e.g. 86) can run it.

        SASS of ``sm_XY`` runs on the same major version with minor >= Y; PTX of
        ``compute_XY`` is compiled by the driver for any capability >= XY.
        """
        same_major = any(arch // 10 == capability // 10 and arch <= capability for arch in self.sass)
        return same_major or any(arch <= capability for arch in self.ptx)

    @classmethod
    def read(cls, path: Path) -> "FatbinArchitectures | None":
        """The architectures in ``path`` (``fatbins.json`` as CMake writes it), None when absent or unreadable."""
        try:
            data = json.loads(path.read_text())
            return cls(tuple(int(a) for a in data["sass"]), tuple(int(a) for a in data["ptx"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class KernelChoice:
    """What :func:`load_module` loads: ``kind`` ``"fatbin"`` (nvcc's) or ``"source"`` (NVRTC), the file and why."""

    kind: str
    path: Path
    reason: str


def kernel_search_path() -> list[Path]:
    """Folders searched for ``<name>.fatbin`` and ``<name>.cu``, in order."""
    paths = [Path(p) for p in os.environ.get("HFORGE_KERNEL_DIR", "").split(os.pathsep) if p]
    for package_dir in hforge.__path__:
        paths += [Path(package_dir) / "_kernels", Path(package_dir) / "_kernels" / "src"]
    paths.append(_REPO_KERNELS)
    return paths


def _find(filename: str, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def _source_mtime(source: Path) -> float:
    """Latest modification time of a ``.cu`` file and the headers beside it (which it includes)."""
    headers = [p for p in source.parent.iterdir() if p.suffix in _HEADER_SUFFIXES and p.is_file()]
    return max(p.stat().st_mtime for p in [source, *headers])


def choose_kernel(
    fatbin: Path | None,
    source: Path | None,
    *,
    edited_source: Path | None = None,
    architectures: FatbinArchitectures | None = None,
    capability: int | None = None,
) -> KernelChoice:
    """Fatbin or NVRTC source for one kernel file (no GPU needed: the tests call it on CPU).

    Args:
        fatbin: the ``<name>.fatbin`` found first, or None.
        source: the installed ``<name>.cu`` (same version as the fatbin), or None.
        edited_source: the checkout's ``kernels/<name>.cu`` where one exists (a developer's
            tree); a fatbin older than it (or than a header beside it) is stale.
        architectures: what the fatbins hold (None: unknown, assumed to fit).
        capability: the GPU's compute capability, e.g. 90 (None: unknown, assumed to fit).

    Returns:
        The fatbin when it exists, is not older than ``edited_source`` and fits the GPU;
        else ``edited_source`` or ``source`` for NVRTC.

    Raises:
        BackendUnavailableError: neither a usable fatbin nor a source.
    """
    newest_source = edited_source if edited_source is not None else source
    reason = "no fatbin built"
    if fatbin is not None:
        if edited_source is not None and fatbin.stat().st_mtime < _source_mtime(edited_source):
            reason = f"{fatbin} is older than {edited_source}"
        elif architectures is not None and capability is not None and not architectures.fits(capability):
            reason = (f"{fatbin} holds sm {list(architectures.sass)} and PTX {list(architectures.ptx)}, "
                      f"nothing for compute capability {capability}")
        else:
            return KernelChoice("fatbin", fatbin, "fatbin fits")
    if newest_source is None:
        raise BackendUnavailableError(f"{reason}, and no kernel source found")
    return KernelChoice("source", newest_source, reason)


def _capability(cupy: Any) -> int:
    return int(cupy.cuda.Device().compute_capability)


def _compile_source(cupy: Any, source: Path, reason: str) -> Any:
    try:
        module = cupy.RawModule(code=source.read_text(), options=("-std=c++17", f"-I{source.parent}"), backend="nvrtc")
        module.compile()
    except Exception as exc:  # NVRTC missing or failing
        raise BackendUnavailableError(
            f"NVRTC compilation of {source} failed ({reason}; pip install nvidia-cuda-nvrtc): {exc}"
        ) from exc
    return module


@cache
def load_module(name: str) -> Any:
    """The ``cupy.RawModule`` of ``kernels/<name>.cu``: its fatbin where :func:`choose_kernel`
    takes it and the GPU loads it, else the source compiled by NVRTC.

    Raises:
        BackendUnavailableError: cupy missing, or neither a fitting fatbin nor a compilable source.
    """
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(f"cupy is not installed: {exc}") from exc
    folders = kernel_search_path()
    fatbin, source = _find(f"{name}.fatbin", folders), _find(f"{name}.cu", folders)
    edited = _REPO_KERNELS / f"{name}.cu"
    edited_source = edited if edited.is_file() else None
    try:
        choice = choose_kernel(
            fatbin,
            source,
            edited_source=edited_source,
            architectures=None if fatbin is None else FatbinArchitectures.read(fatbin.parent / _ARCHITECTURES_FILE),
            capability=_capability(cupy),
        )
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"kernel {name!r}: {exc} in {folders}") from None
    if choice.kind == "source":
        return _compile_source(cupy, choice.path, choice.reason)
    module = cupy.RawModule(path=str(choice.path))
    try:
        module.compile()  # loads it on this GPU: fails when neither its SASS nor its PTX fits
    except cupy.cuda.driver.CUDADriverError as exc:
        fallback = edited_source or source
        if fallback is None:
            raise BackendUnavailableError(f"kernel {name!r}: {choice.path} does not load ({exc}), no source") from exc
        return _compile_source(cupy, fallback, f"{choice.path} does not load on this GPU: {exc}")
    return module
