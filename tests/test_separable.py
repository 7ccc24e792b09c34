"""The separable operator ``sum_k |chi_k> D_k <chi_k|`` (hforge.ops.two_centre.projectors / .separable,
hforge.models.separable): its blocks against an independent dense construction, its backends against
each other, its gradient, and the property it exists for: bounded along S's near-null directions
whatever ``D`` is, so that no state leaves the spectrum, where per-entry noise of 1 meV does."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from cpu_kernels import cpp_isas
from hypothesis import given, settings
from hypothesis import strategies as st

from hforge.errors import InputError
from hforge.io import read_hs
from hforge.metrics.spectra import GammaLayout
from hforge.models.separable import mean_operator_matrix
from hforge.ops._cpu import ISAS as ISAS_ALL
from hforge.ops.backends import backend_status
from hforge.ops.two_centre import _pair_vectors, block_pointer, program_blocks, reference
from hforge.ops.two_centre.projectors import ProjectorSet, projector_descriptor
from hforge.ops.two_centre.separable import SeparableContext, reach_order

PROJECTORS = ProjectorSet(radius=1.2, l_max=2, n_radial=2)


@pytest.fixture(scope="module")
def cell16(abn_dir):
    """The held-out 16-atom aBN cell with its canonical half."""
    data = read_hs(abn_dir / "runs" / "abn_16_5" / "abn_16_5.TSHS", abn_dir / "basis")
    return data, data.canonical_half()


@pytest.fixture(scope="module")
def context16(cell16):
    data, _ = cell16
    return SeparableContext(data.basis, PROJECTORS, data.species, data.positions, data.cell, data.pbc)


def random_operators(n_atoms: int, n_p: int, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n_atoms, n_p, n_p))
    return scale * (d + d.transpose(0, 2, 1)) / 2


def gamma_projection_matrix(context: SeparableContext, n_orbitals: int, offsets: np.ndarray) -> np.ndarray:
    """``P(Γ)`` (orbitals x atoms * n_p): every projection pair folded into the home cell."""
    rows, proj_ptr, ptr, values = context.projections(np.ones(len(context.positions), dtype=bool))
    i, k = context.pairs.edge_index[:, rows]
    n_p = context.n_proj
    out = np.zeros((n_orbitals, len(context.positions) * n_p))
    for e in range(len(rows)):
        block = values[ptr[e] : ptr[e + 1]].reshape(-1, n_p)
        out[offsets[i[e]] : offsets[i[e] + 1], k[e] * n_p : (k[e] + 1) * n_p] += block
    return out


def test_projectors_are_orthonormal_on_an_atom(cell16):
    """<chi_a|chi_b> of one atom (the gram program at R = 0) is the identity: the set is orthonormal."""
    data, _ = cell16
    desc = projector_descriptor(data.basis, PROJECTORS)
    n_p = PROJECTORS.n_functions
    gram = program_blocks(desc.gram, desc.tables, np.array([0]), np.zeros((1, 3)), backend="torch").reshape(n_p, n_p)
    np.testing.assert_allclose(gram, np.eye(n_p), atol=2e-6)


def test_blocks_equal_the_dense_product_at_gamma(cell16, context16):
    """Folded to Γ, the blocks on every stored pair are ``P(Γ) blockdiag(D) P(Γ)^T`` up to the couplings
    beyond ``r_i + r_j`` that the pair list leaves out (orbital tails: <= 1e-3 of the largest entry)."""
    data, _ = cell16
    D = random_operators(len(data.positions), context16.n_proj, 1.0, 0)
    blocks = context16.blocks(data.edge_index, data.cell_shift, data.block_ptr, D)
    dense = GammaLayout.from_hsdata(data).dense(blocks)
    P = gamma_projection_matrix(context16, dense.shape[0], data.orbital_offsets)
    expected = P @ sla.block_diag(*D) @ P.T
    assert np.abs(dense - expected).max() <= 1e-3 * np.abs(expected).max()


def test_numba_torch_and_reference_agree(cell16, context16):
    """The numba contraction, the differentiable torch path and the readable reference give the same blocks."""
    _, half = cell16
    D = random_operators(len(half.positions), context16.n_proj, 0.7, 1)
    numba_blocks = context16.blocks(half.edge_index, half.cell_shift, half.block_ptr, D)
    torch_blocks = context16.torch_blocks(half.edge_index, half.cell_shift, half.block_ptr, torch.from_numpy(D)).numpy()
    rows, proj_ptr, ptr, values = context16.projections(np.ones(len(half.positions), dtype=bool))
    k = context16.pairs.edge_index[1, rows]
    P = values.reshape(-1, context16.n_proj)
    entry_k = np.repeat(k, np.diff(ptr) // context16.n_proj)
    left = np.einsum("rp,rpq->rq", P, D[entry_k]).reshape(-1)
    ref = reference.separable_contract(
        half.edge_index, half.cell_shift, k, context16.pairs.cell_shift[rows], proj_ptr, ptr, left, values,
        half.basis.n_orbitals, context16.desc.n_proj, half.species, half.block_ptr,
    )
    scale = np.abs(ref).max()
    np.testing.assert_allclose(numba_blocks, ref, atol=1e-12 * scale)
    np.testing.assert_allclose(torch_blocks, ref, atol=1e-12 * scale)


def test_torch_gradient_is_the_adjoint(cell16, context16):
    """The blocks are linear in D: <W, blocks(D)> has the gradient blocks^*(W), and a finite step along
    a random direction changes it by exactly the directional derivative."""
    _, half = cell16
    n = len(half.positions)
    D = torch.from_numpy(random_operators(n, context16.n_proj, 1.0, 2)).requires_grad_(True)
    W = torch.from_numpy(np.random.default_rng(3).normal(size=int(half.block_ptr[-1])))
    value = (W * context16.torch_blocks(half.edge_index, half.cell_shift, half.block_ptr, D)).sum()
    (grad,) = torch.autograd.grad(value, D)
    step = torch.from_numpy(random_operators(n, context16.n_proj, 1.0, 4))
    moved = (W * context16.torch_blocks(half.edge_index, half.cell_shift, half.block_ptr, D.detach() + step)).sum()
    assert float((moved - value).detach()) == pytest.approx(float((grad * step).sum()), rel=1e-9)


@settings(max_examples=8, deadline=None)
@given(l_max=st.integers(0, 2), n_radial=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_mean_operator_commutes_with_rotations(l_max, n_radial, seed):
    """A species-mean D (kron(B_l, I) per degree) is invariant: D(R) D D(R)^T = D for SIESTA-ordered
    Wigner matrices of every degree (hypothesis over sets and values)."""
    from e3nn import o3

    from hforge.basis.conventions import change_of_basis

    projectors = ProjectorSet(1.0, l_max, n_radial)
    blocks = torch.from_numpy(np.random.default_rng(seed).normal(size=(l_max + 1, n_radial, n_radial)))
    D = mean_operator_matrix(projectors, blocks)
    angles = torch.from_numpy(np.random.default_rng(seed + 1).uniform(0.0, 2 * np.pi, size=3))
    wigner = [
        torch.from_numpy(change_of_basis(l)) @ o3.wigner_D(l, *angles) @ torch.from_numpy(change_of_basis(l)).T
        for l in projectors.shells
    ]
    R = torch.block_diag(*wigner)
    torch.testing.assert_close(R @ D @ R.T, D, atol=1e-10, rtol=0)


def projector_frame_bound(context: SeparableContext) -> float:
    """Largest eigenvalue of the Gram matrix <chi_ka|chi_k'b> of every projector of the cell, at Γ."""
    desc, n_p = context.desc, context.n_proj
    radius = np.full(len(context.basis), PROJECTORS.radius * 1.8897261246)
    from hforge.ops.two_centre.baseline import reach_pairs

    pairs = reach_pairs(context.positions, context.cell, context.pbc, context.species, radius, radius)
    pair_type = context.species[pairs.edge_index[0]] * len(context.basis) + context.species[pairs.edge_index[1]]
    ptr = block_pointer(desc.gram, pair_type)
    vectors = _pair_vectors(context.positions, context.cell, pairs.edge_index.astype(np.int64), pairs.cell_shift)
    values = program_blocks(desc.gram, desc.tables, pair_type, vectors, ptr)
    G = np.zeros((len(context.positions) * n_p,) * 2)
    for e, (a, b) in enumerate(pairs.edge_index.T):
        G[a * n_p : (a + 1) * n_p, b * n_p : (b + 1) * n_p] += values[ptr[e] : ptr[e + 1]].reshape(n_p, n_p)
    return float(np.linalg.eigvalsh((G + G.T) / 2).max())


