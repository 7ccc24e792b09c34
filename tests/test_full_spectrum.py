"""Full-S spectrum metrics and per-atom onsite errors (hforge.metrics.full_spectrum, onsite_energy_errors).

Oracles: sisl's own reading of the SIESTA file and its generalized eigensolver (Γ and k), scipy's
``eigh(H, S)``, the analytic spectrum of ``H = a S + b 1`` (``a + b / s_i`` over the eigenvalues
``s_i`` of S), hand-made spectra, and perturbations whose effect is known: ``H + a S`` (a rigid
shift), a per-atom potential in operator form ``½(V_i + V_j) S_ij`` (no ghost state), random
per-entry noise of 1 meV (ghost states: issue 24).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from hforge.errors import InputError
from hforge.io import HSData, read_hs
from hforge.metrics import (
    GammaLayout,
    compare_full_spectra,
    count_ghosts,
    full_spectrum_errors,
    n_occupied_states,
    onsite_energy_errors,
    window_pairs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def abn16_5(abn_dir) -> HSData:
    """A held-out 16-atom cell of issue 24 (S(Γ)'s smallest eigenvalue ~7e-5)."""
    return read_hs(abn_dir / "runs/abn_16_5/abn_16_5.TSHS")


def predicted(half: HSData, h_unshifted: np.ndarray) -> HSData:
    """A 'prediction' on ``half``'s pairs: its S, E_F = 0, the given unshifted H."""
    return replace(half, h=np.atleast_2d(h_unshifted), fermi_level=0.0)


def without_pair(data: HSData, e: int) -> HSData:
    """``data`` without its pair ``e``."""
    keep = np.flatnonzero(np.arange(data.n_pairs) != e)
    values = data.value_pair != e
    sizes = np.diff(data.block_ptr)[keep]
    return replace(data, edge_index=data.edge_index[:, keep], cell_shift=data.cell_shift[keep],
                   block_ptr=np.concatenate([[0], np.cumsum(sizes)]), h=data.h[:, values], s=data.s[values],
                   mask=data.mask[values])


def onsite_diagonal(data: HSData) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of every onsite block's diagonal, their atoms), by a loop over the blocks."""
    flat, atoms = [], []
    for e in np.flatnonzero(data.onsite):
        n = data.atom_orbitals[data.edge_index[0, e]]
        flat += [data.block_ptr[e] + k * (n + 1) for k in range(n)]
        atoms += [data.edge_index[0, e]] * n
    return np.array(flat), np.array(atoms)


# ---------------------------------------------------------------------------------------
# hand-made spectra
# ---------------------------------------------------------------------------------------
def test_pairing_from_the_homo_with_a_ghost_state_below():
    """Four occupied states; a ghost state at -300 eV takes the lowest place, so the predicted HOMO is
    the reference's HOMO-1 state and every window state is paired one rung down."""
    ref = np.array([-10.0, -5.0, -1.0, -0.5, 0.5, 1.5, 10.0])
    pred = np.array([-300.0, -10.0, -5.0, -1.0, -0.5, 0.5, 1.5])
    e = full_spectrum_errors(pred, ref, 4, n_atoms=2)
    assert (e.ghosts_low, e.ghosts_high) == (1, 0)
    assert e.gap_centre_eV == 0.0
    # window: ref -1, -0.5, 0.5, 1.5 (indices 2..5) against pred indices 2..5: -5, -1, -0.5, 0.5
    assert (e.n_window_ref, e.n_window_pred, e.n_window_unpaired) == (4, 4, 0)
    assert e.window_mae_meV == pytest.approx(1e3 * (4 + 0.5 + 1 + 1) / 4)
    assert e.window_max_meV == pytest.approx(4000)
    assert e.gap_ref_eV == 1.0 and e.gap_pred_eV == 0.5 and e.gap_error_meV == pytest.approx(-500)
    band_ref, band_pred = 2 * (-16.5), 2 * (-316.0)
    assert e.band_energy_error_meV_per_atom == pytest.approx(1e3 * (band_pred - band_ref) / 2)
    assert e.range_pred_eV == [-300.0, 1.5]
    # the reference's 10 eV state has no predicted state above 11 eV: no high ghost
    assert count_ghosts(np.array([11.5, -11.5, 0.0]), ref) == (1, 1)


def test_window_pairs_by_offset_from_each_homo():
    ref = np.array([-3.0, -1.5, -0.2, 0.4, 1.0, 2.5])  # HOMO index 2 (-0.2), LUMO 0.4
    pred = np.array([-9.0, -8.0, -2.9, -1.4, -0.3, 0.5, 0.6, 1.9])  # HOMO index 4
    pairs = window_pairs(pred, ref, homo_pred=4, homo_ref=2, centre=0.1, window=2.0)
    # ref within [-1.9, 2.1]: -1.5, -0.2, 0.4, 1.0 (indices 1..4) -> pred 3..6
    np.testing.assert_array_equal(pairs.ref, [1, 2, 3, 4])
    np.testing.assert_array_equal(pairs.pred, [3, 4, 5, 6])
    assert (pairs.n_ref, pairs.n_pred, pairs.n_unpaired) == (4, 5, 0)  # pred -1.4, -0.3, 0.5, 0.6, 1.9
    # a shorter predicted spectrum: the partner of LUMO+1 is missing and counted
    short = window_pairs(pred[:6], ref, homo_pred=4, homo_ref=2, centre=0.1, window=2.0)
    np.testing.assert_array_equal(short.pred, [3, 4, 5])
    assert short.n_unpaired == 1


def test_more_predicted_states_in_the_window_are_counted_not_paired():
    """Three extra predicted states just above the LUMO (issue 24: 12 against DFT's 9)."""
    ref = np.array([-6.0, -1.0, 1.0, 3.0, 4.0, 5.0])
    pred = np.array([-6.0, -1.0, 1.0, 1.2, 1.4, 1.6])
    e = full_spectrum_errors(pred, ref, 2, n_atoms=1)
    assert (e.n_window_ref, e.n_window_pred) == (2, 5)
    assert e.window_mae_meV == 0.0 and e.gap_error_meV == 0.0
    assert e.dos_distance_meV > 0


def test_k_points_pool_and_bad_input_is_refused():
    ref = np.array([[-2.0, -1.0, 1.0, 3.0], [-2.5, -0.5, 0.5, 2.0]])
    e = full_spectrum_errors(ref + 0.1, ref, 2, n_atoms=1)
    assert e.n_kpoints == 2 and e.gap_centre_eV == 0.0  # max HOMO -0.5, min LUMO 0.5
    assert e.gap_ref_eV == 1.0 and e.gap_error_meV == pytest.approx(0.0, abs=1e-9)
    # k 1: -2, -1, 1; k 2: -0.5, 0.5, 2 (the predicted 2.1 has left the window)
    assert (e.n_window_ref, e.n_window_pred) == (6, 5) and e.window_mae_meV == pytest.approx(100)
    with pytest.raises(InputError, match="HOMO and a LUMO"):
        full_spectrum_errors(ref, ref, 4, n_atoms=1)
    with pytest.raises(InputError, match="shapes"):
        full_spectrum_errors(ref[:1], ref, 2, n_atoms=1)
    with pytest.raises(InputError, match="finite"):
        full_spectrum_errors(np.where(ref > 2.5, np.nan, ref), ref, 2, n_atoms=1)


sorted_spectra = st.lists(st.floats(-50, 50, allow_nan=False), min_size=4, max_size=30).map(sorted).map(np.array)


@given(ref=sorted_spectra, homo_ref=st.integers(0, 29), homo_pred=st.integers(0, 40),
       n_pred=st.integers(1, 40), seed=st.integers(0, 2**16), centre=st.floats(-20, 20), window=st.floats(0.1, 10))
def test_window_pairs_properties(ref, homo_ref, homo_pred, n_pred, seed, centre, window):
    pred = np.sort(np.random.default_rng(seed).uniform(-60, 60, n_pred))
    pairs = window_pairs(pred, ref, homo_pred, homo_ref, centre, window)
    in_window = np.abs(ref - centre) <= window
    assert pairs.n_ref == int(in_window.sum()) == len(pairs.ref) + pairs.n_unpaired
    assert pairs.n_pred == int((np.abs(pred - centre) <= window).sum())
    assert in_window[pairs.ref].all()
    np.testing.assert_array_equal(pairs.pred - homo_pred, pairs.ref - homo_ref)
    assert ((pairs.pred >= 0) & (pairs.pred < n_pred)).all()


@given(ref=sorted_spectra, below=st.integers(0, 5), above=st.integers(0, 5), seed=st.integers(0, 2**16),
       margin=st.floats(0.1, 3.0))
def test_ghost_counts_properties(ref, below, above, seed, margin):
    rng = np.random.default_rng(seed)
    inside = rng.uniform(ref.min() - 0.99 * margin, ref.max() + 0.99 * margin, len(ref))
    ghosts = np.concatenate([ref.min() - margin - rng.uniform(1e-3, 100, below),
                             ref.max() + margin + rng.uniform(1e-3, 100, above)])
    assert count_ghosts(np.concatenate([inside, ghosts]), ref, margin) == (below, above)


@given(ref=sorted_spectra, n_occupied=st.integers(1, 3), delta=st.floats(-0.9, 0.9), kpoints=st.integers(1, 3))
def test_rigid_shift_of_every_state(ref, n_occupied, delta, kpoints):
    """A rigid shift delta (< margin) of every predicted state: no ghost, window MAE |delta|, gap
    unchanged, band energy 2 delta n_occupied per atom, DOS distance |delta| when the same states are
    in the window; k-points that repeat a spectrum multiply the counts only."""
    ref_k = np.tile(ref, (kpoints, 1))
    e = full_spectrum_errors(ref_k + delta, ref_k, n_occupied, n_atoms=3)
    single = full_spectrum_errors(ref + delta, ref, n_occupied, n_atoms=3)
    assert (e.ghosts_low, e.ghosts_high) == (0, 0)
    assert (e.n_window_ref, e.n_window_pred) == (kpoints * single.n_window_ref, kpoints * single.n_window_pred)
    assert e.n_window_unpaired == 0
    if e.n_window_ref:  # the HOMO and the LUMO are in the window unless the gap is wider than it
        assert e.window_mae_meV == pytest.approx(1e3 * abs(delta), abs=1e-6)
    assert e.gap_error_meV == pytest.approx(0.0, abs=1e-6)
    assert e.band_energy_error_meV_per_atom == pytest.approx(1e3 * 2 * delta * n_occupied / 3, abs=1e-6)
    centre = e.gap_centre_eV
    same = np.array_equal(np.abs(ref - centre) <= 2.0, np.abs(ref + delta - centre) <= 2.0)
    if same and e.n_window_ref:
        assert e.dos_distance_meV == pytest.approx(1e3 * abs(delta), abs=1e-6)


# ---------------------------------------------------------------------------------------
# real SIESTA cells
# ---------------------------------------------------------------------------------------
def test_reference_spectra_match_sisl_at_gamma_and_k(abn8, abn_dir):
    """The reference (and its canonical half as a 'prediction') against sisl's own reading of the
    TSHS file (its Bloch matrices) and scipy's generalized eigensolver, at Γ and two k-points of the
    8-atom cell."""
    import sisl

    H = sisl.get_sile(abn_dir / "runs/abn_8_0/abn_8_0.TSHS").read_hamiltonian()
    kpts = [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.25, 0.5, 0.1]]
    metrics = compare_full_spectra(abn8.canonical_half(), abn8, kpoints=kpts)
    for k, ref, pred in zip(kpts, metrics.eigenvalues["ref"], metrics.eigenvalues["pred"]):
        # SIESTA's H is symmetric to ~1e-8 eV only, which S's near-null directions amplify to 1e-4 eV at the top
        # of the spectrum: both sides symmetrised; sisl subtracts E_F
        h, s = (0.5 * (m + m.conj().T) for m in (H.Hk(k=k, format="array"), H.Sk(k=k, format="array")))
        expected = scipy.linalg.eigh(h, s, eigvals_only=True) + abn8.fermi_level
        np.testing.assert_allclose(ref, expected, rtol=0, atol=1e-6)
        # the half list mirrors its blocks: the 1e-8 eV asymmetry goes, moving the top states by up to 2e-4 eV
        np.testing.assert_allclose(pred, expected, rtol=0, atol=1e-3)
        np.testing.assert_allclose(pred[:40], expected[:40], rtol=0, atol=1e-6)
    e = metrics.errors
    assert e.n_kpoints == 3 and (e.ghosts_low, e.ghosts_high) == (0, 0)
    assert e.window_max_meV < 1e-3 and abs(e.gap_error_meV) < 1e-3 and e.n_window_pred == e.n_window_ref
    assert metrics.to_dict()["kpoints"] == kpts


