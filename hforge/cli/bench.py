"""``hforge bench scaling``: inference wall and CPU time per stage, and peak memory, from 10^3 to 2x10^4 atoms."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from hforge.cli._errors import user_errors

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Measurements: inference scaling.", no_args_is_help=True)


@bench_app.command("scaling")
def scaling_command(
    sizes: str = typer.Option("1000,2000,4000,8000,10000,20000", "--sizes", help="Atoms, comma-separated."),
    out: Path = typer.Option(Path("hforge-bench-scaling"), "--out", help="Output folder (results.json, table.md, scaling.png)."),
    model: str = typer.Option(
        "default,abn-dzp", "--model",
        help="Comma-separated models: 'default' (default config, random weights), bundled names or checkpoints.",
    ),
    max_memory: str = typer.Option(
        "none", "--max-memory", help="'none' (the default predict call), 'goal' (peak RSS <= output CSR + 2 GB), or e.g. 8GB."
    ),
    dtype: str = typer.Option("float64", "--dtype", help="Output precision."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    cache: Path = typer.Option(None, "--cache", help="Folder of the generated cells (default ~/.cache/hforge/bench-scaling)."),
    graph2mat: bool = typer.Option(True, "--graph2mat/--no-graph2mat", help="Time graph2mat on the 1000-atom cell."),
) -> None:
    """Predict aBN cells of growing size (each in a fresh process); print and save the tables, fits, goals and plot."""
    from hforge.cli.predict import parse_bytes
    from hforge.errors import ConfigError
    from hforge.infer.scaling import run_scaling, scaling_tables

    console = Console(soft_wrap=True)
    with user_errors():
        try:
            atoms = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--sizes {sizes!r}: give comma-separated integers") from None
        budget = {"goal": "goal", "none": None}.get(max_memory.lower(), None)
        if max_memory.lower() not in ("goal", "none"):
            budget = parse_bytes(max_memory)
        models = [m.strip() for m in model.split(",") if m.strip()]
        results = run_scaling(
            atoms, out, cache_dir=cache, models=models, max_memory=budget, dtype=dtype, device=device, graph2mat=graph2mat,
            echo=lambda line: console.print(line, highlight=False),
        )
    console.print(scaling_tables(results), highlight=False)
    console.print(f"results: {out / 'results.json'}, {out / 'table.md'}, {out / 'scaling.png'}", highlight=False)
