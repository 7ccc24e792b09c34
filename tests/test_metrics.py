"""Block and eigenvalue metrics (hforge.metrics) and the training losses (hforge.train.losses), on real SIESTA aBN data.

Oracles: the SIESTA files themselves (HSData.matrix_at_k, the Γ gaps of shared/abn/summary.jsonl),
scipy's generalized eigensolver, hand-computed groups, finite differences, and the README of
shared/abn (orders of magnitude of the eigenvalue sensitivity to noise).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError, InputError, InvalidMatrixError
from hforge.io import HSData, read_hs
from hforge.metrics import (
    BlockMetrics,
    BlockTypes,
    GammaLayout,
    align_reference,
    block_metrics,
    canonical_orthogonalization,
    compare_blocks,
    compare_spectra,
    eigenvalue_metrics,
    generalized_eigenvalues,
    n_occupied_states,
    spectrum_errors,
)
from hforge.train.losses import (
    BlockLoss,
    block_loss,
    eigenvalue_loss,
    eigenvalue_target,
    normalization_scales,
    remove_shift,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def abn16(abn_dir) -> HSData:
    return read_hs(abn_dir / "runs/abn_16_0/abn_16_0.TSHS")


def with_h(data: HSData, h_unshifted: np.ndarray, s: np.ndarray | None = None) -> HSData:
    """A 'prediction' on data's pairs: E_F = 0, h = the given unshifted H."""
    return replace(data, h=np.atleast_2d(h_unshifted), s=data.s if s is None else s, fermi_level=0.0)


def symmetric_noise(half: HSData, sigma: float, seed: int) -> np.ndarray:
    return sigma * np.random.default_rng(seed).standard_normal(half.n_values)


# ---------------------------------------------------------------------------------------
# alignment and block types
# ---------------------------------------------------------------------------------------
def test_align_reference_gathers_subsets_in_any_order(abn8):
    half = abn8.canonical_half()
    order = np.random.default_rng(0).permutation(half.n_pairs)
    edge, shift = half.edge_index[:, order], half.cell_shift[order]
    ref = align_reference(abn8, edge, shift)
    assert ref.found.all()
    for k in (0, 7, half.n_pairs - 1):
        e = order[k]
        rows, cols = half.block_shapes[e]
        got = ref.h[ref.block_ptr[k] : ref.block_ptr[k + 1]].reshape(rows, cols)
        np.testing.assert_array_equal(got, half.block(e, "h_unshifted"))
        np.testing.assert_array_equal(ref.s[ref.block_ptr[k] : ref.block_ptr[k + 1]].reshape(rows, cols), half.block(e, "s"))
    assert ref.mask.sum() == half.mask.sum()


def test_align_reference_pairs_outside_the_file_are_zero(abn8):
    # a pair far beyond any orbital cut-off: absent from the file, reference 0
    edge, shift = np.array([[0, 1], [1, 2]]), np.array([[0, 0, 0], [9, 0, 0]])
    ref = align_reference(abn8, edge, shift)
    assert ref.found.tolist() == [True, False]
    np.testing.assert_array_equal(ref.h[ref.block_ptr[1] :], 0.0)
    onsite = int(abn8.find_pairs(np.array([0]), np.array([1]), np.zeros((1, 3)))[0])
    np.testing.assert_array_equal(ref.h[: ref.block_ptr[1]], abn8.block(onsite, "h_unshifted").ravel())
    with pytest.raises(BasisMismatchError, match="block sizes"):
        align_reference(abn8, edge, shift, block_ptr=[0, 169, 300])
    with pytest.raises(BasisMismatchError, match="outside"):
        align_reference(abn8, np.array([[0], [8]]), np.zeros((1, 3)))


def test_block_types_group_values_like_the_store_statistics(abn8):
    types = BlockTypes.from_hsdata(abn8)
    onsite_b = np.flatnonzero(abn8.onsite & (abn8.species[abn8.edge_index[0]] == 0))
    # the first value of an onsite B block is <2sZ1|2sZ1> of B: type (1, B, B, 2sZ1, 2sZ1)
    first = abn8.block_ptr[onsite_b]
    expected = np.ravel_multi_index((1, 0, 0, 0, 0), types.shape)
    assert (types.index[first] == expected).all()
    assert types.onsite.sum() == int(np.diff(abn8.block_ptr)[abn8.onsite].sum())


