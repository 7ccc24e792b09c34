"""Inference scaling measurements: aBN-like cells of 10^2 ... 2x10^4 atoms, one fresh process per size.

Cells: a 100-atom and a 1000-atom cell from :func:`~hforge.structures.amorphous_bn` (``"fast"``
protocol, density 2.2 g/cm^3, cached under ``cache_dir``); larger cells are the 1000-atom cell
tiled ``a x b x c`` times with every atom displaced by a random 0.02 Å (Gaussian per component),
so that no two tiles are identical.  Every size runs in its own process (peak RSS is a per-process
high-water mark) after a warm-up prediction of the 100-atom cell (compilation, caches).  Models:
``"default"``, the default :class:`~hforge.models.ModelConfig` on the DZP basis (random weights:
the cost does not depend on them; exact S, baseline H0), or a checkpoint / bundled name
(``"abn-dzp"``).  What is measured is the default ``predict`` call (the mode its plan picks),
unless a ``max_memory`` is given; on ``device="cuda"`` the model, kernels and assembly run on the
GPU.  ``benchmarks/bench_inference_scaling.py`` (pytest-benchmark) and this module's command line
run it, from the repository root::

    python -m benchmarks.scaling --sizes 1000,2000,4000,8000,10000,20000 --model default,abn-dzp --out hforge-bench-scaling

Goals (issue 19; :data:`GOALS`): 10^4 atoms in at most 20 s wall, peak RSS at most the output CSR
+ 2 GB, log-log slope of the wall time at most 1.1 from 10^3 to 2x10^4 atoms.

It is a measurement harness, not part of the library: it imports :mod:`hforge` (and graph2mat,
the ``bench`` extra, for the baseline); nothing in :mod:`hforge` imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hforge.files import atomic_write, write_json

__all__ = [
    "DEFAULT_SIZES",
    "GOAL",
    "GOALS",
    "TILE_NOISE",
    "fit_loglog",
    "goals_text",
    "graph2mat_seconds",
    "main",
    "output_floor_seconds",
    "measure_size",
    "plot_scaling",
    "run_scaling",
    "scaling_cell",
    "scaling_model",
    "scaling_table",
    "scaling_tables",
    "write_results",
]

DEFAULT_SIZES = (1000, 2000, 4000, 8000, 10000, 20000)

#: The targets the table checks: wall seconds at 10^4 atoms, peak RSS above the output CSR (bytes),
#: log-log slope of the wall time from 10^3 atoms on.
GOALS = {"wall_s_at_10000": 20.0, "rss_above_csr_bytes": 2 * 10**9, "slope": 1.1}

#: Å, standard deviation of the displacement of tiled atoms.
TILE_NOISE = 0.02


def _tiles(factor: int) -> tuple[int, int, int]:
    """The most cubic ``a x b x c = factor``."""
    best = (factor, 1, 1)
    for a in range(1, factor + 1):
        for b in range(1, factor // a + 1):
            if factor % (a * b) == 0:
                c = factor // (a * b)
                if max(a, b, c) - min(a, b, c) < max(best) - min(best):
                    best = tuple(sorted((a, b, c), reverse=True))
    return best


def scaling_cell(n_atoms: int, cache_dir: str | os.PathLike) -> tuple[Any, str]:
    """``(ase.Atoms, how it was made)`` of ``n_atoms`` (<= 1000, or a multiple of 1000)."""
    import ase.io

    from hforge.structures import amorphous_bn

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    base_atoms = n_atoms if n_atoms <= 1000 else 1000
    if n_atoms > 1000 and n_atoms % 1000:
        raise ValueError(f"{n_atoms} atoms: above 1000, sizes are tiles of the 1000-atom cell")
    path = cache_dir / f"abn-fast-{base_atoms}-seed0.traj"
    if not path.is_file():
        atoms = amorphous_bn(base_atoms, protocol="fast", seed=0, progress=False)
        with atomic_write(path, None) as tmp:
            atoms.write(tmp)
    atoms = ase.io.read(path)
    how = f"amorphous_bn({base_atoms}, protocol='fast', seed=0)"
    if n_atoms > 1000:
        tiles = _tiles(n_atoms // 1000)
        atoms = atoms.repeat(tiles)
        atoms.positions += np.random.default_rng(n_atoms).normal(scale=TILE_NOISE, size=atoms.positions.shape)
        how += f" tiled {tiles[0]}x{tiles[1]}x{tiles[2]}, atoms displaced by N(0, {TILE_NOISE} Å)"
    return atoms, how


def scaling_model(cache_dir: str | os.PathLike) -> Path:
    """Checkpoint of the default model config on the bundled DZP basis (seed 0), cached."""
    import torch

    from hforge.datasets import load
    from hforge.models import ModelConfig, build_model, save_model

    path = Path(cache_dir) / "default-model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        torch.manual_seed(0)
        save_model(build_model(ModelConfig(), load("abn-small").basis), path)
    return path


#: ``max_memory`` of the memory goal: the output CSR + 2 GB of peak RSS in all, i.e. CSR + 2 GB minus
#: what the process holds after its warm-up (Python, torch, the model).
GOAL = "goal"
GOAL_EXTRA_BYTES = 2 * 10**9


def _measure(
    model: str, n_atoms: int, cache_dir: str, max_memory: int | str | None, dtype: str, device: str = "cpu"
) -> dict[str, Any]:
    """In this process: warm up on the 100-atom cell, then predict ``n_atoms``; the report as a dict."""
    import torch

    from hforge.infer import load, peak_rss_bytes

    torch.set_num_threads(os.cpu_count() or 1)
    predictor = load(str(scaling_model(cache_dir)) if model == "default" else model, device=device)
    predictor.predict(scaling_cell(100, cache_dir)[0])
    atoms, how = scaling_cell(n_atoms, cache_dir)
    rss_before = peak_rss_bytes()
    if max_memory == GOAL:
        max_memory = predictor.prepare(atoms).csr_bytes(np.dtype(dtype)) + GOAL_EXTRA_BYTES - rss_before
    load_before = os.getloadavg()[0]
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    hamiltonian = predictor.predict(atoms, max_memory=max_memory, dtype=np.dtype(dtype))
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    report = predictor.last_report
    row = {
        "model": model,
        "device": report.device,
        "cpu_s": cpu,
        "threads": report.torch_threads,
        "load_average": [load_before, os.getloadavg()[0]],
        "n_atoms": n_atoms,
        "structure": how,
        "wall_s": wall,
        "stages_s": report.seconds,
        "stages_cpu_s": report.cpu_seconds,
        "mode": report.mode,
        "n_parts": report.n_parts,
        "nnz": report.nnz,
        "n_orbitals": int(hamiltonian.no),
        "csr_bytes": report.csr_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_before_bytes": rss_before,
        "dtype": dtype,
        "max_memory": max_memory,
    }
    if report.device.startswith("cuda"):
        row["peak_device_bytes"] = torch.cuda.max_memory_allocated()
        row["device_name"] = torch.cuda.get_device_name()
    return row


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads), s."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_size(
    model: str | os.PathLike, n_atoms: int, cache_dir: str | os.PathLike, *, max_memory: int | str | None = None,
    dtype: str = "float64", device: str = "cpu", timeout: float = 3600,
) -> dict[str, Any]:
    """:func:`_measure` in a fresh process (its own peak RSS)."""
    call = f"_measure({str(model)!r}, {n_atoms}, {str(cache_dir)!r}, {max_memory!r}, {dtype!r}, {device!r})"
    return _in_fresh_process(call, n_atoms, timeout)


#: The repository root: the fresh processes import this module as ``benchmarks.scaling`` from there.
_ROOT = Path(__file__).resolve().parents[1]


def _in_fresh_process(call: str, n_atoms: int, timeout: float) -> dict[str, Any]:
    """The dict returned by ``call`` (an expression on this module's names) in a new Python process."""
    code = (
        f"import json, sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, {str(_ROOT)!r}); import hforge; "
        "from benchmarks.scaling import *; from benchmarks.scaling import _measure, _graph2mat_run, _output_floor_run; "
        f"print('RESULT', json.dumps({call}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"n_atoms": n_atoms, "error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT ") :])


def _output_floor_run(n_bytes: int) -> dict[str, Any]:
    """Seconds to write ``n_bytes`` (an output CSR's size) into fresh memory with numpy, in this process."""
    start = time.perf_counter()
    written = np.full(n_bytes // 8, 1.0)
    return {"n_bytes": n_bytes, "floor_s": time.perf_counter() - start, "checksum": float(written[:: 1 << 20].sum())}


def output_floor_seconds(n_bytes: int, timeout: float = 3600) -> float:
    """The memory floor of a prediction whose output CSR takes ``n_bytes``: seconds for numpy to
    write that many bytes into freshly allocated memory, in a fresh process (what any prediction
    pays at least to produce its output; on a VM, fresh memory includes the host's page faults)."""
    row = _in_fresh_process(f"_output_floor_run({int(n_bytes)})", 0, timeout)
    return float(row.get("floor_s", float("nan")))


def _graph2mat_run(cache_dir: str, n_atoms: int) -> dict[str, Any]:
    """graph2mat 0.0.x (MACE + E3nnGraph2Mat, H only) on the same cell and basis, in this process."""
    import sisl
    import torch

    from hforge._compat import import_mace

    import_mace()  # e3nn and mace in the context their imports need (hforge/_compat.py)
    from e3nn import o3
    from graph2mat import BasisTableWithEdges, MatrixDataProcessor, PointBasis
    from graph2mat.models import MatrixMACE
    from mace.modules import MACE, RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

    from hforge.datasets import load
    from hforge.infer import peak_rss_bytes

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    species = load("abn-small").basis.to_sisl()
    table = BasisTableWithEdges([PointBasis.from_sisl_atom(a) for a in species])
    processor = MatrixDataProcessor(basis_table=table, symmetric_matrix=True, sub_point_matrix=False, out_matrix="hamiltonian")
    hidden = o3.Irreps("16x0e+16x1o+16x2e")  # as HForge's default trunk: 16 channels, l <= 2
    mace = MACE(
        r_max=4.5, num_bessel=8, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=RealAgnosticResidualInteractionBlock, interaction_cls_first=RealAgnosticInteractionBlock,
        num_interactions=2, num_elements=2, hidden_irreps=hidden, MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(2), avg_num_neighbors=40.0, atomic_numbers=[5, 7], correlation=2,
        gate=torch.nn.functional.silu,
    )
    model = MatrixMACE(mace, unique_basis=table, readout_per_interaction=True, symmetric=True, edge_hidden_irreps=hidden).eval()
    by_symbol = {a.tag: a for a in species}

    def geometry_of(n: int) -> Any:
        atoms = scaling_cell(n, cache_dir)[0]
        species = [by_symbol[s] for s in atoms.get_chemical_symbols()]
        return sisl.Geometry(atoms.positions, atoms=species, lattice=atoms.cell.array)

    processor.torch_predict(model, geometry_of(100))  # warm-up, as HForge's
    geometry = geometry_of(n_atoms)
    load_before = os.getloadavg()[0]
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    matrix = processor.torch_predict(model, geometry)
    return {
        "n_atoms": n_atoms, "wall_s": time.perf_counter() - start, "cpu_s": _cpu_seconds() - cpu_start,
        "load_average": [load_before, os.getloadavg()[0]], "nnz": int(matrix.nnz), "peak_rss_bytes": peak_rss_bytes(),
        "what": "graph2mat MatrixMACE(E3nnGraph2Mat), H only, torch_predict after a warm-up",
    }


def graph2mat_seconds(cache_dir: str | os.PathLike, n_atoms: int = 1000, timeout: float = 3600) -> dict[str, Any]:
    """graph2mat's prediction of the ``n_atoms`` cell (H only) in a fresh process."""
    return _in_fresh_process(f"_graph2mat_run({str(cache_dir)!r}, {n_atoms})", n_atoms, timeout)


def fit_loglog(rows: Sequence[dict[str, Any]], *, min_atoms: int = 1000, key: str = "wall_s") -> dict[str, float]:
    """Least-squares ``log t = slope log N + c`` of ``row[key]`` (wall or CPU seconds) over the rows
    with at least ``min_atoms`` atoms."""
    points = [(r["n_atoms"], r[key]) for r in rows if key in r and r["n_atoms"] >= min_atoms]
    if len(points) < 2:
        return {"slope": float("nan"), "intercept": float("nan"), "min_atoms": min_atoms}
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope": float(slope), "intercept": float(intercept), "min_atoms": min_atoms}


def plot_scaling(rows: Sequence[dict[str, Any]], fit: dict[str, float], path: str | os.PathLike) -> Path:
    """Log-log wall time per stage and peak RSS against atoms, with the fit; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "wall_s" in r]
    atoms = np.array([r["n_atoms"] for r in rows])
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_time.loglog(atoms, [r["wall_s"] for r in rows], "ko-", label="total (wall)")
    with_cpu = [r for r in rows if "cpu_s" in r]
    if with_cpu:
        ax_time.loglog(
            [r["n_atoms"] for r in with_cpu], [r["cpu_s"] for r in with_cpu], "ks:", mfc="none", label="CPU s (both threads)"
        )
    with_floor = [r for r in rows if "output_floor_s" in r]
    if with_floor:
        ax_time.loglog([r["n_atoms"] for r in with_floor], [max(r["output_floor_s"], 1e-3) for r in with_floor], "x-",
                       color="grey", label="output floor (numpy writes the CSR bytes)")
    for stage in rows[0]["stages_s"]:
        ax_time.loglog(atoms, [max(r["stages_s"][stage], 1e-3) for r in rows], ".--", label=stage)
    if np.isfinite(fit["slope"]):
        grid = np.array([fit["min_atoms"], atoms.max()])
        ax_time.loglog(grid, np.exp(fit["intercept"]) * grid ** fit["slope"], "r:", label=f"fit, slope {fit['slope']:.2f}")
    ax_time.axhline(GOALS["wall_s_at_10000"], color="grey", lw=0.5)
    ax_time.set(xlabel="atoms", ylabel="wall time (s)", title=f"H and S prediction ({rows[0].get('device', 'cpu')})")
    ax_time.legend(fontsize=7)
    ax_mem.loglog(atoms, [r["peak_rss_bytes"] / 1e9 for r in rows], "ko-", label="peak RSS")
    ax_mem.loglog(atoms, [r["csr_bytes"] / 1e9 for r in rows], "b.--", label="output CSR")
    ax_mem.loglog(atoms, [r["csr_bytes"] / 1e9 + 2 for r in rows], "g:", label="CSR + 2 GB (goal)")
    ax_mem.set(xlabel="atoms", ylabel="GB", title="memory")
    ax_mem.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, None) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def run_scaling(
    sizes: Sequence[int] = DEFAULT_SIZES,
    out_dir: str | os.PathLike = "hforge-bench-scaling",
    *,
    cache_dir: str | os.PathLike | None = None,
    models: Sequence[str | os.PathLike] = ("default",),
    max_memory: str | int | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    graph2mat: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Measure every size for every model (and graph2mat on the 1000-atom cell); write
    ``results.json``, ``table.md`` and ``scaling.png`` (the first model's) under ``out_dir``;
    return the results: ``{"runs": [{"model", "device", "rows", "fit", "fit_cpu"}, ...], ...}``.

    ``max_memory=None`` measures the default ``predict`` call (its plan keeps to the memory goal);
    ``"goal"`` gives every size the budget of the memory goal explicitly, bytes a budget.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "hforge" / "bench-scaling")
    runs = []
    for model in models:
        rows = []
        for n in sizes:
            row = measure_size(str(model), n, cache_dir, max_memory=max_memory, dtype=dtype, device=device)
            if "csr_bytes" in row and device == "cpu":
                row["output_floor_s"] = output_floor_seconds(row["csr_bytes"])
            rows.append(row)
            echo(f"{model}: {_row_text(row)}")
        fits = {"fit": fit_loglog(rows), "fit_cpu": fit_loglog(rows, key="cpu_s")}
        runs.append({"model": str(model), "device": device, "rows": rows, **fits})
    results: dict[str, Any] = {"runs": runs, "cpu_count": os.cpu_count(), "goals": GOALS}
    if graph2mat and 1000 in sizes:
        baseline = graph2mat_seconds(cache_dir, 1000)
        results["graph2mat"] = baseline
        ours = next(r for r in runs[0]["rows"] if r["n_atoms"] == 1000)
        if "wall_s" in baseline and "wall_s" in ours:
            results["speedup_vs_graph2mat"] = baseline["wall_s"] / ours["wall_s"]
        echo(f"graph2mat 1000 atoms: {baseline}")
    write_results(results, out_dir)
    return results


def write_results(results: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """``results.json``, ``table.md`` (:func:`scaling_tables`) and, with two measured sizes or more,
    ``scaling.png`` (the first run's) under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    with atomic_write(out_dir / "table.md") as f:
        f.write(scaling_tables(results))
    first = results["runs"][0]
    if sum("wall_s" in r for r in first["rows"]) >= 2:
        plot_scaling([r for r in first["rows"] if "wall_s" in r], first["fit"], out_dir / "scaling.png")
    return out_dir


def _row_text(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['n_atoms']:>6} atoms: FAILED {row['error'][-300:]}"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages_s"].items())
    return (
        f"{row['n_atoms']:>6} atoms: {row['wall_s']:7.1f} s ({stages}), {row['mode']} x{row['n_parts']}, "
        f"nnz {row['nnz']:,}, CSR {row['csr_bytes'] / 1e9:.2f} GB, peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB"
        + (f", output floor {row['output_floor_s']:.1f} s" if "output_floor_s" in row else "")
    )


def scaling_table(results: dict[str, Any]) -> str:
    """Markdown table of one run's rows (``{"rows", "fit", ...}``): wall seconds per stage, with the
    CPU seconds of the process in it in parentheses where measured, and the goals checked."""
    rows = [r for r in results["rows"] if "error" not in r]
    stages = list(rows[0]["stages_s"]) if rows else []
    lines = [
        "| atoms | wall s | CPU s | load | " + " | ".join(stages)
        + " | mode | nnz | CSR GB | peak RSS GB | RSS - CSR GB | output floor s |",
        "|---:|---:|---:|---:|" + "---:|" * len(stages) + "---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['n_atoms']} | failed |" + " |" * (len(stages) + 10))
            continue
        cpu = r.get("stages_cpu_s", {})
        cells = [f"{r['stages_s'][k]:.1f}" + (f" ({cpu[k]:.1f})" if k in cpu else "") for k in stages]
        lines.append(
            f"| {r['n_atoms']} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.1f} | "
            f"{max(r.get('load_average', [float('nan')])):.1f} | " + " | ".join(cells) + f" | {r['mode']} x{r['n_parts']} | "
            f"{r['nnz']:,} | {r['csr_bytes'] / 1e9:.2f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
            f"{(r['peak_rss_bytes'] - r['csr_bytes']) / 1e9:.2f} | {r.get('output_floor_s', float('nan')):.1f} |"
        )
    fit = results["fit"]
    lines.append(f"\nlog-log slope of wall time vs atoms (>= {fit['min_atoms']} atoms): {fit['slope']:.3f}")
    if "fit_cpu" in results:
        lines.append(f"log-log slope of CPU time vs atoms (>= {fit['min_atoms']} atoms): {results['fit_cpu']['slope']:.3f}")
    lines.append(goals_text(results))
    if "graph2mat" in results:
        g = results["graph2mat"]
        lines.append(f"graph2mat, 1000 atoms (H only): {g.get('wall_s', float('nan')):.1f} s; "
                     f"HForge (H and S) speed-up {results.get('speedup_vs_graph2mat', float('nan')):.1f}x")
    return "\n".join(lines) + "\n"


def goals_text(results: dict[str, Any]) -> str:
    """One line: each goal of :data:`GOALS` met, missed or not measured in a run's rows."""
    rows = {r["n_atoms"]: r for r in results["rows"] if "error" not in r}
    checks = []
    if 10000 in rows:
        wall = rows[10000]["wall_s"]
        checks.append(f"10^4 atoms {wall:.1f} s wall ({'met' if wall <= GOALS['wall_s_at_10000'] else 'missed'}, goal 20 s)")
    if rows:
        worst = max(r["peak_rss_bytes"] - r["csr_bytes"] for r in rows.values())
        verdict = "met" if worst <= GOALS["rss_above_csr_bytes"] else "missed"
        checks.append(f"peak RSS <= CSR + {worst / 1e9:.2f} GB ({verdict}, goal 2 GB)")
    slope = results["fit"]["slope"]
    if np.isfinite(slope):
        checks.append(f"slope {slope:.2f} ({'met' if slope <= GOALS['slope'] else 'missed'}, goal 1.1)")
    return "goals: " + ("; ".join(checks) if checks else "not measured")


def scaling_tables(results: dict[str, Any]) -> str:
    """Markdown of every run of :func:`run_scaling` (one table per model and device)."""
    parts = []
    for k, run in enumerate(results["runs"]):
        extra = {key: results[key] for key in ("graph2mat", "speedup_vs_graph2mat") if key in results and k == 0}
        parts.append(f"## {run['model']} on {run['device']}\n\n" + scaling_table({**run, **extra}))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: predict aBN cells of growing size (each in a fresh process) with every model;
    print and save the tables, fits, goals and plot (``results.json``, ``table.md``, ``scaling.png``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=main.__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="atoms, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("hforge-bench-scaling"), help="output folder")
    parser.add_argument("--model", default="default,abn-dzp",
                        help="comma-separated models: 'default' (default config, random weights), bundled names or checkpoints")
    parser.add_argument("--max-memory", default="none",
                        help="'none' (the default predict call), 'goal' (peak RSS <= output CSR + 2 GB), or bytes such as 8GB")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="output precision")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder of the generated cells (default ~/.cache/hforge/bench-scaling)")
    parser.add_argument("--no-graph2mat", dest="graph2mat", action="store_false", help="skip graph2mat on the 1000-atom cell")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: give comma-separated integers")
    max_memory: str | int | None = {"goal": GOAL, "none": None}.get(args.max_memory.lower(), args.max_memory)
    if isinstance(max_memory, str) and max_memory != GOAL:
        from hforge.cli.predict import parse_bytes

        max_memory = parse_bytes(max_memory)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    results = run_scaling(sizes, args.out, cache_dir=args.cache, models=models, max_memory=max_memory, dtype=args.dtype,
                          device=args.device, graph2mat=args.graph2mat)
    print(scaling_tables(results))
    print(f"results: {args.out / 'results.json'}, {args.out / 'table.md'}, {args.out / 'scaling.png'}")
    return results


if __name__ == "__main__":
    main()
