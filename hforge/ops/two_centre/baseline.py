"""The physical baseline ``H0 = c_T T + c_KB V_KB + c_NA V_NA + c_S S`` of a structure, from exact
two-centre integrals (the parts are SIESTA's own definitions):

- T, the kinetic matrix ``<i| -nabla^2 |j>`` (Ry -> eV);
- V_KB, ``sum_k <i|chi_k> E_k <chi_k|j>`` over the KB projectors of every atom (``nlefsm``);
- V_NA, the two-centre terms of the neutral-atom potentials: ``<i|V_NA,i + V_NA,j|j>`` for a pair,
  ``<i|V_NA,i|i'> + sum_{k != i} <i|V_NA,k|i'>`` (every periodic image within reach, i's own images
  included: the crystal field) for an onsite block;
- S, the overlap (the bulk of the exchange-correlation potential, which H0 lacks, is close to a
  constant times S).

One coefficient per part and block type (onsite or not x species pair x shell pair), folded into
the programs (:meth:`BlockProgram.scaled`), so a fitted baseline costs what the plain one does.
:class:`BaselineContext` holds the per-cell work (the neighbour lists of the potentials and of the
projectors), so that H0 can be evaluated on any subset of pairs (the atom ranges of streamed
prediction) without searching the cell again.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from hforge.basis import BasisSet
from hforge.basis.radial import BOHR_TO_ANG, RY_TO_EV
from hforge.errors import InputError
from hforge.graph.neighbours import neighbour_list
from hforge.ops.two_centre import (
    _pair_vectors,
    block_pointer,
    program_block_sums,
    program_blocks,
    separable_contract,
    two_centre_descriptor,
)
from hforge.ops.two_centre.descriptor import TwoCentreDescriptor, entry_coefficients
from hforge.ops.two_centre.tables import BlockProgram, RadialTables, combine

__all__ = [
    "BASELINE_PARTS", "BaselineContext", "CellPairs", "baseline_blocks", "baseline_parts", "kb_blocks", "operator_coefficients",
    "plain_coefficients", "reach_pairs",
]

#: The parts of the baseline H0, in the order of its coefficient tables.
BASELINE_PARTS = ("kinetic", "kb", "neutral_atom", "overlap")


def plain_coefficients(basis: BasisSet) -> np.ndarray:
    """Coefficients of the plain H0 = T + V_KB + V_NA (S not added): ``(4, 2, S, S, A, A)``,
    ones for the first three parts, zeros for the overlap (layout of :func:`baseline_blocks`)."""
    n_species, n_shells = len(basis), max(len(sp.shells) for sp in basis)
    table = np.zeros((len(BASELINE_PARTS), 2, n_species, n_species, n_shells, n_shells))
    table[:3] = 1.0
    return table


def operator_coefficients(basis: BasisSet, energy_zero: float) -> np.ndarray:
    """Coefficients of ``H0 = T + V_KB + c0 S`` (``c0 = energy_zero``, eV): the operator baseline
    (layout of :func:`plain_coefficients`; no V_NA, whose two-centre terms alone are not the matrix
    of an operator)."""
    table = plain_coefficients(basis)
    table[2] = 0.0
    table[3] = float(energy_zero)
    return table


_SCALED: dict[tuple, BlockProgram] = {}


def _scaled(desc: TwoCentreDescriptor, name: str, table: np.ndarray, onsite: bool) -> BlockProgram:
    """Program ``name`` with the coefficients ``table`` folded in (cached by value)."""
    key = (id(desc), name, onsite, table.tobytes())
    if key not in _SCALED:
        if len(_SCALED) > 64:
            _SCALED.clear()
        _SCALED[key] = desc.program(name).scaled(entry_coefficients(desc, name, table, onsite))
    return _SCALED[key]


class BaselineContext:
    """The baseline of one structure, for any subset of its pairs (see the module docstring).

    Args:
        basis: a basis with radial tables and neutral-atom potentials.
        species, positions, cell, pbc: the structure (Å; cell rows are lattice vectors).
        coefficients: ``(4, 2, n_species, n_species, n_shells, n_shells)``: per part (order of
            :data:`BASELINE_PARTS`), onsite or not, species pair and shell pair, the factor of the
            part's sub-block (a scalar per sub-block keeps every symmetry); symmetric under
            ``(s_i, a) <-> (s_j, b)``.  None: :func:`plain_coefficients` (T + V_KB + V_NA).
        backend: of the two-centre kernels.

    Raises:
        BasisMismatchError: a species without radial tables or neutral-atom potential.
        InputError: coefficients of another shape.
    """

    def __init__(
        self,
        basis: BasisSet,
        species: np.ndarray,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: Any,
        coefficients: np.ndarray | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        self.desc = two_centre_descriptor(basis)
        self.basis = basis
        self.species = np.asarray(species, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.cell = np.asarray(cell, dtype=np.float64)
        self.pbc = pbc
        self.backend = backend
        plain = plain_coefficients(basis)
        coef = plain if coefficients is None else np.asarray(coefficients, dtype=np.float64)
        if coef.shape != plain.shape:
            raise InputError(f"baseline coefficients of shape {coef.shape}, expected {plain.shape}")
        self.kinetic, self.kb, self.potential, overlap = coef
        self.overlap = overlap / RY_TO_EV  # every part is summed in Ry, then converted once
        if self.potential.any():
            self.desc.program("potential")  # raises without neutral-atom potentials

    # ---- per-cell work (once) ---------------------------------------------------------------
    def _neighbours(self, reach: np.ndarray) -> "CellPairs":
        return reach_pairs(self.positions, self.cell, self.pbc, self.species, self.desc.orbital_reach, reach)

    @cached_property
    def potential_pairs(self) -> "CellPairs":
        """Every atom's neighbours within reach of their neutral-atom potential (sorted by atom)."""
        return self._neighbours(self.desc.potential_reach)

    @cached_property
    def projector_pairs(self) -> "CellPairs":
        """Every atom's neighbours within reach of their KB projectors, itself included (sorted by atom)."""
        return self._neighbours(self.desc.projector_reach)

    def _vectors(self, pairs: "CellPairs", rows: np.ndarray) -> np.ndarray:
        """``r_ik`` (Bohr) of the ``rows`` of ``pairs``."""
        return _pair_vectors(self.positions, self.cell, pairs.edge_index[:, rows], pairs.cell_shift[rows])

    # ---- the programs with the coefficients folded in (once per context) ---------------------
    def _combined(self, names: tuple[str, ...], onsite: bool) -> tuple[BlockProgram, RadialTables]:
        tables = (self.kinetic, self.potential, self.overlap)
        programs = [self.desc.program(name) for name in names]
        scales = [entry_coefficients(self.desc, name, table, onsite) for name, table in zip(names, tables)]
        return combine(programs, self.desc.tables, scales)

    @cached_property
    def _pair_program(self) -> tuple[BlockProgram, RadialTables]:
        """T, V_NA and S of a pair in one program (one table per slot: the weighed sum)."""
        return self._combined(("kinetic", "potential", "overlap"), False)

    @cached_property
    def _one_centre(self) -> np.ndarray:
        """The one-centre onsite block (T, V_NA of the atom itself, S) of every species, flat (Ry)."""
        n_species = len(self.basis)
        program, tables = self._combined(("kinetic", "self_potential", "overlap"), True)
        return program_blocks(program, tables, np.arange(n_species) * (n_species + 1), np.zeros((n_species, 3)), backend="torch")

    # ---- evaluation -------------------------------------------------------------------------
    def blocks(
        self, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """H0 (eV) of the pairs ``(i, j, n)``: flat float64 blocks on ``block_ptr`` (onsite pairs are
        ``(i, i, 0)``), written into ``out`` (float64, ``block_ptr[-1]`` values) when given."""
        desc, species = self.desc, self.species
        edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
        cell_shift = np.asarray(cell_shift, dtype=np.int64).reshape(-1, 3)
        pair_type = species[edge_index[0]] * len(self.basis) + species[edge_index[1]]
        if block_ptr is None:
            block_ptr = block_pointer(desc.program("overlap"), pair_type)
        block_ptr = np.asarray(block_ptr, dtype=np.int64)
        # every pair as a pair (onsite ones too, in place), then the onsite blocks replaced
        program, tables = self._pair_program
        vectors = _pair_vectors(self.positions, self.cell, edge_index, cell_shift)
        out = program_blocks(program, tables, pair_type, vectors, block_ptr, backend=self.backend, out=out)
        sites = np.flatnonzero((edge_index[0] == edge_index[1]) & ~cell_shift.any(axis=1))
        if len(sites):
            _scatter(out, block_ptr, sites, self.onsite(edge_index[0, sites]))
        if self.kb.any():
            self.kb_blocks(edge_index, cell_shift, block_ptr, out=out)
        out *= RY_TO_EV
        return out

    def onsite(self, atoms: np.ndarray) -> np.ndarray:
        """The onsite blocks of ``atoms`` without V_KB (Ry), flat in their order: the one-centre
        terms plus the crystal field of every neighbour's potential."""
        ptr = np.concatenate([[0], np.cumsum(self.basis.n_orbitals**2)])
        one_centre = self._one_centre
        values = np.concatenate([one_centre[ptr[s] : ptr[s + 1]] for s in self.species[atoms]])
        if self.potential.any():
            values += self._crystal_field(atoms)
        return values

    def _crystal_field(self, atoms: np.ndarray) -> np.ndarray:
        """``sum_{(k, n) != (i, 0)} <i|V_NA,k|i'>`` (Ry, scaled) of the onsite blocks of ``atoms``, flat in their order."""
        pairs = self.potential_pairs
        i, k = pairs.edge_index
        starts, stops = np.searchsorted(i, atoms), np.searchsorted(i, atoms, side="right")
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(atoms) else np.zeros(0, np.int64)
        own = (i[rows] == k[rows]) & ~pairs.cell_shift[rows].any(axis=1)
        counts = np.diff(np.concatenate([[0], np.cumsum(stops - starts)]))
        counts -= np.bincount(np.repeat(np.arange(len(atoms)), stops - starts)[own], minlength=len(atoms))
        rows = rows[~own]
        n_orb = self.basis.n_orbitals[self.species[atoms]]
        program = _scaled(self.desc, "crystal", self.potential, True)
        pair_type = self.species[i[rows]] * len(self.basis) + self.species[k[rows]]
        return program_block_sums(
            program, self.desc.tables, pair_type, self._vectors(pairs, rows),
            np.concatenate([[0], np.cumsum(counts)]), np.concatenate([[0], np.cumsum(n_orb**2)]), backend=self.backend,
        )

    def kb_blocks(
        self, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``c_KB * sum_k <i|chi_k> E_k <chi_k|j>`` (Ry) of the pairs, flat on ``block_ptr`` (added to
        ``out`` when given); only the projections of the atoms these pairs touch are computed."""
        desc, species, n_species = self.desc, self.species, len(self.basis)
        pairs = self.projector_pairs
        i, k = pairs.edge_index
        touched = np.zeros(len(self.positions), dtype=bool)
        touched[edge_index.reshape(-1)] = True
        rows = np.flatnonzero(touched[i])
        pair_type = species[i[rows]] * n_species + species[k[rows]]
        program = desc.program("projection")
        proj_block_ptr = block_pointer(program, pair_type)
        projections = program_blocks(program, desc.tables, pair_type, self._vectors(pairs, rows), proj_block_ptr,
                                     backend=self.backend)
        proj_ptr = np.searchsorted(i[rows], np.arange(len(self.positions) + 1)).astype(np.int64)
        n_proj = np.array([len(e) for e in desc.kb_energy], dtype=np.int64)
        scale = np.stack([entry_coefficients(desc, "overlap", self.kb, onsite) for onsite in (False, True)])
        weighed = projections * _column_values(list(desc.kb_energy), species[k[rows]], n_proj, proj_block_ptr)
        return separable_contract(
            edge_index, cell_shift, k[rows], pairs.cell_shift[rows], proj_ptr, proj_block_ptr, weighed, projections,
            self.basis.n_orbitals, n_proj, species, block_ptr, scale=scale, scale_ptr=desc.program("overlap").entry_ptr,
            out=out, accumulate=out is not None, backend=self.backend,
        )


def _column_values(
    per_species: list[np.ndarray], column_species: np.ndarray, n_columns: np.ndarray, block_ptr: np.ndarray
) -> np.ndarray:
    """Flat values on ``block_ptr`` holding, in every entry of a row-major block, the value of its
    column: ``per_species[s][p]`` for column ``p`` of a block whose columns belong to species
    ``column_species[a]`` (e.g. the KB energies of the projector atom)."""
    sizes = np.diff(block_ptr)
    entry = np.repeat(np.arange(len(sizes)), sizes)
    column = (np.arange(int(block_ptr[-1])) - block_ptr[entry]) % n_columns[column_species][entry]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in per_species])]).astype(np.int64)
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v in per_species])
    return values[offsets[column_species][entry] + column]


class CellPairs(NamedTuple):
    """A cell's neighbour pairs ``(i, k, n)`` as :class:`BaselineContext` keeps them for the whole
    prediction: ``edge_index (2, E)`` and ``cell_shift (E, 3)`` in narrow integers (int32, int16
    where they fit; 11 bytes a pair instead of :class:`~hforge.graph.neighbours.PairList`'s 72, about
    0.2 GB less at 2x10^4 atoms), vectors recomputed for the rows a range uses."""

    edge_index: np.ndarray
    cell_shift: np.ndarray


def reach_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: Any, species: np.ndarray, orbital_reach: np.ndarray, reach: np.ndarray
) -> CellPairs:
    """Pairs ``(i, k, n)`` with ``|r_ik| < orbital_reach(s_i) + reach(s_k)`` (Bohr per species;
    symmetrised, onsite pairs included), sorted by ``(i, k, n)``, as :class:`CellPairs`."""
    cut = orbital_reach[:, None] + reach[None, :]
    cut = np.maximum(cut, cut.T) * BOHR_TO_ANG + 1e-9
    pairs = neighbour_list(positions, cell, pbc, cut, species=species, onsite=True)
    return CellPairs(_narrow(pairs.edge_index, np.int32), _narrow(pairs.cell_shift, np.int16))


def _narrow(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` as the integer ``dtype`` when every value fits, else unchanged."""
    limits = np.iinfo(dtype)
    if values.size and (values.min() < limits.min or values.max() > limits.max):
        return values
    return values.astype(dtype)


def _scatter(out: np.ndarray, block_ptr: np.ndarray, pairs: np.ndarray, values: np.ndarray) -> None:
    """``out[blocks of pairs] = values`` (``values`` flat, the blocks of ``pairs`` in order)."""
    sizes = block_ptr[pairs + 1] - block_ptr[pairs]
    starts = np.repeat(block_ptr[pairs] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    out[starts + np.arange(len(values))] = values


def baseline_blocks(
    basis: BasisSet,
    species: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Any,
    edge_index: np.ndarray,
    cell_shift: np.ndarray,
    *,
    block_ptr: np.ndarray | None = None,
    coefficients: np.ndarray | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """H0 (eV) of the pairs ``(i, j, n)`` of one structure: flat float64 blocks on ``block_ptr``
    (:meth:`BaselineContext.blocks`; arguments as :class:`BaselineContext`)."""
    context = BaselineContext(basis, species, positions, cell, pbc, coefficients, backend=backend)
    return context.blocks(edge_index, cell_shift, block_ptr)


def baseline_parts(
    basis: BasisSet,
    species: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Any,
    edge_index: np.ndarray,
    cell_shift: np.ndarray,
    *,
    block_ptr: np.ndarray | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """``(4, n_values)`` float64: the parts of :func:`baseline_blocks` one by one (T, V_KB, V_NA in eV;
    S), e.g. to fit its coefficients by least squares."""
    unit = plain_coefficients(basis)
    out = []
    for k in range(len(BASELINE_PARTS)):
        coef = np.zeros_like(unit)
        coef[k] = 1.0
        out.append(
            baseline_blocks(basis, species, positions, cell, pbc, edge_index, cell_shift, block_ptr=block_ptr,
                            coefficients=coef, backend=backend)
        )
    return np.stack(out)


def kb_blocks(
    basis: BasisSet,
    species: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Any,
    edge_index: np.ndarray,
    cell_shift: np.ndarray,
    block_ptr: np.ndarray,
    *,
    backend: str = "auto",
) -> np.ndarray:
    """V_KB alone (eV), flat on ``block_ptr`` (arguments as :class:`BaselineContext`)."""
    coefficients = np.zeros_like(plain_coefficients(basis))
    coefficients[1] = 1.0
    context = BaselineContext(basis, species, positions, cell, pbc, coefficients, backend=backend)
    return context.kb_blocks(np.asarray(edge_index), np.asarray(cell_shift), block_ptr) * RY_TO_EV
