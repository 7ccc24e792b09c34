r"""A learned separable operator's blocks: ``O(i, j, n) = sum_{(k, m)} P(i; k, m) D_k P(j; k, m - n)^T``.

``P(i; k, m) = <phi_i | chi_k(m)>`` are the projections of atom ``i``'s orbitals on the projector
functions (:mod:`hforge.ops.two_centre.projectors`) of atom ``k`` in lattice image ``m``, ``D_k``
a symmetric ``n_p x n_p`` matrix (eV) per atom.  ``O`` is the matrix of the operator
``sum_k |chi_k> D_k <chi_k|``, bounded along every direction of the basis (projectors module), and
it is evaluated only on the requested block pairs (the model's: ``|r_ij| < r_i + r_j``).  The
operator itself reaches ``r_i + r_j + 2 R``; the couplings beyond ``r_i + r_j`` are products of
two orbital tails with a projector and are left out (measured on a 32-atom aBN cell, ``R = 1.2``
Å: at most 1e-4 of the largest block entry, docs/design.md).

:class:`SeparableContext` keeps one cell's projector neighbour list (like
:class:`~hforge.ops.two_centre.baseline.BaselineContext`), so any subset of block pairs (an atom
range of streamed prediction) is evaluated without searching the cell again:
:meth:`~SeparableContext.blocks` with numpy operators (the two-centre backends, no gradient) and
:meth:`~SeparableContext.torch_blocks` with torch operators (differentiable in ``D``, training).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.basis.radial import ANG_TO_BOHR
from hforge.ops.two_centre import _pair_vectors, block_pointer, program_blocks, separable_contract
from hforge.ops.two_centre.baseline import CellPairs, reach_pairs
from hforge.ops.two_centre.projectors import ProjectorDescriptor, ProjectorSet, projector_descriptor

__all__ = ["SeparableContext"]


class SeparableContext:
    """One structure's projector neighbours, for the separable blocks of any subset of its pairs.

    Args:
        basis: a basis with radial tables.
        projectors: the projector set of the operator.
        species, positions, cell, pbc: the structure (Å; cell rows are lattice vectors).
        backend: of the two-centre kernels.
    """

    def __init__(
        self, basis: BasisSet, projectors: ProjectorSet, species: np.ndarray, positions: np.ndarray, cell: np.ndarray,
        pbc: Any, *, backend: str = "auto",
    ) -> None:
        self.basis = basis
        self.desc: ProjectorDescriptor = projector_descriptor(basis, projectors)
        self.species = np.asarray(species, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.cell = np.asarray(cell, dtype=np.float64)
        self.pbc = pbc
        self.backend = backend

    @property
    def n_proj(self) -> int:
        """Projector functions per atom."""
        return int(self.desc.n_proj[0])

    @cached_property
    def pairs(self) -> CellPairs:
        """Every atom's projector atoms ``(i, k, m)`` with ``|r_ik| < r_i + R`` (sorted by ``(i, k, m)``)."""
        radius = np.full(len(self.basis), self.desc.projectors.radius * ANG_TO_BOHR)
        return reach_pairs(self.positions, self.cell, self.pbc, self.species, self.desc.orbital_reach, radius)

    def projections(self, atoms_touched: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The projector entries of the atoms flagged in ``atoms_touched (N,) bool``:
        ``(rows, proj_ptr (N + 1,), proj_block_ptr, projections)`` with ``rows`` the entries'
        positions in :attr:`pairs` (others get no entries; blocks float64, flat row-major
        ``n_orb_i x n_p``)."""
        i, k = self.pairs.edge_index
        rows = np.flatnonzero(atoms_touched[i])
        pair_type = self.species[i[rows]] * len(self.basis) + self.species[k[rows]]
        program = self.desc.projection
        ptr = block_pointer(program, pair_type)
        vectors = _pair_vectors(self.positions, self.cell, self.pairs.edge_index[:, rows], self.pairs.cell_shift[rows])
        values = program_blocks(program, self.desc.tables, pair_type, vectors, ptr, backend=self.backend)
        proj_ptr = np.searchsorted(i[rows], np.arange(len(self.positions) + 1)).astype(np.int64)
        return rows, proj_ptr, ptr, values

    def _touched(self, edge_index: np.ndarray) -> np.ndarray:
        touched = np.zeros(len(self.positions), dtype=bool)
        touched[np.asarray(edge_index).reshape(-1)] = True
        return touched

    def blocks(
        self, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray, operators: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Flat float64 blocks (eV) of the pairs ``(i, j, n)`` on ``block_ptr`` for the matrices
        ``operators (N, n_p, n_p)`` (added to ``out`` when given)."""
        return self.blocks_of_many(edge_index, cell_shift, block_ptr, [operators], out=out)[0]

    def blocks_of_many(
        self, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray, operator_sets: list[np.ndarray],
        out: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """:meth:`blocks` for several operator sets on the same pairs (the projections computed once),
        e.g. the columns of a least-squares fit; ``out`` (accumulated into) for one set only."""
        edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
        cell_shift = np.asarray(cell_shift, dtype=np.int64).reshape(-1, 3)
        block_ptr = np.asarray(block_ptr, dtype=np.int64)
        rows, proj_ptr, ptr, values = self.projections(self._touched(edge_index))
        k = self.pairs.edge_index[1, rows].astype(np.int64)
        n_p = self.n_proj
        P = values.reshape(-1, n_p)
        entry_k = np.repeat(k, np.diff(ptr) // n_p)
        order = np.argsort(entry_k, kind="stable")
        atoms, starts = np.unique(entry_k[order], return_index=True)
        groups = np.split(order, starts[1:])
        results = []
        for operators in operator_sets:
            operators = np.asarray(operators, dtype=np.float64)
            left = np.empty_like(P)
            for atom, rows_of_atom in zip(atoms, groups):  # P D_k, atom by atom (no per-row copy of D)
                left[rows_of_atom] = P[rows_of_atom] @ operators[atom]
            left = left.reshape(-1)
            results.append(separable_contract(
                edge_index, cell_shift, k, self.pairs.cell_shift[rows], proj_ptr, ptr, left, values, self.basis.n_orbitals,
                self.desc.n_proj, self.species, block_ptr, out=out, accumulate=out is not None, backend=self.backend,
            ))
        return results

    def torch_blocks(
        self, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray, operators: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`blocks` in torch, differentiable in ``operators (N, n_p, n_p)`` (their dtype and device)."""
        from hforge.ops.two_centre import numba as kernels
        from hforge.ops.two_centre import reference

        edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
        cell_shift = np.asarray(cell_shift, dtype=np.int64).reshape(-1, 3)
        rows, proj_ptr, ptr, values = self.projections(self._touched(edge_index))
        k = self.pairs.edge_index[1, rows].astype(np.int64)
        matches = kernels.separable_matches(edge_index, cell_shift, k, self.pairs.cell_shift[rows], proj_ptr)
        n_orb = self.basis.n_orbitals
        n_p, n_max = self.n_proj, int(n_orb.max())
        entry_rows = n_orb[self.species[self.pairs.edge_index[0, rows]]]
        padded = np.zeros((len(rows), n_max, n_p))
        for n in np.unique(entry_rows):
            sel = np.flatnonzero(entry_rows == n)
            starts = ptr[sel]
            padded[sel, :n] = values[starts[:, None] + np.arange(n * n_p)[None, :]].reshape(-1, n, n_p)
        device = operators.device
        as_tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        return reference.separable_blocks(
            as_tensor(matches), as_tensor(padded), operators, as_tensor(k), as_tensor(entry_rows),
            as_tensor(n_orb[self.species[edge_index[0]]]), as_tensor(n_orb[self.species[edge_index[1]]]),
            as_tensor(np.asarray(block_ptr, dtype=np.int64)),
        )
