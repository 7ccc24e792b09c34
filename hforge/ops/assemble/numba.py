"""Parallel CPU CSR assembly (numba), one thread per row atom.

Plan (over pairs, never over nonzeros):
  1. bucket the directed pairs by row atom: the canonical pair ``e = (i, j, n)`` gives the
     forward pair (row atom i, block e) and, unless onsite, the partner (row atom j, block e
     transposed); each carries the key ``sc(n) * n_atoms + column atom``;
  2. sort each atom's pairs by key, which is the order of their columns within every row;
  3. count each row's nonzeros and prefix-sum them into ``indptr`` (:func:`hforge.ops.row_pointer`).
Fill: every row atom writes its rows left to right, each block's row (or column, for a
transposed block) at once, straight into the output buffers; threads own disjoint rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from hforge.errors import InputError
from hforge.ops.assemble.layout import AssemblyInputs
from hforge.ops.row_pointer import row_pointer

__all__ = ["NumbaPlan", "fill_numba", "plan_numba"]


@dataclass(frozen=True)
class NumbaPlan:
    """Directed pairs of the atom range, grouped by row atom and sorted by column.

    Attributes:
        atom_pair_ptr: ``(n_range_atoms + 1,)`` int64, the pairs of local row atom ``a`` are
            ``[atom_pair_ptr[a], atom_pair_ptr[a + 1])``.
        pair_slot: ``(D,)`` int64, ``e`` for block e as it is, ``E + e`` for its transpose.
        pair_key: ``(D,)`` int64, ``sc * n_atoms + column atom``.
    """

    atom_pair_ptr: np.ndarray
    pair_slot: np.ndarray
    pair_key: np.ndarray


@numba.njit(cache=True)
def _supercell_index(sc_lookup, nsc, n0, n1, n2):
    return sc_lookup[((n0 % nsc[0]) * nsc[1] + n1 % nsc[1]) * nsc[2] + n2 % nsc[2]]


@numba.njit(cache=True)
def _count_pairs_per_atom(edge_index, cell_shift, atom_begin, atom_end):
    counts = np.zeros(atom_end - atom_begin, dtype=np.int64)
    for e in range(edge_index.shape[1]):
        i, j = edge_index[0, e], edge_index[1, e]
        if atom_begin <= i < atom_end:
            counts[i - atom_begin] += 1
        onsite = i == j and cell_shift[e, 0] == 0 and cell_shift[e, 1] == 0 and cell_shift[e, 2] == 0
        if not onsite and atom_begin <= j < atom_end:
            counts[j - atom_begin] += 1
    return counts


@numba.njit(cache=True)
def _scatter_pairs(edge_index, cell_shift, sc_lookup, nsc, n_atoms, atom_begin, atom_end, atom_pair_ptr):
    n_pairs = edge_index.shape[1]
    n_directed = atom_pair_ptr[-1]
    slot = np.empty(n_directed, dtype=np.int64)
    key = np.empty(n_directed, dtype=np.int64)
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
    return slot, key


@numba.njit(parallel=True, cache=True)
def _sort_pairs(atom_pair_ptr, slot, key):
    """Sort every atom's pairs by key in place; returns the number of atoms with a repeated key."""
    n_range = atom_pair_ptr.shape[0] - 1
    repeated = np.zeros(n_range, dtype=np.int64)
    for a in numba.prange(n_range):
        begin, end = atom_pair_ptr[a], atom_pair_ptr[a + 1]
        order = np.argsort(key[begin:end]) + begin
        slot[begin:end] = slot[order]
        key[begin:end] = key[order]
        for p in range(begin + 1, end):
            if key[p] == key[p - 1]:
                repeated[a] = 1
    return repeated.sum()


@numba.njit(inline="always")
def _block_source(slot, n_pairs, block_ptr, r, n_row, n_col):
    """Flat position of entry (r, 0) of a directed block, and the step between its columns."""
    if slot < n_pairs:
        return block_ptr[slot] + r * n_col, 1
    return block_ptr[slot - n_pairs] + r, n_row


