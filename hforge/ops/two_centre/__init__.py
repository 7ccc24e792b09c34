r"""Exact two-centre integrals of a SIESTA basis: the overlap S and a physical baseline H0.

S is not learned: it is a two-centre integral of the basis' radial functions, and so are the
kinetic matrix T, the projections of the orbitals on the Kleinman-Bylander projectors and the
two-centre terms of the neutral-atom potential.  :mod:`.tables` holds the method (SIESTA's
``matel``: radial Fourier-Bessel transforms, real Gaunt coefficients), :mod:`.descriptor` the
tables and programs of a basis (built once, cached), the backends only execute programs:

``torch``  :mod:`.reference` (readable; CPU and CUDA tensors), the oracle of the tests;
``numba``  :mod:`.numba` (parallel CPU).

Public functions (lengths in Å, results in SIESTA's convention: S dimensionless, energies eV):

:func:`overlap_blocks`   S blocks of atom pairs ``(i, j, n)``; positive definite by construction.
:func:`baseline_blocks`  H0, a weighted sum of T, V_KB, the two-centre neutral-atom terms
                         (``<i|V_i + V_j|j>`` for pairs, ``<i|V_i|i'>`` plus the crystal field
                         ``sum_k <i|V_k|i'>`` for onsite blocks) and S: every part of SIESTA's
                         H that is exactly a sum of two-centre integrals, with one coefficient
                         per part and block type (fitted to training data by the models,
                         ``ModelConfig.baseline``); what is left (the three-centre V_NA terms,
                         the Hartree and exchange-correlation potentials of the SCF density)
                         is what a model learns on top.

Conventions: pair ``(i, j, n)`` has ``R = positions[j] + n @ cell - positions[i]`` (Å, converted
to Bohr as sisl reads SIESTA files, :data:`hforge.basis.radial.BOHR_TO_ANG`); blocks are flat-packed row-major in SIESTA's orbital order on a
``block_ptr`` (docs/design.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.basis.radial import ANG_TO_BOHR, BOHR_TO_ANG, RY_TO_EV
from hforge.errors import InputError
from hforge.graph.neighbours import neighbour_list
from hforge.ops.backends import resolve_backend
from hforge.ops.two_centre.descriptor import PROGRAMS, TwoCentreDescriptor, entry_coefficients, two_centre_descriptor
from hforge.ops.two_centre.tables import BlockProgram, RadialTables

__all__ = [
    "PROGRAMS",
    "TwoCentreDescriptor",
    "two_centre_descriptor",
    "program_blocks",
    "kb_contract",
    "overlap_blocks",
    "baseline_blocks",
    "baseline_parts",
    "plain_coefficients",
    "BASELINE_PARTS",
    "kb_blocks",
    "block_pointer",
]

_IMPLEMENTED = ("numba", "torch")


def block_pointer(program: BlockProgram, pair_type: np.ndarray) -> np.ndarray:
    """``(E + 1,)`` int64 offsets of the flat blocks of pairs of types ``pair_type``."""
    ptr = np.zeros(len(pair_type) + 1, dtype=np.int64)
    np.cumsum(program.block_size[pair_type], out=ptr[1:])
    return ptr


def program_blocks(
    program: BlockProgram,
    tables: RadialTables,
    pair_type: np.ndarray,
    vectors: np.ndarray,
    block_ptr: np.ndarray | None = None,
    *,
    backend: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Flat float64 blocks of ``program`` for pairs of types ``pair_type (E,)`` at ``vectors (E, 3)`` (Bohr).

    ``out``: a float64 buffer of ``block_ptr[-1]`` values to write into (numba; no copy).

    Raises:
        InputError: pair types outside the program, a ``block_ptr`` of other block sizes.
    """
    pair_type = np.asarray(pair_type, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    n_types = len(program.rows)
    if len(pair_type) != len(vectors):
        raise InputError(f"{len(pair_type)} pair types for {len(vectors)} vectors")
    if len(pair_type) and (pair_type.min() < 0 or pair_type.max() >= n_types):
        raise InputError(f"pair types outside 0..{n_types - 1} of the two-centre program {program.name!r}")
    expected = block_pointer(program, pair_type)
    if block_ptr is None:
        block_ptr = expected
    elif not np.array_equal(np.asarray(block_ptr), expected):
        raise InputError(f"block_ptr does not match the block sizes of program {program.name!r}")
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED, op="two_centre")
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        return kernels.program_blocks(program, tables, pair_type, vectors, block_ptr, out=out)
    from hforge.ops.two_centre import reference

    result = reference.program_blocks(
        program, tables, torch.from_numpy(pair_type), torch.from_numpy(vectors), torch.from_numpy(block_ptr)
    ).numpy()
    if out is not None:
        out[:] = result
        return out
    return result


