"""Exact two-centre integrals (hforge.ops.two_centre) against SIESTA's matrices, analytic cases,
rotations, and the numba backend against the torch reference."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from cpu_kernels import cpp_isas
from hypothesis import given, settings
from hypothesis import strategies as st

from hforge.basis import BasisSet, Shell, SpeciesBasis
from hforge.basis.conventions import real_harmonics, rotate_blocks, siesta_real_harmonics
from hforge.basis.radial import ANG_TO_BOHR, KBProjector, RadialFunction, SpeciesRadials
from hforge.errors import BasisMismatchError, InputError
from hforge.graph.neighbours import orbital_pair_list
from hforge.io import read_hs
from hforge.ops.two_centre import (
    PROGRAMS,
    baseline_blocks,
    block_pointer,
    kb_blocks,
    overlap_blocks,
    program_blocks,
    two_centre_descriptor,
)
from hforge.ops.two_centre.tables import gaunt

# Measured: 2.6e-9 (aBN TSHS), 9.7e-9 (SrTiO3 HSX), max over stored entries; SIESTA's own tables
# interpolate its integrals to about this.
S_TOLERANCE = 1e-7


def _orbital_pattern(data) -> np.ndarray:
    """Entries with ``|R| < r_a + r_b`` (orbital radii): where S is structurally nonzero."""
    i, j = data.edge_index
    r = np.linalg.norm(data.positions[j] + data.cell_shift @ data.cell - data.positions[i], axis=1)
    radii = [np.repeat([s.cutoff for s in sp.shells], [s.n_orbitals for s in sp.shells]) for sp in data.basis]
    pattern = np.zeros(len(data.s), dtype=bool)
    for e in range(len(r)):
        ri, rj = radii[data.species[i[e]]], radii[data.species[j[e]]]
        pattern[data.block_ptr[e] : data.block_ptr[e + 1]] = ((ri[:, None] + rj[None, :]) > r[e]).reshape(-1)
    return pattern


def _smallest_gamma_eigenvalue(data, s: np.ndarray) -> float:
    geometry_matrix = replace(data, s=s).to_sisl()
    return float(np.linalg.eigvalsh(geometry_matrix.Sk().toarray())[0])


def _check_against_file(data) -> None:
    s = overlap_blocks(data.basis, data.species, data.positions, data.cell, data.edge_index, data.cell_shift,
                       block_ptr=data.block_ptr)
    error = np.abs(s - data.s)[data.mask]
    assert error.max() <= S_TOLERANCE, error.max()
    pattern = _orbital_pattern(data)
    # identical sparsity: every structurally nonzero entry is stored, stored entries beyond it are
    # the file's H-only (KB) entries with S = 0, and the exact S is zero there
    assert not (pattern & ~data.mask).any()
    assert not (data.s[data.mask & ~pattern] != 0).any()
    assert not (s[~pattern] != 0).any()
    np.testing.assert_allclose(_smallest_gamma_eigenvalue(data, s), _smallest_gamma_eigenvalue(data, data.s), rtol=1e-4)


@pytest.mark.parametrize("name", ["abn_8_0", "abn_8_3", "abn_16_1", "abn_24_1", "abn_32_1", "abn_64_0"])
def test_exact_overlap_equals_siesta_on_abn_cells(abn_dir, name):
    _check_against_file(read_hs(abn_dir / "runs" / name / f"{name}.TSHS"))


@pytest.mark.parametrize(
    "path", ["hBN/aiida.HSX", "Si_pdos_k/Si_pdos.TSHS", "SrTiO3_unpolarized/SrTiO3.HSX", "SrTiO3_polarized/SrTiO3.HSX"]
)
def test_exact_overlap_equals_siesta_on_fixtures(siesta_fixtures, path):
    _check_against_file(read_hs(siesta_fixtures / path))


def _gamma_folded_overlap(basis, species, positions, cell, pairs_i, pairs_j) -> np.ndarray:
    """S of a Γ-only (nsc = 1) SIESTA file: every image summed onto its home-cell pair."""
    radii = np.array([sp.cutoff for sp in basis])
    pairs = orbital_pair_list(positions, cell, True, species, radii)
    s = overlap_blocks(basis, species, positions, cell, pairs.edge_index, pairs.cell_shift)
    pair_type = species[pairs.edge_index[0]] * len(basis) + species[pairs.edge_index[1]]
    ptr = block_pointer(two_centre_descriptor(basis).program("overlap"), pair_type)
    n_orb = basis.n_orbitals[species]
    folded = {}
    for e, (i, j) in enumerate(pairs.edge_index.T):
        block = s[ptr[e] : ptr[e + 1]].reshape(n_orb[i], n_orb[j])
        folded[(i, j)] = folded.get((i, j), 0) + block
    return np.concatenate([folded.get((i, j), np.zeros((n_orb[i], n_orb[j]))).reshape(-1) for i, j in zip(pairs_i, pairs_j)])


def test_exact_overlap_of_a_gamma_only_molecule_file(siesta_fixtures):
    """H2O in a 3 x 30 x 5 Å cell with nsc = 1: SIESTA stores S(Γ) with the images folded in."""
    data = read_hs(siesta_fixtures / "H2O_dipole/h2o_dipole.HSX")
    assert tuple(data.nsc) == (1, 1, 1)
    s = _gamma_folded_overlap(data.basis, data.species, data.positions, data.cell, *data.edge_index)
    assert np.abs(s - data.s)[data.mask].max() <= S_TOLERANCE


def test_exact_overlap_of_a_spin_orbit_file(siesta_fixtures):
    """Pt2 with spin-orbit coupling (HForge refuses its H; S is the same two-centre integral)."""
    import sisl

    folder = siesta_fixtures / "Pt2_soc"
    H = sisl.get_sile(str(folder / "Pt2_xx.HSX")).read_hamiltonian()
    basis = BasisSet.from_folder(folder)
    geometry = H.geometry
    species = np.zeros(geometry.na, dtype=np.int64)
    S = H.tocsr(dim=H.S_idx).toarray()  # nsc = 1: S(Γ) is the stored matrix
    pairs_i, pairs_j = np.divmod(np.arange(geometry.na**2), geometry.na)
    s = _gamma_folded_overlap(basis, species, geometry.xyz, geometry.cell, pairs_i, pairs_j)
    n = basis.n_orbitals[0]
    dense = np.block([[s[(i * 2 + j) * n * n : (i * 2 + j + 1) * n * n].reshape(n, n) for j in range(2)] for i in range(2)])
    stored = S != 0
    assert np.abs(dense - S)[stored].max() <= S_TOLERANCE
    assert not (dense[~stored] != 0).any()


def test_kb_projections_reproduce_siesta_h_beyond_the_orbital_reach(abn_dir):
    """Between r_i + r_j and r_i + r_j + 2 r_KB, SIESTA's H is the KB term alone."""
    data = read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS")
    v_kb = kb_blocks(data.basis, data.species, data.positions, data.cell, data.pbc, data.edge_index, data.cell_shift,
                     data.block_ptr)
    i, j = data.edge_index
    r = np.linalg.norm(data.positions[j] + data.cell_shift @ data.cell - data.positions[i], axis=1)
    far = np.repeat(r >= data.basis.pair_cutoffs()[data.species[i], data.species[j]], np.diff(data.block_ptr)) & data.mask
    h = data.h[0] + data.fermi_level * data.s
    assert far.sum() > 20000 and np.abs(h[far]).max() > 1e-5
    assert np.abs(h[far] - v_kb[far]).max() < 1e-8


