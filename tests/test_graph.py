"""hforge.graph: neighbour lists against a brute-force oracle over explicit image translations,
and against the S sparsity of a real SIESTA file."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hforge.errors import GeometryError, InputError
from hforge.graph import neighbour_list, orbital_pair_list

# Exact largest orbital cut-off radii (Å) of shared/abn/basis (B.ion, N.ion): 2p and 3d shells.
ABN_RADII = np.array([3.739619420301238, 2.7801260918577864])


def brute_force_pairs(positions, cell, pbc, cutoffs, species):
    """Every (i, j, n) with |x_j + n @ cell - x_i| < cutoffs[s_i, s_j], (i, i, 0) excluded.

    Enumerates all translations n in a box large enough for the largest cut-off: along a periodic
    axis k, planes of the lattice are 1 / |b_k| apart (b: reciprocal vectors), and the positions
    may span several cells (they are not wrapped).
    """
    pbc = np.broadcast_to(pbc, (3,))
    reach = []
    periodic_cell = np.where(pbc[:, None], cell, np.eye(3))  # any full-rank stand-in for open axes
    fractional = positions @ np.linalg.inv(periodic_cell)
    reciprocal = np.linalg.inv(periodic_cell).T
    for k in range(3):
        if not pbc[k]:
            reach.append(range(1))
            continue
        spread = np.ptp(fractional[:, k])
        m = int(np.ceil(cutoffs.max() * np.linalg.norm(reciprocal[k]) + spread)) + 1
        reach.append(range(-m, m + 1))
    found = set()
    for shift in itertools.product(*reach):
        r = positions[None, :, :] + np.array(shift) @ cell - positions[:, None, :]
        d = np.linalg.norm(r, axis=-1)
        i, j = np.nonzero(d < cutoffs[species[:, None], species[None, :]])
        for a, b in zip(i.tolist(), j.tolist()):
            if a != b or any(shift):
                found.add((a, b, shift))
    return found


def as_set(pairs):
    return set(
        zip(pairs.edge_index[0].tolist(), pairs.edge_index[1].tolist(), map(tuple, pairs.cell_shift.tolist()))
    )


def canonical(pair):
    i, j, n = pair
    if i < j or (i == j and n > (0, 0, 0)):
        return pair
    return (j, i, tuple(-x for x in n))


def check_geometry(pairs, positions, cell):
    i, j = pairs.edge_index
    expected = positions[j] + pairs.cell_shift @ cell - positions[i]
    np.testing.assert_allclose(pairs.vectors, expected, atol=1e-10)
    np.testing.assert_allclose(pairs.distances, np.linalg.norm(expected, axis=1), atol=1e-10)


@st.composite
def structures(draw):
    """Small random cells: skewed, any periodicity (zero vectors on open axes), unwrapped positions."""
    n = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(2.5, 6.0, 3)
    cell = np.diag(lengths) + np.triu(rng.uniform(-0.6, 0.6, (3, 3)) * lengths[None, :].T, 1)
    pbc = np.array(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    if draw(st.booleans()):
        cell[~pbc] = 0.0  # open axes without a lattice vector
    frame = np.where(pbc[:, None], cell, np.diag(lengths))
    positions = rng.uniform(-0.5, 1.5, (n, 3)) @ frame
    n_species = draw(st.integers(1, 3))
    species = rng.integers(0, n_species, n)
    radii = rng.uniform(0.6, 3.8, n_species)
    return positions, cell, pbc, species, radii


@given(structures(), st.floats(0.5, 8.0))
def test_single_cutoff_matches_brute_force(structure, cutoff):
    positions, cell, pbc, species, _ = structure
    pairs = neighbour_list(positions, cell, pbc, cutoff)
    expected = brute_force_pairs(positions, cell, pbc, np.full((1, 1), cutoff), np.zeros(len(positions), int))
    assert pairs.edge_index.dtype == np.int64 and pairs.cell_shift.dtype == np.int64
    assert pairs.edge_index.shape == (2, len(expected)) and pairs.cell_shift.shape == (len(expected), 3)
    assert as_set(pairs) == expected
    check_geometry(pairs, positions, cell)


@given(structures())
def test_species_pair_cutoffs_match_brute_force_full_and_half(structure):
    positions, cell, pbc, species, radii = structure
    expected = brute_force_pairs(positions, cell, pbc, radii[:, None] + radii[None, :], species)
    full = orbital_pair_list(positions, cell, pbc, species, radii, onsite=False)
    assert as_set(full) == expected
    check_geometry(full, positions, cell)
    half = orbital_pair_list(positions, cell, pbc, species, radii, half=True, onsite=True)
    onsite = {(a, a, (0, 0, 0)) for a in range(len(positions))}
    assert as_set(half) == {canonical(p) for p in expected} | onsite
    assert half.n_pairs == len(expected) // 2 + len(onsite)
    check_geometry(half, positions, cell)


@given(structures(), st.floats(0.5, 6.0))
def test_pairs_are_sorted_and_unique(structure, cutoff):
    positions, cell, pbc, *_ = structure
    pairs = neighbour_list(positions, cell, pbc, cutoff, onsite=True)
    keys = np.column_stack([pairs.edge_index.T, pairs.cell_shift])
    assert len(np.unique(keys, axis=0)) == len(keys)
    order = np.lexsort(keys.T[::-1])
    np.testing.assert_array_equal(order, np.arange(len(keys)))


def test_small_abn_cell_reaches_through_many_images(abn_dir):
    """8-atom aBN cell (4.23 Å) with B-B cut-off 7.48 Å: one atom pair appears with many shifts."""
    import ase.io

    atoms = ase.io.read(abn_dir / "structures" / "8" / "abn_8_0.xyz")
    species = (atoms.numbers == 7).astype(int)
    pairs = orbital_pair_list(atoms.positions, atoms.cell.array, atoms.pbc, species, ABN_RADII, onsite=False)
    expected = brute_force_pairs(atoms.positions, atoms.cell.array, atoms.pbc, ABN_RADII[:, None] + ABN_RADII, species)
    assert as_set(pairs) == expected
    i, j = pairs.edge_index
    self_images = (i == j).sum()
    same_pair = ((i == 0) & (j == 1)).sum()
    assert self_images > 8 and same_pair > 10
    assert np.abs(pairs.cell_shift).max() == 2


@pytest.mark.parametrize("name", ["abn_8_0", "abn_16_0", "abn_24_1", "abn_64_0"])
def test_orbital_pairs_are_exactly_the_nonzero_blocks_of_siesta_overlap(abn_dir, name):
    """The atom pairs (i, j, n) with a nonzero S block in SIESTA's TSHS are exactly |r_ij| < r_i + r_j."""
    import sisl

    overlap = sisl.get_sile(abn_dir / "runs" / name / f"{name}.TSHS").read_overlap()
    geometry = overlap.geometry
    coo = overlap.tocsr(dim=0).tocoo()
    nonzero = coo.data != 0
    row_atom = geometry.o2a(coo.row[nonzero])
    column = geometry.o2a(coo.col[nonzero])  # supercell atom index
    shifts = geometry.lattice.sc_off[column // geometry.na].astype(int)
    siesta_pairs = set(zip(row_atom.tolist(), (column % geometry.na).tolist(), map(tuple, shifts.tolist())))
    n_boron = geometry.na // 2  # the fdf: species 1 = B, B atoms first, equal numbers of B and N
    species = np.repeat([0, 1], [n_boron, geometry.na - n_boron])
    pairs = orbital_pair_list(geometry.xyz, geometry.cell, True, species, ABN_RADII)
    assert as_set(pairs) == siesta_pairs
    # Radii rounded to 0.01 Å are not enough: they change the pair set of the larger cells.
    rounded = orbital_pair_list(geometry.xyz, geometry.cell, True, species, np.round(ABN_RADII, 2))
    if name != "abn_8_0":
        assert as_set(rounded) != siesta_pairs


def test_non_periodic_molecule_and_slab():
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.5]])
    molecule = neighbour_list(positions, np.zeros((3, 3)), False, 1.6)
    assert as_set(molecule) == {(0, 1, (0, 0, 0)), (1, 0, (0, 0, 0)), (1, 2, (0, 0, 0)), (2, 1, (0, 0, 0))}
    slab = neighbour_list(positions[:1], np.diag([2.0, 2.0, 0.0]), [True, True, False], 3.0)
    assert as_set(slab) == {(0, 0, (a, b, 0)) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)}


