"""Inference scaling, group ``inference_scaling``: H and S of aBN-like cells from 10^2 to 2x10^4
atoms (DZP basis, default model config), wall time per stage, peak RSS, nnz, a log-log fit and a
plot, and graph2mat on the same 1000-atom cell in the same run.

Cells (named in :mod:`benchmarks.scaling`): ``amorphous_bn`` fast-protocol 100- and 1000-atom
cells; larger ones tile the 1000-atom cell (a x b x c, atoms displaced by N(0, 0.02 Å)).  Every
round runs in a fresh process that warms up on the 100-atom cell, with ``max_memory`` set to the
memory goal (peak RSS <= output CSR + 2 GB), so cells whose whole-cell pass needs more are
streamed or chunked; 3 rounds per size (``extra_info["wall_s_rounds"]``; the other fields are
the last round's, whose peak RSS is the process's).

Checked before anything is timed, on the 100-atom cell: every mode (whole, streamed, chunked)
gives the model pipeline's matrices (:func:`hforge.models.predict_hamiltonian`, the reference)
to 1e-6 relative (a float32 model: the modes sum in other orders); after each size, its nnz is
the one the pair list gives.

Sizes: 100 and 1000 atoms (``HFORGE_BENCH_SIZE=small``, the default); ``full``: the goal set
``100,1000,2000,4000,8000,10000,20000`` (about 1.5 hours on 2 cores), as ``python -m benchmarks.scaling``
(benchmarks/results/inference_scaling/); ``HFORGE_BENCH_SIZES`` (comma-separated) overrides both.
Results (table.md, results.json, scaling.png) go to ``HFORGE_BENCH_OUT`` (default
``.benchmarks/inference_scaling``).

Run: ``.venv/bin/python -m pytest benchmarks/bench_inference_scaling.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._bench import interleaved, sizes, timed
from benchmarks.scaling import (
    GOAL,
    fit_loglog,
    graph2mat_seconds,
    measure_size,
    scaling_cell,
    scaling_model,
    scaling_table,
    write_results,
)

DEFAULT_SIZES = sizes([100, 1000], [100, 1000, 2000, 4000, 8000, 10000, 20000])
SIZES = tuple(int(s) for s in os.environ.get("HFORGE_BENCH_SIZES", ",".join(map(str, DEFAULT_SIZES))).split(","))
OUT = Path(os.environ.get("HFORGE_BENCH_OUT", ".benchmarks/inference_scaling"))
CACHE = Path(os.environ.get("HFORGE_BENCH_CACHE", Path.home() / ".cache" / "hforge" / "bench-scaling"))
ROUNDS = 3  # each a fresh process with its own warm-up: no warm-up round here
ROWS: dict[int, dict] = {}
BASELINE: dict[str, dict] = {}


def check_modes(path: str, cache: str) -> None:
    """Every prediction mode of the 100-atom cell against the model pipeline (see the module docstring)."""
    from hforge.infer import load
    from hforge.models import predict_hamiltonian

    predictor = load(path)
    atoms = scaling_cell(100, cache)[0]
    expected = predict_hamiltonian(predictor.model, atoms)
    for mode, parts in (("whole", None), ("streamed", 3), ("chunked", 2)):
        got = predictor.predict(atoms, mode=mode, parts=parts)
        for k in range(2):
            want = expected.tocsr(k)
            error = abs(got.tocsr(k) - want).max() / abs(want).max()
            assert error <= 1e-6, f"{mode} prediction differs from the model pipeline by {error:.2e} (relative)"


@pytest.fixture(scope="module")
def model():
    """The benchmark's model, its prediction modes first checked (:func:`check_modes`) in a child
    process: in this one the check would raise the peak RSS that every measuring process, forked
    from this one, reads as its own starting point (Linux's ru_maxrss)."""
    path = scaling_model(CACHE)
    code = f"import hforge, benchmarks.bench_inference_scaling as b; b.check_modes({str(path)!r}, {str(CACHE)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return path


@pytest.mark.parametrize("n_atoms", SIZES)
def test_inference_scaling(benchmark, model, n_atoms):
    benchmark.group = "inference_scaling"
    walls = []

    def run():
        row = measure_size(model, n_atoms, CACHE, max_memory=GOAL)
        assert "error" not in row, row["error"]
        walls.append(row["wall_s"])
        return row

    row = timed(benchmark, run, rounds=ROUNDS, warmup=0)
    from hforge.infer import load

    assert row["nnz"] == load(model).prepare(scaling_cell(n_atoms, CACHE)[0]).nnz
    benchmark.extra_info.update(
        {k: v for k, v in row.items() if k != "stages_s"}, **{f"{k} s": v for k, v in row["stages_s"].items()}
    )
    benchmark.extra_info["wall_s_rounds"] = walls
    ROWS[n_atoms] = row


@pytest.mark.skipif(1000 not in SIZES, reason="graph2mat is compared on the 1000-atom cell")
def test_graph2mat_1000_atoms(benchmark, model):
    """graph2mat's H of the 1000-atom cell (its own process per round, interleaved with HForge's
    prediction of the same cell); checked: it stored entries (random weights: no reference values)."""
    benchmark.group = "inference_scaling"
    rows = []

    def run():
        row = graph2mat_seconds(CACHE, 1000)
        assert "error" not in row, row["error"]
        assert row["nnz"] > 0
        rows.append(row)

    ratio = interleaved(benchmark, run, lambda: measure_size(model, 1000, CACHE, max_memory=GOAL), rounds=ROUNDS, warmup=0)
    benchmark.extra_info.update(rows[-1])
    BASELINE["graph2mat"] = {**rows[-1], "ratio": None if ratio is None else vars(ratio)}


def teardown_module() -> None:
    if not ROWS:
        return
    rows = [ROWS[n] for n in sorted(ROWS)]
    results = {"rows": rows, "fit": fit_loglog(rows), "fit_cpu": fit_loglog(rows, key="cpu_s")}
    if "graph2mat" in BASELINE and 1000 in ROWS:
        results["graph2mat"] = BASELINE["graph2mat"]
        results["speedup_vs_graph2mat"] = BASELINE["graph2mat"]["wall_s"] / ROWS[1000]["wall_s"]
        results["speedup_vs_graph2mat_interleaved"] = BASELINE["graph2mat"]["ratio"]
    write_results(results, OUT)
    print("\n" + scaling_table(results))