# ---------------------------------------------------------------------------------------
# block metrics
# ---------------------------------------------------------------------------------------
def test_reference_against_itself_is_exactly_zero(abn8):
    result = compare_blocks(abn8, abn8).to_dict()
    assert result["h_mae_meV"]["all"] == 0.0 and result["h_mae_shifted_meV"]["max"] == 0.0
    assert result["shift_eV"] == 0.0 and result["s_mae"]["all"] == 0.0
    assert set(result["h_mae_meV"]["species"]) == {"B-B", "B-N", "N-N"}
    json.dumps(result)  # JSON-ready


def test_gaussian_noise_gives_its_mean_absolute_value_everywhere(abn8):
    """|N(0, σ)| has mean σ sqrt(2/π): every group of a noisy prediction shows it."""
    half = abn8.canonical_half()
    sigma = 1e-3
    pred = with_h(half, half.h_unshifted[0] + symmetric_noise(half, sigma, 1))
    result = compare_blocks(pred, abn8).to_dict()["h_mae_meV"]
    expected = 1e3 * sigma * np.sqrt(2 / np.pi)
    for key in ("all", "onsite", "hopping"):
        assert result[key] == pytest.approx(expected, rel=0.05 if key != "onsite" else 0.15)
    for value in result["species"].values():
        assert value == pytest.approx(expected, rel=0.05)
    assert result["count"] == half.n_values


def test_mae_of_one_block_type_by_hand(abn8):
    """Onsite N-N <2pZ1|2pZ2> MAE against a direct loop over the onsite N blocks."""
    rng = np.random.default_rng(3)
    pred_h = abn8.h_unshifted[0] + rng.uniform(-0.01, 0.01, abn8.n_values)
    result = compare_blocks(with_h(abn8, pred_h), abn8).to_dict()
    n = abn8.basis.index("N")
    errors = []
    for e in np.flatnonzero(abn8.onsite & (abn8.species[abn8.edge_index[0]] == n)):
        block = (pred_h - abn8.h_unshifted[0])[abn8.block_ptr[e] : abn8.block_ptr[e + 1]].reshape(13, 13)
        errors.append(np.abs(block[2:5, 5:8]))  # shells 2pZ1 (rows 2-4), 2pZ2 (cols 5-7)
    assert result["h_mae_meV"]["block_types"]["onsite N-N"]["2pZ1-2pZ2"] == pytest.approx(1e3 * np.mean(errors), rel=1e-12)


@given(c=st.floats(-3.0, 3.0), a=st.floats(-2.0, 2.0), seed=st.integers(0, 2**16))
def test_shifted_metric_is_invariant_under_h_plus_c_s(abn8, c, a, seed):
    half = abn8.canonical_half()
    noisy = half.h_unshifted[0] + symmetric_noise(half, 2e-3, seed)
    base = compare_blocks(with_h(half, noisy + a * half.s), abn8)
    shifted = compare_blocks(with_h(half, noisy + (a + c) * half.s), abn8)
    assert shifted.h_shifted.summary()["all"] == pytest.approx(base.h_shifted.summary()["all"], rel=1e-9, abs=1e-15)
    assert shifted.shifts_eV[0] == pytest.approx(base.shifts_eV[0] + c, abs=1e-9)
    # a pure shift is no error at all after its removal
    pure = compare_blocks(with_h(half, half.h_unshifted[0] + c * half.s), abn8)
    assert pure.h_shifted.max_abs < 1e-10 and pure.shifts_eV[0] == pytest.approx(c, abs=1e-12)


@given(seed=st.integers(0, 2**16))
def test_metrics_do_not_depend_on_the_order_of_the_pairs(abn8, seed):
    rng = np.random.default_rng(seed)
    half = abn8.canonical_half()
    pred = with_h(half, half.h_unshifted[0] + symmetric_noise(half, 1e-3, seed), half.s + 1e-4)
    order = rng.permutation(half.n_pairs)
    idx = half._gather(order)
    permuted = replace(
        pred,
        edge_index=half.edge_index[:, order],
        cell_shift=half.cell_shift[order],
        block_ptr=np.concatenate([[0], np.cumsum(np.diff(half.block_ptr)[order])]),
        h=pred.h[:, idx],
        s=pred.s[idx],
        mask=half.mask[idx],
    )
    a, b = compare_blocks(pred, abn8).to_dict(), compare_blocks(permuted, abn8).to_dict()
    for key in ("h_mae_meV", "h_mae_shifted_meV", "s_mae"):
        for group in ("all", "onsite", "hopping", "max"):
            assert a[key][group] == pytest.approx(b[key][group], rel=1e-12)
        assert a[key]["species"] == pytest.approx(b[key]["species"], rel=1e-12)


