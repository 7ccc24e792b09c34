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
:func:`baseline_blocks`  H0 = T + V_KB + the two-centre neutral-atom terms (``<i|V_i + V_j|j>``
                         for pairs, ``<i|V_i|i'>`` plus the crystal field ``sum_k <i|V_k|i'>``
                         for onsite blocks): every part of SIESTA's H that is exactly a sum of
                         two-centre integrals; what is left (the three-centre V_NA terms, the
                         Hartree and exchange-correlation potentials of the SCF density) is
                         what a model learns on top (``ModelConfig.baseline``).

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
from hforge.ops.two_centre.descriptor import PROGRAMS, TwoCentreDescriptor, two_centre_descriptor
from hforge.ops.two_centre.tables import BlockProgram, RadialTables

__all__ = [
    "PROGRAMS",
    "TwoCentreDescriptor",
    "two_centre_descriptor",
    "program_blocks",
    "kb_contract",
    "overlap_blocks",
    "baseline_blocks",
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
    kb: bool = True,
    backend: str = "auto",
) -> np.ndarray:
    """The baseline Hamiltonian H0 (eV) of the pairs ``(i, j, n)``: flat float64 blocks on ``block_ptr``.

    Onsite pairs ``(i, i, 0)`` get ``<i|T + V_NA,i|i'> + sum_{k != i} <i|V_NA,k|i'>`` (every
    periodic image of every atom within reach, ``i``'s own images included) and non-onsite pairs
    ``<i|T + V_NA,i + V_NA,j|j>``; with ``kb``, every pair also gets
    ``sum_k <i|chi_k> E_k <chi_k|j>`` over the KB projectors of all atoms (SIESTA's ``nlefsm``).

    Raises:
        BasisMismatchError: a species without radial tables or neutral-atom potential.
    """
    desc = two_centre_descriptor(basis)
    species = np.asarray(species, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    edge_index = np.asarray(edge_index, dtype=np.int64)
    cell_shift = np.asarray(cell_shift, dtype=np.int64)
    n_species = len(basis)
    pair_type = species[edge_index[0]] * n_species + species[edge_index[1]]
    hopping_program = desc.program("hopping")
    if block_ptr is None:
        block_ptr = block_pointer(hopping_program, pair_type)
    vectors = _pair_vectors(positions, cell, edge_index, cell_shift)
    out = np.zeros(int(block_ptr[-1]))
    onsite = (edge_index[0] == edge_index[1]) & ~cell_shift.any(axis=1)
    hop = np.flatnonzero(~onsite)
    if len(hop):
        values = program_blocks(hopping_program, desc.tables, pair_type[hop], vectors[hop], backend=backend)
        _scatter(out, block_ptr, hop, values)
    sites = np.flatnonzero(onsite)
    if len(sites):
        atoms = edge_index[0, sites]
        # one-centre part: the onsite program at R = 0, once per species
        per_species = program_blocks(
            desc.program("onsite"), desc.tables, np.arange(n_species) * (n_species + 1), np.zeros((n_species, 3)),
            backend="torch",
        )
        ptr = block_pointer(desc.program("onsite"), np.arange(n_species) * (n_species + 1))
        values = np.concatenate([per_species[ptr[s] : ptr[s + 1]] for s in species[atoms]])
        values += _crystal_field(desc, positions, cell, pbc, species, atoms, backend)
        _scatter(out, block_ptr, sites, values)
    if kb:
        out += kb_blocks(desc, positions, cell, pbc, species, edge_index, cell_shift, block_ptr, backend=backend)
    return out * RY_TO_EV


def _scatter(out: np.ndarray, block_ptr: np.ndarray, pairs: np.ndarray, values: np.ndarray) -> None:
    """``out[blocks of pairs] = values`` (``values`` flat, the blocks of ``pairs`` in order)."""
    sizes = block_ptr[pairs + 1] - block_ptr[pairs]
    starts = np.repeat(block_ptr[pairs] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    out[starts + np.arange(len(values))] = values


def _crystal_field(desc, positions, cell, pbc, species, atoms, backend) -> np.ndarray:
    """``sum_{(k, n) != (i, 0)} <i|V_NA,k|i'>`` (Ry) of the onsite blocks of ``atoms``, flat in their order."""
    program = desc.program("crystal")
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
    backend: str = "auto",
) -> np.ndarray:
    """``V_KB(i, j, n) = sum_k <i|chi_k> E_k <chi_k|j>`` (Ry), flat on ``block_ptr``."""
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
    return kb_contract(
        edge_index, cell_shift, k, pairs.cell_shift, proj_ptr, proj_block_ptr, projections, desc.basis.n_orbitals,
        n_proj, list(desc.kb_energy), species, block_ptr, backend=backend,
    )
