"""Which kernel backends can run here, and the ``backend=`` dispatch rule shared by all ops.

Backends:

``torch``
    the *reference* of each op: always available, written for clarity, the oracle of the tests.
    The name is the dispatch's, not a promise of torch code: it is torch for ``cg_blocks`` and
    ``two_centre`` (differentiable, CPU or CUDA), and scipy's COO -> CSR for ``assemble_csr``
    (numpy arrays only).
``numba``
    parallel CPU kernels (``numba.njit(parallel=True)``).
``cpp``
    compiled CPU kernels from ``kernels/cpu`` (C++17, SIMD per instruction set, threads), built by
    CMake at install where a C++ compiler is found and loaded with ctypes (:mod:`hforge.ops._cpu`).
``triton``
    GPU kernels; on a CPU-only machine they run only under ``TRITON_INTERPRET=1`` (used by the tests).
``cupy``
    CUDA kernels from ``kernels/*.cu``, loaded as fatbins built by CMake or compiled by NVRTC.

``backend="auto"`` picks the first usable backend of an op's preference list for the
device of its inputs: GPU backends for CUDA tensors, ``cpp`` (where an op has it), ``numba`` then
``torch`` on CPU.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import cache

from hforge.errors import BackendUnavailableError

__all__ = ["BACKENDS", "BackendStatus", "backend_status", "resolve_backend", "triton_interpreted"]

BACKENDS = ("torch", "numba", "cpp", "triton", "cupy")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run on this machine, and why not if it cannot."""

    name: str
    available: bool
    reason: str
    device: str  # "cpu", "cuda" or "cpu, cuda"


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _status_torch() -> BackendStatus:
    import torch

    device = "cpu, cuda" if _cuda_available() else "cpu"
    return BackendStatus("torch", True, f"torch {torch.__version__}", device)


def _status_numba() -> BackendStatus:
    if importlib.util.find_spec("numba") is None:
        return BackendStatus("numba", False, "numba is not installed (pip install numba)", "cpu")
    import numba

    return BackendStatus("numba", True, f"numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads", "cpu")


def _status_cpp() -> BackendStatus:
    from hforge.ops._cpu import load_library

    try:
        library = load_library()
    except BackendUnavailableError as exc:
        return BackendStatus("cpp", False, str(exc), "cpu")
    return BackendStatus("cpp", True, f"{library.path.name}, {library.isa}", "cpu")


def _status_triton() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus("triton", False, "triton is not installed (pip install 'hforge[gpu]')", "cuda")
    if triton_interpreted():
        return BackendStatus("triton", True, "CPU interpreter (TRITON_INTERPRET=1): for tests, slow", "cpu")
    if not _cuda_available():
        return BackendStatus("triton", False, "no CUDA GPU found (set TRITON_INTERPRET=1 to interpret on CPU)", "cuda")
    return BackendStatus("triton", True, "CUDA GPU", "cuda")


def _status_cupy() -> BackendStatus:
    if importlib.util.find_spec("cupy") is None:
        return BackendStatus("cupy", False, "cupy is not installed (pip install 'hforge[gpu]')", "cuda")
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises CUDARuntimeError, ImportError of libcuda, ...
        return BackendStatus("cupy", False, f"cupy cannot reach a GPU: {exc}", "cuda")
    if n == 0:
        return BackendStatus("cupy", False, "no CUDA GPU found", "cuda")
    return BackendStatus("cupy", True, f"cupy {cupy.__version__}, {n} GPU(s)", "cuda")


_STATUS = {"torch": _status_torch, "numba": _status_numba, "cpp": _status_cpp, "triton": _status_triton, "cupy": _status_cupy}


def backend_status() -> dict[str, BackendStatus]:
    """Status of every backend on this machine (cheap after the first call of each)."""
    return {name: probe() for name, probe in _STATUS.items()}


def resolve_backend(
    backend: str,
    *,
    on_gpu: bool,
    implemented: tuple[str, ...],
    op: str,
) -> str:
    """Turn a user's ``backend=`` argument into the backend that will run.

    Args:
        backend: ``"auto"`` or one of :data:`BACKENDS`.
        on_gpu: whether the op's inputs live on a CUDA device.
        implemented: backends the op has, in order of preference.
        op: the op's name, for error messages.

    Raises:
        BackendUnavailableError: an explicit backend that the op lacks or that cannot run here.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise BackendUnavailableError(f"{op}: unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
        if backend not in implemented:
            raise BackendUnavailableError(f"{op}: no {backend!r} backend; it has {', '.join(implemented)}")
        status = _STATUS[backend]()
        if not status.available:
            raise BackendUnavailableError(f"{op}: backend {backend!r} is unavailable: {status.reason}")
        return backend
    for name in implemented:
        status = _STATUS[name]()
        runs_here = "cuda" in status.device if on_gpu else "cpu" in status.device
        if status.available and runs_here and not (name == "triton" and triton_interpreted()):
            return name
    return "torch"
