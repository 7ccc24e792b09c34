"""Compiled CPU kernels of the two-centre ops (``kernels/cpu``, C++17 SIMD, threads).

``program_blocks`` and ``program_packed``: a block program evaluated for many pairs at once, one pair
per vector lane (float64): the pairs sorted by type so that a vector's lanes share the type's terms,
per lane the harmonics and the slots' Hermite interpolation, then every block entry as a sum of
``coef * slot * harmonic`` over vectors of lanes (no gathers), written to each pair's flat block or
packed rows (only the rows an entry keeps are computed).  Each lane's arithmetic is its own: the bits
do not depend on the thread count.

``operator_contract``: the pairs in chunks of whole owner runs (:func:`operator_chunks`) taken by the
prediction's threads (torch's thread count);
per pair, the owner atom's rows ``[P D_k, P_KB E_k]`` once per run of pairs with the same owner, kept
transposed, and for each common projector entry (a branch-free merge of the two sorted lists of entry
keys, :func:`entry_keys`) the
outer-product tiles of the other atom's packed rows (each element broadcast) with those rows, up to
16 vector accumulators (one per row of the other atom) held in registers over the entry's columns;
the packed rows of the matches four ahead are prefetched (they come from anywhere in ``packed``).
Each pair is summed by one thread in a fixed order: the bits do not depend on the thread count.
"""

from __future__ import annotations

import ctypes
import weakref

import numpy as np
import torch

from hforge.errors import BackendUnavailableError, InputError
from hforge.ops._cpu import ISAS, ContractArgs, ProgramArgs, load_library
from hforge.ops.two_centre.tables import BlockProgram, RadialTables

__all__ = ["entry_keys", "operator_chunks", "operator_contract", "program_blocks", "program_packed"]

#: kernels/cpu/two_centre_program.h: the highest harmonic degree of a program.
PROGRAM_MAX_DEGREE = 12

KEY_BASE = 4096  # kernels/cpu/operator_contract.h: 12 bits per image component, 27 for the atom

_STATUS = {1: "out of memory for the threads' scratch", 3: "sizes out of range"}


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def entry_keys(proj_atoms: np.ndarray, proj_shifts: np.ndarray, pair_shifts: np.ndarray) -> np.ndarray:
    """``(A,)`` int64 keys of projector entries ``(k, m)``, ordered as ``(k, m)`` lexicographically:
    ``((k B + m_x + B/2) B + m_y + B/2) B + m_z + B/2`` with ``B = 4096``; moving an entry by an image
    shift ``n`` adds ``(n_x B + n_y) B + n_z``, exact while every ``|m + n| < B/2``.

    Raises:
        InputError: an image component (an entry's plus a pair's) of 2048 cells or more, or 2^27 atoms
            or more (a cell that the kernel's keys cannot hold).
    """
    reach = int(np.abs(proj_shifts).max(initial=0)) + int(np.abs(pair_shifts).max(initial=0))
    if reach >= KEY_BASE // 2 or int(np.max(proj_atoms, initial=0)) >= 2**27:
        raise InputError(
            f"operator_contract (cpp): image shifts up to {reach} cells or {int(np.max(proj_atoms, initial=0)) + 1} atoms "
            f"exceed the kernel's keys (< {KEY_BASE // 2} cells, < 2^27 atoms); use backend='numba'"
        )
    half = KEY_BASE // 2
    m = np.asarray(proj_shifts, dtype=np.int64) + half
    return ((np.asarray(proj_atoms, dtype=np.int64) * KEY_BASE + m[:, 0]) * KEY_BASE + m[:, 1]) * KEY_BASE + m[:, 2]


# The last packed entry lists (weak references), their keys and the largest image component: one
# tuple, replaced whole, so that concurrent calls never read a mix of two lists' values.
_LAST_KEYS: tuple = (None, None, None, 0)


def _keys_of(proj_atoms: np.ndarray, proj_shifts: np.ndarray, pair_shifts: np.ndarray) -> np.ndarray:
    """:func:`entry_keys`, computed once per packed entry list (a range's batches share one: 10^5+
    entries, milliseconds a call), with the pair shifts' range checked every call."""
    global _LAST_KEYS
    atoms_ref, shifts_ref, keys, reach = _LAST_KEYS
    if atoms_ref is None or atoms_ref() is not proj_atoms or shifts_ref() is not proj_shifts:
        keys = entry_keys(proj_atoms, proj_shifts, np.zeros((0, 3), dtype=np.int64))
        reach = int(np.abs(proj_shifts).max(initial=0))
        _LAST_KEYS = (weakref.ref(proj_atoms), weakref.ref(proj_shifts), keys, reach)
    if reach + int(np.abs(pair_shifts).max(initial=0)) >= KEY_BASE // 2:
        entry_keys(proj_atoms, proj_shifts, pair_shifts)  # raises, naming the sizes
    return keys


