"""CSR assembly of H and S: every backend against the scipy reference, a hand-built matrix,
the vectors shared with the host kernel test, and real SIESTA matrices read back by sisl."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import sisl
from assemble_problems import (
    CASES,
    Problem,
    neighbour_problem,
    random_pairs_problem,
    read_cases,
    shared_problems,
)
from hypothesis import given
from hypothesis import strategies as st

from hforge.errors import BasisMismatchError, InputError
from hforge.ops.assemble import assemble_csr, is_canonical, plan_csr_assembly
from hforge.ops.assemble.layout import supercell_lookup

CPU_BACKENDS = ["torch", "numba"]


def assert_same_csr(got, want) -> None:
    assert got.shape == want.shape and got.nsc == want.nsc and got.row_offset == want.row_offset
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert got.data.dtype == want.data.dtype
    np.testing.assert_array_equal(got.data, want.data)


def assemble(problem: Problem, backend: str, **kwargs):
    plan = plan_csr_assembly(**problem.kwargs(), atoms=problem.atoms, backend=backend)
    return plan.fill(problem.blocks, **kwargs)


def mirrored(matrix: scipy.sparse.csr_matrix, nsc) -> scipy.sparse.csr_matrix:
    """M'(j, i, -n) = M(i, j, n): the transpose across supercells, built entry by entry."""
    lattice = sisl.Lattice(np.eye(3), nsc=list(nsc))
    no = matrix.shape[0]
    coo = matrix.tocoo()
    partner = np.asarray(lattice.sc_index(-lattice.sc_off[coo.col // no])).reshape(-1)
    out = scipy.sparse.coo_matrix((coo.data, (coo.col % no, coo.row + no * partner)), shape=matrix.shape).tocsr()
    out.sort_indices()
    return out


# --- a matrix built by hand -------------------------------------------------------------------


def test_hand_built_matrix():
    """Atom 0 (1 orbital) and atom 1 (2 orbitals) in a chain (nsc 3x1x1), with a self-image pair."""
    a, b, c, d, f = 1.0, [[2.0, 3.0], [3.0, 4.0]], [5.0, 6.0], 7.0, [8.0, 9.0]
    edge_index = np.array([[0, 1, 0, 0, 0], [0, 1, 1, 0, 1]])
    cell_shift = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [-1, 0, 0]])
    # (0,1,-1) is canonical because i < j; its partner (1,0,+1) comes from the transpose.
    values = np.array([a, *np.ravel(b), *c, d, *f])
    block_ptr = np.array([0, 1, 5, 7, 8, 10])
    lattice = sisl.Lattice(np.eye(3), nsc=[3, 1, 1])
    plus, minus = (3 * lattice.sc_index(s) for s in ([1, 0, 0], [-1, 0, 0]))
    want = np.zeros((3, 9))
    want[0, [0, 1, 2]] = a, *c
    want[0, plus] = want[0, minus] = d
    want[0, [minus + 1, minus + 2]] = f
    want[1:, 1:3] = b
    want[1:, 0] = c
    want[1:, plus] = f
    for backend in CPU_BACKENDS:
        csr = assemble_csr(edge_index, cell_shift, block_ptr, [values, 10 * values], np.array([1, 2]), backend=backend)
        assert csr.nsc == (3, 1, 1) and csr.shape == (3, 9) and csr.nnz == np.count_nonzero(want)
        np.testing.assert_array_equal(csr.to_scipy(0).toarray(), want)
        np.testing.assert_array_equal(csr.to_scipy(1).toarray(), 10 * want)


# --- vectors shared with ctest ------------------------------------------------------------------


def test_shared_cases_are_current():
    """The file is what the problems and the reference give, and its supercell table is sisl's."""
    cases = read_cases(CASES)
    problems = shared_problems()
    assert len(cases) == len(problems) >= 8
    for case, problem in zip(cases, problems):
        np.testing.assert_array_equal(case["sc_lookup"], supercell_lookup(case["nsc"]))
        np.testing.assert_array_equal(case["edge_index"], problem.edge_index.ravel())
        np.testing.assert_array_equal(case["blocks"], problem.blocks.ravel())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_shared_cases(backend):
    for case in read_cases(CASES):
        n_values = case["block_ptr"][-1]
        mask = case["mask"].astype(bool) if case["mask"].size else None
        plan = plan_csr_assembly(
            case["edge_index"].reshape(2, -1),
            case["cell_shift"].reshape(-1, 3),
            case["block_ptr"],
            case["orbitals"],
            nsc=case["nsc"],
            mask=mask,
            atoms=tuple(case["atoms"]),
            backend=backend,
        )
        csr = plan.fill(case["blocks"].reshape(-1, n_values))
        np.testing.assert_array_equal(csr.indptr, case["indptr"])
        np.testing.assert_array_equal(csr.indices, case["indices"])
        np.testing.assert_array_equal(csr.data.ravel(), case["data"])


# --- numba against the reference on random problems ---------------------------------------------

problem_parameters = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "n_atoms": st.integers(1, 8),
        "reach": st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 1)),
        "n_pairs": st.integers(0, 40),
        "onsite_fraction": st.sampled_from([0.0, 0.5, 1.0]),
        "n_matrices": st.integers(1, 3),
        "mask_fraction": st.sampled_from([1.0, 0.7, 0.0]),
        "dtype": st.sampled_from([np.float64, np.float32]),
        "orbital_choices": st.sampled_from([(1, 4, 9, 13), (0, 1, 5)]),  # 0: an atom without orbitals
    }
)


