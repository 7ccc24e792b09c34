"""``hforge predict MODEL STRUCTURE -o OUT``: H and S of a structure (of each frame of a multi-frame file),
written as ``.TSHS`` or ``.nc``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from hforge.cli._choices import AssemblyBackend, Dtype, Mode
from hforge.cli._errors import printed_warnings, user_errors

__all__ = ["frame_outputs", "predict_command"]

def frame_outputs(out: Path, n_frames: int) -> list[Path]:
    """Output files of ``n_frames`` frames: ``out`` itself for one, else ``<stem>_<k><suffix>`` with
    ``k`` zero-padded to sort in frame order (``cell.TSHS`` -> ``cell_0.TSHS`` ... ``cell_9.TSHS``)."""
    if n_frames == 1:
        return [out]
    width = len(str(n_frames - 1))
    return [out.with_name(f"{out.stem}_{k:0{width}d}{out.suffix}") for k in range(n_frames)]


def predict_command(
    model: str = typer.Argument(..., help="Checkpoint file, or a bundled model name (e.g. abn-dzp)."),
    structure: Path = typer.Argument(
        ..., help="Structure file (any format ASE reads); every frame of a multi-frame file is predicted."
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Output file, .TSHS or .nc; of N > 1 frames one file each, named with the frame "
        "index: cell.TSHS -> cell_0.TSHS ... cell_<N-1>.TSHS."
    ),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory budget, e.g. 8GB: chunks the cell to fit."),
    mode: Mode = typer.Option(
        "auto", "--mode", help="whole cell, streamed (atom ranges), chunked (spatial chunks with halo), or auto."
    ),
    parts: int = typer.Option(None, "--parts", help="Atom ranges or spatial chunks (default: the fewest that fit)."),
    dtype: Dtype = typer.Option(
        "float32", "--dtype", help="Output precision (float32: a float32 model's H as computed, S rounded to 7 digits).",
    ),
    backend: AssemblyBackend = typer.Option(
        "auto", "--backend", help="CSR assembly backend (torch: its reference, scipy's COO -> CSR)."
    ),
    device: str = typer.Option(
        None, "--device", help="cuda, cuda:N or cpu (default: cuda when a GPU is usable, else cpu)."
    ),
    distributed: bool = typer.Option(
        False, "--distributed", help="Spread chunks over torch.distributed ranks (launch with torchrun)."
    ),
    threads: int = typer.Option(
        None, "--threads", help="Torch threads (default: torch's, i.e. OMP_NUM_THREADS or the cores; 1 can be faster "
        "on a machine busy with other jobs). The predicted values do not depend on the machine's load.",
    ),
) -> None:
    """Predict H and S of every frame of STRUCTURE with MODEL; write them (SIESTA TSHS or sisl NetCDF) atomically."""
    import numpy as np

    from hforge.infer import check_output_path, load, read_frames
    from hforge.infer.plan import memory_budget

    console = Console(stderr=True, soft_wrap=True)
    with user_errors(), printed_warnings(console):
        frames = read_frames(structure)
        outputs = frame_outputs(out, len(frames))
        for path in outputs:
            check_output_path(path, inputs=[structure])
        budget = memory_budget(max_memory)
        predictor = load(model, device=device)
        if len(frames) > 1:  # every frame checked before the first is predicted
            for k, atoms in enumerate(frames):
                with _naming(structure, k, len(frames)):
                    predictor.arrays(atoms)
        for k, (atoms, path) in enumerate(zip(frames, outputs)):
            label = f"{path} (frame {k} of {len(frames)})" if len(frames) > 1 else str(path)
            source = f"{structure} (frame {k})" if len(frames) > 1 else str(structure)
            with _naming(structure, k, len(frames)):
                _predict_one(
                    predictor, atoms, path, label, source, console, max_memory=budget, mode=mode.value, parts=parts,
                    dtype=np.dtype(dtype.value), backend=backend.value, distributed=distributed, threads=threads,
                )


@contextmanager
def _naming(structure: Path, frame: int, n_frames: int) -> Iterator[None]:
    """Input errors raised inside name the structure file, and the frame of a multi-frame one."""
    from hforge.errors import InputError

    try:
        yield
    except InputError as error:
        if error.path is not None:
            raise
        where = f"frame {frame}: " if n_frames > 1 else ""
        raise type(error)(where + error.message, path=structure) from None


def _predict_one(
    predictor: Any, atoms: Any, out: Path, label: str, source: str, console: Console, *, max_memory: int | None,
    mode: str, parts: int | None, dtype: Any, backend: str, distributed: bool, threads: int | None,
) -> None:
    """Predict one structure, write it and print its summary line (rank 0 only when distributed);
    ``source`` (the structure file, and frame) is named in warnings."""
    from hforge.infer import peak_rss_bytes, write_hamiltonian

    start = time.perf_counter()
    if distributed:
        from hforge.infer.distributed import predict_distributed

        hamiltonian = predict_distributed(
            predictor, atoms, out.with_name(f".{out.name}.parts"), parts=parts, max_memory=max_memory,
            dtype=dtype, backend=backend, progress=True, threads=threads,
        )
        if hamiltonian is None:  # not rank 0: its part is merged there
            return
        from hforge.infer.overlap import check_learned_overlap

        check_learned_overlap(predictor.model, hamiltonian, source=source)
        write_hamiltonian(hamiltonian, out)
    else:  # the output buffers streamed into the file (no copy of the matrix)
        predictor.predict_to_file(
            atoms, out, max_memory=max_memory, mode=mode, parts=parts, dtype=dtype, backend=backend, progress=True,
            source=source, threads=threads,
        )
    seconds = time.perf_counter() - start
    report = predictor.last_report
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    console.print(
        f"{label}: {report.n_atoms} atoms, {report.n_orbitals} orbitals, nnz {report.nnz:,} on {report.device} "
        f"({report.csr_bytes / 1e9:.2f} GB CSR), {report.mode} ({report.n_parts} {_parts_unit(report)}), {seconds:.1f} s "
        f"({stages}), peak memory {peak_rss_bytes() / 1e9:.2f} GB",
        highlight=False,
        markup=False,
    )


def _parts_unit(report: Any) -> str:
    """What the report's parts are: atom ranges (whole, streamed) or spatial chunks."""
    unit = "atom range" if report.mode in ("whole", "streamed") else "chunk"
    return unit if report.n_parts == 1 else unit + "s"
