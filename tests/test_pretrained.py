"""The bundled model ``abn-dzp`` on the shared 64-atom SIESTA cell it never saw: its H no worse than
shipped (hforge/infer/pretrained/abn-dzp.json, written by scripts/export_pretrained.py), and its S the
exact two-centre overlap of SIESTA."""

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