# ---- analytic cases: Gaussian functions --------------------------------------------------------
def _gaussian(alpha: float, cutoff: float = 7.0, n: int = 700, power: int = 0) -> RadialFunction:
    r = np.linspace(0.0, cutoff, n)
    values = np.exp(-alpha * r**2) * r**power
    values[-1] = 0.0
    return RadialFunction(r[1], values, cutoff)


def _gaussian_species(symbol: str, alpha: float, potential: float, gamma: float) -> SpeciesBasis:
    """One s shell ``N exp(-alpha r^2)`` (normalised), V_NA = ``potential * exp(-gamma r^2)``, no KB."""
    norm = (2 * alpha / math.pi) ** 0.75 * math.sqrt(4 * math.pi)  # phi = f Y_00, int phi^2 = 1
    table = _gaussian(alpha)
    table = RadialFunction(table.delta, table.values * norm, table.cutoff)
    vna = _gaussian(gamma)
    vna = RadialFunction(vna.delta, vna.values * potential, vna.cutoff)
    radials = SpeciesRadials((table,), (), vna)
    return SpeciesBasis(symbol, 1, (Shell(1, 0, 1, False, 7.0 / ANG_TO_BOHR),), (), None, radials)


def test_gaussian_overlap_kinetic_and_potential_are_analytic():
    """For normalised s Gaussians a, b at distance R (Bohr): S = (2 sqrt(ab)/(a+b))^1.5 exp(-ab R^2/(a+b)),
    T = 2 S ab/(a+b) (3 - 2ab R^2/(a+b)) (-nabla^2, Ry: twice the Hartree -nabla^2/2), and a Gaussian
    potential's two-centre terms."""
    a, b, v, g = 0.8, 1.3, -2.0, 0.6
    basis = BasisSet((_gaussian_species("A", a, v, g), _gaussian_species("B", b, v, g)))
    desc = two_centre_descriptor(basis)
    distances = np.array([0.7, 1.5, 2.6, 3.4])
    vectors = distances[:, None] * np.array([[0.48, -0.6, 0.64]])
    types = np.full(len(distances), 1)  # (A, B)
    p, mu = a + b, a * b / (a + b)
    s_exact = (2 * math.sqrt(a * b) / p) ** 1.5 * np.exp(-mu * distances**2)
    t_exact = 2 * s_exact * mu * (3 - 2 * mu * distances**2)

    def run(name: str) -> np.ndarray:
        return program_blocks(desc.program(name), desc.tables, types, vectors)

    np.testing.assert_allclose(run("overlap"), s_exact, rtol=0, atol=1e-9)
    np.testing.assert_allclose(run("kinetic"), t_exact, rtol=0, atol=1e-8)
    # <a| V(r - R_B) |b> + <a| V(r) |b>: Gaussian products, analytic
    na, nb = (2 * a / math.pi) ** 0.75, (2 * b / math.pi) ** 0.75

    def three_gaussians(c1, c2, x):  # int e^{-c1 r^2} e^{-c2 |r - x|^2} ... closed form for two centres
        return (math.pi / (c1 + c2)) ** 1.5 * np.exp(-c1 * c2 * x**2 / (c1 + c2))

    # V on B's centre: product a(r) * [b+g](r-R): overlap of Gaussians a and (b+g)
    on_b = na * nb * v * three_gaussians(a, b + g, distances)
    on_a = na * nb * v * three_gaussians(a + g, b, distances)
    np.testing.assert_allclose(run("potential"), on_a + on_b, rtol=0, atol=1e-8)
    # crystal field: <a|V_B|a> for A's own orbital and B's potential at R
    crystal = program_blocks(desc.program("crystal"), desc.tables, np.full(len(distances), 1), vectors)
    np.testing.assert_allclose(crystal, na * na * v * three_gaussians(2 * a, g, distances), rtol=0, atol=1e-9)