def test_rayleigh_quotients_along_near_null_directions_are_bounded(cell16, context16):
    """For random D, v^T O v / v^T S v <= max_k ||D_k|| F (F: the projectors' frame bound) along the
    eigenvectors of S(Γ) with the smallest eigenvalues (down to ~1e-4), 2 % allowed for the couplings
    beyond r_i + r_j left out; per-entry symmetric noise of the same entry size exceeds the bound by
    orders of magnitude there (the reason the bound matters)."""
    data, _ = cell16
    layout = GammaLayout.from_hsdata(data)
    S = layout.dense(data.s)
    w, U = np.linalg.eigh(S)
    near_null = U[:, :20]
    assert w[19] < 2e-3
    F = projector_frame_bound(context16)
    for seed in range(3):
        D = random_operators(len(data.positions), context16.n_proj, 1.0, seed)
        bound = np.abs(np.linalg.eigvalsh(D)).max() * F
        O = layout.dense(context16.blocks(data.edge_index, data.cell_shift, data.block_ptr, D))
        quotients = np.einsum("iv,ij,jv->v", near_null, O, near_null) / w[:20]
        assert np.abs(quotients).max() <= 1.02 * bound
        noise = np.random.default_rng(seed).normal(scale=np.abs(O[O != 0]).mean(), size=O.shape)
        noise = np.where(O != 0, (noise + noise.T) / 2, 0.0)
        noisy = np.einsum("iv,ij,jv->v", near_null, noise, near_null) / w[:20]
        assert np.abs(noisy).max() > 20 * bound


