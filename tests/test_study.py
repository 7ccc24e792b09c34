"""The transfer study (hforge/train/study.py): plans, the distance-binned errors, and a tiny study
whose table must equal an independent evaluation of the checkpoints it trained."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hforge.datasets import load
from hforge.errors import ConfigError
from hforge.metrics.blocks import align_reference, best_shift
from hforge.models import load_checkpoint
from hforge.train.evaluation import evaluate_structures
from hforge.train.study import FIGURES, StudyPlan, error_by_distance, quick_plan, run_study, study_markdown


def test_plans_refuse_leaks_and_unknown_models():
    with pytest.raises(ConfigError, match="both training and test"):
        StudyPlan("abn-small", ("abn_8_0", "abn_16_0"), ("abn_16_0",))
    with pytest.raises(ConfigError, match="unknown models"):
        StudyPlan("abn-small", ("abn_8_0",), ("abn_24_0",), models=("equivariant", "mlp"))
    plan = quick_plan()
    sizes = {e["name"]: e["n_atoms"] for e in load("abn-small").store.manifest}
    assert plan.train and plan.test and not set(plan.train) & set(plan.test)
    assert max(sizes[n] for n in plan.train) < min(sizes[n] for n in plan.test)


def test_error_by_distance_equals_a_loop_over_values():
    reference = load("abn-small")[0]
    rng = np.random.default_rng(0)
    prediction = dataclasses.replace(reference, h=reference.h + rng.normal(0, 0.02, reference.h.shape))
    edges = np.array([0.0, 0.5, 1.5, 2.5, 4.0, 8.0])
    got = error_by_distance(prediction, reference, edges)
    ref = align_reference(reference, prediction.edge_index, prediction.cell_shift, prediction.block_ptr)
    delta = prediction.h_unshifted[0] - ref.h
    c = best_shift(delta, ref.s)
    sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    for e, d in enumerate(prediction.pair_distances()):
        k = np.searchsorted(edges, d, side="right") - 1
        if 0 <= k < len(edges) - 1:
            block = slice(prediction.block_ptr[e], prediction.block_ptr[e + 1])
            sums[k] += np.abs(delta[block] - c * ref.s[block]).sum()
            counts[k] += prediction.block_ptr[e + 1] - prediction.block_ptr[e]
    np.testing.assert_array_equal(got["count"], counts)
    filled = counts > 0
    np.testing.assert_allclose(got["mae_meV"][filled], 1e3 * sums[filled] / counts[filled], rtol=1e-12)
    assert np.isnan(got["mae_meV"][~filled]).all()
    assert got["count"][0] > 0  # the onsite blocks sit in the first bin


def test_a_tiny_study_reports_what_its_checkpoints_measure(tmp_path):
    plan = dataclasses.replace(quick_plan(steps=2), models=("equivariant", "invariant"), val_every=1)
    results = run_study(plan, tmp_path / "study", docs=tmp_path / "docs", progress=False, log=lambda _: None)
    store = load(plan.source).store
    references = [store.read(n) for n in plan.test]
    size = str(references[0].n_atoms)
    for run in results["runs"]:
        model, _ = load_checkpoint(run["checkpoint"])
        independent = evaluate_structures(model, references).groups[size]["summary"]
        row = results["table"][run["model"]][size]
        for key in ("h_mae_shifted_meV", "h_mae_meV", "eig_window_refS_1e-2_meV", "eig_window_fullS_meV",
                    "ghosts_low", "ghosts_high", "gap_error_fullS_meV", "onsite_atom_rmse_meV"):
            assert row[key]["values"] == [pytest.approx(independent[key], rel=1e-9)], key
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert saved["table"] == json.loads(json.dumps(results["table"]))
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert markdown.index("ghost states") < markdown.index("H MAE") < markdown.index("ref. S 1e-2")  # headline first
    assert "†" not in markdown
    marked = study_markdown({**results, "plan": {**results["plan"], "transfer_min_atoms": 32}})
    assert f"| {size} atoms† |" in marked and "† cells of fewer than 32 atoms: no transfer test" in marked
    assert set(results["figures"]) == set(FIGURES)
    for path in results["figures"].values():
        assert (tmp_path / "docs" / path).stat().st_size > 10_000
        assert path in markdown
    # a second call reuses the finished trainings (resume at max_steps: no step taken)
    stamps = {r["checkpoint"]: (tmp_path / r["checkpoint"]).stat().st_mtime_ns for r in results["runs"]}
    run_study(plan, tmp_path / "study", docs=tmp_path / "docs", progress=False, log=lambda _: None)
    assert {c: (tmp_path / c).stat().st_mtime_ns for c in stamps} == stamps


@pytest.mark.slow
def test_the_quick_study_with_graph2mat(tmp_path):
    pytest.importorskip("graph2mat")
    plan = dataclasses.replace(quick_plan(steps=2), val_every=1)
    results = run_study(plan, tmp_path, progress=False, log=lambda _: None)
    assert set(results["table"]) == {"equivariant", "invariant", "graph2mat"}
    size = str(results["sizes"][-1])
    assert np.isfinite(results["table"]["graph2mat"][size]["h_mae_shifted_meV"]["mean"])
