"""``hforge demo [--out DIR] [--shared DIR]``: the README's main job.

Trains the equivariant and the invariant (non-equivariant) model on the bundled ``abn-small``
training cells (two 8- and one 16-atom aBN cell) for a fixed budget of optimizer steps, validating
on its 24-atom cell during training, then tests both on a cell neither has seen: the 64-atom SIESTA
cell ``abn_64_0`` of the shared aBN data (``--shared``, ``$HFORGE_SHARED`` or ``../shared``),
read by hforge's own SIESTA reader, or the bundled 24-atom cell where the shared data is absent.
It prints the table side by side and writes under one folder: ``results.json`` (the table, the
budget, checkpoint and figure paths), each model's training folder (``<kind>/last.pt``,
``metrics.jsonl``, ``learning_curve.png``), both learning curves in ``learning_curves.png``, and
per model a parity plot, the DFT | ML | difference heatmap of H(Γ) and the Γ eigenvalue comparison
of the test cell.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from hforge.cli._errors import escape, user_errors
from hforge.cli.evaluate import metrics_table, wide_console
from hforge.files import write_json
from hforge.io import HSData

__all__ = ["DEMO_STEPS", "TEST_CELL", "demo", "demo_command", "demo_config", "demo_test_cell"]

#: Optimizer steps per model of the demo (its duration: docs/measurements.md).
DEMO_STEPS = 600
#: The demo's test cell in the shared aBN data (``<shared>/abn/runs/<name>``).
TEST_CELL = "abn_64_0"


def demo_config(kind: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """The demo's training config of one model kind: H/S block metrics on the bundled 24-atom
    validation cell three times during training (the learning curves); the demo tests the result
    itself."""
    from hforge.models.config import ABN_AVG_NUM_NEIGHBORS
    from hforge.train.study import CONSTRUCTIONS

    return {
        "data": {"source": "abn-small", "train": {"max_atoms": 16}, "val": {"min_atoms": 17}},
        # the normalisation of the README's measured runs (left out, the training cells would give theirs);
        # H built as the shipped model builds it: T + V_KB + c0 S + a learned separable operator
        "model": {"kind": kind, "avg_num_neighbors": ABN_AVG_NUM_NEIGHBORS, **CONSTRUCTIONS["operator"]},
        "loss": {"shift_invariant": True},
        "schedule": {"name": "cosine", "warmup_steps": min(10, steps)},
        "training": {
            "max_steps": steps, "batch_atoms": 32, "val_every": steps // 3 if steps >= 3 else 10**9,
            "checkpoint_every": max(1, min(50, steps)),
            "seed": seed, "device": "cpu", "ema_decay": 0.99, "val_eigenvalues": False,
        },
    }


def demo_test_cell(shared: Path | None = None) -> HSData:
    """The demo's test cell: :data:`TEST_CELL` (64 atoms) of ``shared/abn/runs`` read by
    :func:`hforge.io.read_hs` in the bundled basis, or the bundled 24-atom validation cell when
    ``shared`` (default :func:`hforge.datasets.shared_data_dir`) lacks it."""
    from hforge.datasets import load, shared_data_dir
    from hforge.io import read_hs

    bundled = load("abn-small", split="val")
    shared = shared_data_dir(shared)
    run = shared / "abn" / "runs" / TEST_CELL
    if run.is_dir():
        return read_hs(run / f"{TEST_CELL}.TSHS", basis=bundled.basis)
    return bundled[0]


def demo(
    out: Path, steps: int = DEMO_STEPS, *, shared: Path | None = None, progress: bool = True, console: Console | None = None
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the content of ``results.json``."""
    from hforge.analysis import spectrum_report
    from hforge.datasets import load
    from hforge.metrics import n_occupied_states
    from hforge.models import load_checkpoint
    from hforge.train.config import load_config
    from hforge.train.curves import plot_learning_curves
    from hforge.train.evaluation import evaluate_structures, predict_blocks
    from hforge.train.loop import read_log
    from hforge.train.trainer import Trainer

    console = console or wide_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_names = [e["name"] for e in load("abn-small").store.manifest if e["split"] == "train"]
    reference = demo_test_cell(shared)
    name = Path(reference.source).stem
    console.print(f"test cell: {name} ({reference.n_atoms} atoms, {reference.source})", markup=False)
    n_occupied = n_occupied_states(reference.basis, reference.species)
    table, checkpoints, budget, figures, logs = {}, {}, {}, {}, {}
    for kind in ("equivariant", "invariant"):
        config = load_config(demo_config(kind, steps))
        console.print(f"[bold]{kind}[/bold]: training {steps} steps on the abn-small training cells (8-16 atoms)")
        start = time.perf_counter()
        result = Trainer(config, out / kind, progress=progress, overwrite=True).run(final_validation=False)  # evaluated below
        budget[kind] = {"steps": result.steps, "wall_s": time.perf_counter() - start, **result.throughput}
        model, _ = load_checkpoint(result.last)
        checkpoints[kind] = str(result.last.resolve())
        table[kind] = evaluate_structures(model, [reference]).structures[0]["summary"]  # as `hforge evaluate`
        report = spectrum_report(  # the figures
            predict_blocks(model, reference), reference, name=f"{kind}_{name}", n_occupied=n_occupied, out_dir=out,
        )
        figures[kind] = {key: str(path.resolve()) for key, path in report.paths.items()}
        logs[kind] = read_log(out / kind / "metrics.jsonl")
    curves = plot_learning_curves(logs, out / "learning_curves.png", title="abn-small: train 8-16 atoms, validate 24")
    results = {
        "validation_structure": name,
        "n_atoms": reference.n_atoms,
        "train_structures": train_names,
        "table": table,
        "checkpoints": checkpoints,
        "budget": budget,
        "figures": {**figures, "learning_curves": str(curves.resolve())},
        "settings": {"eigenvalue_window_eV": 2.0, "orthogonalization_threshold": 1e-3, "n_occupied": n_occupied},
    }
    write_json(out / "results.json", results)
    title = f"{escape(name)} ({reference.n_atoms} atoms), never seen in training"
    console.print(metrics_table(table, title=title, first="model"))
    for kind, info in budget.items():
        console.print(f"{kind}: {info['steps']} steps in {info['wall_s']:.0f} s ({info['structures_per_s']:.2f} structures/s)")
    console.print(f"output folder: {out.resolve()}", markup=False)
    return results


def demo_command(
    out: Path = typer.Option(Path("hforge-demo"), "--out", help="Output folder (a demo already there is replaced)."),
    steps: int = typer.Option(DEMO_STEPS, "--steps", min=1, help="Optimizer steps per model (the budget)."),
    shared: Path = typer.Option(None, "--shared", help="Shared data folder holding abn/runs/abn_64_0 "
                                "(default $HFORGE_SHARED or ../shared; without it the bundled 24-atom cell is the test)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The README's main job: train both models on abn-small, compare them on an unseen 64-atom cell."""
    with user_errors():
        demo(out, steps, shared=shared, progress=progress)