def test_combine_weights_structures_by_entries(abn8, abn16):
    m8 = compare_blocks(with_h(abn8, abn8.h_unshifted[0] + 0.001), abn8)
    m16 = compare_blocks(with_h(abn16, abn16.h_unshifted[0] + 0.004), abn16)
    pooled = BlockMetrics.combine([m8, m16]).to_dict()
    n8, n16 = abn8.n_values, abn16.n_values
    assert pooled["n_structures"] == 2
    assert pooled["h_mae_meV"]["all"] == pytest.approx((n8 * 1 + n16 * 4) / (n8 + n16), rel=1e-9)
    assert pooled["h_mae_meV"]["max"] == pytest.approx(4.0)
    with pytest.raises(InputError):
        BlockMetrics.combine([])


def test_compare_blocks_refuses_another_basis_or_species(abn8):
    other = replace(abn8, species=abn8.species[::-1].copy())
    with pytest.raises(BasisMismatchError, match="species"):
        compare_blocks(other, abn8)
    with pytest.raises(InputError, match="differ in size"):
        block_metrics(np.zeros(3), np.zeros(4), BlockTypes.from_hsdata(abn8))


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample():
    from hforge.datasets import load  # tests may use the higher layer's bundled sample

    return load("abn-small")


def test_block_loss_normalises_by_the_store_std(sample):
    stats = sample.statistics
    data = sample[0]
    types = BlockTypes.from_hsdata(data)
    scale_h = normalization_scales(stats, "h")
    assert scale_h.shape == (types.n_types,) and (scale_h >= 1e-3).all()
    # an error of exactly one std per entry has unit normalised MSE and MAE
    h_ref = torch.as_tensor(data.h_unshifted[0], dtype=torch.float64)
    t = torch.as_tensor(types.index)
    pred = h_ref + torch.as_tensor(scale_h)[t]
    for kind in ("mse", "mae"):
        for reduction in ("entries", "types"):
            loss = block_loss(pred, h_ref, t, torch.as_tensor(scale_h), kind=kind, reduction=reduction)
            assert loss.item() == pytest.approx(1.0, rel=1e-12)
    # "types" gives every present type the same weight: double the error of one type only
    one = t == t[0]
    pred2 = h_ref + torch.where(one, 2.0, 1.0) * torch.as_tensor(scale_h)[t]
    present = len(np.unique(types.index))
    by_types = block_loss(pred2, h_ref, t, torch.as_tensor(scale_h), kind="mae", reduction="types")
    assert by_types.item() == pytest.approx((present + 1) / present, rel=1e-12)


def test_shift_invariant_loss_ignores_c_s_per_structure(sample):
    stats = sample.statistics
    a, b = sample[0], sample[2]
    h_ref = torch.as_tensor(np.concatenate([a.h_unshifted[0], b.h_unshifted[0]]), dtype=torch.float64)
    s_ref = torch.as_tensor(np.concatenate([a.s, b.s]), dtype=torch.float64)
    types = torch.as_tensor(np.concatenate([BlockTypes.from_hsdata(a).index, BlockTypes.from_hsdata(b).index]))
    batch = torch.as_tensor(np.repeat([0, 1], [a.n_values, b.n_values]))
    shifts = torch.tensor([0.7, -1.3], dtype=torch.float64)
    pred = (h_ref + shifts[batch] * s_ref).requires_grad_(True)
    loss = BlockLoss(stats, shift_invariant=True)
    out = loss(pred, h_ref, types, s_pred=s_ref, s_ref=s_ref, batch=batch)
    assert out["h"].item() < 1e-20 and out["s"].item() == 0.0
    plain = BlockLoss(stats)(pred, h_ref, types)["h"]
    assert plain.item() > 1e-3  # the same prediction costs without the shift removal
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()
    np.testing.assert_allclose(remove_shift(pred.detach() - h_ref, s_ref, batch).numpy(), 0.0, atol=1e-12)
    with pytest.raises(InputError, match="reference S"):
        loss(pred, h_ref, types)


