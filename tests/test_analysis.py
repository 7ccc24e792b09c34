"""Spectra (bands, DOS, KPM, shift-invert) and comparison reports of hforge.analysis.

Oracles: SIESTA's own eigenvalues (.EIG at the k-points of .KP), dense diagonalisation, Chebyshev
moments computed from exact eigenvalues, electron counting (the integrated DOS in the gap equals
the number of occupied states).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import sisl
from matplotlib.figure import Figure

from hforge.analysis import (
    band_structure,
    dos_dense,
    dos_kpm,
    eigenvalues_at_k,
    hamiltonian_from,
    matrices_at_k,
    spectrum_report,
    window_eigenvalues,
)
from hforge.analysis.kpm import KPMOperator, jackson_kernel, kpm_moments, spectral_bounds
from hforge.analysis.plots import hamiltonian_heatmap, parity_plot, save_figure
from hforge.errors import ConvergenceError, InputError, UnsupportedSystemError
from hforge.io import read_hs
from hforge.metrics import generalized_eigenvalues

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def h8(abn8):
    return hamiltonian_from(abn8)


@pytest.fixture(scope="module")
def h16(abn_dir):
    return hamiltonian_from(read_hs(abn_dir / "runs/abn_16_0/abn_16_0.TSHS"))


def gap_centre(H, n_occupied: int) -> float:
    ev = eigenvalues_at_k(H)[0]
    return 0.5 * (ev[n_occupied - 1] + ev[n_occupied])


# ---------------------------------------------------------------------------------------
# dense eigenvalues, bands, DOS
# ---------------------------------------------------------------------------------------
def test_eigenvalues_at_the_runs_kpoints_match_siesta(abn_dir, h8):
    """SIESTA's .EIG (absolute energies) at the 32 k-points of .KP: the lowest 64 bands within 1 meV."""
    run = abn_dir / "runs/abn_8_0"
    kpts, _ = sisl.get_sile(run / "abn_8_0.KP").read_data(h8.geometry.lattice)
    eig = sisl.get_sile(run / "abn_8_0.EIG")
    siesta = eig.read_data()[0] + eig.read_fermi_level()  # sisl returns E - E_F
    ours = eigenvalues_at_k(h8, kpts)
    assert ours.shape == siesta.shape == (32, 104)
    assert np.abs(ours[:, :64] - siesta[:, :64]).max() < 1e-3  # measured 0.32 meV
    assert np.abs(ours - siesta).max() < 5e-3  # measured 1.5 meV (SIESTA's last SCF step)


def test_hamiltonian_from_adds_the_fermi_level_back(abn8, h8):
    shifted = eigenvalues_at_k(abn8.to_sisl())
    np.testing.assert_allclose(eigenvalues_at_k(h8), shifted + abn8.fermi_level, atol=1e-9)


def test_threshold_drops_states_at_every_kpoint(h8):
    k = [[0, 0, 0], [0.25, 0, 0], [0.5, 0.5, 0.5]]
    raw, ortho = eigenvalues_at_k(h8, k), eigenvalues_at_k(h8, k, threshold=1e-3)
    kept = np.isfinite(ortho).sum(axis=1)
    assert np.all(kept < 104) and np.all(kept > 80)
    for kk, row in zip(k, ortho):
        h, s = matrices_at_k(h8, kk)
        np.testing.assert_allclose(row[np.isfinite(row)], generalized_eigenvalues(h, s, 1e-3), atol=1e-10)
    # the occupied states barely move (<= ~12 meV, shared/abn README)
    assert np.abs(ortho[:, :16] - raw[:, :16]).max() < 0.02


def test_band_structure_from_ase_paths_and_arrays(h8, tmp_path):
    bands = band_structure(h8, "GX", npoints=12, save=tmp_path / "bands.png")
    assert bands.labels == ["G", "X"] and bands.eigenvalues.shape == (12, 104)
    np.testing.assert_allclose(bands.eigenvalues[0], eigenvalues_at_k(h8)[0], atol=1e-10)
    assert isinstance(bands.figure, Figure) and (tmp_path / "bands.png").stat().st_size > 1000
    kpts = np.array([[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0]])
    explicit = band_structure(h8, kpts, threshold=1e-3, plot=False)
    assert explicit.figure is None and explicit.x[-1] == pytest.approx(0.5 / h8.geometry.cell[0, 0])
    assert band_structure(h8, npoints=8, plot=False).eigenvalues.shape[0] == 8  # ASE's default path
    with pytest.raises(InputError):
        eigenvalues_at_k(h8, [[0, 0]])