def test_no_state_leaves_the_dft_spectrum(cell16, context16):
    """DFT's H plus a random separable operator (||D_k|| <= 0.3 eV) keeps every state of the full-S
    spectrum within DFT's range +- 1 eV; DFT's H plus 1 meV of per-entry noise does not."""
    data, _ = cell16
    layout = GammaLayout.from_hsdata(data)
    S, H = layout.dense(data.s), layout.dense(data.h_unshifted[0])
    reference_spectrum = sla.eigh(H, S, eigvals_only=True)
    low, high = reference_spectrum.min() - 1.0, reference_spectrum.max() + 1.0
    D = random_operators(len(data.positions), context16.n_proj, 0.1, 7)
    O = layout.dense(context16.blocks(data.edge_index, data.cell_shift, data.block_ptr, D))
    spectrum = sla.eigh(H + O, S, eigvals_only=True)
    assert low <= spectrum.min() and spectrum.max() <= high
    noise = np.random.default_rng(7).normal(scale=1e-3, size=H.shape)
    noise = np.where(H != 0, (noise + noise.T) / 2, 0.0)
    noisy = sla.eigh(H + noise, S, eigvals_only=True)
    assert ((noisy < low) | (noisy > high)).sum() > 0


# ---- inference's path: packed projections, one contraction (V_KB joining it) --------------------
def program_layout_reference(context, half, D, kb_scale):
    """The separable blocks of ``half``'s pairs, and ``kb_scale V_KB``, by the readable reference:
    projections in the program layout (not packed), ``left = P D_k``, reference.separable_contract,
    plus V_KB from the baseline's own path (its projections, its contraction)."""
    from hforge.ops.two_centre import kb_blocks

    rows, proj_ptr, ptr, values = context.projections(np.ones(len(half.positions), dtype=bool))
    k = context.pairs.edge_index[1, rows]
    n_p = context.n_proj
    entry_k = np.repeat(k, np.diff(ptr) // n_p)
    left = np.einsum("rp,rpq->rq", values.reshape(-1, n_p), D[entry_k]).reshape(-1)
    out = reference.separable_contract(
        half.edge_index, half.cell_shift, k, context.pairs.cell_shift[rows], proj_ptr, ptr, left, values,
        half.basis.n_orbitals, context.desc.n_proj, half.species, half.block_ptr,
    )
    if kb_scale:
        out = out + kb_scale * kb_blocks(
            half.basis, half.species, half.positions, half.cell, half.pbc, half.edge_index, half.cell_shift, half.block_ptr,
            backend="torch",
        )
    return out


@pytest.mark.parametrize("backend", ["numba", "auto"])
@pytest.mark.parametrize("kb_scale", [None, 0.7])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_packed_contraction_equals_the_reference_on_a_real_cell(cell16, backend, kb_scale, dtype, tol):
    """operator_blocks (packed projections in reach order, P D_k per owner inside the kernel; V_KB in
    the same sum) equals the readable reference on every pair of a real cell, with pairs built from
    either side (random ``swap``), in float64 and float32 (to its rounding): the numba contraction (2x2
    blocked) and ``auto``'s (the compiled cpp kernel where it is built, as under CI)."""
    data, half = cell16
    context = SeparableContext(
        data.basis, PROJECTORS, data.species, data.positions, data.cell, data.pbc, kb_scale=kb_scale, backend=backend
    )
    D = random_operators(len(data.positions), context.n_proj, 0.5, 11)
    expected = program_layout_reference(context, half, D, kb_scale)
    swap = np.random.default_rng(12).random(half.n_pairs) < 0.5
    got = context.operator_blocks(half.edge_index, half.cell_shift, half.block_ptr, D, swap=swap, dtype=dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, atol=tol * np.abs(expected).max(), rtol=0)
    unswapped = context.operator_blocks(half.edge_index, half.cell_shift, half.block_ptr, D, dtype=dtype)
    np.testing.assert_allclose(unswapped, got, atol=tol * np.abs(expected).max(), rtol=0)


def random_packed_problem(rng, n_atoms, n_species, n_op, width, max_orbitals=5):
    """Random inputs of operator_contract: atoms with random species and orbital counts, every atom's
    projector entries (random atoms and images, sorted by (atom, image)) with random packed rows
    (an even prefix in a random reach order), random symmetric D, energies and output pairs (some of
    them sharing projector atoms and images by construction: every atom sees atom 0 at image 0)."""
    n_orb = rng.integers(1, max_orbitals + 1, size=n_species)
    rows_pad = int(n_orb.max()) + int(n_orb.max()) % 2
    order = np.full((n_species, rows_pad), -1, dtype=np.int64)
    for s in range(n_species):
        order[s, : n_orb[s]] = rng.permutation(n_orb[s])
    species = rng.integers(0, n_species, size=n_atoms)
    atoms, shifts, counts = [], [], []
    for _ in range(n_atoms):
        seen = {(0, 0, 0, 0)} | {(int(rng.integers(n_atoms)), *map(int, rng.integers(-1, 2, size=3))) for _ in range(5)}
        entries = sorted(seen)
        counts.append(len(entries))
        atoms += [e[0] for e in entries]
        shifts += [e[1:] for e in entries]
    proj_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    proj_atoms, proj_shifts = np.array(atoms, dtype=np.int64), np.array(shifts, dtype=np.int64)
    owner = np.repeat(np.arange(n_atoms), counts)
    full = n_orb[species[owner]] + n_orb[species[owner]] % 2
    entry_rows = np.minimum(2 * rng.integers(0, rows_pad // 2 + 1, size=len(owner)), full)
    entry_row = np.concatenate([[0], np.cumsum(entry_rows)[:-1]]).astype(np.int64)
    packed = rng.normal(size=(int(entry_rows.sum()), width))
    entry_cols = np.where(rng.random(len(owner)) < 0.5, width, rng.integers(n_op, width + 1, size=len(owner)))
    for a in range(len(owner)):  # padding rows (beyond the atom's orbitals) and columns beyond entry_cols hold zeros
        packed[entry_row[a] : entry_row[a] + entry_rows[a], entry_cols[a] :] = 0.0
        for r in range(entry_rows[a]):
            if order[species[owner[a]], r] < 0:
                packed[entry_row[a] + r] = 0.0
    D = rng.normal(size=(n_atoms, n_op, n_op))
    D = (D + D.transpose(0, 2, 1)) / 2
    energies = rng.normal(size=(n_species, width - n_op))
    pairs = np.stack([rng.integers(0, n_atoms, size=12), rng.integers(0, n_atoms, size=12)])
    pair_shifts = rng.integers(-1, 2, size=(12, 3))
    pair_shifts[:4] = 0
    block_ptr = np.concatenate([[0], np.cumsum(n_orb[species[pairs[0]]] * n_orb[species[pairs[1]]])]).astype(np.int64)
    swap = rng.random(12) < 0.5
    return (pairs, pair_shifts, swap, species, proj_atoms, proj_shifts, proj_ptr, entry_row, entry_rows, entry_cols, packed,
            D, energies, order, n_orb, block_ptr)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), n_op=st.integers(1, 5), extra=st.integers(0, 3))
def test_operator_contract_kernel_equals_the_reference_on_random_inputs(seed, n_op, extra):
    """The numba contraction of packed projections (owners' P D_k, 2x2 blocks, either side, columns
    beyond an entry's entry_cols skipped) equals the reference (unpacked, summed by
    separable_contract) on random inputs, float64 and float32."""
    from hforge.ops.two_centre import numba as kernels

    args = random_packed_problem(np.random.default_rng(seed), 5, 2, n_op, n_op + extra)
    expected = reference.operator_contract(*args)
    scale = max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(kernels.operator_contract(*args), expected, atol=1e-12 * scale, rtol=0)
    single = list(args)
    single[10], single[11], single[12] = (a.astype(np.float32) for a in args[10:13])
    np.testing.assert_allclose(kernels.operator_contract(*single), expected, atol=2e-5 * scale, rtol=0)


@pytest.mark.parametrize("isa", cpp_isas())
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n_op=st.integers(1, 30), extra=st.integers(0, 9), max_orbitals=st.integers(1, 21))
def test_operator_contract_cpp_equals_the_reference_on_random_inputs(isa, seed, n_op, extra, max_orbitals):
    """The compiled contraction (each instruction set built here: owners' L^T, outer-product register
    tiles, more rows than one vector holds or one tile takes) equals the reference on random inputs,
    float64 and float32, and gives the same bits with 1, 2 or 3 threads."""
    from hforge.ops.two_centre import cpp

    args = random_packed_problem(np.random.default_rng(seed), 5, 2, n_op, n_op + extra, max_orbitals)
    expected = reference.operator_contract(*args)
    scale = max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(cpp.operator_contract(*args, isa=isa), expected, atol=1e-12 * scale, rtol=0)
    single = list(args)
    single[10], single[11], single[12] = (a.astype(np.float32) for a in args[10:13])
    one = cpp.operator_contract(*single, isa=isa, threads=1)
    np.testing.assert_allclose(one, expected, atol=2e-5 * scale, rtol=0)
    for threads in (2, 3):
        np.testing.assert_array_equal(cpp.operator_contract(*single, isa=isa, threads=threads), one)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), reach=st.sampled_from([1, 3, 1000]))