@given(parameters=problem_parameters, give_nsc=st.booleans())
def test_numba_matches_reference_on_random_pairs(parameters, give_nsc):
    problem = random_pairs_problem(np.random.default_rng(parameters.pop("seed")), **parameters)
    if give_nsc:
        problem.nsc = (5, 5, 3)
    assert_same_csr(assemble(problem, "numba"), assemble(problem, "torch"))


@given(
    seed=st.integers(0, 2**32 - 1),
    n_atoms=st.integers(1, 6),
    side=st.floats(2.0, 7.0),
    cutoff=st.floats(2.5, 7.5),
    periodic=st.booleans(),
    mask=st.booleans(),
)
def test_numba_matches_reference_on_neighbour_lists(seed, n_atoms, side, cutoff, periodic, mask):
    """Small and skewed cells, where an atom sees many images of itself and of the others."""
    rng = np.random.default_rng(seed)
    cell = side * (np.eye(3) + 0.3 * rng.random((3, 3)))
    positions = rng.random((n_atoms, 3)) @ cell
    problem = neighbour_problem(rng, positions, cell, periodic, cutoff, mask_fraction=0.6 if mask else 1.0)
    want = assemble(problem, "torch")
    assert_same_csr(assemble(problem, "numba"), want)
    if not periodic:
        assert want.nsc == (1, 1, 1)


# --- properties -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_symmetric_by_construction(backend):
    rng = np.random.default_rng(7)
    positions = rng.random((5, 3)) * 4.0
    problem = neighbour_problem(rng, positions, 4.0 * np.eye(3), True, 6.0, n_matrices=2)
    csr = assemble(problem, backend)
    assert np.prod(csr.nsc) > 1
    for k in range(2):
        matrix = csr.to_scipy(k)
        partner = mirrored(matrix, csr.nsc)
        np.testing.assert_array_equal(partner.indptr, csr.indptr)
        np.testing.assert_array_equal(partner.indices, csr.indices)
        np.testing.assert_array_equal(partner.data, csr.data[:, k])


