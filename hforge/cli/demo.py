"""``hforge demo``: the README's main job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from hforge.cli.info import info
from hforge.ops import backend_status, row_pointer

__all__ = ["demo"]


def demo(out: Path) -> None:
    """Show the machine's backends and check every usable CPU kernel backend against its reference."""
    console = Console()
    info()
    counts = np.random.default_rng(0).integers(0, 2000, 1_000_000)
    expected = row_pointer(counts, backend="torch")
    for name, status in backend_status().items():
        if status.available and "cpu" in status.device and name in ("numba", "torch"):
            ok = np.array_equal(row_pointer(counts, backend=name), expected)
            console.print(f"row_pointer ({name}) on 10^6 rows: {'[green]ok[/green]' if ok else '[red]MISMATCH[/red]'}")
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"output folder: {out.resolve()}")
