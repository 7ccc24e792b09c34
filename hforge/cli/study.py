"""``hforge study quick|full``: the transfer study (:mod:`hforge.train.study`) from one command."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from hforge.cli._choices import Preset, StudyModel
from hforge.cli._errors import user_errors

__all__ = ["study_command"]

def study_command(
    preset: Preset = typer.Argument(Preset.quick, help="quick: abn-small, minutes (CI); full: shared aBN data, hours."),
    out: Path = typer.Option(Path("hforge-study"), "--out", help="Working folder (trainings, results.json, curve.json)."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Where results.md and figures/ go (default --out)."),
    store: Optional[Path] = typer.Option(
        None, "--store", help="full: the store of the shared aBN runs (default <out>/abn-all.h5, converted from "
        "--shared's abn/runs and abn-extra/runs when absent)."),
    shared: Optional[Path] = typer.Option(None, "--shared", help="Shared data folder (default $HFORGE_SHARED or ../shared)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps per model (quick 60, full 1500)."),
    seeds: List[int] = typer.Option([], "--seed", help="Seeds (repeat; quick: 0, full: 0 and 1)."),
    models: List[StudyModel] = typer.Option([], "--model", help="Only these models (repeat; --curve: default "
                                            "equivariant and invariant)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads per training."),
    construction: str = typer.Option(
        "operator", "--construction", help="How HForge's models build H: operator (T + V_KB + c0 S + a learned separable "
        "operator: no state outside the spectrum) or entries (fitted H0 + blocks entry by entry, the earlier models)."),
    tests: List[Path] = typer.Option(
        [], "--test", help="Test-only cells from outside the training store (repeat): a SIESTA run folder (or a folder "
        "of them), an H/S file, or a store (all its cells, e.g. a campaign's). Never trained on; predicted through the "
        "Predictor; the largest test cell is timed against SIESTA's log."),
    curve: bool = typer.Option(False, "--curve", help="The learning curve instead of the study: held-out error against "
                               "training atoms on nested subsets of the training cells, with power-law fits."),
    fractions: List[float] = typer.Option([], "--fraction", min=0.0, max=1.0, help="--curve: fractions of the "
                                          "training cells (repeat; default 1/8, 1/4, 1/2 and 1)."),
    pick_seed: int = typer.Option(0, "--pick-seed", help="--curve: the seed choosing the nested subsets."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train the equivariant, the invariant and graph2mat's model on the same small cells with the same
    budget, test each on held-out cells of every size, write results.md, results.json and figures;
    with --curve, the learning curve (curve.json and its section of results.md)."""
    import dataclasses

    from hforge.infer import load
    from hforge.train.study import CURVE_FRACTIONS, full_plan, learning_curve, quick_plan, run_study

    console = Console()
    with user_errors():
        if preset is Preset.quick:
            plan = quick_plan(steps=steps or 60, seeds=seeds or (0,), external=tests)
        else:
            store = store or out / "abn-all.h5"
            if not store.is_file():
                from hforge.datasets import shared_data_dir
                from hforge.io import convert

                root = shared_data_dir(shared)
                runs = [root / "abn" / "runs", root / "abn-extra" / "runs"]
                console.print(f"converting {', '.join(map(str, runs))} into {store}", markup=False)
                convert([r for r in runs if r.is_dir()], store, basis=root / "abn" / "basis", half=True)
            plan = full_plan(store, steps=steps or 1500, seeds=seeds or (0, 1), threads=threads, external=tests)
        if models:
            plan = dataclasses.replace(plan, models=tuple(m.value for m in models))
        plan = dataclasses.replace(plan, construction=construction)
        if threads is not None:
            plan = dataclasses.replace(plan, threads=threads)

        def log(line: str) -> None:
            console.print(line, markup=False)

        def load_predictor(checkpoint: Path) -> object:
            return load(checkpoint, device="cpu")  # where the study trains: its timings compare CPUs

        if curve:
            learning_curve(plan, out, fractions=fractions or CURVE_FRACTIONS,
                           models=plan.models if models else ("equivariant", "invariant"), pick_seed=pick_seed,
                           docs=docs, progress=progress, log=log, load_predictor=load_predictor)
        else:
            run_study(plan, out, docs=docs, progress=progress, log=log, load_predictor=load_predictor)