# ---- rotations and conventions -----------------------------------------------------------------
@pytest.fixture(scope="module")
def abn_basis(abn_dir) -> BasisSet:
    return BasisSet.from_folder(abn_dir / "basis")


def test_gaunt_coefficients_are_integrals_of_three_harmonics():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(400_000, 3))
    y = real_harmonics(4, points)
    monte_carlo = 4 * np.pi * np.einsum("pa,pb,pc->abc", y[:, :9], y[:, :9], y) / len(points)
    np.testing.assert_allclose(gaunt(2, 2), monte_carlo, atol=0.02)
    for l in range(4):
        np.testing.assert_allclose(
            real_harmonics(3, points[:50])[:, l * l : (l + 1) ** 2], siesta_real_harmonics(l, points[:50]), atol=1e-13
        )


@settings(max_examples=10)
@given(st.integers(0, 2**32 - 1))
def test_rotated_pairs_give_rotated_blocks(abn_basis, seed):
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=rng).as_matrix()
    vectors = rng.normal(size=(6, 3)) * 2.0
    species_i, species_j = rng.integers(0, 2, 6), rng.integers(0, 2, 6)
    desc = two_centre_descriptor(abn_basis)
    types = species_i * 2 + species_j
    for name in ("overlap", "potential", "projection"):
        program = desc.program(name)
        blocks = program_blocks(program, desc.tables, types, vectors * ANG_TO_BOHR)
        rotated = program_blocks(program, desc.tables, types, vectors @ rotation.T * ANG_TO_BOHR)
        ptr = block_pointer(program, types)
        for e in range(6):
            shape = (program.rows[types[e]], program.cols[types[e]])
            b = blocks[ptr[e] : ptr[e + 1]].reshape(shape)
            cols = abn_basis[species_j[e]] if name != "projection" else _projector_species(abn_basis, species_j[e])
            expected = rotate_blocks(b, rotation, abn_basis[species_i[e]], cols)
            np.testing.assert_allclose(rotated[ptr[e] : ptr[e + 1]].reshape(shape), expected, atol=1e-10)