def test_onsite_weight_weighs_only_onsite_entries(sample):
    """An error on onsite entries alone costs onsite_weight times more; one on hopping entries the same."""
    a = sample[0]
    h_ref = torch.as_tensor(a.h_unshifted[0], dtype=torch.float64)
    types = torch.as_tensor(BlockTypes.from_hsdata(a).index)
    onsite = torch.zeros_like(h_ref, dtype=torch.bool)
    for e in np.flatnonzero((a.edge_index[0] == a.edge_index[1]) & ~a.cell_shift.any(axis=1)):
        onsite[a.block_ptr[e] : a.block_ptr[e + 1]] = True
    plain, weighed = (BlockLoss(sample.statistics, normalize=False, onsite_weight=w) for w in (1.0, 30.0))
    for where, factor in ((onsite, 30.0), (~onsite, 1.0)):
        pred = h_ref + 0.01 * where
        assert weighed(pred, h_ref, types)["h"].item() == pytest.approx(factor * plain(pred, h_ref, types)["h"].item(), rel=1e-12)


def test_null_loss_is_zero_for_dft_and_its_shift_and_sees_per_entry_noise(sample):
    """Along S(Γ)'s near-null directions: DFT's own H and DFT's H + a S (shift a given) cost nothing; 1 meV of
    per-entry noise costs (eV)^2 there, since the quotient divides by S's eigenvalue."""
    from hforge.train.losses import null_loss, null_target

    a = sample[2]
    target = null_target(a, 8)
    assert target.eigenvalues.max() < 1e-2
    h = torch.as_tensor(a.h_unshifted[0], dtype=torch.float64)
    s = torch.as_tensor(a.s, dtype=torch.float64)
    assert null_loss(h, target).item() < 1e-16
    assert null_loss(h + 0.8 * s, target, 0.8).item() < 1e-16
    assert null_loss(h + 0.8 * s, target).item() == pytest.approx(0.64, rel=1e-9)
    noise = torch.from_numpy(np.random.default_rng(0).normal(scale=1e-3, size=len(h)))
    assert null_loss(h + noise * (s != 0), target).item() > 1.0