def test_pair_order_and_pair_count_do_not_matter():
    rng = np.random.default_rng(3)
    problem = random_pairs_problem(rng, 6, n_pairs=30)
    want = assemble(problem, "numba")
    order = rng.permutation(problem.edge_index.shape[1])
    bp = problem.block_ptr
    blocks = np.concatenate([problem.blocks[:, bp[e] : bp[e + 1]] for e in order], axis=1)
    shuffled = Problem(problem.edge_index[:, order], problem.cell_shift[order], problem.orbitals_per_atom, blocks)
    assert_same_csr(assemble(shuffled, "numba"), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_row_ranges_equal_slices_of_the_whole(backend):
    """Ranges written into slices of caller-provided whole-matrix buffers rebuild the whole matrix."""
    problem = random_pairs_problem(np.random.default_rng(11), 9, n_pairs=50, n_matrices=2, mask_fraction=0.8)
    whole = assemble(problem, backend)
    indices = np.full(whole.nnz, -1, dtype=whole.indices.dtype)
    data = np.full_like(whole.data, np.nan)
    offset = problem.orbitals_per_atom.cumsum() - problem.orbitals_per_atom
    problem.nsc = whole.nsc
    for begin, end in [(0, 2), (2, 3), (3, 3), (3, 8), (8, 9)]:
        row0 = offset[begin]
        plan = plan_csr_assembly(**problem.kwargs(), atoms=(begin, end), backend=backend)
        start = whole.indptr[row0]
        indices_out, data_out = indices[start : start + plan.nnz], data[start : start + plan.nnz]
        part = plan.fill(problem.blocks, indices_out=indices_out, data_out=data_out)
        assert part.row_offset == row0 and part.shape == (plan.inputs.n_rows, whole.shape[1])
        np.testing.assert_array_equal(part.indptr, whole.indptr[row0 : row0 + part.shape[0] + 1] - start)
        assert part.data is data_out and part.indices is indices_out
    np.testing.assert_array_equal(indices, whole.indices)
    np.testing.assert_array_equal(data, whole.data)


def test_row_ranges_stream_into_memory_maps(tmp_path):
    """Chunked assembly straight into .npy files on disk, as a huge cell would be written."""
    problem = random_pairs_problem(np.random.default_rng(8), 7, n_pairs=30)
    whole = plan_csr_assembly(**problem.kwargs())
    want = whole.fill(problem.blocks)
    indices = np.lib.format.open_memmap(tmp_path / "indices.npy", "w+", np.int32, (whole.nnz,))
    data = np.lib.format.open_memmap(tmp_path / "data.npy", "w+", np.float64, (whole.nnz, 2))
    first_row = np.concatenate([[0], np.cumsum(problem.orbitals_per_atom)])
    problem.nsc = whole.nsc
    for begin, end in [(0, 4), (4, 7)]:
        part = plan_csr_assembly(**problem.kwargs(), atoms=(begin, end))
        start = whole.indptr[first_row[begin]]
        part.fill(problem.blocks, indices_out=indices[start : start + part.nnz], data_out=data[start : start + part.nnz])
    indices.flush()
    data.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "indices.npy"), want.indices)
    np.testing.assert_array_equal(np.load(tmp_path / "data.npy"), want.data)


def test_row_range_needs_only_the_pairs_touching_it():
    problem = random_pairs_problem(np.random.default_rng(5), 8, n_pairs=40)
    whole = assemble(problem, "numba")
    begin, end = 2, 5
    touching = np.flatnonzero(((problem.edge_index >= begin) & (problem.edge_index < end)).any(axis=0))
    bp = problem.block_ptr
    blocks = np.concatenate([problem.blocks[:, bp[e] : bp[e + 1]] for e in touching], axis=1)
    plan = plan_csr_assembly(
        problem.edge_index[:, touching],
        problem.cell_shift[touching],
        Problem(problem.edge_index[:, touching], problem.cell_shift[touching], problem.orbitals_per_atom, blocks).block_ptr,
        problem.orbitals_per_atom,
        nsc=whole.nsc,
        atoms=(begin, end),
    )
    part = plan.fill(blocks)
    row0, row1 = part.row_offset, part.row_offset + part.shape[0]
    sl = slice(whole.indptr[row0], whole.indptr[row1])
    np.testing.assert_array_equal(part.indices, whole.indices[sl])
    np.testing.assert_array_equal(part.data, whole.data[sl])


def _fill_by_pairs(plan, problem, groups, indices, data):
    """``plan.fill`` of every pair once, group by group, each group's blocks copied out in its order."""
    bp = problem.block_ptr
    for pairs in groups:
        blocks = [np.concatenate([values[bp[e] : bp[e + 1]] for e in pairs] or [values[:0]]) for values in problem.blocks]
        plan.fill(blocks, pairs=pairs, indices_out=indices, data_out=data)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("atoms", [None, (2, 7)])
