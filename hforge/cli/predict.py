"""``hforge predict MODEL STRUCTURE -o OUT``: H and S of a structure, written as ``.TSHS`` or ``.nc``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer
from rich.console import Console

from hforge.cli._errors import user_errors

__all__ = ["parse_bytes", "predict_command"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """``"8GB"``, ``"512 MiB"``, ``"1e9"`` -> bytes.

    Raises:
        ConfigError: anything else.
    """
    from hforge.errors import ConfigError

    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"--max-memory {text!r}: give bytes or a size such as 8GB, 512MB, 2GiB")
    try:
        return int(float(match.group(1)) * _UNITS[unit])
    except ValueError:
        raise ConfigError(f"--max-memory {text!r}: not a number") from None


def predict_command(
    model: str = typer.Argument(..., help="Checkpoint file, or a bundled model name (e.g. abn-dzp)."),
    structure: Path = typer.Argument(..., help="Structure file (any format ASE reads)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file, .TSHS or .nc."),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory budget, e.g. 8GB: chunks the cell to fit."),
    mode: str = typer.Option(
        "auto", "--mode", help="auto, whole, streamed (atom ranges) or chunked (spatial chunks with halo)."
    ),
    parts: int = typer.Option(None, "--parts", help="Atom ranges or spatial chunks (default: the fewest that fit)."),
    dtype: str = typer.Option("float64", "--dtype", help="Output precision: float64 or float32."),
    backend: str = typer.Option("auto", "--backend", help="CSR assembly backend."),
    device: str = typer.Option(
        None, "--device", help="cuda, cuda:N or cpu (default: cuda when a GPU is usable, else cpu)."
    ),
    distributed: bool = typer.Option(
        False, "--distributed", help="Spread chunks over torch.distributed ranks (launch with torchrun)."
    ),
) -> None:
    """Predict H and S of STRUCTURE with MODEL; write them (SIESTA TSHS or sisl NetCDF) atomically."""
    import numpy as np

    from hforge.errors import ConfigError
    from hforge.infer import check_output_path, load, peak_rss_bytes, write_hamiltonian

    console = Console(stderr=True, soft_wrap=True)
    with user_errors():
        if dtype not in ("float64", "float32"):
            raise ConfigError(f"--dtype {dtype!r}: choose float64 or float32")
        check_output_path(out)
        budget = None if max_memory is None else parse_bytes(max_memory)
        predictor = load(model, device=device)
        start = time.perf_counter()
        if distributed:
            from hforge.infer.distributed import predict_distributed

            hamiltonian = predict_distributed(
                predictor, structure, out.with_name(f".{out.name}.parts"), parts=parts, max_memory=budget,
                dtype=np.dtype(dtype), backend=backend, progress=True,
            )
            if hamiltonian is None:  # not rank 0: its part is merged there
                return
        else:
            hamiltonian = predictor.predict(
                structure, max_memory=budget, mode=mode, parts=parts, dtype=np.dtype(dtype), backend=backend,
                progress=True,
            )
        write_hamiltonian(hamiltonian, out)
    seconds = time.perf_counter() - start
    report = predictor.last_report
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    console.print(
        f"{out}: {report.n_atoms} atoms, {hamiltonian.no} orbitals, nnz {report.nnz:,} on {report.device} "
        f"({report.csr_bytes / 1e9:.2f} GB CSR), {report.mode} ({report.n_chunks} part(s)), {seconds:.1f} s "
        f"({stages}), peak memory {peak_rss_bytes() / 1e9:.2f} GB",
        highlight=False,
    )