def _projector_species(basis: BasisSet, s: int) -> SpeciesBasis:
    """A stand-in species whose 'shells' are the KB projectors (for rotating projection blocks)."""
    projectors = basis[s].radials.projectors
    return SpeciesBasis("P", 1, tuple(Shell(1, p.l, k + 1) for k, p in enumerate(projectors)))


def test_transposed_pairs_give_transposed_blocks(abn_basis):
    desc = two_centre_descriptor(abn_basis)
    vectors = np.array([[1.1, -0.4, 2.0], [0.3, 2.2, -1.5]]) * ANG_TO_BOHR
    for name in ("overlap", "kinetic", "potential"):
        program = desc.program(name)
        forward = program_blocks(program, desc.tables, np.array([1, 1]), vectors).reshape(2, 13, 13)
        backward = program_blocks(program, desc.tables, np.array([2, 2]), -vectors).reshape(2, 13, 13)
        np.testing.assert_allclose(forward, backward.transpose(0, 2, 1), atol=1e-12)


def test_a_tiny_cell_with_its_own_images_gives_a_positive_definite_overlap(abn_basis):
    """One B and one N atom in a 2.2 Å cube: every atom overlaps dozens of its own images."""
    positions, cell = np.array([[0.0, 0.0, 0.0], [1.1, 1.1, 1.1]]), np.eye(3) * 2.2
    species = np.array([0, 1])
    pairs = orbital_pair_list(positions, cell, True, species, [sp.cutoff for sp in abn_basis])
    s = overlap_blocks(abn_basis, species, positions, cell, pairs.edge_index, pairs.cell_shift)
    pair_type = species[pairs.edge_index[0]] * 2 + species[pairs.edge_index[1]]
    ptr = block_pointer(two_centre_descriptor(abn_basis).program("overlap"), pair_type)
    gamma = np.zeros((26, 26))
    index = {(int(i), int(j), *map(int, n)): e for e, ((i, j), n) in enumerate(zip(pairs.edge_index.T, pairs.cell_shift))}
    for (i, j, *n), e in index.items():
        block = s[ptr[e] : ptr[e + 1]].reshape(13, 13)
        partner = index[(j, i, *(-np.array(n)))]
        np.testing.assert_allclose(block, s[ptr[partner] : ptr[partner + 1]].reshape(13, 13).T, atol=1e-12)
        gamma[13 * i : 13 * i + 13, 13 * j : 13 * j + 13] += block
    assert len(pairs.cell_shift) > 100
    eigenvalues = np.linalg.eigvalsh(gamma)
    assert eigenvalues[0] > 0 and np.isfinite(eigenvalues).all()


