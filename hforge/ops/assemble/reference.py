"""Reference CSR assembly (the oracle of the tests): every entry as COO, then scipy's COO -> CSR.

Written for clarity, not speed or memory: it expands all entries of all blocks and of their
transposes into index arrays and lets scipy sort them.  The supercell index comes from
``sisl.Lattice.sc_index`` directly.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from hforge.errors import InputError
from hforge.ops.assemble.layout import AssemblyInputs

__all__ = ["assemble_reference", "fill_pairs_reference"]


def _entries(inputs: AssemblyInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and flat value position of every stored entry, both directions."""
    import sisl

    i, j = inputs.edge_index
    n_i, n_j = inputs.orbitals_per_atom[i], inputs.orbitals_per_atom[j]
    pair = np.repeat(np.arange(inputs.n_pairs), n_i * n_j)
    position = np.arange(inputs.n_values)
    local = position - inputs.block_ptr[pair]
    r, c = local // n_j[pair], local % n_j[pair]
    lattice = sisl.Lattice(np.eye(3), nsc=list(inputs.nsc))
    sc = np.asarray(lattice.sc_index(inputs.cell_shift), dtype=np.int64).reshape(-1)
    sc_partner = np.asarray(lattice.sc_index(-inputs.cell_shift), dtype=np.int64).reshape(-1)
    offset, no = inputs.orbital_offset, inputs.n_orbitals
    rows = offset[i][pair] + r
    cols = sc[pair] * no + offset[j][pair] + c
    onsite = (i == j) & ~inputs.cell_shift.any(axis=1)
    partner = ~onsite[pair]
    rows_t = offset[j][pair] + c
    cols_t = sc_partner[pair] * no + offset[i][pair] + r
    rows = np.concatenate([rows, rows_t[partner]])
    cols = np.concatenate([cols, cols_t[partner]])
    position = np.concatenate([position, position[partner]])
    keep = np.ones(rows.shape, bool) if inputs.mask is None else inputs.mask[position]
    first, last = inputs.orbital_offset[inputs.atom_begin], inputs.orbital_offset[inputs.atom_end]
    keep &= (rows >= first) & (rows < last)
    return rows[keep] - first, cols[keep], position[keep]


def _pattern(inputs: AssemblyInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, source)`` of the range's CSR: int64 row pointer, sorted column indices,
    and the flat value position (on ``block_ptr``) of every stored entry.

    Raises:
        InputError: two blocks write the same entry (a pair given twice).
    """
    rows, cols, position = _entries(inputs)
    # COO data = entry number + 1, so that duplicates show as a smaller nnz after summing.
    coo = scipy.sparse.coo_matrix(
        (np.arange(1, rows.size + 1, dtype=np.int64), (rows, cols)), shape=(inputs.n_rows, inputs.n_cols)
    )
    csr = coo.tocsr()
    csr.sum_duplicates()
    csr.sort_indices()
    if csr.nnz != rows.size:
        raise InputError(f"assemble_csr: {rows.size - csr.nnz} matrix entries written twice (a pair given twice?)")
    return csr.indptr.astype(np.int64), csr.indices.astype(np.int64), position[csr.data - 1]


def assemble_reference(
    inputs: AssemblyInputs, blocks: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of the rows of ``inputs``' atom range.

    Args:
        inputs: the validated problem.
        blocks: K flat value arrays on ``inputs.block_ptr`` (K may be 0 for the pattern alone).

    Returns:
        ``indptr`` int64 ``(n_rows + 1,)``, ``indices`` int64 ``(nnz,)`` sorted within rows, and
        ``data`` ``(nnz, K)``.

    Raises:
        InputError: two blocks write the same entry (a pair given twice).
    """
    indptr, indices, source = _pattern(inputs)
    dtype = np.result_type(*(b.dtype for b in blocks)) if blocks else np.float64
    data = np.empty((len(indices), len(blocks)), dtype=dtype)
    for k, values in enumerate(blocks):
        data[:, k] = values[source]
    return indptr, indices, data


def fill_pairs_reference(
    inputs: AssemblyInputs,
    pairs: np.ndarray,
    local_ptr: np.ndarray,
    blocks: tuple[np.ndarray, ...],
    indices_out: np.ndarray,
    data_out: np.ndarray,
) -> None:
    """Write the stored entries that come from the blocks of the canonical ``pairs`` (the blocks
    given in order at ``local_ptr``) into the range's ``indices_out`` and ``data_out``."""
    _, indices, source = _pattern(inputs)
    pair_of = np.repeat(np.arange(inputs.n_pairs), np.diff(inputs.block_ptr))[source]
    rank = np.full(inputs.n_pairs, -1, dtype=np.int64)
    rank[pairs] = np.arange(len(pairs))
    take = rank[pair_of] >= 0
    local = local_ptr[rank[pair_of[take]]] + source[take] - inputs.block_ptr[pair_of[take]]
    indices_out[take] = indices[take]
    for k, values in enumerate(blocks):
        data_out[take, k] = values[local]