def test_dense_dos_integrates_to_the_states(h8, tmp_path):
    kpts = [[0, 0, 0], [0.5, 0, 0]]
    energies = np.linspace(-40, 200, 24001)
    for kind in ("gaussian", "lorentzian"):
        dos = dos_dense(h8, energies, k=kpts, kind=kind, broadening=0.1, plot=False)
        assert dos.n_states == 104
        assert dos.integrated()[-1] == pytest.approx(104, rel=1e-3 if kind == "gaussian" else 2e-2)
    dos = dos_dense(h8, k=kpts, save=tmp_path / "dos.png")
    centre = gap_centre(h8, 16)
    assert dos.integrated()[np.searchsorted(dos.energies, centre)] == pytest.approx(16, abs=0.05)
    assert (tmp_path / "dos.png").is_file() and isinstance(dos.figure, Figure)
    with pytest.raises(InputError, match="broadening"):
        dos_dense(h8, energies, broadening=0.0)


# ---------------------------------------------------------------------------------------
# KPM
# ---------------------------------------------------------------------------------------
def chebyshev_moments(eigenvalues: np.ndarray, bounds: tuple[float, float], n: int) -> np.ndarray:
    a, b = 0.5 * (bounds[1] - bounds[0]), 0.5 * (bounds[1] + bounds[0])
    x = (eigenvalues - b) / a
    return np.array([np.mean(np.cos(k * np.arccos(x))) for k in range(n)])


def test_kpm_exact_trace_moments_equal_those_of_the_eigenvalues(h8):
    h, s = matrices_at_k(h8, format="csr")
    op = KPMOperator.dense(h, s)
    bounds = spectral_bounds(op)
    exact = generalized_eigenvalues(h.toarray(), s.toarray())
    assert bounds[0] < exact[0] and bounds[1] > exact[-1]
    mu = kpm_moments(op, 200, bounds, n_vectors=None)
    np.testing.assert_allclose(mu, chebyshev_moments(exact, bounds, 200), atol=1e-7)
    # canonical orthogonalization: the moments of the kept states
    ortho = KPMOperator.dense(h, s, threshold=1e-3)
    kept = generalized_eigenvalues(h.toarray(), s.toarray(), 1e-3)
    np.testing.assert_allclose(kpm_moments(ortho, 50, bounds, n_vectors=None), chebyshev_moments(kept, bounds, 50), atol=1e-7)


def test_kpm_with_cg_solves_equals_the_cholesky_operator(h8):
    """S^-1 H applied by preconditioned CG: exact-trace moments as those of L^-1 H L^-T, to the
    CG tolerance times ~cond(S) (1e5)."""
    h, s = matrices_at_k(h8, format="csr")
    dense = KPMOperator.dense(h, s)
    bounds = spectral_bounds(dense)
    mu_dense = kpm_moments(dense, 30, bounds, n_vectors=None)
    iterations = {}
    for neighbours in (0, 4):  # block Jacobi, Schwarz
        sparse = KPMOperator.sparse(h, s, h8.geometry.firsto, tol=1e-10, neighbours=neighbours)
        assert spectral_bounds(sparse) == pytest.approx(bounds, rel=1e-4)
        np.testing.assert_allclose(kpm_moments(sparse, 30, bounds, n_vectors=None), mu_dense, atol=1e-5)
        iterations[neighbours] = np.mean(sparse.solver.iterations)
    assert iterations[4] < iterations[0] < 1000


def test_kpm_dos_counts_the_occupied_states(h8, h16):
    """The integrated KPM DOS in the gap is the number of occupied states: exactly (trace over
    every unit vector) in abn_8_0, raw and canonically orthogonalized; within 3 standard
    deviations of the stochastic trace (64 vectors: σ ≈ sqrt(2 · 32 · (1 - 32/208) / 64) ≈ 0.9)
    in abn_16_0; and the curve follows the dense one once both are smoothed."""
    centre = gap_centre(h8, 16)
    energies = np.linspace(-30, centre, 3000)
    for threshold in (None, 1e-3):
        kpm = dos_kpm(h8, energies, n_moments=1000, n_vectors=None, threshold=threshold, plot=threshold is None)
        assert kpm.integrated()[-1] == pytest.approx(16, abs=0.05)
        assert kpm.details["resolution_eV"] < 0.3
    assert isinstance(kpm.figure, type(None))
    assert kpm.n_states == np.isfinite(eigenvalues_at_k(h8, threshold=1e-3)).sum() == 92
    centre = gap_centre(h16, 32)
    energies = np.linspace(-30, centre, 3000)
    kpm = dos_kpm(h16, energies, n_moments=2000, n_vectors=64, seed=1)
    assert kpm.integrated()[-1] == pytest.approx(32, abs=2.7) and isinstance(kpm.figure, Figure)
    dense = dos_dense(h16, energies, broadening=0.5, plot=False)
    window = (energies > -25) & (energies < centre - 1)
    kernel = np.exp(-0.5 * (np.arange(-150, 151) * (energies[1] - energies[0]) / 0.5) ** 2)
    kpm_smooth = np.convolve(kpm.dos, kernel / kernel.sum(), mode="same")
    assert np.abs(kpm_smooth - dense.dos)[window].max() < 0.15 * dense.dos[window].max()  # measured 7 %