# ---- backends ----------------------------------------------------------------------------------
def _random_pairs(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """``(types, vectors)`` of ``n`` random pairs of the aBN basis (Bohr): onsite ones, one at the
    reach of the B-B tables, the others up to 8 Bohr apart."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, n)
    vectors = rng.normal(size=(n, 3)) * rng.uniform(0, 8, (n, 1))
    vectors[:3] = 0.0  # onsite
    vectors[3] = [0.0, 0.0, 14.13]  # at the reach of B-B tables
    return types, vectors


@pytest.mark.parametrize("name", PROGRAMS)
def test_numba_matches_the_torch_reference_on_random_pairs(abn_basis, name):
    desc = two_centre_descriptor(abn_basis)
    program = desc.program(name)
    types, vectors = _random_pairs(7)
    reference = program_blocks(program, desc.tables, types, vectors, backend="torch")
    fast = program_blocks(program, desc.tables, types, vectors, backend="numba")
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("isa", cpp_isas())
@pytest.mark.parametrize("name", PROGRAMS)
def test_cpp_matches_the_torch_reference_on_random_pairs(abn_basis, name, isa):
    """The compiled program (pairs of one type in vector lanes) equals the torch reference on pairs of
    every type, onsite and at a table's reach; a pair's block has the same bits computed alone, in any
    order and on any thread count (each lane's arithmetic is its own); ``accumulate`` adds to ``out``."""
    from hforge.ops.two_centre import cpp

    desc = two_centre_descriptor(abn_basis)
    program = desc.program(name)
    types, vectors = _random_pairs(8)
    ptr = block_pointer(program, types)
    reference = program_blocks(program, desc.tables, types, vectors, backend="torch")
    fast = cpp.program_blocks(program, desc.tables, types, vectors, ptr, isa=isa, threads=1)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)
    for threads in (2, 3):
        again = cpp.program_blocks(program, desc.tables, types, vectors, ptr, isa=isa, threads=threads)
        np.testing.assert_array_equal(again, fast)
    back = slice(None, None, -1)
    back_ptr = block_pointer(program, types[back])
    reversed_blocks = cpp.program_blocks(program, desc.tables, types[back], vectors[back], back_ptr, isa=isa)
    np.testing.assert_array_equal(np.concatenate(np.split(reversed_blocks, back_ptr[1:-1])[::-1]), fast)
    alone = cpp.program_blocks(program, desc.tables, types[5:6], vectors[5:6], block_pointer(program, types[5:6]), isa=isa)
    np.testing.assert_array_equal(alone, fast[ptr[5] : ptr[6]])
    start = np.random.default_rng(9).normal(size=int(ptr[-1]))
    added = cpp.program_blocks(program, desc.tables, types, vectors, ptr, out=start.copy(), accumulate=True, isa=isa)
    np.testing.assert_array_equal(added, start + fast)


def test_cpp_program_refuses_what_it_cannot_take(abn_basis):
    """An ``out`` of another dtype or size, or packed columns beyond ``out``'s, are refused by name."""
    if not cpp_isas():
        pytest.skip("libhforge_cpu is not built here (tests/test_backends.py fails on that under CI)")
    from hforge.ops.two_centre import cpp

    desc = two_centre_descriptor(abn_basis)
    program = desc.program("overlap")
    types, vectors = _random_pairs(10, 4)
    ptr = block_pointer(program, types)
    with pytest.raises(InputError, match="float64"):
        cpp.program_blocks(program, desc.tables, types, vectors, ptr, out=np.empty(int(ptr[-1]), dtype=np.float32))
    with pytest.raises(InputError, match="contiguous"):
        cpp.program_blocks(program, desc.tables, types, vectors, ptr, out=np.empty(int(ptr[-1]) + 1))
    rows = np.zeros(4, dtype=np.int64)
    with pytest.raises(InputError, match="outside"):
        cpp.program_packed(
            program, desc.tables, types, vectors, types // 2, np.zeros((2, 13), dtype=np.int64), 5, rows, rows,
            np.zeros((2, 16)),
        )


def test_numba_matches_the_references_on_a_real_cell(abn8):
    kwargs = dict(block_ptr=abn8.block_ptr)
    args = (abn8.basis, abn8.species, abn8.positions, abn8.cell, abn8.pbc, abn8.edge_index, abn8.cell_shift)
    np.testing.assert_allclose(
        baseline_blocks(*args, backend="numba", **kwargs), baseline_blocks(*args, backend="torch", **kwargs), rtol=0, atol=1e-10
    )


# ---- bad input ---------------------------------------------------------------------------------
def test_a_basis_without_radial_tables_is_refused_by_name(abn_basis):
    bare = BasisSet((replace(abn_basis["B"], radials=None), abn_basis["N"]))
    with pytest.raises(BasisMismatchError, match=r"\['B'\].*radial tables"):
        two_centre_descriptor(bare)


def test_a_basis_without_neutral_atom_potential_has_s_but_no_h0(abn_basis):
    radials = abn_basis["B"].radials
    without_vna = replace(abn_basis["B"], radials=SpeciesRadials(radials.orbitals, radials.projectors, None))
    basis = BasisSet((without_vna, abn_basis["N"]))
    desc = two_centre_descriptor(basis)
    assert desc.program("overlap").name == "overlap"
    with pytest.raises(BasisMismatchError, match="neutral-atom potential"):
        desc.program("potential")


def test_kb_projectors_round_trip_through_json(abn_basis):
    again = BasisSet.from_json(abn_basis.to_json())
    for a, b in zip(abn_basis, again):
        assert a.radials.matches(b.radials) and a.radials.digest == b.radials.digest
        assert isinstance(b.radials.projectors[0], KBProjector)
    assert "radials" not in abn_basis.to_json(radials=False)


def test_baseline_coefficients_weigh_each_part_per_block_type(abn8):
    """Coefficients folded into the programs equal the parts weighed value by value."""
    from hforge.io import value_block_types
    from hforge.ops.two_centre import BASELINE_PARTS, baseline_parts, plain_coefficients

    args = (abn8.basis, abn8.species, abn8.positions, abn8.cell, abn8.pbc, abn8.edge_index, abn8.cell_shift)
    parts = baseline_parts(*args, block_ptr=abn8.block_ptr)
    assert parts.shape == (len(BASELINE_PARTS), len(abn8.s))
    np.testing.assert_allclose(parts[3], abn8.s, atol=S_TOLERANCE)  # the overlap part is S
    plain = baseline_blocks(*args, block_ptr=abn8.block_ptr)
    np.testing.assert_allclose(plain, parts[:3].sum(axis=0), rtol=0, atol=1e-10)
    rng = np.random.default_rng(3)
    table = rng.normal(size=plain_coefficients(abn8.basis).shape)
    table = 0.5 * (table + table.transpose(0, 1, 3, 2, 5, 4))  # symmetric under (s_i, a) <-> (s_j, b)
    types = value_block_types(abn8.basis, abn8.species, abn8.edge_index, abn8.cell_shift, abn8.block_ptr)
    expected = sum(table[p].reshape(-1)[types] * parts[p] for p in range(len(BASELINE_PARTS)))
    weighed = baseline_blocks(*args, block_ptr=abn8.block_ptr, coefficients=table)
    np.testing.assert_allclose(weighed, expected, rtol=0, atol=1e-9)


def test_block_sums_match_the_reference(abn_basis):
    from hforge.ops.two_centre import program_block_sums

    desc = two_centre_descriptor(abn_basis)
    rng = np.random.default_rng(11)
    program = desc.program("crystal")
    counts = np.array([3, 0, 5, 1])
    segment_ptr = np.concatenate([[0], np.cumsum(counts)])
    rows = np.repeat(np.array([0, 1, 0, 1]), counts)  # the onsite atom's species per pair
    types = rows * 2 + rng.integers(0, 2, len(rows))
    vectors = rng.normal(size=(len(rows), 3)) * 3.0
    out_ptr = np.concatenate([[0], np.cumsum(np.full(4, 169))])
    reference = program_block_sums(program, desc.tables, types, vectors, segment_ptr, out_ptr, backend="torch")
    fast = program_block_sums(program, desc.tables, types, vectors, segment_ptr, out_ptr, backend="numba")
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)
    blocks = program_blocks(program, desc.tables, types, vectors).reshape(-1, 169)
    np.testing.assert_allclose(reference[:169], blocks[:3].sum(axis=0), atol=1e-12)  # an independent sum
    assert not reference[169:338].any()  # an atom without neighbours