def test_operator_shift_is_removed_exactly(abn16_5):
    """H_ref + a S: the shift a is found and removed, the spectra agree to rounding."""
    half = abn16_5.canonical_half()
    metrics = compare_full_spectra(predicted(half, half.h_unshifted[0] + 0.37 * half.s), abn16_5)
    assert metrics.shift_eV == pytest.approx(0.37, abs=1e-9)
    e = metrics.errors
    assert (e.ghosts_low, e.ghosts_high) == (0, 0)
    assert e.window_max_meV < 1e-3 and abs(e.gap_error_meV) < 1e-3 and abs(e.band_energy_error_meV_per_atom) < 1e-3
    assert e.n_window_ref == e.n_window_pred == 5
    layout = GammaLayout.from_hsdata(abn16_5)
    expected = scipy.linalg.eigh(layout.dense(abn16_5.h_unshifted[0]), layout.dense(abn16_5.s), eigvals_only=True)
    np.testing.assert_allclose(metrics.eigenvalues["ref"][0], expected, rtol=0, atol=1e-6)
    onsite = onsite_energy_errors(predicted(half, half.h_unshifted[0] + 0.37 * half.s), abn16_5)
    assert onsite.shift_eV == pytest.approx(0.37, abs=1e-9) and onsite.rmse_meV < 1e-6