# ---------------------------------------------------------------------------------------
# Γ matrices and eigenvalues
# ---------------------------------------------------------------------------------------
def test_gamma_layout_of_half_and_full_lists_equals_the_file(abn8):
    full = GammaLayout.from_hsdata(abn8)
    half_data = abn8.canonical_half()
    half = GammaLayout.from_hsdata(half_data)
    expected = abn8.matrix_at_k(which="h_unshifted")
    expected = 0.5 * (expected + expected.T)
    np.testing.assert_allclose(full.dense(abn8.h_unshifted[0]), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(half.dense(half_data.h_unshifted[0]), expected, rtol=0, atol=1e-7)  # SIESTA's H_ij - H_ji
    torch_dense = half.dense(torch.as_tensor(half_data.s))
    np.testing.assert_allclose(torch_dense.numpy(), half.dense(half_data.s), rtol=0, atol=1e-15)


def test_generalized_eigenvalues_match_scipy_and_the_run_summary(abn8, abn_dir):
    layout = GammaLayout.from_hsdata(abn8)
    h, s = layout.dense(abn8.h_unshifted[0]), layout.dense(abn8.s)
    raw = generalized_eigenvalues(h, s)
    np.testing.assert_allclose(raw, scipy.linalg.eigh(h, s, eigvals_only=True), rtol=0, atol=1e-8)
    n_occ = n_occupied_states(abn8.basis, abn8.species)
    assert n_occ == 16  # 4 B (3 electrons) + 4 N (5)
    summary = {json.loads(line)["name"]: json.loads(line) for line in (abn_dir / "summary.jsonl").read_text().splitlines()}
    assert raw[n_occ] - raw[n_occ - 1] == pytest.approx(summary["abn_8_0"]["gap_gamma_eV"], abs=1e-6)
    # a threshold below every eigenvalue of S keeps the raw problem
    assert np.linalg.eigvalsh(s)[0] > 1e-5
    np.testing.assert_allclose(generalized_eigenvalues(h, s, threshold=1e-5), raw, rtol=0, atol=1e-7)
    x = canonical_orthogonalization(s, 1e-3).numpy()
    np.testing.assert_allclose(x.T @ s @ x, np.eye(x.shape[1]), atol=1e-9)
    assert x.shape[1] == int((np.linalg.eigvalsh(s) > 1e-3).sum())
    with pytest.raises(InvalidMatrixError, match="positive definite"):
        generalized_eigenvalues(h, s - 1e-3 * np.eye(len(s)))


def test_n_occupied_needs_valence_charges(abn8):
    bare = BasisSet.from_dict({"species": [{**sp, "valence_charge": None} for sp in abn8.basis.to_dict()["species"]]})
    with pytest.raises(BasisMismatchError, match="valence charge"):
        n_occupied_states(bare, abn8.species)
    assert n_occupied_states(abn8.basis, abn8.species, charge=1) == 16  # 31 electrons: HOMO half filled


def test_spectrum_of_a_reference_against_itself_is_exactly_zero(abn8):
    metrics = compare_spectra(abn8, abn8, threshold=1e-3)
    for mode in (metrics.raw, metrics.orthogonalized):
        assert mode.window_max_meV == 0.0 and mode.occupied_max_meV == 0.0
    # the canonical half mirrors the upper blocks: SIESTA's |H_ij - H_ji| ~ 1e-8 eV remains
    half = compare_spectra(abn8.canonical_half(), abn8)
    assert half.raw.window_max_meV < 1e-4 and half.orthogonalized.occupied_max_meV < 1e-4
    assert metrics.orthogonalized.n_states_ref == metrics.orthogonalized.n_states_pred == 92
    assert metrics.raw.n_window == 4  # HOMO + the triply degenerate LUMO within ±2 eV
    json.dumps(metrics.to_dict())


@pytest.mark.parametrize("run", ["abn_8_0", "abn_16_0"])
def test_readme_noise_sensitivity_and_orthogonalization(abn_dir, run):
    """shared/abn/README: 1 meV noise on every H entry moves Γ window eigenvalues by 1-3 eV raw,
    by about 2 meV after canonical orthogonalization at 1e-3; dropping moves them by <= ~12 meV."""
    ref = read_hs(abn_dir / f"runs/{run}/{run}.TSHS")
    half = ref.canonical_half()
    noisy = compare_spectra(with_h(half, half.h_unshifted[0] + symmetric_noise(half, 1e-3, 7)), ref, threshold=1e-3)
    assert noisy.raw.window_mae_meV > 500  # measured 2.3-2.6 eV
    assert noisy.orthogonalized.window_mae_meV < 20  # measured 7 meV
    assert noisy.orthogonalized.occupied_mae_meV < 20
    # the dropping itself: the orthogonalized reference against the raw one (measured <= 12 meV)
    eig = compare_spectra(ref, ref, threshold=1e-3).eigenvalues
    dropped = spectrum_errors(eig["ref_orthogonalized"], eig["ref_raw"], noisy.n_occupied)
    assert 0 < dropped.window_max_meV < 15 and dropped.n_window_unpaired == 0


def test_uniform_shift_moves_every_eigenvalue_by_c(abn8):
    c = 0.25
    metrics = compare_spectra(with_h(abn8, abn8.h_unshifted[0] + c * abn8.s), abn8)
    for mode in (metrics.raw, metrics.orthogonalized):
        assert mode.occupied_mean_error_meV == pytest.approx(1e3 * c, abs=1e-6)
        assert mode.window_max_meV == pytest.approx(1e3 * c, abs=1e-6)


def test_different_dropped_counts_pair_from_the_bottom(abn8):
    """A predicted S that keeps one eigenvector fewer: spectra of different lengths, still paired."""
    layout = GammaLayout.from_hsdata(abn8)
    h, s = layout.dense(abn8.h_unshifted[0]), layout.dense(abn8.s)
    evals, evecs = np.linalg.eigh(s)
    k = int((evals <= 1e-3).sum())  # the smallest kept eigenvalue of S, pushed below the threshold
    s_pred = s - (evals[k] - 5e-4) * np.outer(evecs[:, k], evecs[:, k])
    metrics = eigenvalue_metrics(h, s_pred, h, s, n_occupied_states(abn8.basis, abn8.species), threshold=1e-3)
    ortho = metrics.orthogonalized
    assert (ortho.n_states_pred, ortho.n_states_ref) == (91, 92)
    assert ortho.n_window == 4 and ortho.n_window_unpaired == 0
    assert ortho.window_max_meV < 50 and ortho.occupied_max_meV < 50


# ---------------------------------------------------------------------------------------
# eigenvalue loss
# ---------------------------------------------------------------------------------------
def test_eigenvalue_loss_is_zero_at_the_reference_with_finite_gradients(abn8):
    half = abn8.canonical_half()
    target = eigenvalue_target(abn8, layout=GammaLayout.from_hsdata(half), threshold=1e-3)
    # 16 occupied + the triply degenerate LUMO group: whole groups are kept
    assert len(target.states) == 19 and target.x.shape == (104, 92)
    h = torch.tensor(half.h_unshifted[0], requires_grad=True)
    loss = eigenvalue_loss(h, target)
    assert loss.item() < 1e-10  # the group averages of near-degenerate targets (1e-6 eV apart)
    loss.backward()
    assert torch.isfinite(h.grad).all()


def test_eigenvalue_loss_gradient_matches_finite_differences(abn8):
    half = abn8.canonical_half()
    target = eigenvalue_target(abn8, layout=GammaLayout.from_hsdata(half), window=1.0, threshold=1e-3)
    rng = np.random.default_rng(5)
    h0 = torch.tensor(half.h_unshifted[0] + 2e-3 * rng.standard_normal(half.n_values), requires_grad=True)
    loss = eigenvalue_loss(h0, target)
    loss.backward()
    direction = torch.as_tensor(rng.standard_normal(half.n_values))
    eps = 1e-6
    with torch.no_grad():
        plus = eigenvalue_loss(h0 + eps * direction, target)
        minus = eigenvalue_loss(h0 - eps * direction, target)
    assert float(h0.grad @ direction) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-4)


