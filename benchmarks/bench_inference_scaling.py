"""Inference scaling, group ``inference_scaling``: the default ``predict`` call on aBN-like cells of
10^3 to 2x10^4 atoms (DZP basis), wall and CPU time per stage, peak RSS, nnz, a log-log fit, the
goals of issue 19 checked, and graph2mat on the same 1000-atom cell in the same run.

Models (``HFORGE_BENCH_MODELS``, comma-separated; default ``operator,default``): the operator model
(``configs/abn-operator.yaml``, what the project ships) and the default
:class:`~hforge.models.ModelConfig` (per-entry heads), both with random weights
(:func:`benchmarks.scaling.scaling_model`), the bundled ``abn-dzp`` checkpoint, or checkpoint paths.  Cells (named in
:mod:`benchmarks.scaling`): ``amorphous_bn`` fast-protocol 100- (warm-up) and 1000-atom cells;
larger ones tile the 1000-atom cell (a x b x c, atoms displaced by N(0, 0.02 Å)).  Every round
runs in a fresh process that warms up on the 100-atom cell, with the default ``predict`` arguments
(its plan keeps peak RSS within the output CSR + 2 GB; ``HFORGE_BENCH_MAX_MEMORY=goal`` or bytes to
give a budget instead), float32 output (``HFORGE_BENCH_DTYPE``), torch and numba on
``HFORGE_BENCH_THREADS`` threads (default: the cores); 3 rounds per size
(``extra_info["wall_s_rounds"]``; the other fields are the last round's, whose peak RSS is the
process's), each beside the output floor of the same run (``output_floor_s``, ``floor_ratio``).

Checked before anything is timed, for each model on the 100-atom cell: every mode (whole,
streamed, chunked) gives the model pipeline's matrices (:func:`hforge.infer.predict_hamiltonian`,
the reference) to 1e-6 relative (a float32 model: the modes sum in other orders); after each size,
its nnz is the one the pair list gives.

Sizes: 1000 atoms (``HFORGE_BENCH_SIZE=small``, the default); ``full``: the goal set
``1000,2000,4000,8000,10000,20000`` (about 1.5 hours per model on a loaded 2-core machine), as
``python -m benchmarks.scaling`` (benchmarks/results/inference_scaling/); ``HFORGE_BENCH_SIZES``
(comma-separated) overrides both.  Device: ``HFORGE_BENCH_DEVICE`` (``cpu``; ``cuda`` for the GPU
rows, e.g. sizes up to 10^5 atoms, see scripts/gpu_check.sh).
Results (table.md, results.json, scaling.png) go to ``HFORGE_BENCH_OUT`` (default
``.benchmarks/inference_scaling``).

Run: ``.venv/bin/python -m pytest benchmarks/bench_inference_scaling.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from benchmarks._bench import interleaved, sizes, timed
from benchmarks.scaling import (
    GOAL,
    GOALS,
    code_label,
    fit_loglog,
    graph2mat_seconds,
    measure_size,
    model_path,
    output_floor_seconds,
    scaling_cell,
    scaling_tables,
    write_results,
)

DEFAULT_SIZES = sizes([1000], [1000, 2000, 4000, 8000, 10000, 20000])
SIZES = tuple(int(s) for s in os.environ.get("HFORGE_BENCH_SIZES", ",".join(map(str, DEFAULT_SIZES))).split(","))
MODELS = tuple(m for m in os.environ.get("HFORGE_BENCH_MODELS", "operator,default").split(",") if m)
DTYPE = os.environ.get("HFORGE_BENCH_DTYPE", "float32")
THREADS = int(os.environ["HFORGE_BENCH_THREADS"]) if os.environ.get("HFORGE_BENCH_THREADS") else None
DEVICE = os.environ.get("HFORGE_BENCH_DEVICE", "cpu")
_BUDGET = os.environ.get("HFORGE_BENCH_MAX_MEMORY", "none")
MAX_MEMORY = None if _BUDGET == "none" else GOAL if _BUDGET == GOAL else int(float(_BUDGET))
OUT = Path(os.environ.get("HFORGE_BENCH_OUT", ".benchmarks/inference_scaling"))
CACHE = Path(os.environ.get("HFORGE_BENCH_CACHE", Path.home() / ".cache" / "hforge" / "bench-scaling"))
ROUNDS = 3  # each a fresh process with its own warm-up: no warm-up round here
ROWS: dict[str, dict[int, dict]] = {}
BASELINE: dict[str, dict] = {}


def check_modes(model: str, cache: str, device: str) -> None:
    """Every prediction mode of the 100-atom cell against the model pipeline (see the module docstring)."""
    from hforge.infer import load, predict_hamiltonian

    predictor = load(model_path(model, cache), device=device)
    atoms = scaling_cell(100, cache)[0]
    expected = predict_hamiltonian(predictor.model, atoms)
    for mode, parts in (("whole", None), ("streamed", 3), ("chunked", 2)):
        got = predictor.predict(atoms, mode=mode, parts=parts)
        for k in range(2):
            want = expected.tocsr(k)
            error = abs(got.tocsr(k) - want).max() / abs(want).max()
            assert error <= 1e-6, f"{mode} prediction differs from the model pipeline by {error:.2e} (relative)"


def expected_nnz(model: str, n_atoms: int) -> int:
    """Entries of H of the scaling cell, counted independently of HForge's pair lists: ASE's
    neighbour list of the pairs with ``|r_ij| < r_i + r_j`` (the model's pair cut-offs), every
    directed pair a dense block, plus the onsite blocks."""
    from ase.neighborlist import neighbor_list

    from hforge.infer import load

    basis = load(model_path(model, CACHE), device="cpu").model.basis
    atoms = scaling_cell(n_atoms, CACHE)[0]
    n_orb = dict(zip(basis.symbols, basis.n_orbitals.tolist()))
    cutoffs = {(a, b): basis[a].cutoff + basis[b].cutoff for a in basis.symbols for b in basis.symbols}
    i, j = neighbor_list("ij", atoms, cutoffs)
    orbitals = np.array([n_orb[s] for s in atoms.get_chemical_symbols()])
    return int((orbitals[i] * orbitals[j]).sum() + (orbitals**2).sum())


@cache
def checked(model: str) -> str:
    """``model``, its prediction modes first checked (:func:`check_modes`) in a child process: in this
    one the check would raise the peak RSS that every measuring process, forked from this one, reads
    as its own starting point (Linux's ru_maxrss)."""
    code = (
        "import hforge, benchmarks.bench_inference_scaling as b; "
        f"b.check_modes({model!r}, {str(CACHE)!r}, {DEVICE!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return model


@pytest.mark.parametrize("n_atoms", SIZES)
@pytest.mark.parametrize("model", MODELS)
def test_inference_scaling(benchmark, model, n_atoms):
    benchmark.group = f"inference_scaling {DEVICE}"
    checked(model)
    walls = []

    def run():
        row = measure_size(model, n_atoms, CACHE, max_memory=MAX_MEMORY, device=DEVICE, dtype=DTYPE, threads=THREADS)
        assert "error" not in row, row["error"]
        walls.append(row["wall_s"])
        return row

    row = timed(benchmark, run, rounds=ROUNDS, warmup=0)
    assert row["nnz"] == expected_nnz(model, n_atoms)
    if DEVICE == "cpu":
        row["output_floor_s"] = output_floor_seconds(row["csr_bytes"])
        row["floor_ratio"] = row["wall_s"] / row["output_floor_s"]
    benchmark.extra_info.update(
        {k: v for k, v in row.items() if not k.startswith("stages")}, **{f"{k} s": v for k, v in row["stages_s"].items()},
        **{f"{k} cpu s": v for k, v in row["stages_cpu_s"].items()},
    )
    benchmark.extra_info["wall_s_rounds"] = walls
    ROWS.setdefault(model, {})[n_atoms] = row


@pytest.mark.skipif(1000 not in SIZES or DEVICE != "cpu", reason="graph2mat is compared on the 1000-atom cell, on the CPU")
def test_graph2mat_1000_atoms(benchmark):
    """graph2mat's H of the 1000-atom cell (its own process per round, interleaved with HForge's
    prediction of the same cell by the first model); checked: it stored entries (random weights:
    no reference values)."""
    benchmark.group = f"inference_scaling {DEVICE}"
    model = checked(MODELS[0])
    rows = []

    def run():
        row = graph2mat_seconds(CACHE, 1000, threads=THREADS)
        assert "error" not in row, row["error"]
        assert row["nnz"] > 0
        rows.append(row)

    def hforge() -> dict:
        return measure_size(model, 1000, CACHE, max_memory=MAX_MEMORY, device=DEVICE, dtype=DTYPE, threads=THREADS)

    ratio = interleaved(benchmark, run, hforge, rounds=ROUNDS, warmup=0)
    benchmark.extra_info.update(rows[-1])
    BASELINE["graph2mat"] = {**rows[-1], "ratio": None if ratio is None else vars(ratio)}


def teardown_module() -> None:
    if not ROWS:
        return
    runs = []
    for model, by_size in ROWS.items():
        rows = [by_size[n] for n in sorted(by_size)]
        fits = {"fit": fit_loglog(rows), "fit_cpu": fit_loglog(rows, key="cpu_s")}
        runs.append({"model": model, "device": DEVICE, "code": code_label(), "rows": rows, **fits})
    results = {"runs": runs, "goals": GOALS, "cpu_count": os.cpu_count(), "threads": THREADS, "dtype": DTYPE,
               "commit": code_label()}
    first = runs[0]["rows"]
    if "graph2mat" in BASELINE and any(r["n_atoms"] == 1000 for r in first):
        results["graph2mat"] = BASELINE["graph2mat"]
        ours = next(r for r in first if r["n_atoms"] == 1000)
        results["speedup_vs_graph2mat"] = BASELINE["graph2mat"]["wall_s"] / ours["wall_s"]
        results["speedup_vs_graph2mat_interleaved"] = BASELINE["graph2mat"]["ratio"]
    write_results(results, OUT)
    print("\n" + scaling_tables(results))