def test_a_times_s_plus_b_has_the_analytic_spectrum(abn16_5):
    """H = a S + b 1 (b added to every orbital's onsite energy): eigenvalues a + b / s_i. A small b
    along S's near-null directions (s_i ~ 1e-4) puts states hundreds of eV above the reference."""
    half = abn16_5.canonical_half()
    a, b = -3.0, 0.02
    h = a * half.s
    diagonal, _ = onsite_diagonal(half)
    h[diagonal] += b
    metrics = compare_full_spectra(predicted(half, h), abn16_5)
    s_eig = np.linalg.eigvalsh(GammaLayout.from_hsdata(half).dense(half.s))  # the prediction's own S
    expected = np.sort(a + b / s_eig) - metrics.shift_eV
    np.testing.assert_allclose(metrics.eigenvalues["pred"][0], expected, rtol=1e-7, atol=1e-6)
    ref = metrics.eigenvalues["ref"][0]
    assert (metrics.errors.ghosts_low, metrics.errors.ghosts_high) == count_ghosts(expected, ref)
    assert metrics.errors.ghosts_high == int((expected > ref.max() + 1).sum()) > 0


def test_operator_form_error_has_no_ghosts_and_entry_noise_has(abn16_5):
    """Issue 24: a per-atom potential error ½(V_i + V_j) S_ij (std 200 meV) moves the spectrum
    within DFT's range; random symmetric noise of 1 meV on every entry makes ghost states."""
    half = abn16_5.canonical_half()
    i, j = half.edge_index[:, half.value_pair]
    n_occupied = n_occupied_states(abn16_5.basis, abn16_5.species)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        v = 0.2 * rng.standard_normal(half.n_atoms)
        operator = compare_full_spectra(predicted(half, half.h_unshifted[0] + 0.5 * (v[i] + v[j]) * half.s), abn16_5,
                                        n_occupied=n_occupied)
        e = operator.errors
        assert (e.ghosts_low, e.ghosts_high) == (0, 0)
        assert e.range_pred_eV[0] >= e.range_ref_eV[0] - np.abs(v).max()
        assert e.range_pred_eV[1] <= e.range_ref_eV[1] + np.abs(v).max()
        assert e.window_mae_meV < 1e3 * np.abs(v).max()  # measured 33-56 meV
        noisy = compare_full_spectra(predicted(half, half.h_unshifted[0] + 1e-3 * rng.standard_normal(half.n_values)),
                                     abn16_5, n_occupied=n_occupied).errors
        assert noisy.ghosts_low + noisy.ghosts_high > 0  # measured 2-4
        assert noisy.range_pred_eV[1] > noisy.range_ref_eV[1] + 10  # measured +34..+52 eV