def test_eigenvalue_loss_steps_reduce_it(abn8):
    half = abn8.canonical_half()
    target = eigenvalue_target(abn8, layout=GammaLayout.from_hsdata(half), threshold=1e-3)
    rng = np.random.default_rng(2)
    h = torch.tensor(half.h_unshifted[0] + 1e-2 * rng.standard_normal(half.n_values), requires_grad=True)
    opt = torch.optim.Adam([h], lr=1e-3)
    first = None
    for _ in range(10):
        opt.zero_grad()
        loss = eigenvalue_loss(h, target, kind="mae")
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert eigenvalue_loss(h, target, kind="mae").item() < 0.5 * first
    with pytest.raises(InputError, match="shape"):
        eigenvalue_loss(h[:-1], target)


def test_a_rigid_shift_moves_every_spectral_metric_by_the_shift_and_the_evaluation_removes_it(abn8):
    """H + c S has the eigenvalues of H plus c (any threshold, the reference S's basis): the window
    and occupied MAEs are c, the gap is unchanged, the band energy moves by 2 c n_occupied, and the
    DOS (Wasserstein-1) distance is c.  The evaluation removes the best c·S first (SIESTA's energy
    zero is arbitrary), in the thresholded view as in the full-S headline: every error is 0."""
    from dataclasses import replace

    from hforge.metrics import compare_blocks, compare_full_spectra, compare_spectra, n_occupied_states
    from hforge.train.evaluation import spectra_of, summary_row

    c = 0.0371  # eV
    shifted = replace(abn8, h=abn8.h + c * abn8.s[None])
    n_occupied = n_occupied_states(abn8.basis, abn8.species)
    blocks, full = compare_blocks(shifted, abn8).to_dict(), compare_full_spectra(shifted, abn8).to_dict()
    raw = {"window_eV": 2.0, "n_occupied": n_occupied, "n_atoms": abn8.n_atoms, "thresholds": {}}
    for threshold in (1e-2, 1e-3):
        spectra = compare_spectra(shifted, abn8, n_occupied=n_occupied, window=2.0, threshold=threshold).to_dict()
        raw["thresholds"][str(threshold)] = {"orthogonalized": spectra["orthogonalized"],
                                             "with_reference_s": spectra["orthogonalized"]}
    moved = summary_row(blocks, raw, full)
    removed = summary_row(blocks, spectra_of(shifted, abn8, n_occupied, window=2.0, thresholds=(1e-2, 1e-3)), full)
    for t in ("1e-2", "1e-3"):
        expected_band = 1e3 * 2 * c * n_occupied / abn8.n_atoms
        for key, value in (("eig_window", 1e3 * c), ("eig_occupied", 1e3 * c), ("gap_error", 0.0),
                           ("dos_distance", 1e3 * c), ("band_energy_error", expected_band)):
            name = f"{key}_refS_{t}_meV" + ("_per_atom" if key == "band_energy_error" else "")
            assert moved[name] == pytest.approx(value, rel=1e-9, abs=1e-8), name
            assert removed[name] == pytest.approx(0.0, abs=1e-6), name
    assert full["shift_removed_eV"] == pytest.approx(c, rel=1e-9)
    for key in ("eig_window_fullS_meV", "gap_error_fullS_meV", "band_energy_error_fullS_meV_per_atom",
                "dos_distance_fullS_meV"):
        assert moved[key] == pytest.approx(0.0, abs=1e-6), key
    assert (moved["ghosts_low"], moved["ghosts_high"]) == (0, 0)
    assert moved["window_states_pred"] == moved["window_states_ref"] == 4
