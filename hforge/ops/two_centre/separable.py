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
:meth:`~SeparableContext.blocks` with numpy operators (the two-centre backends, no gradient, float64),
:meth:`~SeparableContext.torch_blocks` with torch operators (differentiable in ``D``, training) and
:meth:`~SeparableContext.operator_blocks`, inference's path: the projections of the atoms the pairs
touch packed once per call (:class:`PackedProjections`: rows in reach order, float32 or float64),
``P D_k`` computed per owner atom inside the kernel, optionally with the Kleinman-Bylander part of H
in the same contraction (``kb_scale``: ``V_KB`` is the separable operator of the KB projectors with
their energies, so ``V_KB + O`` is one sum over the projectors of both sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.basis.radial import ANG_TO_BOHR, RY_TO_EV
from hforge.ops.two_centre import (
    _pair_vectors,
    block_pointer,
    operator_contract,
    program_blocks,
    program_packed,
    separable_contract,
    two_centre_descriptor,
)
from hforge.ops.two_centre.baseline import CellPairs, reach_pairs
from hforge.ops.two_centre.projectors import ProjectorDescriptor, ProjectorSet, projector_descriptor

__all__ = ["PackedProjections", "SeparableContext", "reach_order"]

#: Projection entries evaluated per step while packing (temporaries: a few KB per entry).
PACK_BATCH = 8192


def reach_order(basis: BasisSet) -> tuple[np.ndarray, np.ndarray]:
    """``(order, cutoffs)``, ``(n_species, rows)`` each, ``rows`` the most orbitals of a species rounded
    up to even: every species' orbitals by decreasing shell cut-off (stable; ``order[s, r]`` the
    orbital of row ``r``, -1 beyond the species' orbitals) and those cut-offs (Bohr; -inf beyond).
    An orbital's projection on a function of radius ``R`` at distance ``d`` vanishes when ``d >=``
    its cut-off ``+ R``, so the nonzero rows of an entry in this order are a prefix."""
    n_rows = int(basis.n_orbitals.max())
    n_rows += n_rows % 2
    order = np.full((len(basis), n_rows), -1, dtype=np.int64)
    cutoffs = np.full((len(basis), n_rows), -np.inf)
    for s, species in enumerate(basis):
        per_orbital = np.zeros(species.n_orbitals)
        for a, radial in enumerate(species.radials.orbitals):
            per_orbital[species.shell_slices[a]] = radial.cutoff
        rank = np.argsort(-per_orbital, kind="stable")
        order[s, : len(rank)] = rank
        cutoffs[s, : len(rank)] = per_orbital[rank]
    return order, cutoffs


@dataclass(frozen=True, eq=False)
class PackedProjections:
    """The projections of a cell's touched atoms on every projector function they reach, packed.

    Attributes:
        rows: ``(A,)`` positions of the entries in :attr:`SeparableContext.pairs`.
        proj_atoms, proj_shifts: ``(A,)`` and ``(A, 3)`` int64: every entry's projector atom and its image.
        proj_ptr: ``(N + 1,)`` entries of atom ``i``: ``proj_ptr[i]:proj_ptr[i + 1]`` (atoms not
            touched have none).
        entry_row: ``(A,)`` first row of every entry in :attr:`values`.
        entry_rows: ``(A,)`` rows of every entry: its orbitals that reach the entry's projector atom,
            in reach order (:func:`reach_order`), rounded up to even (padding rows zero).
        entry_cols: ``(A,)`` columns that may be nonzero: all, or the learned projectors' alone for
            an entry beyond the reach of its projector atom's KB projectors.
        values: ``(sum entry_rows, width)`` float32 or float64: per entry its rows of
            ``[<phi|chi_k> (n_p columns), 0, <phi|chi_KB,k> (the KB projectors of atom k), 0]``, the
            KB part from column :attr:`SeparableContext.sep_width` on.
    """

    rows: np.ndarray
    proj_atoms: np.ndarray
    proj_shifts: np.ndarray
    proj_ptr: np.ndarray
    entry_row: np.ndarray
    entry_rows: np.ndarray
    entry_cols: np.ndarray
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + 7 * self.rows.nbytes + self.proj_shifts.nbytes + self.proj_ptr.nbytes)


