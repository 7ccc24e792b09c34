"""The bundled model ``abn-dzp`` on the shared 64-atom SIESTA cell it never saw: its H no worse than
shipped (hforge/infer/pretrained/abn-dzp.json, written by scripts/export_pretrained.py), its full-S
spectrum (H c = E S c in the whole basis, what a user diagonalises) without a state below DFT's
spectrum and no more above it than shipped, and its S the exact two-centre overlap of SIESTA."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hforge
from hforge.infer import PRETRAINED_DIR
from hforge.io import HSData, read_hs
from hforge.metrics import GammaLayout
from hforge.metrics.blocks import align_reference
from hforge.models import load_checkpoint
from hforge.train.evaluation import evaluate_structures

#: A shipped model may lose this much of its recorded accuracy before the test fails.
REGRESSION = 1.10


@pytest.fixture(scope="module")
def abn64(abn_dir):
    return read_hs(abn_dir / "runs" / "abn_64_0" / "abn_64_0.TSHS")


def test_h_error_on_abn_64_0_has_not_regressed(abn64):
    recorded = json.loads((PRETRAINED_DIR / "abn-dzp.json").read_text())["shipped"]["abn_64_0"]
    model, payload = load_checkpoint(PRETRAINED_DIR / "abn-dzp.pt")
    assert payload["extra"]["parameter_dtype"] == "float16"
    summary = evaluate_structures(model, [abn64.canonical_half()], eigenvalues=False).structures[0]["summary"]
    for key in ("h_mae_meV", "h_mae_shifted_meV"):
        assert summary[key] <= REGRESSION * recorded[key], (key, summary[key], recorded[key])


def test_predicted_overlap_is_siesta_s_and_positive_definite(abn64):
    predicted = hforge.load("abn-dzp").predict(abn64)
    prediction = HSData.from_sisl(predicted, abn64.basis, species=abn64.species)
    ref = align_reference(abn64, prediction.edge_index, prediction.cell_shift, prediction.block_ptr)
    assert np.abs(prediction.s - ref.s).max() <= 1e-6
    # every block where SIESTA's S is nonzero is in the prediction
    s_blocks = np.add.reduceat(np.abs(abn64.s), abn64.block_ptr[:-1]) > 0
    i, j = abn64.edge_index[:, s_blocks]
    assert (prediction.find_pairs(i, j, abn64.cell_shift[s_blocks]) >= 0).all()
    s_pred = GammaLayout.from_hsdata(prediction).dense(prediction.s)
    s_ref = GammaLayout.from_hsdata(abn64).dense(abn64.s)
    smallest_pred, smallest_ref = np.linalg.eigvalsh(s_pred)[0], np.linalg.eigvalsh(s_ref)[0]
    assert smallest_pred > 0
    assert smallest_pred == pytest.approx(smallest_ref, rel=1e-3)


def test_full_s_spectrum_of_abn_64_0_has_no_ghost_state_and_has_not_regressed(abn64):
    """Through the user's route (hforge.load(...).predict, then the generalized problem with the returned S): no
    state more than 1 eV below DFT's spectrum, no more above it than recorded (the top of the spectrum, ~200 eV,
    where the kinetic energy of S's near-null directions sits), DFT's number of states within ±2 eV of its gap
    centre, and the window's eigenvalue MAE and the gap error no worse than shipped (+10 %)."""
    from hforge.metrics import compare_full_spectra

    recorded = json.loads((PRETRAINED_DIR / "abn-dzp.json").read_text())["shipped"]["abn_64_0"]
    predicted = hforge.load("abn-dzp").predict(abn64)
    prediction = HSData.from_sisl(predicted, abn64.basis, species=abn64.species)
    errors = compare_full_spectra(prediction, abn64).errors
    assert errors.ghosts_low == 0
    assert errors.ghosts_high <= recorded["ghosts_high"]
    assert errors.n_window_pred == errors.n_window_ref == recorded["window_states_ref"]
    assert errors.window_mae_meV <= REGRESSION * recorded["eig_window_fullS_meV"]
    assert abs(errors.gap_error_meV) <= REGRESSION * abs(recorded["gap_error_fullS_meV"])
