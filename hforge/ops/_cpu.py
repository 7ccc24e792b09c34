"""Loading HForge's compiled CPU kernels (``kernels/cpu``, C++17) with ctypes.

The CMake build (``pip install``, where a C++ compiler is found) installs
``hforge/_kernels/libhforge_cpu.so``: every kernel compiled once per instruction set (generic; on
x86-64 also AVX2+FMA and AVX-512), the best one the CPU supports chosen when a kernel is called.
The ``cpp`` backend (:mod:`hforge.ops.backends`) runs them; without the library the ``numba``
kernels run instead.  ``HFORGE_KERNEL_DIR`` adds folders to search first; ``HFORGE_CPU_ISA``
(``generic``, ``avx2``, ``avx512``) forces an instruction set (for tests and comparisons).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import hforge
from hforge.errors import BackendUnavailableError

__all__ = ["ABI_VERSION", "ISAS", "ContractArgs", "ConvArgs", "CpuLibrary", "ProgramArgs", "load_library", "requested_isa"]

ABI_VERSION = 3  # HFORGE_CPU_ABI_VERSION of kernels/cpu/operator_contract.h
ISAS = {"generic": 0, "avx2": 1, "avx512": 2}
_LIBRARY = {"darwin": "libhforge_cpu.dylib", "win32": "hforge_cpu.dll"}.get(sys.platform, "libhforge_cpu.so")
_SOURCES = Path(__file__).resolve().parents[2] / "kernels" / "cpu"

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


class ContractArgs(ctypes.Structure):
    """``HForgeContractArgs`` of kernels/cpu/operator_contract.h (sizes, then array addresses)."""

    _fields_ = [(name, _I64) for name in ("n_pairs", "n_atoms", "width", "n_op", "rows_pad", "energy_stride", "max_entries")] + [
        (name, _PTR) for name in (
            "pairs", "shifts", "swap", "species", "proj_atoms", "proj_keys", "proj_ptr", "entry_row", "entry_rows",
            "entry_cols", "packed", "operators", "energies", "order", "n_orb", "block_ptr", "out",
        )
    ]


class ConvArgs(ctypes.Structure):
    """``HForgeConvArgs`` of kernels/cpu/conv_messages.h (sizes, then array addresses)."""

    _fields_ = [
        (name, _I64) for name in ("channels", "n_instructions", "dim_in1", "dim_in2", "dim_out", "weight_numel", "n_chunks")
    ] + [
        (name, _PTR) for name in (
            "chunk_ptr", "order", "edge_receiver", "sender_rows", "l1", "l2", "l3", "in1_offset", "in2_offset", "out_offset",
            "weight_offset", "cg_offset", "cg_row_stride", "path_weight", "cg_dense", "x", "Y", "w", "out",
        )
    ]


class ProgramArgs(ctypes.Structure):
    """``HForgeProgramArgs`` of kernels/cpu/two_centre_program.h (sizes, the grid step, then array addresses)."""

    _fields_ = [
        (name, _I64) for name in (
            "n_pairs", "lmax", "n_knots", "max_slots", "max_entries", "mode", "accumulate", "out_double", "out_stride",
            "col0", "rank_stride",
        )
    ] + [("step", ctypes.c_double)] + [
        (name, _PTR) for name in (
            "pair_type", "order", "slot_ptr", "slot_table", "entry_ptr", "term_ptr", "term_slot", "term_lm", "cols",
            "vectors", "term_coef", "values", "reach", "block_ptr", "entry_species", "rank", "entry_row", "entry_rows", "out",
        )
    ]


@dataclass(frozen=True)
class CpuLibrary:
    """The loaded library, its file and the instruction set it runs here (a key of :data:`ISAS`)."""

    lib: ctypes.CDLL
    path: Path
    isa: str


def _search_path() -> list[Path]:
    paths = [Path(p) for p in os.environ.get("HFORGE_KERNEL_DIR", "").split(os.pathsep) if p]
    return paths + [Path(package_dir) / "_kernels" for package_dir in hforge.__path__]


def requested_isa() -> str | None:
    """The instruction set ``HFORGE_CPU_ISA`` asks for, None when unset or empty.

    Raises:
        BackendUnavailableError: a name not in :data:`ISAS`.
    """
    name = os.environ.get("HFORGE_CPU_ISA", "").strip().lower()
    if not name:
        return None
    if name not in ISAS:
        raise BackendUnavailableError(f"HFORGE_CPU_ISA={name!r}: choose from {', '.join(ISAS)}")
    return name


def load_library() -> CpuLibrary:
    """Find, load and check ``libhforge_cpu`` (once per process, a failure included: ``auto`` asks at
    every op call).

    Raises:
        BackendUnavailableError: not built (no C++ compiler at install), built from older sources than
            the checkout's ``kernels/cpu`` (rebuild: ``make setup`` or ``pip install -e .``), of another
            ABI version, or the instruction set ``HFORGE_CPU_ISA`` names is not in it or not on this CPU.
    """
    outcome = _load()
    if isinstance(outcome, str):
        raise BackendUnavailableError(outcome)
    return outcome


@cache
def _load() -> CpuLibrary | str:
    """The library, or why it is unavailable."""
    try:
        return _open_library()
    except BackendUnavailableError as exc:
        return str(exc)


def _open_library() -> CpuLibrary:
    path = next((folder / _LIBRARY for folder in _search_path() if (folder / _LIBRARY).is_file()), None)
    if path is None:
        raise BackendUnavailableError(
            f"{_LIBRARY} not found in {', '.join(map(str, _search_path()))} (pip install builds it with a C++ compiler)"
        )
    if _SOURCES.is_dir():
        newest = max(p.stat().st_mtime for p in _SOURCES.iterdir() if p.suffix in (".cpp", ".h"))
        if newest > path.stat().st_mtime:
            raise BackendUnavailableError(f"{path} is older than the sources in {_SOURCES}: rebuild it (make setup)")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise BackendUnavailableError(f"{path} cannot be loaded: {exc}") from exc
    lib.hforge_cpu_abi_version.restype = ctypes.c_int
    version = lib.hforge_cpu_abi_version()
    if version != ABI_VERSION:
        raise BackendUnavailableError(f"{path} has ABI version {version}, this HForge expects {ABI_VERSION}: rebuild it")
    lib.hforge_cpu_isa.argtypes = [ctypes.c_int]
    lib.hforge_cpu_isa.restype = ctypes.c_int
    for function in (lib.hforge_operator_contract_f32, lib.hforge_operator_contract_f64):
        function.argtypes = [ctypes.POINTER(ContractArgs), ctypes.c_int, _I64, _I64, _PTR]
        function.restype = ctypes.c_int
    for function in (lib.hforge_conv_messages_f32, lib.hforge_conv_messages_f64):
        function.argtypes = [ctypes.POINTER(ConvArgs), ctypes.c_int, _I64]
        function.restype = ctypes.c_int
    lib.hforge_two_centre_program.argtypes = [ctypes.POINTER(ProgramArgs), ctypes.c_int, _I64, _I64]
    lib.hforge_two_centre_program.restype = ctypes.c_int
    wanted = requested_isa()
    code = lib.hforge_cpu_isa(ISAS[wanted] if wanted else -1)
    if code < 0:
        raise BackendUnavailableError(f"HFORGE_CPU_ISA={wanted}: not built into {path} or not supported by this CPU")
    return CpuLibrary(lib, path, next(name for name, value in ISAS.items() if value == code))