@numba.njit(parallel=True, cache=True)
def _row_counts(
    atom_pair_ptr, pair_slot, pair_key, n_pairs, orbitals_per_atom, orbital_offset, atom_begin, block_ptr, mask, masked
):
    n_range = atom_pair_ptr.shape[0] - 1
    n_atoms = orbitals_per_atom.shape[0]
    row_begin = orbital_offset[atom_begin]
    counts = np.zeros(orbital_offset[atom_begin + n_range] - row_begin, dtype=np.int64)
    for a in numba.prange(n_range):
        n_row = orbitals_per_atom[atom_begin + a]
        first_row = orbital_offset[atom_begin + a] - row_begin
        for p in range(atom_pair_ptr[a], atom_pair_ptr[a + 1]):
            n_col = orbitals_per_atom[pair_key[p] % n_atoms]
            for r in range(n_row):
                if masked:
                    src, step = _block_source(pair_slot[p], n_pairs, block_ptr, r, n_row, n_col)
                    for c in range(n_col):
                        if mask[src + c * step]:
                            counts[first_row + r] += 1
                else:
                    counts[first_row + r] += n_col
    return counts


@numba.njit(parallel=True, cache=True)
def _fill(
    atom_pair_ptr,
    pair_slot,
    pair_key,
    n_pairs,
    orbitals_per_atom,
    orbital_offset,
    atom_begin,
    block_ptr,
    mask,
    masked,
    blocks,
    indptr,
    indices,
    data,
):
    n_range = atom_pair_ptr.shape[0] - 1
    n_atoms = orbitals_per_atom.shape[0]
    n_orbitals = orbital_offset[n_atoms]
    row_begin = orbital_offset[atom_begin]
    n_matrices = len(blocks)
    for a in numba.prange(n_range):
        n_row = orbitals_per_atom[atom_begin + a]
        first_row = orbital_offset[atom_begin + a] - row_begin
        for r in range(n_row):
            dst = indptr[first_row + r]
            for p in range(atom_pair_ptr[a], atom_pair_ptr[a + 1]):
                col_atom = pair_key[p] % n_atoms
                n_col = orbitals_per_atom[col_atom]
                first_col = (pair_key[p] // n_atoms) * n_orbitals + orbital_offset[col_atom]
                src, step = _block_source(pair_slot[p], n_pairs, block_ptr, r, n_row, n_col)
                for c in range(n_col):
                    if masked and not mask[src]:
                        src += step
                        continue
                    indices[dst] = first_col + c
                    for k in range(n_matrices):
                        data[dst, k] = blocks[k][src]
                    dst += 1
                    src += step


def _mask_argument(inputs: AssemblyInputs) -> tuple[np.ndarray, bool]:
    if inputs.mask is None:
        return np.zeros(0, dtype=np.bool_), False
    return inputs.mask, True


def plan_numba(inputs: AssemblyInputs) -> tuple[np.ndarray, NumbaPlan]:
    """Group and sort the directed pairs of the atom range; return ``indptr`` (int64) and the plan.

    Raises:
        InputError: a pair given twice (two blocks for the same rows and columns).
    """
    args = (inputs.edge_index, inputs.cell_shift)
    counts = _count_pairs_per_atom(*args, inputs.atom_begin, inputs.atom_end)
    atom_pair_ptr = row_pointer(counts, backend="numba")
    nsc = np.asarray(inputs.nsc, dtype=np.int64)
    slot, key = _scatter_pairs(
        *args, inputs.sc_lookup, nsc, inputs.n_atoms, inputs.atom_begin, inputs.atom_end, atom_pair_ptr
    )
    if _sort_pairs(atom_pair_ptr, slot, key):
        raise InputError("assemble_csr: a pair (i, j, n) is given twice (or with its partner (j, i, -n))")
    plan = NumbaPlan(atom_pair_ptr, slot, key)
    mask, masked = _mask_argument(inputs)
    row_counts = _row_counts(
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
    return row_pointer(row_counts, backend="numba"), plan


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
        plan.pair_slot,
        plan.pair_key,
        inputs.n_pairs,
        inputs.orbitals_per_atom,
        inputs.orbital_offset,
        inputs.atom_begin,
        inputs.block_ptr,
        mask,
        masked,
        blocks,
        indptr,
        indices,
        data,
    )