def test_filling_by_pairs_equals_one_fill(backend, atoms):
    """Every pair written once (both its rows and its partner's), in shuffled groups of any size
    and order, gives the buffers of one fill: streamed inference's assembly."""
    rng = np.random.default_rng(21)
    for n_atoms, reach in [(9, (2, 1, 0)), (3, (3, 2, 2))]:
        problem = random_pairs_problem(rng, n_atoms, n_pairs=60, n_matrices=2, reach=reach)
        problem.atoms = None if atoms is None or atoms[1] > n_atoms else atoms
        want = assemble(problem, backend)
        plan = plan_csr_assembly(**problem.kwargs(), atoms=problem.atoms, backend=backend)
        for dtype, index_dtype in [(np.float64, np.int32), (np.float32, np.int64)]:
            order = rng.permutation(len(problem.cell_shift))
            groups = np.split(order, np.sort(rng.choice(len(order), size=4, replace=True)))  # some empty
            indices = np.full(want.nnz, -1, dtype=index_dtype)
            data = np.full((want.nnz, 2), np.nan, dtype=dtype)
            typed = Problem(problem.edge_index, problem.cell_shift, problem.orbitals_per_atom, problem.blocks.astype(dtype))
            _fill_by_pairs(plan, typed, groups, indices, data)
            np.testing.assert_array_equal(indices, want.indices)
            np.testing.assert_array_equal(data, want.data.astype(dtype))


def test_filling_by_pairs_is_refused_where_it_cannot_work():
    problem = random_pairs_problem(np.random.default_rng(3), 5, n_pairs=20)
    plan = plan_csr_assembly(**problem.kwargs())
    indices, data = np.empty(plan.nnz, dtype=np.int32), np.empty((plan.nnz, 2))
    sizes = np.diff(problem.block_ptr)
    with pytest.raises(InputError, match="indices_out and data_out"):
        plan.fill(problem.blocks[:, : sizes[0]], pairs=[0])
    with pytest.raises(InputError, match="pair indices"):
        plan.fill(problem.blocks[:, : sizes[0]], pairs=[len(sizes)], indices_out=indices, data_out=data)
    with pytest.raises(InputError, match="shape"):
        plan.fill(problem.blocks[:, : sizes[0] + 1], pairs=[0], indices_out=indices, data_out=data)
    masked = random_pairs_problem(np.random.default_rng(3), 5, n_pairs=20, mask_fraction=0.5)
    with pytest.raises(InputError, match="unmasked"):
        plan_csr_assembly(**masked.kwargs()).fill(masked.blocks[:, : sizes[0]], pairs=[0], indices_out=indices, data_out=data)


def test_auto_backend_and_index_dtypes():
    problem = random_pairs_problem(np.random.default_rng(2), 5, n_pairs=20)
    plan = plan_csr_assembly(**problem.kwargs())
    assert plan.backend == "numba"
    narrow = plan.fill(problem.blocks)
    wide = plan.fill(problem.blocks, index_dtype=np.int64)
    assert narrow.indices.dtype == narrow.indptr.dtype == np.int32
    assert wide.indices.dtype == wide.indptr.dtype == np.int64
    np.testing.assert_array_equal(narrow.indices, wide.indices)


# --- sisl hand-over -----------------------------------------------------------------------------


