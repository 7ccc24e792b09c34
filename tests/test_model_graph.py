"""hforge.graph model graphs: block pairs and interaction graph against the neighbour lists, targets
against the file's blocks, the file's H-only (Kleinman-Bylander) blocks, batching, rotation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hforge.basis.conventions import rotate_blocks
from hforge.datasets import load
from hforge.errors import BasisMismatchError, InputError, UnknownSpeciesError
from hforge.graph import (
    GraphBuilder,
    StructureArrays,
    collate,
    neighbour_list,
    orbital_pair_list,
    rotate_graph,
    structure_arrays,
    uncovered_pairs,
)

R_MAX = 4.5


@pytest.fixture(scope="module")
def abn():
    return load("abn-small")


@pytest.fixture(scope="module")
def cell8(abn):
    return abn[0]


def pair_set(index, shift):
    return set(zip(index[0].tolist(), index[1].tolist(), map(tuple, shift.tolist())))


def test_block_pairs_are_onsite_then_canonical_pairs_within_orbital_reach(abn, cell8):
    graph = GraphBuilder(abn.basis, R_MAX)(cell8)
    n = cell8.n_atoms
    assert torch.equal(graph.pair_index[:, :n], torch.arange(n).repeat(2, 1))
    assert not graph.pair_shift[:n].any()
    radii = [sp.cutoff for sp in abn.basis]
    reference = orbital_pair_list(cell8.positions, cell8.cell, cell8.pbc, cell8.species, radii, half=True, onsite=False)
    assert np.array_equal(graph.pair_index[:, n:].numpy(), reference.edge_index)
    assert np.array_equal(graph.pair_shift[n:].numpy(), reference.cell_shift)
    full = neighbour_list(cell8.positions, cell8.cell, cell8.pbc, R_MAX)
    assert np.array_equal(graph.edge_index.numpy(), full.edge_index)
    assert np.array_equal(graph.edge_shift.numpy(), full.cell_shift)
    sizes = abn.basis.n_orbitals[cell8.species][graph.pair_index.numpy()].prod(axis=0)
    assert np.array_equal(np.diff(graph.block_ptr.numpy()), sizes)
    assert graph.onsite_pairs().sum() == n and graph.onsite_pairs()[:n].all()


def test_targets_are_the_files_blocks_from_full_or_half_data(abn, cell8):
    graph = GraphBuilder(abn.basis, R_MAX)(cell8)
    h, s, ptr = graph.h.numpy(), graph.s.numpy(), graph.block_ptr.numpy()
    found = cell8.find_pairs(*graph.pair_index.numpy(), graph.pair_shift.numpy())
    assert (found >= 0).all()  # every block pair has an S block in the file
    for e in range(0, graph.n_pairs, 7):
        rows, cols = cell8.block_shapes[found[e]]
        np.testing.assert_array_equal(h[ptr[e] : ptr[e + 1]].reshape(rows, cols), cell8.block(found[e], "h_unshifted"))
        np.testing.assert_array_equal(s[ptr[e] : ptr[e + 1]].reshape(rows, cols), cell8.block(found[e], "s"))
    from_half = GraphBuilder(abn.basis, R_MAX)(cell8.canonical_half())
    for name in ("h", "s", "mask"):
        assert torch.equal(getattr(from_half, name), getattr(graph, name))
    assert graph.mask.float().mean() > 0.5


def test_the_files_uncovered_blocks_are_h_only_and_tiny(abn):
    data = abn[3]  # the 24-atom validation cell
    graph = GraphBuilder(abn.basis, R_MAX)(data, targets=False)
    dropped = uncovered_pairs(data, graph.pair_index.numpy(), graph.pair_shift.numpy())
    assert 300 < len(dropped) < data.n_pairs // 4  # 452 of the 3,506 canonical pairs
    values = np.isin(data.value_pair, dropped)
    assert not data.s[values].any()  # no overlap there: H-only, through Kleinman-Bylander projectors
    assert 0 < np.abs(data.h[0, values]).max() < 1e-3  # eV
    cut = abn.basis.pair_cutoffs()[data.species[data.edge_index[0, dropped]], data.species[data.edge_index[1, dropped]]]
    assert (data.pair_distances()[dropped] >= cut).all()
    kb = GraphBuilder(abn.basis, R_MAX, include_kb=True)(data, targets=False)
    assert len(uncovered_pairs(data, kb.pair_index.numpy(), kb.pair_shift.numpy())) == 0


def test_collate_offsets_atoms_pairs_and_values(abn):
    builder = GraphBuilder(abn.basis, R_MAX)
    graphs = [builder(abn[k]) for k in (0, 2, 1)]
    batch = collate(graphs)
    assert batch.n_graphs == 3 and batch.names == tuple(g.names[0] for g in graphs)
    assert batch.n_values == sum(g.n_values for g in graphs)
    for b, g in enumerate(graphs):
        for got, want in zip(batch.structure_pairs(b), g.structure_pairs(0)):
            np.testing.assert_array_equal(got, want)
        assert torch.equal(batch.split_values(batch.h)[b], g.h)
        np.testing.assert_array_equal(batch.structure(b).positions, g.structure(0).positions)
        assert torch.equal(batch.batch[batch.atom_ptr[b] : batch.atom_ptr[b + 1]], torch.full((g.n_atoms,), b))
    onsite = batch.onsite_pairs()
    assert torch.equal(batch.pair_index[0, onsite], batch.pair_index[1, onsite])
    assert not batch.pair_shift[onsite].any() and int(onsite.sum()) == batch.n_atoms
    assert torch.equal(batch.pair_index[:, batch.hopping_pairs()], batch.pair_index[:, ~onsite])
    with pytest.raises(InputError):
        collate([])
    with pytest.raises(InputError):
        collate([graphs[0], builder(abn[1], targets=False)])


def test_rotate_graph_rotates_positions_cell_and_target_blocks(abn, cell8):
    graph = GraphBuilder(abn.basis, R_MAX)(cell8)
    rotation = Rotation.random(random_state=3).as_matrix()
    turned = rotate_graph(graph, rotation, abn.basis)
    np.testing.assert_allclose(turned.positions.numpy(), cell8.positions @ rotation.T, atol=1e-12)
    np.testing.assert_allclose(turned.cell[0].numpy(), cell8.cell @ rotation.T, atol=1e-12)
    # the pairs of the rotated structure are the same pairs
    arrays = StructureArrays(turned.positions.numpy(), turned.cell[0].numpy(), cell8.pbc, cell8.species)
    again = GraphBuilder(abn.basis, R_MAX)(arrays)
    assert pair_set(again.pair_index, again.pair_shift) == pair_set(graph.pair_index, graph.pair_shift)
    ptr = graph.block_ptr.numpy()
    species = cell8.species[graph.pair_index.numpy()]
    for e in range(0, graph.n_pairs, 5):
        rows, cols = abn.basis.n_orbitals[species[:, e]]
        block = graph.h[ptr[e] : ptr[e + 1]].numpy().reshape(rows, cols)
        want = rotate_blocks(block, rotation, abn.basis[int(species[0, e])], abn.basis[int(species[1, e])])
        np.testing.assert_allclose(turned.h[ptr[e] : ptr[e + 1]].numpy().reshape(rows, cols), want, atol=1e-10)
    assert torch.equal(turned.mask, graph.mask)
    with pytest.raises(InputError):
        rotate_graph(graph, -np.eye(3), abn.basis)


def test_structure_arrays_from_ase_sisl_and_hsdata(abn, cell8):
    import ase

    symbols = [abn.basis.symbols[s] for s in cell8.species]
    atoms = ase.Atoms(symbols, positions=cell8.positions, cell=cell8.cell, pbc=True)
    from_ase = structure_arrays(atoms, abn.basis)
    from_sisl = structure_arrays(cell8.to_sisl_geometry(), abn.basis)
    from_data = structure_arrays(cell8, abn.basis)
    for arrays in (from_sisl, from_data):
        np.testing.assert_array_equal(arrays.species, from_ase.species)
        np.testing.assert_allclose(arrays.positions, from_ase.positions)
        np.testing.assert_allclose(arrays.cell, from_ase.cell)
    reversed_basis = abn.basis.select(["N", "B"])
    assert np.array_equal(structure_arrays(atoms, reversed_basis).species, 1 - from_ase.species)
    with pytest.raises(UnknownSpeciesError):
        structure_arrays(ase.Atoms("BC", positions=[[0, 0, 0], [1.5, 0, 0]]), abn.basis)
    with pytest.raises(InputError):
        structure_arrays(cell8.positions, abn.basis)
    with pytest.raises(InputError):
        structure_arrays(atoms, abn.basis, species=["B"])
    other = type(abn.basis)((abn.basis["B"], type(abn.basis["N"])("N", 7, abn.basis["N"].shells[:3])))
    with pytest.raises(BasisMismatchError):
        structure_arrays(cell8, other)