class SeparableContext:
    """One structure's projector neighbours, for the separable blocks of any subset of its pairs.

    Args:
        basis: a basis with radial tables.
        projectors: the projector set of the operator.
        species, positions, cell, pbc: the structure (Å; cell rows are lattice vectors).
        backend: of the two-centre kernels.
        kb_scale: with a value ``c``, :meth:`operator_blocks` adds ``c V_KB`` (the basis'
            Kleinman-Bylander projectors, eV) in the same contraction; the neighbour list then reaches
            the farther of both projector sets.
    """

    def __init__(
        self, basis: BasisSet, projectors: ProjectorSet, species: np.ndarray, positions: np.ndarray, cell: np.ndarray,
        pbc: Any, *, backend: str = "auto", kb_scale: float | None = None,
    ) -> None:
        self.basis = basis
        self.desc: ProjectorDescriptor = projector_descriptor(basis, projectors)
        self.species = np.asarray(species, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.cell = np.asarray(cell, dtype=np.float64)
        self.pbc = pbc
        self.backend = backend
        self._spare_values: np.ndarray | None = None  # release() keeps, pack() fills again
        self.kb_scale = None if kb_scale is None else float(kb_scale)

    @property
    def n_proj(self) -> int:
        """Projector functions per atom."""
        return int(self.desc.n_proj[0])

    @property
    def reach(self) -> np.ndarray:
        """``(n_species,)`` Bohr: the radius of the projector functions on an atom of each species
        (with ``kb_scale``, the larger of it and the species' KB projectors)."""
        radius = np.full(len(self.basis), self.desc.projectors.radius * ANG_TO_BOHR)
        if self.kb_scale is not None:
            radius = np.maximum(radius, two_centre_descriptor(self.basis).projector_reach)
        return radius

    @cached_property
    def pairs(self) -> CellPairs:
        """Every atom's projector atoms ``(i, k, m)`` with ``|r_ik| < r_i + R_k`` (:attr:`reach`; sorted by ``(i, k, m)``)."""
        return reach_pairs(self.positions, self.cell, self.pbc, self.species, self.desc.orbital_reach, self.reach)

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

    # ---- inference: packed projections, one contraction ---------------------------------------
    @cached_property
    def _kb_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """``(n_kb (n_species,), energies (n_species, max n_kb))``: the KB projector functions of every
        species and their energies times ``kb_scale`` (eV; zero-padded), none without ``kb_scale``."""
        n_species = len(self.basis)
        if self.kb_scale is None:
            return np.zeros(n_species, dtype=np.int64), np.zeros((n_species, 0))
        kb = two_centre_descriptor(self.basis).kb_energy
        n_kb = np.array([len(e) for e in kb], dtype=np.int64)
        energies = np.zeros((n_species, int(n_kb.max(initial=0))))
        for s, e in enumerate(kb):
            energies[s, : len(e)] = np.asarray(e) * RY_TO_EV * self.kb_scale
        return n_kb, energies

    @property
    def sep_width(self) -> int:
        """Columns of the learned projectors in :attr:`PackedProjections.values`: ``n_p`` rounded up to 4."""
        return -(-self.n_proj // 4) * 4

    @property
    def width(self) -> int:
        """Columns of :attr:`PackedProjections.values`: :attr:`sep_width`, then the most KB functions
        of a species rounded up to 4."""
        return self.sep_width + -(-int(self._kb_columns[0].max(initial=0)) // 4) * 4

    def _layout(self, atoms_touched: np.ndarray) -> dict[str, np.ndarray]:
        """The entries of the atoms flagged in ``atoms_touched`` and their packed rows and columns
        (:class:`PackedProjections`' fields without the values), with their species and vectors (Bohr)."""
        i, k = self.pairs.edge_index
        rows = np.flatnonzero(atoms_touched[i])
        i, k = i[rows].astype(np.int64), k[rows].astype(np.int64)
        shift = self.pairs.cell_shift[rows].astype(np.int64)
        si, sk = self.species[i], self.species[k]
        vectors = _pair_vectors(self.positions, self.cell, np.stack([i, k]), shift)
        distance = np.linalg.norm(vectors, axis=1)
        _, cutoffs = reach_order(self.basis)
        reached = cutoffs[si] + (self.reach[sk] + 1e-6)[:, None] > distance[:, None]  # a prefix of every row
        entry_rows = reached.sum(axis=1)
        entry_rows += entry_rows % 2
        entry_row = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(entry_rows[:-1], out=entry_row[1:])
        entry_cols = np.full(len(rows), self.sep_width, dtype=np.int64)
        if self.kb_scale is not None:  # the longest orbital reaches the KB projectors
            kb_reach = cutoffs[si, 0] + two_centre_descriptor(self.basis).projector_reach[sk] + 1e-6
            entry_cols[kb_reach > distance] = self.width
        return {"rows": rows, "i": i, "k": k, "shift": shift, "si": si, "sk": sk, "vectors": vectors,
                "entry_rows": entry_rows, "entry_row": entry_row, "entry_cols": entry_cols}

    def pack_nbytes(self, atoms_touched: np.ndarray, dtype: Any = np.float64) -> int:
        """Bytes of :meth:`pack` of the same atoms (its layout computed, not its values)."""
        layout = self._layout(atoms_touched)
        n = len(layout["rows"])
        return int(layout["entry_rows"].sum()) * self.width * np.dtype(dtype).itemsize + n * 80 + 8 * (len(self.positions) + 1)

    def release(self, packed: PackedProjections | None) -> None:
        """Keep ``packed``'s values (nothing else holding them) for the next :meth:`pack` to fill again,
        where they are large enough and of its dtype: memory whose pages are mapped already, zeroed at
        memory speed, instead of fresh pages faulted in one by one; None lets any kept buffer go."""
        self._spare_values = None if packed is None else packed.values

    def pack(self, atoms_touched: np.ndarray, dtype: Any = np.float64) -> PackedProjections:
        """The :class:`PackedProjections` of the atoms flagged in ``atoms_touched (N,) bool``, ``dtype``
        float32 or float64 (the projections are computed in float64, straight into the packed rows,
        only those an entry keeps, :data:`PACK_BATCH` entries a step), in the buffer :meth:`release`
        kept where it fits (one that does not is let go before the new one is made)."""
        layout = self._layout(atoms_touched)
        rows, i, k, shift = layout["rows"], layout["i"], layout["k"], layout["shift"]
        si, sk, vectors = layout["si"], layout["sk"], layout["vectors"]
        entry_rows, entry_row, entry_cols = layout["entry_rows"], layout["entry_row"], layout["entry_cols"]
        order, _ = reach_order(self.basis)
        shape = (int(entry_rows.sum()), self.width)
        spare, self._spare_values = self._spare_values, None
        fits = spare is not None and spare.dtype == np.dtype(dtype) and spare.flags.c_contiguous
        if fits and spare.size >= shape[0] * shape[1]:
            values = spare.reshape(-1)[: shape[0] * shape[1]].reshape(shape)
            values.fill(0)
        else:
            del spare
            values = np.zeros(shape, dtype=dtype)
        rank = np.full((len(self.basis), int(self.basis.n_orbitals.max())), -1, dtype=np.int64)
        for s in range(len(self.basis)):
            rank[s, order[s][order[s] >= 0]] = np.arange(int((order[s] >= 0).sum()))
        programs = [(self.desc.projection, self.desc.tables, 0, np.arange(len(rows)))]
        if self.kb_scale is not None:
            kb = two_centre_descriptor(self.basis)
            programs.append((kb.program("projection"), kb.tables, self.sep_width, np.flatnonzero(entry_cols == self.width)))
        for program, tables, col0, entries in programs:
            for start in range(0, len(entries), PACK_BATCH):
                step = entries[start : start + PACK_BATCH]
                program_packed(
                    program, tables, si[step] * len(self.basis) + sk[step], vectors[step], si[step], rank, col0,
                    entry_row[step], entry_rows[step], values, backend=self.backend,
                )
        proj_ptr = np.searchsorted(i, np.arange(len(self.positions) + 1)).astype(np.int64)
        return PackedProjections(
            rows=rows, proj_atoms=k, proj_shifts=shift, proj_ptr=proj_ptr, entry_row=entry_row, entry_rows=entry_rows,
            entry_cols=entry_cols, values=values,
        )

    def operator_blocks(
        self, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray, operators: np.ndarray, *,
        swap: np.ndarray | None = None, dtype: Any = np.float64, out: np.ndarray | None = None,
        packed: PackedProjections | None = None,
    ) -> np.ndarray:
        """Blocks of ``sum_k |chi_k> D_k <chi_k|`` (plus ``kb_scale V_KB``) on the pairs ``(i, j, n)``
        (eV, flat on ``block_ptr``, ``dtype`` float32 or float64), for ``operators (N, n_p, n_p)``.

        ``swap (E,) bool``: the pairs whose block the kernel builds from the column atom's side (its
        ``P D_k`` rows; the value is the same to rounding, :meth:`~hforge.infer.problem.Problem.ranges`
        chooses the atom behind along a sweep); pairs that share that atom are best consecutive (its
        ``P D_k`` is computed once for them).  ``out``: written into (a view: no copy).  ``packed``:
        the :meth:`pack` of (at least) the atoms these pairs touch, in ``dtype``, shared by calls on
        subsets of a range of pairs (default: packed here)."""
        edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
        cell_shift = np.asarray(cell_shift, dtype=np.int64).reshape(-1, 3)
        swap = np.zeros(edge_index.shape[1], dtype=bool) if swap is None else np.asarray(swap, dtype=bool)
        if packed is None:
            packed = self.pack(self._touched(edge_index), dtype)
        order, _ = reach_order(self.basis)
        _, energies = self._kb_columns
        energies = np.pad(energies, ((0, 0), (self.sep_width - self.n_proj, self.width - self.sep_width - energies.shape[1])))
        return operator_contract(
            edge_index, cell_shift, swap, self.species, packed.proj_atoms, packed.proj_shifts, packed.proj_ptr,
            packed.entry_row, packed.entry_rows, packed.entry_cols, packed.values, np.asarray(operators, dtype=dtype),
            energies.astype(dtype),
            order, self.basis.n_orbitals,
            np.asarray(block_ptr, dtype=np.int64), backend=self.backend, out=out,
        )