def _geometry(orbitals_per_atom: np.ndarray) -> sisl.Geometry:
    atoms = [sisl.Atom(1, orbitals=[sisl.AtomicOrbital("s", R=1.0)] * int(n)) for n in orbitals_per_atom]
    return sisl.Geometry(np.random.default_rng(0).random((len(atoms), 3)) * 5, atoms=atoms, lattice=5.0 * np.eye(3))


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_to_sisl_shares_the_buffers(index_dtype):
    rng = np.random.default_rng(4)
    problem = neighbour_problem(rng, rng.random((4, 3)) * 5.0, 5.0 * np.eye(3), True, 5.5)
    csr = assemble(problem, "numba", index_dtype=index_dtype)
    H = csr.to_sisl(_geometry(problem.orbitals_per_atom))
    assert not H.orthogonal and H.spin.is_unpolarized and tuple(H.geometry.nsc) == csr.nsc
    assert H._csr.col is csr.indices and H._csr._D is csr.data and H._csr.finalized
    assert H._csr.col.dtype == index_dtype and H.nnz == csr.nnz
    k = [0.1, 0.2, 0.3]
    for index, sisl_matrix in [(0, H.Hk(k)), (1, H.Sk(k))]:
        matrix = csr.to_scipy(index)
        lattice = H.geometry.lattice
        phases = np.exp(2j * np.pi * lattice.sc_off @ k)
        no = H.no
        want = sum(phases[s] * matrix[:, s * no : (s + 1) * no] for s in range(lattice.n_s))
        np.testing.assert_allclose(sisl_matrix.toarray(), want.toarray(), atol=1e-12)


def _removed(*args, **kwargs):
    raise AttributeError("gone in this sisl")


def _ignores_its_state(self, state):
    """A ``__setstate__`` that changed meaning without an error: the pattern is not installed."""


@pytest.mark.parametrize("replacement", [_removed, _ignores_its_state], ids=["removed", "changed"])
def test_to_sisl_falls_back_to_sisls_public_api(monkeypatch, replacement):
    """A sisl whose internals changed (an error, or a result without the given pattern) gets the
    same matrices through Hamiltonian.fromsp, with a warning."""
    rng = np.random.default_rng(5)
    problem = neighbour_problem(rng, rng.random((4, 3)) * 5.0, 5.0 * np.eye(3), True, 5.5)
    csr = assemble(problem, "numba")
    geometry = _geometry(problem.orbitals_per_atom)
    shared = csr.to_sisl(geometry)
    monkeypatch.setattr(sisl.SparseCSR, "__setstate__", replacement)
    with pytest.warns(UserWarning, match="Hamiltonian.fromsp"):
        public = csr.to_sisl(geometry)
    assert public._csr._D is not csr.data  # a copy: the shared-buffer path was not taken
    assert not public.orthogonal and public.spin.is_unpolarized and tuple(public.geometry.nsc) == csr.nsc
    for k in ([0, 0, 0], [0.1, 0.2, 0.3]):
        np.testing.assert_array_equal(public.Hk(k).toarray(), shared.Hk(k).toarray())
        np.testing.assert_array_equal(public.Sk(k).toarray(), shared.Sk(k).toarray())
    for index in range(2):
        np.testing.assert_array_equal(public.tocsr(index).toarray(), csr.to_scipy(index).toarray())


def test_to_sisl_refuses_a_row_range_and_a_wrong_geometry():
    problem = random_pairs_problem(np.random.default_rng(6), 4, n_pairs=10)
    whole = assemble(problem, "numba")
    with pytest.raises(BasisMismatchError, match="orbitals of the geometry"):
        whole.to_sisl(_geometry(problem.orbitals_per_atom[:-1]))
    part = plan_csr_assembly(**problem.kwargs(), atoms=(1, 3)).fill(problem.blocks)
    with pytest.raises(InputError, match="rows"):
        part.to_sisl(_geometry(problem.orbitals_per_atom))


# --- real SIESTA matrices --------------------------------------------------------------------


