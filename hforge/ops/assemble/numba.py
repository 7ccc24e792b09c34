"""Parallel CPU CSR assembly (numba), one thread per row atom.

Plan (over pairs, never over nonzeros):
  1. bucket the directed pairs by row atom (sequential, O(E)): the canonical pair
     ``e = (i, j, n)`` gives the forward pair (row atom i, block e) and, unless onsite, the
     partner (row atom j, block e transposed); each carries the key ``sc(n) * n_atoms + column atom``;
  2. per row atom, in parallel: sort its pairs by key, which is the order of their columns in
     every row, turn them into fill descriptors (first column, block start, transposed) and
     count the nonzeros of its rows;
  3. prefix-sum the row counts into ``indptr`` (numpy's cumsum).
Fill: every row atom writes its rows left to right, a block's row (or column, for a transposed
block) at a time, straight into the output buffers; threads own disjoint rows.
Fill by pairs (:func:`fill_pairs_numba`): every given canonical pair writes its block into its row
atom's rows and its transpose into its column atom's rows, at the column offsets the plan keeps
per directed pair (``slot_offset``); threads own disjoint pairs, and no two pairs share an entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba.core import cgutils, types
from numba.extending import intrinsic

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)
from hforge.errors import InputError
from hforge.ops.assemble.layout import AssemblyInputs, offsets

__all__ = ["NumbaPlan", "fill_numba", "fill_pairs_numba", "plan_numba"]

@dataclass(frozen=True, eq=False)
class NumbaPlan:
    """Directed pairs of the atom range, grouped by row atom, in column order.

    Attributes:
        atom_pair_ptr: ``(n_range_atoms + 1,)`` int64, the pairs of local row atom ``a`` are
            ``[atom_pair_ptr[a], atom_pair_ptr[a + 1])``.
        pair_first_col: ``(D,)`` int64 output column of the block's first column.
        pair_block: ``(D,)`` int64 ``block_ptr`` offset of the block.
        pair_transposed: ``(D,)`` bool, the block is written transposed (partner pair).
        pair_n_col: ``(D,)`` int64 orbitals of the column atom.
        slot_offset: ``(2E,)`` int64 column offset, within every row of its row atom, of the
            block of canonical pair ``e`` (slot ``e``) and of its transpose (slot ``E + e``);
            -1 where that directed pair is not in the range (or is the partner of an onsite
            pair), and everywhere for a masked plan (rows of unequal lengths).
    """

    atom_pair_ptr: np.ndarray
    pair_first_col: np.ndarray
    pair_block: np.ndarray
    pair_transposed: np.ndarray
    pair_n_col: np.ndarray
    slot_offset: np.ndarray


@numba.njit(cache=True)
def _supercell_index(sc_lookup, nsc, n0, n1, n2):
    return sc_lookup[((n0 % nsc[0]) * nsc[1] + n1 % nsc[1]) * nsc[2] + n2 % nsc[2]]


@numba.njit(cache=True)
def _bucket_pairs(edge_index, cell_shift, sc_lookup, nsc, n_atoms, atom_begin, atom_end):
    """Directed pairs grouped by row atom: ``(atom_pair_ptr, slot, key)``, slot ``E + e`` = transposed."""
    n_pairs = edge_index.shape[1]
    atom_pair_ptr = np.zeros(atom_end - atom_begin + 1, dtype=np.int64)
    for e in range(n_pairs):
        i, j = edge_index[0, e], edge_index[1, e]
        if atom_begin <= i < atom_end:
            atom_pair_ptr[i - atom_begin + 1] += 1
        onsite = i == j and cell_shift[e, 0] == 0 and cell_shift[e, 1] == 0 and cell_shift[e, 2] == 0
        if not onsite and atom_begin <= j < atom_end:
            atom_pair_ptr[j - atom_begin + 1] += 1
    atom_pair_ptr = np.cumsum(atom_pair_ptr)  # n_atoms entries: not worth a parallel scan
    slot = np.empty(atom_pair_ptr[-1], dtype=np.int64)
    key = np.empty(atom_pair_ptr[-1], dtype=np.int64)
    cursor = atom_pair_ptr[:-1].copy()
    for e in range(n_pairs):
        i, j = edge_index[0, e], edge_index[1, e]
        n0, n1, n2 = cell_shift[e, 0], cell_shift[e, 1], cell_shift[e, 2]
        if atom_begin <= i < atom_end:
            p = cursor[i - atom_begin]
            cursor[i - atom_begin] += 1
            slot[p] = e
            key[p] = _supercell_index(sc_lookup, nsc, n0, n1, n2) * n_atoms + j
        onsite = i == j and n0 == 0 and n1 == 0 and n2 == 0
        if not onsite and atom_begin <= j < atom_end:
            p = cursor[j - atom_begin]
            cursor[j - atom_begin] += 1
            slot[p] = n_pairs + e
            key[p] = _supercell_index(sc_lookup, nsc, -n0, -n1, -n2) * n_atoms + i
    return atom_pair_ptr, slot, key


@numba.njit(parallel=True, cache=True)
def _describe_pairs(
    atom_pair_ptr, slot, key, n_pairs, orbitals_per_atom, orbital_offset, atom_begin, block_ptr, mask, masked
):
    """Sort every atom's pairs by key, write the fill descriptors and count the nonzeros of every row.

    Returns ``(first_col, block, transposed, n_col, slot_offset, row_counts, repeated)``;
    ``repeated`` is the number of atoms with two pairs of the same key (a pair given twice).
    """
    n_range = atom_pair_ptr.shape[0] - 1
    n_atoms = orbitals_per_atom.shape[0]
    n_orbitals = orbital_offset[n_atoms]
    n_directed = slot.shape[0]
    first_col = np.empty(n_directed, dtype=np.int64)
    block = np.empty(n_directed, dtype=np.int64)
    transposed = np.empty(n_directed, dtype=np.bool_)
    n_col = np.empty(n_directed, dtype=np.int64)
    slot_offset = np.full(2 * n_pairs, -1, dtype=np.int64)
    row_begin = orbital_offset[atom_begin]
    row_counts = np.zeros(orbital_offset[atom_begin + n_range] - row_begin, dtype=np.int64)
    repeated = np.zeros(n_range, dtype=np.int64)
    for a in numba.prange(n_range):
        begin, end = atom_pair_ptr[a], atom_pair_ptr[a + 1]
        order = np.argsort(key[begin:end])
        n_row = orbitals_per_atom[atom_begin + a]
        first_row = orbital_offset[atom_begin + a] - row_begin
        previous = -1
        dense_count = 0
        for q in range(end - begin):
            p, source = begin + q, begin + order[q]
            if key[source] == previous:
                repeated[a] = 1
            previous = key[source]
            col_atom = key[source] % n_atoms
            first_col[p] = (key[source] // n_atoms) * n_orbitals + orbital_offset[col_atom]
            n_col[p] = orbitals_per_atom[col_atom]
            transposed[p] = slot[source] >= n_pairs
            block[p] = block_ptr[slot[source] - n_pairs] if transposed[p] else block_ptr[slot[source]]
            if not masked:
                slot_offset[slot[source]] = dense_count
                dense_count += n_col[p]
                continue
            for r in range(n_row):
                src, step = _block_row(block[p], transposed[p], r, n_row, n_col[p])
                for c in range(n_col[p]):
                    if mask[src + c * step]:
                        row_counts[first_row + r] += 1
        if not masked:  # block-dense: every row of the atom holds the same columns
            row_counts[first_row : first_row + n_row] = dense_count
    return first_col, block, transposed, n_col, slot_offset, row_counts, repeated.sum()


@numba.njit(inline="always")
def _block_row(block, transposed, r, n_row, n_col):
    """Flat position of entry (r, 0) of a directed block, and the step between its columns."""
    if transposed:
        return block + r, n_row
    return block + r * n_col, 1


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to load ``array[index]``'s cache line (``llvm.prefetch``: read, high locality)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer.type, i32, i32, i32])
        # LLVM >= 17 reads every pointer as opaque `ptr`; older llvmlite builds emit typed `i8*`.
        name = "llvm.prefetch.p0" if llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"
        function = cgutils.get_or_insert_function(builder.module, function_type, name)
        builder.call(function, [byte_pointer, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(cache=True)
def _probe_prefetch(array):
    _prefetch(array, 0)


@numba.njit(inline="always")
def _no_prefetch(array, index):
    pass


def _checked_prefetch():
    """``_prefetch``, or a no-op where this numba/LLVM cannot compile it (a hint only)."""
    try:
        _probe_prefetch(np.zeros(1))
    except Exception:  # numba raises several error types for an intrinsic that LLVM rejects
        return _no_prefetch
    return _prefetch


_block_prefetch = _checked_prefetch()


@numba.njit(parallel=True, cache=True)
def _fill(
    atom_pair_ptr,
    pair_first_col,
    pair_block,
    pair_transposed,
    pair_n_col,
    orbitals_per_atom,
    orbital_offset,
    atom_begin,
    mask,
    masked,
    blocks,
    indptr,
    indices,
    flat_data,
):
    """Rows atom by atom, each left to right; ``flat_data`` is the ``(nnz, K)`` output raveled.

    A block row of a partner pair is a strided block column, and an atom's ~100 blocks are
    scattered in memory: the first row pass prefetches every block whole, so that the other
    rows find them in cache.
    """
    n_range = atom_pair_ptr.shape[0] - 1
    row_begin = orbital_offset[atom_begin]
    n_matrices = len(blocks)
    for a in numba.prange(n_range):
        n_row = orbitals_per_atom[atom_begin + a]
        first_row = orbital_offset[atom_begin + a] - row_begin
        for r in range(n_row):
            dst = indptr[first_row + r]
            for p in range(atom_pair_ptr[a], atom_pair_ptr[a + 1]):
                n_col, first_col = pair_n_col[p], pair_first_col[p]
                if r == 0:
                    for x in range(0, n_row * n_col, 8):  # 8 float64 to a 64-byte line
                        for k in range(n_matrices):
                            _block_prefetch(blocks[k], pair_block[p] + x)
                src, step = _block_row(pair_block[p], pair_transposed[p], r, n_row, n_col)
                if masked:
                    for c in range(n_col):
                        if mask[src + c * step]:
                            indices[dst] = first_col + c
                            for k in range(n_matrices):
                                flat_data[dst * n_matrices + k] = blocks[k][src + c * step]
                            dst += 1
                    continue
                row_indices = indices[dst : dst + n_col]
                row_data = flat_data[dst * n_matrices : (dst + n_col) * n_matrices]
                for c in range(n_col):
                    row_indices[c] = first_col + c
                for k in range(n_matrices):
                    values = blocks[k]
                    for c in range(n_col):
                        row_data[c * n_matrices + k] = values[src + c * step]
                dst += n_col


def _mask_argument(inputs: AssemblyInputs) -> tuple[np.ndarray, bool]:
    if inputs.mask is None:
        return np.zeros(0, dtype=np.bool_), False
    return inputs.mask, True


def plan_numba(inputs: AssemblyInputs) -> tuple[np.ndarray, NumbaPlan]:
    """Group and sort the directed pairs of the atom range; return ``indptr`` (int64) and the plan.

    Raises:
        InputError: a pair given twice (two blocks for the same rows and columns).
    """
    atom_pair_ptr, slot, key = _bucket_pairs(
        inputs.edge_index,
        inputs.cell_shift,
        inputs.sc_lookup,
        np.asarray(inputs.nsc, dtype=np.int64),
        inputs.n_atoms,
        inputs.atom_begin,
        inputs.atom_end,
    )
    mask, masked = _mask_argument(inputs)
    *descriptors, row_counts, repeated = _describe_pairs(
        atom_pair_ptr,
        slot,
        key,
        inputs.n_pairs,
        inputs.orbitals_per_atom,
        inputs.orbital_offset,
        inputs.atom_begin,
        inputs.block_ptr,
        mask,
        masked,
    )
    if repeated:
        raise InputError("assemble_csr: a pair (i, j, n) is given twice (or with its partner (j, i, -n))")
    return offsets(row_counts), NumbaPlan(atom_pair_ptr, *descriptors)


def fill_numba(
    inputs: AssemblyInputs,
    plan: NumbaPlan,
    indptr: np.ndarray,
    blocks: tuple[np.ndarray, ...],
    indices: np.ndarray,
    data: np.ndarray,
) -> None:
    """Write column indices and the ``(nnz, K)`` values of the planned rows into ``indices`` and ``data``."""
    mask, masked = _mask_argument(inputs)
    _fill(
        plan.atom_pair_ptr,
        plan.pair_first_col,
        plan.pair_block,
        plan.pair_transposed,
        plan.pair_n_col,
        inputs.orbitals_per_atom,
        inputs.orbital_offset,
        inputs.atom_begin,
        mask,
        masked,
        blocks,
        indptr,
        indices,
        data.reshape(-1),
    )


@numba.njit(parallel=True, cache=True)
def _fill_pairs(
    pairs,
    local_ptr,
    edge_index,
    cell_shift,
    sc_lookup,
    nsc,
    orbitals_per_atom,
    orbital_offset,
    atom_begin,
    atom_end,
    slot_offset,
    blocks,
    indptr,
    indices,
    flat_data,
):
    """Entries of the canonical ``pairs`` (blocks at ``local_ptr`` in ``blocks``) and of their
    transposes, where their row atom is in ``[atom_begin, atom_end)``; ``flat_data`` is ``(nnz, K)`` raveled."""
    n_pairs = edge_index.shape[1]
    n_orbitals = orbital_offset[orbital_offset.shape[0] - 1]
    row_begin = orbital_offset[atom_begin]
    n_matrices = len(blocks)
    for b in numba.prange(pairs.shape[0]):
        e = pairs[b]
        i, j = edge_index[0, e], edge_index[1, e]
        n0, n1, n2 = cell_shift[e, 0], cell_shift[e, 1], cell_shift[e, 2]
        n_i, n_j = orbitals_per_atom[i], orbitals_per_atom[j]
        src = local_ptr[b]
        if atom_begin <= i < atom_end:  # the block as it is: rows of i, n_j columns each
            first_col = _supercell_index(sc_lookup, nsc, n0, n1, n2) * n_orbitals + orbital_offset[j]
            for r in range(n_i):
                dst = indptr[orbital_offset[i] - row_begin + r] + slot_offset[e]
                for c in range(n_j):
                    indices[dst + c] = first_col + c
                    for k in range(n_matrices):
                        flat_data[(dst + c) * n_matrices + k] = blocks[k][src + r * n_j + c]
        onsite = i == j and n0 == 0 and n1 == 0 and n2 == 0
        if not onsite and atom_begin <= j < atom_end:  # its transpose: rows of j, n_i columns each
            first_col = _supercell_index(sc_lookup, nsc, -n0, -n1, -n2) * n_orbitals + orbital_offset[i]
            for c in range(n_j):
                dst = indptr[orbital_offset[j] - row_begin + c] + slot_offset[n_pairs + e]
                for r in range(n_i):
                    indices[dst + r] = first_col + r
                    for k in range(n_matrices):
                        flat_data[(dst + r) * n_matrices + k] = blocks[k][src + r * n_j + c]


def fill_pairs_numba(
    inputs: AssemblyInputs,
    plan: NumbaPlan,
    indptr: np.ndarray,
    pairs: np.ndarray,
    local_ptr: np.ndarray,
    blocks: tuple[np.ndarray, ...],
    indices: np.ndarray,
    data: np.ndarray,
) -> None:
    """Write the entries of the canonical ``pairs`` (and of their transposes) that lie in the
    planned rows; ``blocks`` hold the pairs' blocks in order, at ``local_ptr``."""
    _fill_pairs(
        pairs,
        local_ptr,
        inputs.edge_index,
        inputs.cell_shift,
        inputs.sc_lookup,
        np.asarray(inputs.nsc, dtype=np.int64),
        inputs.orbitals_per_atom,
        inputs.orbital_offset,
        inputs.atom_begin,
        inputs.atom_end,
        plan.slot_offset,
        blocks,
        indptr,
        indices,
        data.reshape(-1),
    )