def test_cpp_entry_keys_order_entries_and_move_with_image_shifts(seed, reach):
    """The cpp kernel merges integer keys of (k, m): their order is (k, m)'s lexicographic order, and
    moving an entry by an image shift n adds the shift's key to its key (the merge of a pair's lists)."""
    from hforge.ops.two_centre.cpp import KEY_BASE, entry_keys

    rng = np.random.default_rng(seed)
    atoms = rng.integers(0, 50, size=40)
    shifts = rng.integers(-reach, reach + 1, size=(40, 3))
    pair_shift = rng.integers(-reach, reach + 1, size=3)
    keys = entry_keys(atoms, shifts, pair_shift[None])
    lexicographic = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], atoms))
    np.testing.assert_array_equal(np.sort(keys), keys[lexicographic])
    moved = entry_keys(atoms, shifts + pair_shift, pair_shift[None] * 0)
    np.testing.assert_array_equal(moved, keys + (pair_shift[0] * KEY_BASE + pair_shift[1]) * KEY_BASE + pair_shift[2])
    with pytest.raises(InputError, match="exceed the kernel's keys"):
        entry_keys(atoms, shifts, np.array([[KEY_BASE // 2, 0, 0]]))


def test_operator_contract_cpp_refuses_what_it_cannot_take():
    """Wrong dtypes, an ``out`` of another size and an instruction set the CPU lacks fail clearly."""
    if not backend_status()["cpp"].available:
        pytest.skip("libhforge_cpu is not built here (tests/test_backends.py fails on that under CI)")
    from hforge.errors import BackendUnavailableError
    from hforge.ops.two_centre import cpp

    args = list(random_packed_problem(np.random.default_rng(3), 4, 2, 3, 5))
    with pytest.raises(InputError, match="out must be"):
        cpp.operator_contract(*args, out=np.empty(3))
    args[10] = args[10].astype(np.float16)
    with pytest.raises(InputError, match="float16"):
        cpp.operator_contract(*args)
    missing = sorted(set(ISAS_ALL) - set(cpp_isas()))
    if missing:
        args[10] = args[10].astype(np.float64)
        with pytest.raises(BackendUnavailableError, match=missing[0]):
            cpp.operator_contract(*args, isa=missing[0])


def test_a_released_pack_is_filled_again_with_the_same_values(cell16):
    """pack() after release() writes into the released buffer (mapped pages, zeroed first) and gives the
    values of a fresh pack, padding included; a buffer too small or of another dtype is let go."""
    data, _ = cell16
    context = SeparableContext(data.basis, PROJECTORS, data.species, data.positions, data.cell, data.pbc, kb_scale=0.7)
    every, some = np.ones(len(data.positions), dtype=bool), np.arange(len(data.positions)) < 5
    fresh_some, fresh_every = context.pack(some, np.float32).values.copy(), context.pack(every, np.float32).values.copy()
    first = context.pack(every, np.float32)
    first.values[:] = 7.0  # garbage the refill must clear
    context.release(first)
    again = context.pack(some, np.float32)
    assert np.shares_memory(again.values, first.values)
    np.testing.assert_array_equal(again.values, fresh_some)
    context.release(again)
    bigger = context.pack(every, np.float32)  # the kept buffer holds only `some`'s rows now: a new one
    assert not np.shares_memory(bigger.values, first.values)
    np.testing.assert_array_equal(bigger.values, fresh_every)
    context.release(bigger)
    assert not np.shares_memory(context.pack(every, np.float64).values, bigger.values)


def test_pack_kernels_equal_the_reference(cell16):
    """The numba packing of projection blocks into reach-ordered rows, and the program evaluated straight
    into them (only the rows an entry keeps; ``auto``'s kernel, cpp where built), equal the reference's,
    values and padding; the rows left out (those that do not reach the entry's projector atom, a suffix
    in reach order) are zero."""
    from hforge.ops.two_centre import numba as kernels

    data, _ = cell16
    context = SeparableContext(data.basis, PROJECTORS, data.species, data.positions, data.cell, data.pbc)
    rows, proj_ptr, ptr, values = context.projections(np.ones(len(data.positions), dtype=bool))
    packed = context.pack(np.ones(len(data.positions), dtype=bool))
    i = context.pairs.edge_index[0, rows].astype(np.int64)
    order, _ = reach_order(data.basis)
    n_cols = np.full(len(rows), context.n_proj)
    expected = np.zeros_like(packed.values)
    reference.pack_projections(values, ptr, n_cols, 0, data.species[i], order, packed.entry_row, packed.entry_rows, expected)
    got = np.zeros_like(packed.values)
    kernels.pack_projections(values, ptr, n_cols, 0, data.species[i], order, packed.entry_row, packed.entry_rows, got)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(packed.values, expected, atol=1e-14, rtol=0)  # program_packed, auto (pack's own)
    rank = np.argsort(order[:, : data.basis.n_orbitals.max()], axis=1)
    from_reference = np.zeros_like(packed.values)
    reference.program_packed(
        context.desc.projection, context.desc.tables, data.species[i] * len(data.basis) + data.species[packed.proj_atoms],
        _pair_vectors(data.positions, data.cell, np.stack([i, packed.proj_atoms]), packed.proj_shifts), data.species[i], rank,
        0, packed.entry_row, packed.entry_rows, from_reference,
    )
    np.testing.assert_allclose(from_reference, expected, atol=1e-14, rtol=0)
    # every nonzero projection kept: the rows left out are zero in the program layout
    kept = sum(np.abs(values[ptr[a] : ptr[a + 1]]).sum() for a in range(len(rows)))
    assert np.abs(expected).sum() == pytest.approx(kept, rel=1e-12)


@pytest.mark.parametrize("isa", cpp_isas())
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-14), (np.float32, 1e-7)])
def test_program_packed_cpp_equals_the_reference(cell16, isa, dtype, tol):
    """The compiled program writes the projections on the learned projectors (from column 0) and on the
    KB projectors (from ``sep_width``) into the packed rows as the reference does, in float64 and in
    float32 (computed in float64, rounded once); the rows an entry does not keep are left as they were."""
    from hforge.ops.two_centre import cpp, two_centre_descriptor

    data, _ = cell16
    context = SeparableContext(data.basis, PROJECTORS, data.species, data.positions, data.cell, data.pbc, kb_scale=0.7)
    packed = context.pack(np.ones(len(data.positions), dtype=bool))
    i = context.pairs.edge_index[0, packed.rows].astype(np.int64)
    types = data.species[i] * len(data.basis) + data.species[packed.proj_atoms]
    vectors = _pair_vectors(data.positions, data.cell, np.stack([i, packed.proj_atoms]), packed.proj_shifts)
    order, _ = reach_order(data.basis)
    rank = np.argsort(order[:, : data.basis.n_orbitals.max()], axis=1)
    kb = two_centre_descriptor(data.basis)
    layout = (data.species[i], rank)
    for program, tables, col0 in (
        (context.desc.projection, context.desc.tables, 0), (kb.program("projection"), kb.tables, context.sep_width),
    ):
        expected = np.full(packed.values.shape, 7.0)  # 7: not written
        reference.program_packed(program, tables, types, vectors, *layout, col0, packed.entry_row, packed.entry_rows, expected)
        got = np.full(packed.values.shape, 7.0, dtype=dtype)
        cpp.program_packed(program, tables, types, vectors, *layout, col0, packed.entry_row, packed.entry_rows, got, isa=isa)
        assert (expected != 7.0).sum() > 1000
        np.testing.assert_allclose(got, expected, atol=tol, rtol=tol)


def test_torch_training_path_forward_and_backward_equal_the_reference(cell16, context16):
    """separable_blocks (torch, training): its blocks equal the reference's, and its gradient is the
    reference's adjoint: <grad, step> = <W, reference blocks of D = step> (the blocks are linear in D)."""
    _, half = cell16
    n, n_p = len(half.positions), context16.n_proj
    D = torch.from_numpy(random_operators(n, n_p, 1.0, 21)).requires_grad_(True)
    blocks = context16.torch_blocks(half.edge_index, half.cell_shift, half.block_ptr, D)
    expected = program_layout_reference(context16, half, D.detach().numpy(), None)
    np.testing.assert_allclose(blocks.detach().numpy(), expected, atol=1e-12 * np.abs(expected).max(), rtol=0)
    W = np.random.default_rng(22).normal(size=len(expected))
    (grad,) = torch.autograd.grad((torch.from_numpy(W) * blocks).sum(), D)
    step = random_operators(n, n_p, 1.0, 23)
    directional = float(W @ program_layout_reference(context16, half, step, None))
    assert float((grad * torch.from_numpy(step)).sum()) == pytest.approx(directional, rel=1e-10)


@settings(max_examples=8, deadline=None)
@given(chunk=st.integers(1, 40), mixed=st.booleans(), pair_l_max=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
def test_environment_term_sums_per_edge_blocks_in_any_chunks_and_rotates_with_the_cell(chunk, mixed, pair_l_max, seed):
    """EnvironmentOnsite (the D_k head's crystal-field term): the sum over each atom's edges of its
    pair block, symmetrised, equals a per-edge reference (each block alone, with the whole cell's
    nodes, added up by hand), in chunks of any size, with one block size or one per species, every
    degree of the blocks reached by a path (pair_l_max 4) or not (2), forward and backward; rotating
    every edge vector by R turns every atom's block B into D(R) B D(R)^T
    (SIESTA-ordered Wigner matrices)."""
    from e3nn import o3

    from hforge.basis.conventions import change_of_basis
    from hforge.models.config import ModelConfig
    from hforge.models.equivariant import EnvironmentOnsite

    torch.manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    shells = [[0, 1, 2, 0, 1], [0, 1]] if mixed else [ProjectorSet(1.0, 2, 2).shells] * 2
    config = ModelConfig(species=("B", "N"), dtype="float64", backend="torch", pair_l_max=pair_l_max)
    module = EnvironmentOnsite(shells, 4, 5.0, config).double()
    with torch.no_grad():
        module.pairs.weight.normal_()
    n_atoms, n_edges = 7, 30
    species = torch.from_numpy(rng.integers(0, 2, n_atoms))
    edge_index = torch.from_numpy(rng.integers(0, n_atoms, (2, n_edges)))
    vectors = torch.from_numpy(rng.uniform(-2.5, 2.5, (n_edges, 3)))
    n_orb = torch.tensor([sum(2 * l + 1 for l in degrees) for degrees in shells])
    sizes = [int(n_orb[s]) for s in species]
    scalars = torch.from_numpy(rng.normal(size=(n_atoms, 4))).requires_grad_(True)

    reference = [torch.zeros(n, n, dtype=torch.float64) for n in sizes]
    for e in range(n_edges):  # one edge at a time: the row atom and a virtual copy of the neighbour
        i, j = (int(a) for a in edge_index[:, e])
        nodes = torch.cat([scalars, scalars[j][None]])
        vector = vectors[e : e + 1]
        block = module.pairs(nodes[:, :, None], nodes, torch.cat([species, species[i][None]]),
                             torch.tensor([[i], [n_atoms]]), vector, torch.linalg.norm(vector, dim=1))
        reference[i] = reference[i] + block.view(sizes[i], sizes[i])
    reference = [0.5 * (b + b.T) for b in reference]
    flat = module(scalars, species, edge_index, vectors, n_orb, chunk)
    got = list(torch.split(flat, [n * n for n in sizes]))
    torch.testing.assert_close(flat, torch.cat([b.reshape(-1) for b in reference]), atol=1e-12, rtol=1e-10)
    weights = torch.from_numpy(rng.normal(size=flat.shape[0]))
    (grad_got,) = torch.autograd.grad((weights * flat).sum(), scalars)
    (grad_ref,) = torch.autograd.grad((weights * torch.cat([b.reshape(-1) for b in reference])).sum(), scalars)
    torch.testing.assert_close(grad_got, grad_ref, atol=1e-12, rtol=1e-10)

    rotation = o3.angles_to_matrix(*torch.from_numpy(rng.uniform(0.0, 2 * np.pi, size=3)))  # Cartesian, proper
    siesta = {l: torch.tensor(change_of_basis(l)) for l in range(3)}
    wigner = [torch.block_diag(*[siesta[l] @ o3.Irrep(l, (-1) ** l).D_from_matrix(rotation) @ siesta[l].T for l in degrees])
              for degrees in shells]
    rotated = module(scalars, species, edge_index, vectors @ rotation.T, n_orb, chunk)
    for block, turned, s in zip(got, torch.split(rotated, [n * n for n in sizes]), species.tolist()):
        n = int(n_orb[s])
        torch.testing.assert_close(turned.view(n, n), wigner[s] @ block.view(n, n) @ wigner[s].T, atol=1e-10, rtol=1e-8)