def canonical_blocks(geometry: sisl.Geometry, matrices: list[scipy.sparse.csr_matrix]):
    """Blocks and mask of the canonical half of matrices that share one (file) sparsity pattern."""
    no, lattice = geometry.no, geometry.lattice
    coo = matrices[0].tocoo()
    rows, cols = coo.row, coo.col
    i, j = geometry.o2a(rows), geometry.o2a(cols % no)
    shift = lattice.sc_off[cols // no]
    keep = is_canonical(np.stack([i, j]), shift)
    rows, cols, i, j, shift = rows[keep], cols[keep], i[keep], j[keep], shift[keep]
    pairs, pair_of_entry = np.unique(np.column_stack([i, j, shift]), axis=0, return_inverse=True)
    orbitals = geometry.orbitals.astype(np.int64)
    n_i, n_j = orbitals[pairs[:, 0]], orbitals[pairs[:, 1]]
    block_ptr = np.concatenate([[0], np.cumsum(n_i * n_j)])
    e = pair_of_entry.reshape(-1)
    flat = block_ptr[e] + (rows - geometry.firsto[i]) * n_j[e] + (cols % no - geometry.firsto[j])
    mask = np.zeros(block_ptr[-1], dtype=bool)
    mask[flat] = True
    blocks = np.zeros((len(matrices), block_ptr[-1]))
    for k, matrix in enumerate(matrices):
        blocks[k, flat] = np.asarray(matrix[rows, cols]).reshape(-1)
    return pairs[:, :2].T.copy(), pairs[:, 2:].copy(), block_ptr, blocks, orbitals, mask


@pytest.mark.parametrize("fixture", ["hBN/aiida.fdf", "Si_pdos_k/Si_pdos.fdf"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_siesta_round_trip(siesta_fixtures, fixture, backend):
    """Blocks of real H and S, reassembled, give the file's pattern and its symmetrised values exactly.

    SIESTA's H and S are symmetric only to ~1e-8 eV / ~1e-9 (each triangle is integrated on its
    own), so the exact comparison is with (M(i,j,n) + M(j,i,-n)) / 2 of the file's matrices, and
    the matrices as read are matched to that tolerance.
    """
    H = sisl.get_sile(siesta_fixtures / fixture).read_hamiltonian()
    H.finalize()
    geometry, nsc = H.geometry, tuple(int(n) for n in H.geometry.nsc)
    original = [H.tocsr(0), H.tocsr(H.S_idx)]
    for matrix in original:
        matrix.sort_indices()
    symmetric = []
    for matrix in original:
        partner = mirrored(matrix, nsc)  # same pattern (asserted): the file's pattern is symmetric
        np.testing.assert_array_equal(partner.indptr, matrix.indptr)
        np.testing.assert_array_equal(partner.indices, matrix.indices)
        sym = matrix.copy()  # keeps the explicit zeros of the pattern, which `+` would drop
        sym.data = 0.5 * (matrix.data + partner.data)
        symmetric.append(sym)
    edge_index, cell_shift, block_ptr, blocks, orbitals, mask = canonical_blocks(geometry, symmetric)
    assert not mask.all()  # the file's orbital sparsity is not block-dense
    csr = assemble_csr(edge_index, cell_shift, block_ptr, blocks, orbitals, nsc=nsc, mask=mask, backend=backend)
    assert csr.shape == original[0].shape and csr.nnz == original[0].nnz == H.nnz
    np.testing.assert_array_equal(csr.indptr, original[0].indptr)
    np.testing.assert_array_equal(csr.indices, original[0].indices)
    for k in range(2):
        np.testing.assert_array_equal(csr.data[:, k], symmetric[k].data)
        np.testing.assert_allclose(csr.data[:, k], original[k].data, atol=5e-8)
    rebuilt = csr.to_sisl(geometry)
    for k in ([0, 0, 0], [0.25, 0.1, 0.0]):
        np.testing.assert_allclose(rebuilt.Hk(k).toarray(), H.Hk(k).toarray(), atol=1e-7)
        np.testing.assert_allclose(rebuilt.Sk(k).toarray(), H.Sk(k).toarray(), atol=1e-8)
    np.testing.assert_allclose(rebuilt.eigh([0.25, 0.1, 0.0]), H.eigh([0.25, 0.1, 0.0]), atol=1e-6)


# --- bad input ----------------------------------------------------------------------------------


def _tiny():
    return Problem(
        np.array([[0, 0], [0, 1]]), np.array([[0, 0, 0], [1, 0, 0]]), np.array([2, 3]), np.ones((2, 10))
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pair_given_twice_is_refused(backend):
    problem = _tiny()
    ei = np.concatenate([problem.edge_index, problem.edge_index[:, 1:]], axis=1)
    cs = np.concatenate([problem.cell_shift, problem.cell_shift[1:]])
    with pytest.raises(InputError, match="twice"):
        plan_csr_assembly(ei, cs, np.array([0, 4, 10, 16]), problem.orbitals_per_atom, backend=backend)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(edge_index=np.array([[0, 1], [0, 0]])), "canonical half"),
        (dict(cell_shift=np.array([[0, 0, -1], [1, 0, 0]])), "canonical half"),
        (dict(edge_index=np.array([[0, 0], [0, 2]])), "outside"),
        (dict(block_ptr=np.array([0, 4, 9])), "block_ptr"),
        (dict(cell_shift=np.array([[0.0, 0, 0], [1, 0, 0]])), "integer"),
        (dict(nsc=(1, 1, 1)), "beyond nsc"),
        (dict(nsc=(2, 1, 1)), "odd"),
        (dict(mask=np.ones(10, dtype=np.int8)), "mask"),
        (dict(atoms=(1, 3)), "atom range"),
    ],
)
def test_bad_input_is_named(change, message):
    problem = _tiny()
    kwargs = problem.kwargs() | change
    with pytest.raises(InputError, match=message):
        plan_csr_assembly(**kwargs)


def test_bad_blocks_and_buffers_are_named():
    problem = _tiny()
    plan = plan_csr_assembly(**problem.kwargs())
    with pytest.raises(InputError, match="shape"):
        plan.fill([np.ones(9)])
    with pytest.raises(InputError, match="floating"):
        plan.fill([np.ones(10, dtype=np.int64)])
    with pytest.raises(InputError, match="data_out"):
        plan.fill(problem.blocks, data_out=np.empty((plan.nnz, 2), dtype=np.float32))
    with pytest.raises(InputError, match="indices_out"):
        plan.fill(problem.blocks, indices_out=np.empty(plan.nnz + 1, dtype=np.int64))


# --- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("mask_fraction", [1.0, 0.6])
def test_cupy_matches_reference(mask_fraction):
    import cupy

    rng = np.random.default_rng(12)
    for n_atoms, atoms in [(1, None), (20, None), (20, (5, 12))]:
        problem = random_pairs_problem(rng, n_atoms, n_pairs=150, reach=(2, 1, 1), mask_fraction=mask_fraction)
        problem.atoms = atoms
        want = assemble(problem, "torch")
        kwargs = {k: (None if v is None else cupy.asarray(v) if isinstance(v, np.ndarray) else v)
                  for k, v in problem.kwargs().items()}
        plan = plan_csr_assembly(**kwargs, atoms=atoms, backend="cupy")
        for dtype in (np.float64, np.float32):
            got = plan.fill(cupy.asarray(problem.blocks.astype(dtype)))
            np.testing.assert_array_equal(got.indptr.get(), want.indptr)
            np.testing.assert_array_equal(got.indices.get(), want.indices)
            np.testing.assert_array_equal(got.data.get(), want.data.astype(dtype))


@pytest.mark.gpu
def test_cupy_fills_by_pairs_as_the_reference():
    import cupy

    rng = np.random.default_rng(13)
    for n_atoms, atoms in [(20, None), (20, (5, 12))]:
        problem = random_pairs_problem(rng, n_atoms, n_pairs=150, reach=(2, 1, 1))
        problem.atoms = atoms
        want = assemble(problem, "torch")
        kwargs = {k: (None if v is None else cupy.asarray(v) if isinstance(v, np.ndarray) else v)
                  for k, v in problem.kwargs().items()}
        plan = plan_csr_assembly(**kwargs, atoms=atoms, backend="cupy")
        bp = problem.block_ptr
        for dtype, index_dtype in [(np.float64, np.int32), (np.float32, np.int64)]:
            indices = cupy.full(want.indices.shape, -1, dtype=index_dtype)
            data = cupy.full(want.data.shape, np.nan, dtype=dtype)
            for pairs in np.array_split(rng.permutation(len(problem.cell_shift)), 3):
                blocks = [
                    cupy.asarray(np.concatenate([v[bp[e] : bp[e + 1]] for e in pairs]).astype(dtype)) for v in problem.blocks
                ]
                plan.fill(blocks, pairs=cupy.asarray(pairs), indices_out=indices, data_out=data)
            np.testing.assert_array_equal(indices.get(), want.indices)
            np.testing.assert_array_equal(data.get(), want.data.astype(dtype))
