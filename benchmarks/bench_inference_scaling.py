"""Inference scaling, group ``inference_scaling``: H and S of aBN-like cells from 10^2 to 2x10^4
atoms (DZP basis, default model config), wall time per stage, peak RSS, nnz, a log-log fit and a
plot, and graph2mat on the same 1000-atom cell in the same run.

Cells (named in :mod:`benchmarks.scaling`): ``amorphous_bn`` fast-protocol 100- and 1000-atom
cells; larger ones tile the 1000-atom cell (a x b x c, atoms displaced by N(0, 0.02 Å)).  Every
size runs in a fresh process after a warm-up, with ``max_memory`` set to the memory goal (peak
RSS <= output CSR + 2 GB), so cells whose whole-cell pass needs more are streamed or chunked.  One round per size: these
are minutes-long single runs, and the per-process peak RSS is the measurement.

Sizes: ``HFORGE_BENCH_SIZES`` (comma-separated; default 100,1000,2000,4000); the full goal set is
``100,1000,2000,4000,8000,10000,20000`` (about half an hour on 2 cores), as ``python -m benchmarks.scaling``.
Results (table.md, results.json, scaling.png) go to ``HFORGE_BENCH_OUT`` (default
``.benchmarks/inference_scaling``).

Run: ``.venv/bin/python -m pytest benchmarks/bench_inference_scaling.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.scaling import GOAL, fit_loglog, graph2mat_seconds, measure_size, scaling_model, scaling_table, write_results

SIZES = tuple(int(s) for s in os.environ.get("HFORGE_BENCH_SIZES", "100,1000,2000,4000").split(","))
OUT = Path(os.environ.get("HFORGE_BENCH_OUT", ".benchmarks/inference_scaling"))
CACHE = Path(os.environ.get("HFORGE_BENCH_CACHE", Path.home() / ".cache" / "hforge" / "bench-scaling"))
ROWS: dict[int, dict] = {}
BASELINE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def model():
    return scaling_model(CACHE)


@pytest.mark.parametrize("n_atoms", SIZES)
def test_inference_scaling(benchmark, model, n_atoms):
    benchmark.group = "inference_scaling"
    row = benchmark.pedantic(lambda: measure_size(model, n_atoms, CACHE, max_memory=GOAL), rounds=1, iterations=1)
    assert "error" not in row, row["error"]
    benchmark.extra_info.update(
        {k: v for k, v in row.items() if k != "stages_s"}, **{f"{k} s": v for k, v in row["stages_s"].items()}
    )
    ROWS[n_atoms] = row


@pytest.mark.skipif(1000 not in SIZES, reason="graph2mat is compared on the 1000-atom cell")
def test_graph2mat_1000_atoms(benchmark):
    benchmark.group = "inference_scaling"
    row = benchmark.pedantic(lambda: graph2mat_seconds(CACHE, 1000), rounds=1, iterations=1)
    assert "error" not in row, row["error"]
    benchmark.extra_info.update(row)
    BASELINE["graph2mat"] = row


def teardown_module() -> None:
    if not ROWS:
        return
    rows = [ROWS[n] for n in sorted(ROWS)]
    results = {"rows": rows, "fit": fit_loglog(rows), "fit_cpu": fit_loglog(rows, key="cpu_s")}
    if "graph2mat" in BASELINE and 1000 in ROWS:
        results["graph2mat"] = BASELINE["graph2mat"]
        results["speedup_vs_graph2mat"] = BASELINE["graph2mat"]["wall_s"] / ROWS[1000]["wall_s"]
    write_results(results, OUT)
    print("\n" + scaling_table(results))
