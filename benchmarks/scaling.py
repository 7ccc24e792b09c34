"""Inference scaling measurements: aBN-like cells of 10^2 ... 2x10^4 atoms, one fresh process per size.

Cells: a 100-atom and a 1000-atom cell from :func:`~hforge.structures.amorphous_bn` (``"fast"``
protocol, density 2.2 g/cm^3, cached under ``cache_dir``); larger cells are the 1000-atom cell
tiled ``a x b x c`` times with every atom displaced by a random 0.02 Å (Gaussian per component),
so that no two tiles are identical.  Every size runs in its own process (peak RSS is a per-process
high-water mark) after a warm-up prediction of the 100-atom cell (compilation, caches).  Models
(:data:`BUILT_MODELS`): ``"operator"``, the model the project ships (``configs/abn-operator.yaml``:
``H = T + V_KB + c0 S`` plus a learned separable operator, no per-entry heads), and ``"default"``,
the default :class:`~hforge.models.ModelConfig` (per-entry pair heads, the fitted H0), both on the
bundled DZP basis with random weights (the cost does not depend on them; the operator's ``D_k`` are
made nonzero, as a trained model's are), or a checkpoint / bundled name (``"abn-dzp"``).  What is
measured is the default ``predict`` call (the mode its plan picks) with the output dtype asked
for, unless a ``max_memory`` is given; ``threads`` sets torch's and numba's threads (the caller's
choice, ``predict(threads=)``: on a machine shared with other jobs one thread each is faster and
steadier); on ``device="cuda"`` the model, kernels and assembly run on the GPU.

Beside every row, in the same run: the *output floor*, numpy writing the output CSR's bytes into
fresh memory in a fresh process (what any prediction pays at least to produce its output), and the
ratio of the wall time to it.  With ``baseline_code`` (another HForge source tree, e.g. an older
commit's ``git archive``) every size is also measured with that code, right after the current one
(interleaved: both see the same load), and the table gives their ratio.  graph2mat's
``MatrixMACE``, as the transfer study builds it (:func:`hforge.train.graph2mat.graph2mat_model`,
its parameter count recorded), predicts the 1000-atom cell in the same run.
``benchmarks/bench_inference_scaling.py`` (pytest-benchmark) and this module's command line run
it, from the repository root::

    python -m benchmarks.scaling --sizes 1000,2000,4000,10000,20000 --model operator --threads 1 --out DIR

Goals (issue 26; :data:`GOALS`): 10^4 atoms in at most 30 s wall (float32 output) and within 3x the
output floor of the same run, the learned heads at most 30 % of the wall time, peak RSS at most the
output CSR + 2 GB, log-log slope of the wall time at most 1.1 from 10^3 to 2x10^4 atoms.

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
    "BUILT_MODELS",
    "DEFAULT_SIZES",
    "GOAL",
    "GOALS",
    "TILE_NOISE",
    "code_label",
    "fit_loglog",
    "goals_text",
    "graph2mat_seconds",
    "heads_share",
    "main",
    "measure_size",
    "model_path",
    "output_floor_seconds",
    "plot_scaling",
    "run_scaling",
    "scaling_cell",
    "scaling_model",
    "scaling_table",
    "scaling_tables",
    "write_results",
]

DEFAULT_SIZES = (1000, 2000, 4000, 8000, 10000, 20000)

#: The targets the table checks: wall seconds and the ratio to the output floor at 10^4 atoms, the
#: learned heads' share of the wall time, peak RSS above the output CSR (bytes), log-log slope of the
#: wall time from 10^3 atoms on.
GOALS = {"wall_s_at_10000": 30.0, "floor_ratio_at_10000": 3.0, "heads_share": 0.30, "rss_above_csr_bytes": 2 * 10**9,
         "slope": 1.1}

#: Models the harness builds itself (random weights, cached checkpoints): the shipped operator model's
#: config and the default config.
BUILT_MODELS = ("operator", "default")

#: Å, standard deviation of the displacement of tiled atoms.
TILE_NOISE = 0.02

#: The repository root: the fresh processes import this module as ``benchmarks.scaling`` from there.
_ROOT = Path(__file__).resolve().parents[1]


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


def _model_config(name: str) -> Any:
    """The :class:`~hforge.models.ModelConfig` of a built model (:data:`BUILT_MODELS`)."""
    import yaml

    from hforge.models import ModelConfig

    if name == "default":
        return ModelConfig()
    with open(_ROOT / "configs" / "abn-operator.yaml") as f:
        return ModelConfig(**yaml.safe_load(f)["model"])


def scaling_model(cache_dir: str | os.PathLike, name: str = "default") -> Path:
    """Checkpoint of a built model (:data:`BUILT_MODELS`) on the bundled DZP basis (seed 0), cached.
    The operator model's ``D_k`` head and species means and its ``c0`` get random values (a new
    model's start at zero, which the kernels would skip)."""
    import torch

    from hforge.datasets import load
    from hforge.models import build_model, save_model

    if name not in BUILT_MODELS:
        raise ValueError(f"built models are {BUILT_MODELS}, not {name!r}")
    path = Path(cache_dir) / f"{name}-model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        torch.manual_seed(0)
        model = build_model(_model_config(name), load("abn-small").basis)
        if model.separable is not None:
            with torch.no_grad():
                model.baseline_coef[3] = -4.0  # c0 (eV) times S
                for parameter in model.separable.parameters():
                    parameter.normal_(0.0, 0.05)
        save_model(model, path)
    return path


