"""Inference scaling, group ``inference_scaling``: the default ``predict`` call on aBN-like cells of
10^3 to 2x10^4 atoms (DZP basis), wall and CPU time per stage, peak RSS, nnz, a log-log fit, the
goals of issue 19 checked, and graph2mat on the same 1000-atom cell in the same run.

Models (``HFORGE_BENCH_MODELS``, comma-separated; default ``default,abn-dzp``): the default
:class:`~hforge.models.ModelConfig` (random weights; exact S and baseline H0, what ships) and the
bundled ``abn-dzp`` checkpoint (learned S, no baseline), or checkpoint paths.  Cells (named in
:mod:`hforge.infer.scaling`): ``amorphous_bn`` fast-protocol 100- (warm-up) and 1000-atom cells;
larger ones tile the 1000-atom cell (a x b x c, atoms displaced by N(0, 0.02 Å)).  Every size runs
in a fresh process after a warm-up, with the default ``predict`` arguments (its plan keeps peak RSS
within the output CSR + 2 GB; ``HFORGE_BENCH_MAX_MEMORY=goal`` or bytes to give a budget instead).
One round per size: these are minutes-long single runs, and the per-process peak RSS is the
measurement.

Sizes: ``HFORGE_BENCH_SIZES`` (comma-separated; default ``1000``, affordable in ``pytest
benchmarks``); the goal set is ``1000,2000,4000,8000,10000,20000`` (opt-in: about 30 min per model
on a loaded 2-core machine), as ``hforge bench scaling``.  Device: ``HFORGE_BENCH_DEVICE``
(``cpu``; ``cuda`` for the GPU rows, e.g. sizes up to 10^5 atoms, see scripts/gpu_check.sh).
Results (table.md, results.json, scaling.png) go to ``HFORGE_BENCH_OUT`` (default
``.benchmarks/inference_scaling``).

Run: ``.venv/bin/python -m pytest benchmarks/bench_inference_scaling.py --benchmark-only -s``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hforge.infer.scaling import (
    GOAL,
    GOALS,
    fit_loglog,
    graph2mat_seconds,
    measure_size,
    plot_scaling,
    scaling_tables,
)

SIZES = tuple(int(s) for s in os.environ.get("HFORGE_BENCH_SIZES", "1000").split(","))
MODELS = tuple(m for m in os.environ.get("HFORGE_BENCH_MODELS", "default,abn-dzp").split(",") if m)
DEVICE = os.environ.get("HFORGE_BENCH_DEVICE", "cpu")
_BUDGET = os.environ.get("HFORGE_BENCH_MAX_MEMORY", "none")
MAX_MEMORY = None if _BUDGET == "none" else GOAL if _BUDGET == GOAL else int(float(_BUDGET))
OUT = Path(os.environ.get("HFORGE_BENCH_OUT", ".benchmarks/inference_scaling"))
CACHE = Path(os.environ.get("HFORGE_BENCH_CACHE", Path.home() / ".cache" / "hforge" / "bench-scaling"))
ROWS: dict[str, dict[int, dict]] = {}
BASELINE: dict[str, dict] = {}


@pytest.mark.parametrize("n_atoms", SIZES)
@pytest.mark.parametrize("model", MODELS)
def test_inference_scaling(benchmark, model, n_atoms):
    benchmark.group = f"inference_scaling {DEVICE}"
    row = benchmark.pedantic(
        lambda: measure_size(model, n_atoms, CACHE, max_memory=MAX_MEMORY, device=DEVICE), rounds=1, iterations=1
    )
    assert "error" not in row, row["error"]
    benchmark.extra_info.update(
        {k: v for k, v in row.items() if not k.startswith("stages")}, **{f"{k} s": v for k, v in row["stages_s"].items()},
        **{f"{k} cpu s": v for k, v in row["stages_cpu_s"].items()},
    )
    ROWS.setdefault(model, {})[n_atoms] = row


@pytest.mark.skipif(1000 not in SIZES or DEVICE != "cpu", reason="graph2mat is compared on the 1000-atom cell, on the CPU")
def test_graph2mat_1000_atoms(benchmark):
    benchmark.group = f"inference_scaling {DEVICE}"
    row = benchmark.pedantic(lambda: graph2mat_seconds(CACHE, 1000), rounds=1, iterations=1)
    assert "error" not in row, row["error"]
    benchmark.extra_info.update(row)
    BASELINE["graph2mat"] = row


def teardown_module() -> None:
    if not ROWS:
        return
    runs = []
    for model, by_size in ROWS.items():
        rows = [by_size[n] for n in sorted(by_size)]
        runs.append({"model": model, "device": DEVICE, "rows": rows, "fit": fit_loglog(rows), "fit_cpu": fit_loglog(rows, key="cpu_s")})
    results = {"runs": runs, "goals": GOALS, "cpu_count": os.cpu_count()}
    first = runs[0]["rows"]
    if "graph2mat" in BASELINE and any(r["n_atoms"] == 1000 for r in first):
        results["graph2mat"] = BASELINE["graph2mat"]
        results["speedup_vs_graph2mat"] = BASELINE["graph2mat"]["wall_s"] / next(r for r in first if r["n_atoms"] == 1000)["wall_s"]
    OUT.mkdir(parents=True, exist_ok=True)
    table = scaling_tables(results)
    (OUT / "table.md").write_text(table)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    if len(first) >= 2:
        plot_scaling(first, runs[0]["fit"], OUT / "scaling.png")
    print("\n" + table)
