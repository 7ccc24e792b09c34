"""``hforge train CONFIG [--resume] [--out DIR]`` and ``hforge train --print-default-config``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from hforge.cli._errors import user_errors

__all__ = ["train_command"]


def train_command(
    config: Optional[Path] = typer.Argument(None, help="Training config (YAML); see --print-default-config."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: hforge-train/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out (refused without it)."),
    print_default_config: bool = typer.Option(
        False, "--print-default-config", help="Print the commented default config and exit."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train an H/S model (torchrun --nproc-per-node P $(which hforge) train ... for data parallelism)."""
    from hforge.train.config import DEFAULT_CONFIG_YAML, load_config

    if print_default_config:
        typer.echo(DEFAULT_CONFIG_YAML, nl=False)
        return
    if config is None:
        raise typer.BadParameter("give a CONFIG file (or --print-default-config)")
    from hforge.train.trainer import Trainer

    console = Console()
    with user_errors():
        cfg = load_config(config)
        out = out or Path("hforge-train") / config.stem
        trainer = Trainer(cfg, out, resume=resume, progress=progress, overwrite=overwrite)
        if trainer.dist.is_main:
            console.print(
                f"training {cfg.model.kind} on {len(trainer.data.train)} structures of {cfg.data.source} "
                f"(validation: {len(trainer.data.val)}), {sum(p.numel() for p in trainer.model.parameters())} parameters, "
                f"{trainer.dist.world} process(es), device {trainer.device}"
                + (f", resumed at step {trainer.step}" if resume else ""),
                markup=False,
            )
        result = trainer.run()
    if trainer.dist.is_main:
        mean = result.validation.get("mean", {})
        console.print(json.dumps({"validation_mean": mean, "throughput": result.throughput}, indent=1, default=str), markup=False)
        best = f", {result.best}" if result.best else ""
        console.print(f"checkpoints: {result.last}{best}\noutput folder: {out.resolve()}", markup=False)