def test_bad_input_is_refused():
    cell = np.eye(3) * 3.0
    with pytest.raises(GeometryError, match="NaN"):
        neighbour_list(np.array([[0.0, np.nan, 0.0]]), cell, True, 2.0)
    with pytest.raises(GeometryError, match="no atoms"):
        neighbour_list(np.zeros((0, 3)), cell, True, 2.0)
    with pytest.raises(GeometryError, match="degenerate"):
        neighbour_list(np.zeros((1, 3)), np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]), True, 2.0)
    with pytest.raises(InputError, match="positive"):
        neighbour_list(np.zeros((1, 3)), cell, True, -1.0)
    with pytest.raises(InputError, match="species"):
        neighbour_list(np.zeros((2, 3)), cell, True, np.ones((2, 2)), species=np.array([0, 2]))
    with pytest.raises(InputError, match="symmetric"):
        neighbour_list(np.zeros((2, 3)), cell, True, np.array([[1.0, 2.0], [3.0, 1.0]]), species=np.array([0, 1]))


def test_large_pair_lists_are_sorted():
    """The order (i, j, n) on a 4000-atom cell: atoms with ~56 neighbours each, shifts -1..1."""
    from hforge.structures import random_bn_cell

    atoms = random_bn_cell(4000, seed=1)
    pairs = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    assert pairs.n_pairs > 200_000
    keys = np.column_stack([pairs.edge_index.T, pairs.cell_shift])
    np.testing.assert_array_equal(np.lexsort(keys.T[::-1]), np.arange(len(keys)))


def test_the_canonical_orientation_is_one_rule_for_scalars_arrays_tensors_and_numba():
    """One spelling of the canonical half (hforge.io.pairs), against Python's lexicographic tuple order."""
    import torch

    from hforge.graph._kernels import _canonical
    from hforge.io.pairs import canonical_orientation, is_canonical

    cases = [(i, j, n) for i in range(3) for j in range(3) for n in itertools.product(range(-2, 3), repeat=3)]
    expected = np.array([i < j or (i == j and n >= (0, 0, 0)) for i, j, n in cases])
    edge_index = np.array([[i, j] for i, j, _ in cases]).T
    shift = np.array([n for _, _, n in cases])
    assert expected.sum() == 9 * 125 // 3 + 3 * 63  # i < j: 3 pairs x 125 shifts; i == j: 62 positive n and 0
    np.testing.assert_array_equal(is_canonical(edge_index, shift), expected)
    np.testing.assert_array_equal(is_canonical(torch.from_numpy(edge_index), torch.from_numpy(shift)).numpy(), expected)
    assert [bool(canonical_orientation(i, j, *n)) for i, j, n in cases] == expected.tolist()
    assert [_canonical(i, j, *n) for i, j, n in cases] == expected.tolist()