def model_path(model: str, cache_dir: str | os.PathLike) -> str:
    """What :func:`hforge.infer.load` takes for ``model``."""
    return str(scaling_model(cache_dir, model)) if model in BUILT_MODELS else model


#: ``max_memory`` of the memory goal: the output CSR + 2 GB of peak RSS in all, i.e. CSR + 2 GB minus
#: what the process holds after its warm-up (Python, torch, the model).
GOAL = "goal"
GOAL_EXTRA_BYTES = 2 * 10**9


def _set_threads(threads: int | None) -> int:
    """torch's and numba's threads (``None``: the cores); the count."""
    import torch

    from hforge._numba import numba

    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    return count


def _measure(
    model: str, n_atoms: int, cache_dir: str, max_memory: int | str | None, dtype: str, device: str = "cpu",
    threads: int | None = None,
) -> dict[str, Any]:
    """In this process: warm up on the 100-atom cell, then predict ``n_atoms``; the report as a dict."""
    import torch

    import hforge
    from hforge.infer import load, peak_rss_bytes

    count = _set_threads(threads)
    predictor = load(model_path(model, cache_dir), device=device)
    predictor.predict(scaling_cell(100, cache_dir)[0], threads=count, dtype=np.dtype(dtype))
    atoms, how = scaling_cell(n_atoms, cache_dir)
    rss_before = peak_rss_bytes()
    if max_memory == GOAL:
        max_memory = predictor.prepare(atoms).csr_bytes(np.dtype(dtype)) + GOAL_EXTRA_BYTES - rss_before
    load_before = os.getloadavg()[0]
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    hamiltonian = predictor.predict(atoms, max_memory=max_memory, dtype=np.dtype(dtype), threads=count)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    report = predictor.last_report
    row = {
        "model": model,
        "hforge": str(Path(hforge.__file__).parent),
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
        "n_parts": getattr(report, "n_parts", getattr(report, "n_chunks", 1)),  # n_chunks in code before issue 27
        "nnz": report.nnz,
        "n_orbitals": int(hamiltonian.no),
        "csr_bytes": report.csr_bytes,
        "estimated_bytes": report.estimated_bytes,
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
    dtype: str = "float32", device: str = "cpu", threads: int | None = None, code: str | os.PathLike | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """:func:`_measure` in a fresh process (its own peak RSS), importing HForge from the source tree
    ``code`` (default: this repository's)."""
    call = f"_measure({str(model)!r}, {n_atoms}, {str(cache_dir)!r}, {max_memory!r}, {dtype!r}, {device!r}, {threads!r})"
    row = _in_fresh_process(call, n_atoms, timeout, code=code)
    row["code"] = code_label(code)
    return row


def code_label(code: str | os.PathLike | None = None) -> str:
    """The commit of an HForge source tree: its ``COMMIT`` file (a ``git archive`` of a commit), or
    ``git rev-parse`` (``+dirty`` with uncommitted changes); ``code=None``: this repository."""
    root = Path(code) if code is not None else _ROOT
    if (root / "COMMIT").is_file():
        return (root / "COMMIT").read_text().strip()
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(root)
    return commit + ("+dirty" if dirty else "")


def _in_fresh_process(call: str, n_atoms: int, timeout: float, code: str | os.PathLike | None = None) -> dict[str, Any]:
    """The dict returned by ``call`` (an expression on this module's names) in a new Python process,
    importing HForge from ``code`` when given (an installed editable HForge's import hook set aside)."""
    prelude = ""
    if code is not None:
        prelude = (
            "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('_editable')]; "
            f"sys.path.insert(0, {str(Path(code).resolve())!r}); import hforge; sys.path.pop(0); "
        )
    script = (
        f"import json, sys, warnings; warnings.simplefilter('ignore'); {prelude}sys.path.insert(0, {str(_ROOT)!r}); "
        "import hforge; from benchmarks.scaling import *; "
        "from benchmarks.scaling import _measure, _graph2mat_run, _output_floor_run; "
        f"print('RESULT', json.dumps({call}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"n_atoms": n_atoms, "error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT ") :])


def _output_floor_run(n_bytes: int) -> dict[str, Any]:
    """Seconds to write ``n_bytes`` (an output CSR's size) into fresh memory with numpy, in this process."""
    start = time.perf_counter()
    written = np.full(n_bytes // 8, 1.0)
    return {"n_bytes": n_bytes, "floor_s": time.perf_counter() - start, "checksum": float(written[:: 1 << 20].sum())}


def output_floor_seconds(n_bytes: int, timeout: float = 3600, repeats: int = 3) -> float:
    """The memory floor of a prediction whose output CSR takes ``n_bytes``: seconds for numpy to
    write that many bytes into freshly allocated memory, in a fresh process (what any prediction
    pays at least to produce its output; on a VM, fresh memory includes the host's page faults),
    the median of ``repeats`` processes (one such write swings several-fold with the host's load)."""
    rows = [_in_fresh_process(f"_output_floor_run({int(n_bytes)})", 0, timeout) for _ in range(repeats)]
    return float(np.median([row.get("floor_s", float("nan")) for row in rows]))


def _graph2mat_run(cache_dir: str, n_atoms: int, threads: int | None = None) -> dict[str, Any]:
    """graph2mat's MatrixMACE as the transfer study builds it (H only) on the same cell and basis, in this process."""
    import sisl
    import torch

    from hforge.datasets import load
    from hforge.infer import peak_rss_bytes
    from hforge.train.graph2mat import graph2mat_model

    _set_threads(threads)
    torch.manual_seed(0)
    basis = load("abn-small").basis
    model, processor = graph2mat_model(basis)
    by_symbol = {a.tag: a for a in basis.to_sisl()}

    def geometry_of(n: int) -> Any:
        atoms = scaling_cell(n, cache_dir)[0]
        species = [by_symbol[s] for s in atoms.get_chemical_symbols()]
        return sisl.Geometry(atoms.positions, atoms=species, lattice=atoms.cell.array)

    with torch.no_grad():
        processor.torch_predict(model, geometry_of(100))  # warm-up, as HForge's
        geometry = geometry_of(n_atoms)
        load_before = os.getloadavg()[0]
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        matrix = processor.torch_predict(model, geometry)
        wall = time.perf_counter() - start
    return {
        "n_atoms": n_atoms, "wall_s": wall, "cpu_s": _cpu_seconds() - cpu_start,
        "load_average": [load_before, os.getloadavg()[0]], "nnz": int(matrix.nnz), "peak_rss_bytes": peak_rss_bytes(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "what": "graph2mat MatrixMACE as hforge.train.graph2mat.graph2mat_model builds it (the transfer study's), H only, "
        "torch_predict after a warm-up",
    }


def graph2mat_seconds(
    cache_dir: str | os.PathLike, n_atoms: int = 1000, timeout: float = 3600, threads: int | None = None
) -> dict[str, Any]:
    """graph2mat's prediction of the ``n_atoms`` cell (H only) in a fresh process."""
    return _in_fresh_process(f"_graph2mat_run({str(cache_dir)!r}, {n_atoms}, {threads!r})", n_atoms, timeout)


def fit_loglog(rows: Sequence[dict[str, Any]], *, min_atoms: int = 1000, key: str = "wall_s") -> dict[str, float]:
    """Least-squares ``log t = slope log N + c`` of ``row[key]`` (wall or CPU seconds) over the rows
    with at least ``min_atoms`` atoms."""
    points = [(r["n_atoms"], r[key]) for r in rows if key in r and r["n_atoms"] >= min_atoms]
    if len(points) < 2:
        return {"slope": float("nan"), "intercept": float("nan"), "min_atoms": min_atoms}
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope": float(slope), "intercept": float(intercept), "min_atoms": min_atoms}


def heads_share(row: dict[str, Any]) -> float:
    """The learned heads' share of a row's wall time: the stages ``heads`` (pair pass, ``D_k``) and
    ``separable`` (the separable contraction; with the operator baseline it holds V_KB too, so this
    is an upper bound) over the wall time.  The ``projections`` stage (the exact two-centre integrals
    the contraction reads, like S) is not a head's."""
    stages = row.get("stages_s", {})
    return (stages.get("heads", 0.0) + stages.get("separable", 0.0)) / row["wall_s"]


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
        ax_time.loglog([r["n_atoms"] for r in with_cpu], [r["cpu_s"] for r in with_cpu], "ks:", mfc="none", label="CPU s")
    with_floor = [r for r in rows if "output_floor_s" in r]
    if with_floor:
        ax_time.loglog([r["n_atoms"] for r in with_floor], [max(r["output_floor_s"], 1e-3) for r in with_floor], "x-",
                       color="grey", label="output floor (numpy writes the CSR bytes)")
    for stage in rows[0]["stages_s"]:
        ax_time.loglog(atoms, [max(r["stages_s"].get(stage, 0.0), 1e-3) for r in rows], ".--", label=stage)
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
    models: Sequence[str | os.PathLike] = ("operator",),
    max_memory: str | int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    baseline_code: str | os.PathLike | None = None,
    graph2mat: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Measure every size for every model (with ``baseline_code`` too, interleaved; the output floor
    of every row; graph2mat on the 1000-atom cell); write ``results.json``, ``table.md`` and
    ``scaling.png`` (the first model's) under ``out_dir``; return the results:
    ``{"runs": [{"model", "device", "code", "rows", "fit", "fit_cpu"}, ...], ...}``.

    ``max_memory=None`` measures the default ``predict`` call (its plan keeps to the memory goal);
    ``"goal"`` gives every size the budget of the memory goal explicitly, bytes a budget.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "hforge" / "bench-scaling")
    codes: list[str | None] = [None] + ([str(baseline_code)] if baseline_code is not None else [])
    runs = []
    for model in models:
        by_code: dict[str | None, list[dict[str, Any]]] = {code: [] for code in codes}
        for n in sizes:
            for code in codes:
                row = measure_size(str(model), n, cache_dir, max_memory=max_memory, dtype=dtype, device=device,
                                   threads=threads, code=code)
                if "csr_bytes" in row and device == "cpu":
                    row["output_floor_s"] = output_floor_seconds(row["csr_bytes"])
                    row["floor_ratio"] = row["wall_s"] / row["output_floor_s"]
                by_code[code].append(row)
                echo(f"{model} @ {row['code']}: {_row_text(row)}")
        for code in codes:
            rows = by_code[code]
            fits = {"fit": fit_loglog(rows), "fit_cpu": fit_loglog(rows, key="cpu_s")}
            runs.append({"model": str(model), "device": device, "code": code_label(code), "baseline": code is not None,
                         "rows": rows, **fits})
    results: dict[str, Any] = {
        "runs": runs, "cpu_count": os.cpu_count(), "goals": GOALS, "threads": threads, "dtype": dtype,
        "commit": code_label(), "baseline_commit": code_label(baseline_code) if baseline_code is not None else None,
    }
    if graph2mat and 1000 in sizes:
        baseline = graph2mat_seconds(cache_dir, 1000, threads=threads)
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
    CPU seconds of the process in it in parentheses where measured, the output floor of the same run
    and the ratio to it, the heads' share, and the goals checked."""
    rows = [r for r in results["rows"] if "error" not in r]
    stages = list(dict.fromkeys(k for r in rows for k in r["stages_s"]))
    lines = [
        "| atoms | wall s | CPU s | load | " + " | ".join(stages)
        + " | heads share | mode | nnz | CSR GB | peak RSS GB | RSS - CSR GB | output floor s | wall / floor |",
        "|---:|---:|---:|---:|" + "---:|" * len(stages) + "---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['n_atoms']} | failed |" + " |" * (len(stages) + 12))
            continue
        cpu = r.get("stages_cpu_s", {})
        cells = [f"{r['stages_s'].get(k, 0.0):.1f}" + (f" ({cpu[k]:.1f})" if k in cpu else "") for k in stages]
        floor = r.get("output_floor_s", float("nan"))
        lines.append(
            f"| {r['n_atoms']} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.1f} | "
            f"{max(r.get('load_average', [float('nan')])):.1f} | " + " | ".join(cells) + f" | {heads_share(r):.0%} | "
            f"{r['mode']} x{r['n_parts']} | {r['nnz']:,} | {r['csr_bytes'] / 1e9:.2f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
            f"{(r['peak_rss_bytes'] - r['csr_bytes']) / 1e9:.2f} | {floor:.1f} | {r['wall_s'] / floor:.1f} |"
        )
    fit = results["fit"]
    lines.append(f"\nlog-log slope of wall time vs atoms (>= {fit['min_atoms']} atoms): {fit['slope']:.3f}")
    if "fit_cpu" in results:
        lines.append(f"log-log slope of CPU time vs atoms (>= {fit['min_atoms']} atoms): {results['fit_cpu']['slope']:.3f}")
    lines.append(goals_text(results))
    if "graph2mat" in results:
        g = results["graph2mat"]
        lines.append(f"graph2mat (the study's MatrixMACE, {g.get('parameters', 'unknown')} parameters), 1000 atoms (H only): "
                     f"{g.get('wall_s', float('nan')):.1f} s; HForge (H and S) speed-up "
                     f"{results.get('speedup_vs_graph2mat', float('nan')):.1f}x")
    return "\n".join(lines) + "\n"


def goals_text(results: dict[str, Any]) -> str:
    """One line: each goal of :data:`GOALS` met, missed or not measured in a run's rows."""
    rows = {r["n_atoms"]: r for r in results["rows"] if "error" not in r}

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    checks = []
    if 10000 in rows:
        row = rows[10000]
        wall = row["wall_s"]
        checks.append(f"10^4 atoms {wall:.1f} s wall ({verdict(wall <= GOALS['wall_s_at_10000'])}, goal 30 s)")
        if "floor_ratio" in row:
            ratio = row["floor_ratio"]
            checks.append(f"{ratio:.1f}x the output floor ({verdict(ratio <= GOALS['floor_ratio_at_10000'])}, goal 3x)")
    if rows:
        share = max(heads_share(r) for r in rows.values())
        checks.append(f"heads <= {share:.0%} of the wall time ({verdict(share <= GOALS['heads_share'])}, goal 30 %)")
        worst = max(r["peak_rss_bytes"] - r["csr_bytes"] for r in rows.values())
        checks.append(f"peak RSS <= CSR + {worst / 1e9:.2f} GB ({verdict(worst <= GOALS['rss_above_csr_bytes'])}, goal 2 GB)")
    slope = results["fit"]["slope"]
    if np.isfinite(slope):
        checks.append(f"slope {slope:.2f} ({verdict(slope <= GOALS['slope'])}, goal 1.1)")
    return "goals: " + ("; ".join(checks) if checks else "not measured")


def _versus(current: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Markdown of a run against the same model's baseline-code run: wall times and their ratio per size."""
    base = {r["n_atoms"]: r for r in baseline["rows"] if "error" not in r}
    lines = [f"baseline code {baseline['code']} against {current['code']}, same sizes, interleaved:", "",
             "| atoms | baseline wall s | wall s | baseline / this |", "|---:|---:|---:|---:|"]
    for r in current["rows"]:
        if "error" in r or r["n_atoms"] not in base:
            continue
        b = base[r["n_atoms"]]
        lines.append(f"| {r['n_atoms']} | {b['wall_s']:.1f} | {r['wall_s']:.1f} | {b['wall_s'] / r['wall_s']:.2f} |")
    return "\n".join(lines) + "\n"


def scaling_tables(results: dict[str, Any]) -> str:
    """Markdown of every run of :func:`run_scaling` (one table per model, device and code)."""
    parts = []
    for k, run in enumerate(results["runs"]):
        extra = {key: results[key] for key in ("graph2mat", "speedup_vs_graph2mat") if key in results and k == 0}
        title = f"## {run['model']} on {run['device']}" + (f", code {run['code']}" if "code" in run else "")
        if run.get("baseline"):
            title += " (baseline)"
        parts.append(title + "\n\n" + scaling_table({**run, **extra}))
        if run.get("baseline"):
            current = next(r for r in results["runs"] if r["model"] == run["model"] and not r.get("baseline"))
            parts.append(_versus(current, run))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: predict aBN cells of growing size (each in a fresh process) with every model;
    print and save the tables, fits, goals and plot (``results.json``, ``table.md``, ``scaling.png``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=main.__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="atoms, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("hforge-bench-scaling"), help="output folder")
    parser.add_argument("--model", default="operator",
                        help="comma-separated models: 'operator', 'default' (built, random weights), bundled names or "
                        "checkpoints")
    parser.add_argument("--max-memory", default="none",
                        help="'none' (the default predict call), 'goal' (peak RSS <= output CSR + 2 GB), or bytes such as 8GB")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="output precision")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: the cores)")
    parser.add_argument("--baseline-code", type=Path, default=None,
                        help="another HForge source tree (e.g. a commit's git archive) measured interleaved with this one")
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
        from hforge.infer.plan import memory_budget

        max_memory = memory_budget(max_memory)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    results = run_scaling(sizes, args.out, cache_dir=args.cache, models=models, max_memory=max_memory, dtype=args.dtype,
                          device=args.device, threads=args.threads, baseline_code=args.baseline_code,
                          graph2mat=args.graph2mat)
    print(scaling_tables(results))
    print(f"results: {args.out / 'results.json'}, {args.out / 'table.md'}, {args.out / 'scaling.png'}")
    return results


if __name__ == "__main__":
    main()