def test_kpm_cg_path_on_a_small_cell(h8):
    dos = dos_kpm(h8, np.linspace(-30, 0, 300), solver="cg", n_moments=40, n_vectors=4, plot=False)
    assert dos.details["solver"] == "cg" and dos.details["cg_iterations_mean"] > 1
    assert np.isfinite(dos.dos).all()


def test_kpm_refuses_wrong_bounds_and_large_dense_problems(h8):
    h, s = matrices_at_k(h8, format="csr")
    op = KPMOperator.dense(h, s)
    with pytest.raises(ConvergenceError, match="bounds"):
        kpm_moments(op, 400, (-10.0, 10.0), n_vectors=2)
    with pytest.raises(UnsupportedSystemError, match="threshold"):
        dos_kpm(h8, threshold=1e-3, dense_max_orbitals=50, plot=False)
    with pytest.raises(InputError):
        dos_kpm(h8, solver="magic", plot=False)
    assert jackson_kernel(10)[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------
# shift-invert
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [(0.0, 0.0, 0.0), (0.25, 0.0, 0.5)])
def test_shift_invert_window_equals_dense(h16, k):
    centre = gap_centre(h16, 32)
    window = window_eigenvalues(h16, centre - 2.0, centre + 2.0, k=k, n_initial=2)
    exact = eigenvalues_at_k(h16, k)[0]
    expected = exact[np.abs(exact - centre) <= 2.0]
    assert window.method == "shift-invert" and len(window.eigenvalues) == len(expected) > 0
    np.testing.assert_allclose(window.eigenvalues, expected, atol=1e-8)
    assert window.details["n_requested"] > 2  # it had to grow
    ortho = window_eigenvalues(h16, centre - 2.0, centre + 2.0, k=k, threshold=1e-3, plot=False)
    assert ortho.method == "dense" and np.abs(ortho.eigenvalues - expected).max() < 0.02
    assert isinstance(window.figure, Figure)
    with pytest.raises(InputError):
        window_eigenvalues(h16, 1.0, 0.0)


# ---------------------------------------------------------------------------------------
# reports and figures
# ---------------------------------------------------------------------------------------
def test_spectrum_report_of_a_noisy_prediction(abn8, tmp_path):
    from hforge.datasets import load  # tests may use the higher layer's bundled sample

    sample = load("abn-small")[0]  # abn_8_0, float32, canonical half
    noise = 1e-3 * np.random.default_rng(0).standard_normal(sample.n_values)
    prediction = replace(sample, h=(sample.h_unshifted[0] + noise)[None].astype(np.float64), fermi_level=0.0)
    report = spectrum_report(prediction, abn8, out_dir=tmp_path)
    m = report.metrics
    assert m["name"] == "abn_8_0" and m["n_orbitals"] == 104
    assert m["blocks"]["h_mae_meV"]["all"] == pytest.approx(1e3 * 1e-3 * np.sqrt(2 / np.pi), rel=0.05)
    assert m["blocks"]["s_mae"]["all"] < 1e-7  # float32 rounding of the sample
    assert m["eigenvalues"]["raw"]["window_mae_meV"] > 100 > 20 > m["eigenvalues"]["orthogonalized"]["window_mae_meV"]
    assert set(report.figures) == {"parity", "heatmap", "eigenvalues"}
    assert all(isinstance(f, Figure) for f in report.figures.values())
    assert json.loads(report.paths["metrics"].read_text()) == json.loads(json.dumps(m))
    assert all(p.is_file() for p in report.paths.values())
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file
    # a sisl Hamiltonian prediction: the reference itself
    self_report = spectrum_report(hamiltonian_from(abn8), abn8, figures=False)
    assert self_report.metrics["blocks"]["h_mae_meV"]["max"] < 1e-9
    assert self_report.metrics["eigenvalues"]["orthogonalized"]["window_max_meV"] < 1e-6


def test_plots_refuse_mismatched_arrays(tmp_path):
    with pytest.raises(InputError):
        parity_plot(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError):
        hamiltonian_heatmap(np.zeros((3, 3)), np.zeros((4, 4)))
    fig = parity_plot(np.arange(5.0), np.arange(5.0) + 1e-3)
    path = save_figure(fig, tmp_path / "sub" / "parity.pdf")
    assert path.is_file() and path.read_bytes().startswith(b"%PDF")