def test_baseline_of_a_subset_of_pairs_is_the_subset_of_the_whole(abn8):
    """Streamed prediction evaluates H0 range by range on one context: the same values as the whole."""
    from hforge.ops.two_centre import BaselineContext

    context = BaselineContext(abn8.basis, abn8.species, abn8.positions, abn8.cell, abn8.pbc)
    whole = context.blocks(abn8.edge_index, abn8.cell_shift, abn8.block_ptr)
    part = np.flatnonzero(abn8.edge_index[0] >= 5)
    sizes = np.diff(abn8.block_ptr)[part]
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    subset = context.blocks(abn8.edge_index[:, part], abn8.cell_shift[part], ptr)
    expected = np.concatenate([whole[abn8.block_ptr[e] : abn8.block_ptr[e + 1]] for e in part])
    np.testing.assert_allclose(subset, expected, rtol=0, atol=1e-12)


def test_cell_pairs_are_kept_in_narrow_integers_where_they_fit():
    from hforge.ops.two_centre.baseline import _narrow

    small = np.array([[0, 5, -3], [2, 1, 7]])
    assert _narrow(small, np.int16).dtype == np.int16 and (_narrow(small, np.int16) == small).all()
    large = np.array([0, 40000])
    assert _narrow(large, np.int16) is large  # does not fit: unchanged
    assert _narrow(np.zeros((0, 3), dtype=np.int64), np.int16).dtype == np.int16