def operator_chunks(owners: np.ndarray, n_threads: int, per_thread: int = 8) -> np.ndarray:
    """``(C + 1,)`` int64 bounds of the chunks of pairs the threads take: about ``per_thread`` chunks per
    thread of equal pair counts, each bound moved to the start of a run of pairs with the same owner
    (``owners (E,)``), so that no owner's ``P D_k`` rows are computed twice at a bound."""
    n_pairs = len(owners)
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    wanted = np.arange(0, n_pairs, max(1, -(-n_pairs // (per_thread * max(1, n_threads)))))
    bounds = np.unique(starts[np.minimum(np.searchsorted(starts, wanted), len(starts) - 1)])
    return np.r_[bounds, n_pairs].astype(np.int64)


def operator_contract(
    pairs: np.ndarray, shifts: np.ndarray, swap: np.ndarray, species: np.ndarray, proj_atoms: np.ndarray,
    proj_shifts: np.ndarray, proj_ptr: np.ndarray, entry_row: np.ndarray, entry_rows: np.ndarray, entry_cols: np.ndarray,
    packed: np.ndarray, operators: np.ndarray, energies: np.ndarray, order: np.ndarray, n_orb: np.ndarray,
    block_ptr: np.ndarray, out: np.ndarray | None = None, *, isa: str | None = None, threads: int | None = None,
) -> np.ndarray:
    """As :func:`hforge.ops.two_centre.reference.operator_contract`, in the dtype of ``packed``
    (float32 or float64), written into ``out`` (contiguous, that dtype; no copy) when given.

    Args:
        isa: the instruction set (a key of :data:`hforge.ops._cpu.ISAS`); None: the best one here
            (or ``HFORGE_CPU_ISA``'s).
        threads: None: torch's thread count (the prediction's, :func:`hforge.infer.report.thread_count`).

    Raises:
        InputError: ``packed`` neither float32 nor float64, a width over 256 columns, or an ``out``
            of another dtype or size.
        BackendUnavailableError: the library is not built here, or lacks ``isa``.
    """
    library = load_library()
    dtype = packed.dtype
    if dtype not in (np.float32, np.float64):
        raise InputError(f"operator_contract: packed is {dtype}, the cpp kernel takes float32 or float64")
    if packed.shape[1] > 256:
        raise InputError(f"operator_contract: {packed.shape[1]} projector columns, the cpp kernel takes up to 256")
    n_out = int(block_ptr[-1])
    if out is None:
        out = np.empty(n_out, dtype=dtype)
    elif out.dtype != dtype or out.shape != (n_out,) or not out.flags.c_contiguous:
        raise InputError(f"operator_contract: out must be a contiguous ({n_out},) {dtype} array, got {out.shape} {out.dtype}")
    arrays = {
        "pairs": _i64(pairs), "shifts": _i64(shifts), "swap": np.ascontiguousarray(swap, dtype=np.uint8),
        "species": _i64(species), "proj_atoms": _i64(proj_atoms), "proj_keys": _keys_of(proj_atoms, proj_shifts, shifts),
        "proj_ptr": _i64(proj_ptr),
        "entry_row": _i64(entry_row), "entry_rows": _i64(entry_rows), "entry_cols": _i64(entry_cols),
        "packed": np.ascontiguousarray(packed),
        "operators": np.ascontiguousarray(operators, dtype=dtype),
        "energies": np.ascontiguousarray(energies, dtype=dtype), "order": _i64(order), "n_orb": _i64(n_orb),
        "block_ptr": _i64(block_ptr), "out": out,
    }
    n_pairs = arrays["pairs"].shape[1]
    if n_pairs == 0:
        return out
    args = ContractArgs(
        n_pairs=n_pairs, n_atoms=len(arrays["species"]), width=packed.shape[1], n_op=arrays["operators"].shape[1],
        rows_pad=arrays["order"].shape[1], energy_stride=arrays["energies"].shape[1],
        max_entries=max(1, int(np.diff(arrays["proj_ptr"]).max(initial=0))),
        **{name: array.ctypes.data for name, array in arrays.items()},
    )
    n_threads = torch.get_num_threads() if threads is None else threads
    function = library.lib.hforge_operator_contract_f32 if dtype == np.float32 else library.lib.hforge_operator_contract_f64
    chunks = operator_chunks(np.where(arrays["swap"], arrays["pairs"][1], arrays["pairs"][0]), n_threads)
    status = function(
        ctypes.byref(args), ISAS[isa] if isa else ISAS[library.isa], n_threads, len(chunks) - 1, chunks.ctypes.data
    )
    if status == 2:
        raise BackendUnavailableError(f"operator_contract: instruction set {isa} is not in {library.path} or not on this CPU")
    if status != 0:
        raise RuntimeError(f"operator_contract (cpp, {isa or library.isa}): {_STATUS.get(status, f'status {status}')}")
    return out


def _run_program(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, out: np.ndarray,
    isa: str | None, threads: int | None, **fields: object,
) -> None:
    """Run the compiled program kernel over the pairs with the output ``fields`` of ``HForgeProgramArgs``."""
    library = load_library()
    if program.lmax > PROGRAM_MAX_DEGREE:
        raise InputError(
            f"program {program.name!r}: harmonics up to l = {program.lmax}, the cpp kernel takes up to {PROGRAM_MAX_DEGREE}"
        )
    pair_type, vectors = _i64(pair_type), np.ascontiguousarray(vectors, dtype=np.float64).reshape(-1, 3)
    n_pairs = len(pair_type)
    if n_pairs == 0:
        return
    order = np.argsort(pair_type, kind="stable")
    arrays = {
        "pair_type": pair_type, "order": order, "slot_ptr": _i64(program.slot_ptr), "slot_table": _i64(program.slot_table),
        "entry_ptr": _i64(program.entry_ptr), "term_ptr": _i64(program.term_ptr), "term_slot": _i64(program.term_slot),
        "term_lm": _i64(program.term_lm), "cols": _i64(program.cols), "vectors": vectors,
        "term_coef": np.ascontiguousarray(program.term_coef, dtype=np.float64),
        "values": np.ascontiguousarray(tables.values, dtype=np.float64),
        "reach": np.ascontiguousarray(tables.reach, dtype=np.float64),
        "out": out,
    }
    arrays.update({name: value for name, value in fields.items() if isinstance(value, np.ndarray)})
    sizes = {name: int(value) for name, value in fields.items() if not isinstance(value, np.ndarray)}
    args = ProgramArgs(
        n_pairs=n_pairs, lmax=program.lmax, n_knots=tables.values.shape[1], max_slots=program.max_slots,
        max_entries=max(1, int(np.diff(program.entry_ptr).max(initial=0))), step=float(tables.step), **sizes,
        **{name: array.ctypes.data for name, array in arrays.items()},
    )
    n_threads = torch.get_num_threads() if threads is None else threads
    n_chunks = max(1, min(n_pairs // 64, 8 * n_threads))
    code = ISAS[isa] if isa else ISAS[library.isa]
    status = library.lib.hforge_two_centre_program(ctypes.byref(args), code, n_threads, n_chunks)
    if status == 2:
        raise BackendUnavailableError(f"two-centre program: instruction set {isa} is not in {library.path} or not on this CPU")
    if status != 0:
        raise RuntimeError(f"two-centre program (cpp, {isa or library.isa}): {_STATUS.get(status, f'status {status}')}")


def program_blocks(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, block_ptr: np.ndarray,
    out: np.ndarray | None = None, accumulate: bool = False, *, isa: str | None = None, threads: int | None = None,
) -> np.ndarray:
    """Flat float64 blocks of ``program`` (see :func:`hforge.ops.two_centre.reference.program_blocks`),
    written into (``accumulate``: added to) ``out`` when given (contiguous float64 of ``block_ptr[-1]``
    values; a view of a larger buffer: no copy).  ``isa``, ``threads``: as :func:`operator_contract`.

    Raises:
        InputError: an ``out`` of another dtype or size, harmonics beyond degree 12.
        BackendUnavailableError: the library is not built here, or lacks ``isa``.
    """
    n_out = int(block_ptr[-1])
    if out is None:
        out, accumulate = np.empty(n_out), False
    elif out.dtype != np.float64 or out.shape != (n_out,) or not out.flags.c_contiguous:
        raise InputError(f"program_blocks: out must be a contiguous ({n_out},) float64 array, got {out.shape} {out.dtype}")
    _run_program(
        program, tables, pair_type, vectors, out, isa, threads, mode=0, accumulate=bool(accumulate), out_double=1,
        out_stride=0, col0=0, rank_stride=0, block_ptr=_i64(block_ptr),
    )
    return out


def program_packed(
    program: BlockProgram, tables: RadialTables, pair_type: np.ndarray, vectors: np.ndarray, entry_species: np.ndarray,
    rank: np.ndarray, col0: int, entry_row: np.ndarray, entry_rows: np.ndarray, out: np.ndarray, *, isa: str | None = None,
    threads: int | None = None,
) -> None:
    """The blocks of ``program`` written straight into the packed rows of ``out`` (see
    :func:`hforge.ops.two_centre.reference.program_packed`; ``out`` C-contiguous float32 or float64, the
    values computed in float64): only the rows an entry keeps are computed.

    Raises:
        InputError: an ``out`` of another dtype, not contiguous, or too narrow for ``col0`` and the
            program's columns; harmonics beyond degree 12.
        BackendUnavailableError: the library is not built here, or lacks ``isa``.
    """
    if out.dtype not in (np.float32, np.float64) or out.ndim != 2 or not out.flags.c_contiguous:
        raise InputError(f"program_packed: out must be a C-contiguous 2-d float32 or float64 array, got {out.shape} {out.dtype}")
    last = col0 + int(program.cols.max(initial=0))
    if col0 < 0 or last > out.shape[1]:
        raise InputError(f"program_packed: columns {col0}..{last} outside the {out.shape[1]} of out")
    rank = _i64(rank)
    _run_program(
        program, tables, pair_type, vectors, out, isa, threads, mode=1, accumulate=False, out_double=int(out.dtype == np.float64),
        out_stride=out.shape[1], col0=int(col0), rank_stride=rank.shape[1],
        entry_species=_i64(entry_species), rank=rank, entry_row=_i64(entry_row), entry_rows=_i64(entry_rows),
    )
