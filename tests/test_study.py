"""The transfer study (hforge/train/study.py): plans, the distance-binned errors, a tiny study whose
table must equal an independent evaluation of the checkpoints it trained, test-only cells from outside
the training store (refused when trained on, predicted through the Predictor, marked, timed against
SIESTA's log), and the learning curve on nested subsets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hforge.datasets import load
from hforge.errors import ConfigError
from hforge.metrics.blocks import align_reference, best_shift
from hforge.models import load_checkpoint
from hforge.train.evaluation import evaluate_structures
from hforge.train.study import (
    FIGURES,
    HeldOutCell,
    StudyPlan,
    error_by_distance,
    external_cells,
    learning_curve,
    nested_subsets,
    quick_plan,
    run_study,
    siesta_cost,
    study_markdown,
)


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
    assert set(results["figures"]) == set(FIGURES) - {"speed"} and results["speed"] is None  # no Predictor given
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


# ---- test-only cells, SIESTA against HForge, the learning curve -------------------------------------------------

SIZE_MIX = {**{f"a8_{k}": 8 for k in range(7)}, **{f"a16_{k}": 16 for k in range(5)},
            **{f"a24_{k}": 24 for k in range(3)}, **{f"a32_{k}": 32 for k in range(20)}}  # the full plan's training mix


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_nested_subsets_nest_and_keep_the_size_mix(seed):
    fractions = (1 / 8, 1 / 4, 1 / 2, 1.0)
    subsets = nested_subsets(SIZE_MIX, fractions, seed)
    assert subsets == nested_subsets(SIZE_MIX, fractions, seed)  # deterministic
    for smaller, larger in zip(subsets, subsets[1:]):
        assert set(smaller) < set(larger)
    assert set(subsets[-1]) == set(SIZE_MIX)
    for fraction, subset in zip(fractions, subsets):
        assert len(subset) == round(fraction * len(SIZE_MIX))
        for size in (8, 16, 24, 32):  # each size's share of the subset, within one cell
            share = len(subset) * sum(a == size for a in SIZE_MIX.values()) / len(SIZE_MIX)
            assert abs(sum(SIZE_MIX[n] == size for n in subset) - share) < 1, (fraction, size)
    for m, prefix in enumerate(nested_subsets(SIZE_MIX, [k / len(SIZE_MIX) for k in range(1, 36)], seed), 1):
        assert len(prefix) == m
        for size in (8, 16, 24, 32):  # every prefix, not only the fractions asked for
            assert abs(sum(SIZE_MIX[n] == size for n in prefix) - m * sum(a == size for a in SIZE_MIX.values()) / 35) < 1
    assert nested_subsets(SIZE_MIX, fractions, seed + 100)[0] != subsets[0]
    assert nested_subsets({"x": 8, "y": 16}, (0.1,)) in ([("x",)], [("y",)])  # at least one cell
    with pytest.raises(ConfigError, match="fractions"):
        nested_subsets(SIZE_MIX, (0.0, 1.0))


def test_test_only_cells_that_the_plan_trains_on_are_refused(abn_dir, tmp_path):
    from hforge.datasets import bundled_path
    from hforge.io import write_store

    plan = quick_plan(external=[bundled_path("abn-small")])
    with pytest.raises(ConfigError, match="test-only cell abn_8_0 .* is a training cell"):
        external_cells(plan)
    with pytest.raises(ConfigError, match="pass load_predictor"):
        run_study(plan, tmp_path, progress=False, log=lambda _: None)
    trained = load("abn-small").store.read("abn_16_0")
    renamed = write_store(tmp_path / "renamed.h5", [("renamed", trained, "sha")], basis=trained.basis)
    with pytest.raises(ConfigError, match="test-only cell renamed .* is the training cell abn_16_0"):
        external_cells(quick_plan(external=[renamed]))
    run = abn_dir / "runs" / "abn_32_0"
    with pytest.raises(ConfigError, match="abn_32_0 comes twice"):
        external_cells(quick_plan(external=[run, run]))
    cell, = external_cells(quick_plan(external=[run]))
    assert (cell.name, cell.data.n_atoms, cell.origin, cell.external) == ("abn_32_0", 32, str(run), True)
    # a folder whose finished training is on other cells is refused, never reused for another subset
    from hforge.files import write_json
    from hforge.train.study import _train

    (tmp_path / "other").mkdir()
    write_json(tmp_path / "other" / "trained.json", {"steps": 60, "checkpoint": "x", "train_s": 1, "train": ["abn_8_0"]})
    with pytest.raises(ConfigError, match=r"holds a training on other cells \(with none more, without \['abn_16_0', "):
        _train(quick_plan(), "invariant", 0, tmp_path / "other", False)
    # a compact store of the same run (as a campaign writes): S computed, the run's log still found for its cost
    from hforge.io import convert
    from hforge.ops.two_centre import overlap_blocks

    compact = tmp_path / "compact.h5"
    convert([run], compact, basis=abn_dir / "basis", overlap=overlap_blocks, progress=False)
    stored, = external_cells(quick_plan(external=[compact]))
    assert (stored.name, stored.origin, stored.provenance["siesta"]) == ("abn_32_0", str(compact), "master-post-4.1-268")
    np.testing.assert_allclose(stored.data.s, cell.data.s, atol=1e-6)
    assert siesta_cost(stored)["wall_s"] == 526.174


@pytest.fixture(scope="module")
def study_with_a_test_only_cell(tmp_path_factory, abn_dir):
    """``hforge study quick --test abn_32_0`` (the invariant model, 2 steps) with a dense limit of 400 orbitals, so
    that the 32-atom cell (416 orbitals) stands for a cell above it (the 512-atom one: 6656 > 6000)."""
    from typer.testing import CliRunner

    from hforge.cli.main import app
    from hforge.train import evaluation

    root = tmp_path_factory.mktemp("study")
    run = abn_dir / "runs" / "abn_32_0"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "MAX_EIGEN_ORBITALS", 400)
        result = CliRunner().invoke(app, ["study", "quick", "--steps", "2", "--model", "invariant", "--test", str(run),
                                          "--out", str(root / "out"), "--docs", str(root / "docs"), "--no-progress"])
    assert result.exit_code == 0, result.output
    return root, run


def test_test_only_cells_go_through_the_predictor_and_are_marked_and_timed(study_with_a_test_only_cell):
    from hforge.io import read_hs

    root, run = study_with_a_test_only_cell
    results = json.loads((root / "out" / "results.json").read_text())
    assert results["external_cells"] == {"abn_32_0": str(run)} and results["test_cells"]["abn_32_0"] == 32
    assert results["skipped"] == {"32": "more than 400 orbitals"}
    # the Predictor's route (sisl H back to the model's pairs) measures what one model pass does
    model, _ = load_checkpoint(results["runs"][0]["checkpoint"])
    reference = read_hs(run / "abn_32_0.TSHS", load("abn-small").basis)
    independent = evaluate_structures(model, [reference], eigenvalues=False).structures[0]["summary"]
    got = results["runs"][0]["structures"]["abn_32_0"]
    for key in ("h_mae_shifted_meV", "h_mae_meV", "onsite_atom_rmse_meV", "h_hopping_meV", "s_mae"):
        assert got[key] == pytest.approx(independent[key], rel=1e-6), key
    assert got["eig_window_fullS_meV"] is None  # above the (patched) dense limit: NaN, null in strict JSON
    markdown = (root / "docs" / "results.md").read_text()
    assert "| 24 atoms | 32 atoms‡§ |" in markdown and "abn_32_0 (32 atoms, test-only ‡)" in markdown
    assert f"‡ test-only cells from outside the training store, never trained or validated on: abn_32_0 (`{run}`)" in markdown
    assert "§ 32 atoms: full-S spectrum not computed (more than 400 orbitals)" in markdown
    assert "| invariant | 3 | skipped§ |" in markdown.split("### ghost states above")[1]
    assert f"--test {run}" in markdown  # the command that reproduces it
    # SIESTA's wall and CPU time from the shared run's log, against the timed predictions
    speed = results["speed"]
    assert (speed["cell"], speed["n_atoms"], speed["n_orbitals"]) == ("abn_32_0", 32, 416)
    siesta = speed["siesta"]
    assert (siesta["wall_s"], siesta["cpu_s"], siesta["processes"]) == (526.174, 323.301, 1)
    assert siesta["source"] == str(run / "abn_32_0.out.gz") and siesta["siesta"] == "master-post-4.1-268"
    timed = speed["hforge"]["invariant"]
    assert 0 < timed["wall_s"] == min(timed["walls_s"]) and timed["mode"] == "whole"
    assert speed["speedup_wall"]["invariant"] == pytest.approx(526.174 / timed["wall_s"])
    assert speed["dos"].startswith("Γ, full S")
    assert "## SIESTA against HForge on the largest test cell: abn_32_0 (32 atoms, 416 orbitals)" in markdown
    assert "wall 526.2 s, CPU 323.3 s" in markdown
    for path in results["figures"].values():
        assert (root / "docs" / path).stat().st_size > 10_000
    assert set(results["figures"]) == set(FIGURES)


def test_the_learning_curve_trains_nested_subsets_in_the_studys_folders(study_with_a_test_only_cell):
    from typer.testing import CliRunner

    from hforge.cli.main import app
    from hforge.infer import load as load_predictor

    root, _ = study_with_a_test_only_cell
    out = root / "out"
    plan = dataclasses.replace(quick_plan(steps=2), models=("invariant",))
    fractions = (0.5, 0.6, 1.0)  # of 3 cells: 2 (rounded from 1.5), 2 (1.8; the same subset, trained once) and 3
    curve = learning_curve(plan, out, fractions=fractions, models=("invariant",), docs=root / "docs", progress=False,
                           log=lambda _: None, load_predictor=lambda c: load_predictor(c, device="cpu"))
    sizes = {e["name"]: e["n_atoms"] for e in load("abn-small").store.manifest}
    subsets = nested_subsets({n: sizes[n] for n in plan.train}, fractions, 0)
    assert [s["cells"] for s in curve["subsets"]] == [list(s) for s in subsets]
    points = curve["points"]
    assert [p["cells"] for p in points] == [2, 3] and [p["fractions"] for p in points] == [[0.5, 0.6], [1.0]]
    assert [Path(p["folder"]).name for p in points] == ["invariant-s0-2of3-pick0", "invariant-s0"]  # the whole set:
    # the study's own training
    study = json.loads((out / "results.json").read_text())["runs"][0]
    assert study["structures"]["abn_24_0"]["h_mae_shifted_meV"] == pytest.approx(points[-1]["h_mae_shifted_meV"],
                                                                                   rel=1e-9)
    assert list(curve["held_out"]) == ["abn_24_0"]  # the plan's own test cells, not the test-only ones
    assert list(points[-1]["per_cell"]) == ["abn_24_0"]
    assert points[-1]["per_cell"]["abn_24_0"]["ghosts"] == points[-1]["ghosts"]
    for key in ("h_mae_shifted_meV", "onsite_atom_rmse_meV"):  # two sizes: no claim about the exponent
        fit = curve["fits"]["invariant"][key]
        assert (fit["n_points"], fit["n_sizes"], fit["determined"], fit["goal"]["n"]) == (2, 2, False, None)
        assert "2 sizes (at least 3 are needed" in fit["note"]
    markdown = (root / "docs" / "results.md").read_text()
    assert markdown.index("# Transfer study") < markdown.index("## Learning curve")  # one report, both parts
    assert f"| invariant | 0.5, 0.6 | 2 | {sum(sizes[n] for n in subsets[0])} |" in markdown
    assert "**not determined**, no goal estimate (2 sizes" in markdown
    assert (root / "docs" / curve["figure"]).stat().st_size > 10_000
    # the CLI finds every training done (no step taken) and writes the same curve
    stamps = {p["folder"]: (Path(p["folder"]) / "last.pt").stat().st_mtime_ns for p in points}
    result = CliRunner().invoke(app, ["study", "quick", "--steps", "2", "--model", "invariant", "--curve",
                                      "--fraction", "0.5", "--fraction", "0.6", "--fraction", "1", "--out", str(out),
                                      "--docs", str(root / "docs"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert {f: (Path(f) / "last.pt").stat().st_mtime_ns for f in stamps} == stamps
    again = json.loads((out / "curve.json").read_text())
    assert [p["h_mae_shifted_meV"] for p in again["points"]] == [pytest.approx(p["h_mae_shifted_meV"]) for p in points]


def test_siesta_cost_reads_the_log_beside_the_run_or_the_campaign_record(abn_dir, tmp_path):
    trained = load("abn-small").store.read("abn_24_0")
    logged = dataclasses.replace(trained, source=str(abn_dir / "runs" / "abn_24_0" / "abn_24_0.TSHS"))
    cost = siesta_cost(HeldOutCell("abn_24_0", logged))
    assert (cost["wall_s"], cost["cpu_s"], cost["processes"], cost["note"]) == (276.457, 185.495, 1, "")
    record = {"siesta_elapsed_s": 5000.0, "siesta_version": "v", "attempts": 3, "interrupted": 2}
    moved = dataclasses.replace(trained, source=str(tmp_path / "gone" / "abn_24_0.TSHS"))  # the run folder is elsewhere
    cost = siesta_cost(HeldOutCell("abn_24_0", moved, "cells.h5", {"record": record}))
    assert (cost["source"], cost["wall_s"], cost["cpu_s"], cost["siesta"]) == ("campaign record", 5000.0, None, "v")
    assert "the last of 3 attempts (2 interrupted" in cost["note"]
    cost = siesta_cost(HeldOutCell("abn_24_0", moved))
    assert cost["wall_s"] is None and cost["note"] == "no SIESTA log or campaign record of this cell found"