def kb_contract(*args: Any, backend: str = "auto", **kwargs: Any) -> np.ndarray:
    """``sum_k P(i, k) diag(E_k) P(j, k)^T`` per output pair (arguments of
    :func:`hforge.ops.two_centre.reference.kb_contract`)."""
    name = resolve_backend(backend, on_gpu=False, implemented=_IMPLEMENTED, op="two_centre")
    if name == "numba":
        from hforge.ops.two_centre import numba as kernels

        return kernels.kb_contract(*args, **kwargs)
    from hforge.ops.two_centre import reference

    kwargs.pop("out", None)
    return reference.kb_contract(*args, **kwargs)


def _pair_vectors(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, cell_shift: np.ndarray) -> np.ndarray:
    i, j = edge_index
    return (positions[j] + cell_shift @ cell - positions[i]) * ANG_TO_BOHR


def overlap_blocks(
    basis: BasisSet,
    species: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    edge_index: np.ndarray,
    cell_shift: np.ndarray,
    *,
    block_ptr: np.ndarray | None = None,
    backend: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Exact S blocks of the pairs ``(i, j, n)`` (flat float64 on ``block_ptr``, SIESTA's orbital order).

    Args:
        basis: a basis with radial tables (read from ion files).
        species: ``(N,)`` species index of every atom into ``basis``.
        positions, cell: Å (cell rows are lattice vectors).
        edge_index, cell_shift: ``(2, E)`` and ``(E, 3)`` int64 pairs (onsite pairs are ``(i, i, 0)``).

    Raises:
        BasisMismatchError: a species without radial tables.
    """
    desc = two_centre_descriptor(basis)
    species = np.asarray(species, dtype=np.int64)
    pair_type = species[edge_index[0]] * len(basis) + species[edge_index[1]]
    vectors = _pair_vectors(np.asarray(positions, dtype=np.float64), np.asarray(cell, dtype=np.float64), edge_index, cell_shift)
    return program_blocks(desc.program("overlap"), desc.tables, pair_type, vectors, block_ptr, backend=backend, out=out)


def _neighbours(desc: TwoCentreDescriptor, positions, cell, pbc, species, reach: np.ndarray) -> Any:
    """Pairs ``(i, k, n)`` with ``|r_ik| < orbital reach(s_i) + reach(s_k)`` (symmetrised, Å), onsite included."""
    cut = desc.orbital_reach[:, None] + reach[None, :]
    cut = np.maximum(cut, cut.T) * BOHR_TO_ANG + 1e-9
    return neighbour_list(positions, cell, pbc, cut, species=species, onsite=True)


#: The parts of the baseline H0, in the order of its coefficient tables.
BASELINE_PARTS = ("kinetic", "kb", "neutral_atom", "overlap")


def plain_coefficients(basis: BasisSet) -> np.ndarray:
    """Coefficients of the plain H0 = T + V_KB + V_NA (S not added): ``(4, 2, S, S, A, A)``,
    ones for the first three parts, zeros for the overlap (layout of :func:`baseline_blocks`)."""
    n_species, n_shells = len(basis), max(len(sp.shells) for sp in basis)
    table = np.zeros((len(BASELINE_PARTS), 2, n_species, n_species, n_shells, n_shells))
    table[:3] = 1.0
    return table


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
    """The physical baseline ``H0 = c_T T + c_KB V_KB + c_NA V_NA + c_S S`` (eV) of the pairs
    ``(i, j, n)``: flat float64 blocks on ``block_ptr``.

    The parts (all exact two-centre integrals or sums of them, SIESTA's definitions):

    - T, the kinetic matrix ``<i| -nabla^2 |j>`` (Ry -> eV);
    - V_KB, ``sum_k <i|chi_k> E_k <chi_k|j>`` over the KB projectors of every atom (``nlefsm``);
    - V_NA, the two-centre terms of the neutral-atom potentials: ``<i|V_NA,i + V_NA,j|j>`` for a
      pair, ``<i|V_NA,i|i'> + sum_{k != i} <i|V_NA,k|i'>`` (every periodic image within reach, i's
      own images included) for an onsite block;
    - S, the overlap (the bulk of the exchange-correlation potential, which H0 lacks, is close to
      a constant times S).

    Args:
        coefficients: ``(4, 2, n_species, n_species, n_shells, n_shells)``: per part (order of
            :data:`BASELINE_PARTS`), onsite or not, species pair and shell pair, the factor of the
            part's sub-block (a scalar per sub-block keeps every symmetry); symmetric under
            ``(s_i, a) <-> (s_j, b)``.  None: :func:`plain_coefficients` (T + V_KB + V_NA).
            Folded into the programs, so a fitted baseline costs what the plain one does.

    Raises:
        BasisMismatchError: a species without radial tables or neutral-atom potential.
    """
    desc = two_centre_descriptor(basis)
    coef = plain_coefficients(basis) if coefficients is None else np.asarray(coefficients, dtype=np.float64)
    species = np.asarray(species, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    edge_index = np.asarray(edge_index, dtype=np.int64)
    cell_shift = np.asarray(cell_shift, dtype=np.int64)
    n_species = len(basis)
    pair_type = species[edge_index[0]] * n_species + species[edge_index[1]]
    if block_ptr is None:
        block_ptr = block_pointer(desc.program("overlap"), pair_type)
    vectors = _pair_vectors(positions, cell, edge_index, cell_shift)
    out = np.zeros(int(block_ptr[-1]))
    onsite = (edge_index[0] == edge_index[1]) & ~cell_shift.any(axis=1)
    kinetic, kb, potential, overlap = (coef[k] for k in range(len(BASELINE_PARTS)))
    s_ry = overlap / RY_TO_EV  # everything below is summed in Ry
    hop = np.flatnonzero(~onsite)
    if len(hop):
        values = np.zeros(int((block_ptr[hop + 1] - block_ptr[hop]).sum()))
        for name, table in (("kinetic", kinetic), ("potential", potential), ("overlap", s_ry)):
            if table[0].any():
                values += program_blocks(
                    _scaled(desc, name, table, False), desc.tables, pair_type[hop], vectors[hop], backend=backend
                )
        _scatter(out, block_ptr, hop, values)
    sites = np.flatnonzero(onsite)
    if len(sites):
        atoms = edge_index[0, sites]
        types = np.arange(n_species) * (n_species + 1)
        parts = [("kinetic", kinetic), ("self_potential", potential), ("overlap", s_ry)]
        per_species = sum(
            program_blocks(_scaled(desc, name, table, True), desc.tables, types, np.zeros((n_species, 3)), backend="torch")
            for name, table in parts
        )
        ptr = block_pointer(desc.program("overlap"), types)
        values = np.concatenate([per_species[ptr[s] : ptr[s + 1]] for s in species[atoms]])
        if potential.any():
            values += _crystal_field(desc, _scaled(desc, "crystal", potential, True), positions, cell, pbc, species, atoms, backend)
        _scatter(out, block_ptr, sites, values)
    if kb.any():
        out += kb_blocks(desc, positions, cell, pbc, species, edge_index, cell_shift, block_ptr, scale=kb, backend=backend)
    return out * RY_TO_EV


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


_SCALED: dict[tuple, BlockProgram] = {}


def _scaled(desc: TwoCentreDescriptor, name: str, table: np.ndarray, onsite: bool) -> BlockProgram:
    """Program ``name`` with the coefficients ``table`` folded in (cached by value)."""
    key = (id(desc), name, onsite, table.tobytes())
    if key not in _SCALED:
        if len(_SCALED) > 64:
            _SCALED.clear()
        _SCALED[key] = desc.program(name).scaled(entry_coefficients(desc, name, table, onsite))
    return _SCALED[key]


def _scatter(out: np.ndarray, block_ptr: np.ndarray, pairs: np.ndarray, values: np.ndarray) -> None:
    """``out[blocks of pairs] = values`` (``values`` flat, the blocks of ``pairs`` in order)."""
    sizes = block_ptr[pairs + 1] - block_ptr[pairs]
    starts = np.repeat(block_ptr[pairs] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    out[starts + np.arange(len(values))] = values


def _crystal_field(desc, program, positions, cell, pbc, species, atoms, backend) -> np.ndarray:
    """``sum_{(k, n) != (i, 0)}`` of ``program`` (the crystal field, Ry) onto the onsite blocks of
    ``atoms``, flat in their order."""
    n_species = desc.n_species
    pairs = _neighbours(desc, positions, cell, pbc, species, desc.potential_reach)
    i, k = pairs.edge_index
    keep = ~((i == k) & ~pairs.cell_shift.any(axis=1))
    i, k, vectors = i[keep], k[keep], pairs.vectors[keep] * ANG_TO_BOHR
    pair_type = species[i] * n_species + species[k]
    ptr = block_pointer(program, pair_type)
    values = program_blocks(program, desc.tables, pair_type, vectors, ptr, backend=backend)
    n_orb = desc.basis.n_orbitals[species]
    atom_ptr = np.concatenate([[0], np.cumsum(n_orb**2)])
    per_atom = np.zeros(int(atom_ptr[-1]))
    # every block of row atom i adds onto i's onsite block
    np.add.at(per_atom, np.repeat(atom_ptr[i], np.diff(ptr)) + _ranks(np.diff(ptr)), values)
    return np.concatenate([per_atom[atom_ptr[a] : atom_ptr[a + 1]] for a in atoms]) if len(atoms) else np.zeros(0)


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """``[0..sizes[0]-1, 0..sizes[1]-1, ...]``."""
    total = int(sizes.sum())
    return np.arange(total) - np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)


def kb_blocks(
    desc: TwoCentreDescriptor,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: Any,
    species: np.ndarray,
    edge_index: np.ndarray,
    cell_shift: np.ndarray,
    block_ptr: np.ndarray,
    *,
    scale: np.ndarray | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """``V_KB(i, j, n) = sum_k <i|chi_k> E_k <chi_k|j>`` (Ry), flat on ``block_ptr``; with ``scale``
    (``(2, S, S, A, A)``, onsite or not x species pair x shell pair) each sub-block multiplied."""
    program = desc.program("projection")
    n_species = desc.n_species
    pairs = _neighbours(desc, positions, cell, pbc, species, desc.projector_reach)
    i, k = pairs.edge_index
    pair_type = species[i] * n_species + species[k]
    proj_block_ptr = block_pointer(program, pair_type)
    projections = program_blocks(
        program, desc.tables, pair_type, pairs.vectors * ANG_TO_BOHR, proj_block_ptr, backend=backend
    )
    proj_ptr = np.searchsorted(i, np.arange(len(positions) + 1)).astype(np.int64)
    n_proj = np.array([len(e) for e in desc.kb_energy], dtype=np.int64)
    out = kb_contract(
        edge_index, cell_shift, k, pairs.cell_shift, proj_ptr, proj_block_ptr, projections, desc.basis.n_orbitals,
        n_proj, list(desc.kb_energy), species, block_ptr, backend=backend,
    )
    if scale is not None:
        entry_scale = np.stack([entry_coefficients(desc, "overlap", scale, onsite) for onsite in (False, True)])
        _scale_entries(out, entry_scale, desc.program("overlap").entry_ptr, species, edge_index, cell_shift, block_ptr)
    return out


def _scale_entries(out, entry_scale, entry_ptr, species, edge_index, cell_shift, block_ptr, chunk: int = 1 << 16) -> None:
    """``out`` *= the entry scale of every value (onsite or not, pair type, entry), in pair chunks."""
    n_species = int(np.sqrt(len(entry_ptr) - 1))
    onsite = ((edge_index[0] == edge_index[1]) & ~np.asarray(cell_shift).any(axis=1)).astype(np.int64)
    pair_type = species[edge_index[0]] * n_species + species[edge_index[1]]
    flat = entry_scale.reshape(-1)
    for start in range(0, edge_index.shape[1], chunk):
        stop = min(start + chunk, edge_index.shape[1])
        sizes = np.diff(block_ptr[start : stop + 1])
        local = np.arange(int(sizes.sum())) - np.repeat(block_ptr[start:stop] - block_ptr[start], sizes)
        index = np.repeat(onsite[start:stop] * entry_ptr[-1] + entry_ptr[pair_type[start:stop]], sizes) + local
        out[block_ptr[start] : block_ptr[stop]] *= flat[index]