def test_onsite_energy_errors_by_hand(abn16_5):
    """V_i added to the diagonal of atom i's onsite block: per-atom error V_i - c with the least-squares
    c = Σ_i n_i V_i / Σ S² (S's diagonal is 1), computed here by hand."""
    half = abn16_5.canonical_half()
    v = 0.1 * np.random.default_rng(4).standard_normal(half.n_atoms)
    h = half.h_unshifted[0].copy()
    diagonal, atoms = onsite_diagonal(half)
    h[diagonal] += v[atoms]
    c = float(np.sum(v[atoms] * half.s[diagonal]) / np.sum(half.s**2))
    errors = onsite_energy_errors(predicted(half, h), abn16_5)
    assert errors.shift_eV == pytest.approx(c, rel=1e-9)
    np.testing.assert_allclose(errors.per_atom_meV, 1e3 * (v - c), rtol=0, atol=1e-5)
    assert errors.rmse_meV == pytest.approx(1e3 * np.sqrt(np.mean((v - c) ** 2)), rel=1e-6)
    assert errors.mae_meV == pytest.approx(1e3 * np.mean(np.abs(v - c)), rel=1e-6)
    assert len(errors.to_dict()["per_atom_meV"]) == half.n_atoms
    atom_3 = int(np.flatnonzero(half.onsite & (half.edge_index[0] == 3))[0])
    with pytest.raises(InputError, match=r"atoms \[3\]"):
        onsite_energy_errors(without_pair(predicted(half, h), atom_3), abn16_5)


def test_evaluation_reports_why_a_full_spectrum_is_missing(abn8):
    """A (learned) S that is not positive definite has no full-S spectrum: the evaluation says why, the
    headline is NaN, the per-atom onsite errors and the thresholded view remain."""
    from hforge.train.evaluation import evaluate_predictions

    half = abn8.canonical_half()
    diagonal, _ = onsite_diagonal(half)
    s = half.s.copy()
    s[diagonal] -= 0.01  # S(Γ)'s smallest eigenvalue is ~1e-4: now negative
    result = evaluate_predictions(lambda ref: replace(predicted(half, half.h_unshifted[0]), s=s), [abn8],
                                  thresholds=(1e-2,))
    entry = result.structures[0]
    assert entry["full_spectrum"] is None and "not positive definite" in entry["full_spectrum_skipped"]
    assert np.isnan(entry["summary"]["ghosts_low"]) and np.isnan(entry["summary"]["eig_window_fullS_meV"])
    assert entry["summary"]["onsite_atom_rmse_meV"] < 1e-6 and np.isfinite(entry["summary"]["eig_window_refS_1e-2_meV"])
