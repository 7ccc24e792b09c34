"""GPU CSR assembly: launches ``kernels/assemble.cu`` through CuPy (launch sequence documented there).

The host build of the same kernels, driven in the same order by
``kernels/host/test_assemble.cpp``, is what the CPU-only CI tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hforge.errors import InputError
from hforge.ops._cuda import load_module
from hforge.ops.assemble.layout import AssemblyInputs, offsets

__all__ = ["CupyPlan", "fill_cupy", "fill_pairs_cupy", "plan_cupy"]

_THREADS_PER_BLOCK = 256
_MAX_BLOCKS = 1 << 20  # the fill kernel strides over the rest
_NO_PAIR = np.iinfo(np.int64).max
_SUFFIXES = {
    (np.dtype(np.float64), np.dtype(np.int32)): "f64_i32",
    (np.dtype(np.float64), np.dtype(np.int64)): "f64_i64",
    (np.dtype(np.float32), np.dtype(np.int32)): "f32_i32",
    (np.dtype(np.float32), np.dtype(np.int64)): "f32_i64",
}


@dataclass(frozen=True, eq=False)
class CupyPlan:
    """Directed pairs sorted by key (row atom, supercell, column atom) and their column offsets.

    Attributes:
        keys: ``(D,)`` int64 sorted keys.
        slots: ``(D,)`` int64, ``e`` for block e as it is, ``E + e`` for its transpose.
        pair_offsets: ``(D,)`` int64 offset of each block within its rows, or, with a mask,
            ``(D * max_orbitals,)`` per block row.
        slot_offset: ``(2E,)`` int64 the same offsets per slot (-1: not in the range), for
            filling by pairs; None with a mask.
    """

    keys: Any
    slots: Any
    pair_offsets: Any
    slot_offset: Any = None


def _kernel_name(prefix: str, data: Any, indices: Any) -> str:
    suffix = _SUFFIXES.get((np.dtype(data.dtype), np.dtype(indices.dtype)))
    if suffix is None:
        raise InputError(f"assemble_csr (cupy): no kernel for values {data.dtype} with indices {indices.dtype}")
    return f"{prefix}_{suffix}"


def _grid(n_threads: int) -> tuple[int]:
    return (max(1, min(_MAX_BLOCKS, -(-n_threads // _THREADS_PER_BLOCK))),)


def _mask_pointer(inputs: AssemblyInputs) -> Any:
    import cupy

    return cupy.uint64(0) if inputs.mask is None else inputs.mask


def plan_cupy(inputs: AssemblyInputs) -> tuple[Any, CupyPlan]:
    """Keys, sort, row counts and ``indptr`` (int64, on the GPU) of the atom range.

    Raises:
        InputError: a pair given twice (two blocks for the same rows and columns).
    """
    import cupy

    module = load_module("assemble")
    i64 = cupy.int64
    n_pairs, n_atoms = inputs.n_pairs, inputs.n_atoms
    n_range = inputs.atom_end - inputs.atom_begin
    keys = cupy.empty(2 * n_pairs, dtype=i64)
    module.get_function("hf_assemble_pair_keys")(
        _grid(n_pairs),
        (_THREADS_PER_BLOCK,),
        (inputs.edge_index, inputs.cell_shift, i64(n_pairs), inputs.sc_lookup, *map(i64, inputs.nsc),
         i64(n_atoms), i64(inputs.atom_begin), i64(inputs.atom_end), keys),
    )
    order = cupy.argsort(keys)
    keys = keys[order]
    n_directed = int(cupy.count_nonzero(keys != _NO_PAIR))  # HF_NO_PAIR sorts last
    keys, slots = keys[:n_directed], order[:n_directed]
    if n_directed > 1 and bool((keys[1:] == keys[:-1]).any()):
        raise InputError("assemble_csr: a pair (i, j, n) is given twice (or with its partner (j, i, -n))")
    atom_pair_ptr = cupy.searchsorted(keys, cupy.arange(n_range + 1, dtype=i64) * (n_atoms * inputs.n_supercells))
    max_orbitals = inputs.max_orbitals
    row_counts = cupy.zeros(inputs.n_rows, dtype=i64)
    pair_offsets = cupy.empty(n_directed * (1 if inputs.mask is None else max_orbitals), dtype=i64)
    module.get_function("hf_assemble_row_counts")(
        _grid(n_range * max_orbitals),
        (_THREADS_PER_BLOCK,),
        (keys, slots, atom_pair_ptr, i64(n_range), i64(max_orbitals), inputs.orbitals_per_atom,
         inputs.orbital_offset, i64(inputs.atom_begin), i64(n_atoms), i64(n_pairs), inputs.block_ptr,
         _mask_pointer(inputs), row_counts, pair_offsets),
    )
    slot_offset = None
    if inputs.mask is None:
        slot_offset = cupy.full(2 * n_pairs, -1, dtype=i64)
        slot_offset[slots] = pair_offsets
    return offsets(row_counts), CupyPlan(keys, slots, pair_offsets, slot_offset)


def fill_cupy(
    inputs: AssemblyInputs, plan: CupyPlan, indptr: Any, blocks: tuple[Any, ...], indices: Any, data: Any
) -> None:
    """Write column indices and the ``(nnz, K)`` values of the planned rows into ``indices`` and ``data``."""
    import cupy

    name = _kernel_name("hf_assemble_fill", data, indices)
    i64 = cupy.int64
    block_pointers = cupy.asarray([b.data.ptr for b in blocks], dtype=cupy.uint64)
    max_orbitals = inputs.max_orbitals
    n_directed = int(plan.keys.shape[0])
    load_module("assemble").get_function(name)(
        _grid(n_directed * max_orbitals * max_orbitals),
        (_THREADS_PER_BLOCK,),
        (plan.keys, plan.slots, i64(n_directed), i64(max_orbitals), inputs.orbitals_per_atom, inputs.orbital_offset,
         i64(inputs.atom_begin), i64(inputs.n_atoms), i64(inputs.n_supercells), i64(inputs.n_pairs),
         inputs.block_ptr, _mask_pointer(inputs), plan.pair_offsets, block_pointers, i64(len(blocks)), indptr,
         indices, data),
    )


def fill_pairs_cupy(
    inputs: AssemblyInputs, plan: CupyPlan, indptr: Any, pairs: Any, local_ptr: Any, blocks: tuple[Any, ...],
    indices: Any, data: Any,
) -> None:
    """Write the entries of the canonical ``pairs`` (blocks at ``local_ptr``) and of their transposes
    that lie in the planned rows (``hf_assemble_fill_pairs``)."""
    import cupy

    i64 = cupy.int64
    n_given, max_orbitals = int(pairs.shape[0]), inputs.max_orbitals
    if n_given == 0:
        return
    block_pointers = cupy.asarray([b.data.ptr for b in blocks], dtype=cupy.uint64)
    load_module("assemble").get_function(_kernel_name("hf_assemble_fill_pairs", data, indices))(
        _grid(n_given * max_orbitals * max_orbitals),
        (_THREADS_PER_BLOCK,),
        (pairs, i64(n_given), local_ptr, inputs.edge_index, inputs.cell_shift, i64(inputs.n_pairs), inputs.sc_lookup,
         *map(i64, inputs.nsc), i64(max_orbitals), inputs.orbitals_per_atom, inputs.orbital_offset, i64(inputs.n_atoms),
         i64(inputs.atom_begin), i64(inputs.atom_end), plan.slot_offset, block_pointers, i64(len(blocks)),
         indptr, indices, data),
    )
