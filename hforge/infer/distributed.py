"""Chunked prediction spread over torch.distributed ranks (gloo on CPU, nccl on GPU).

Every rank builds the same pair list and chunk grid, predicts the chunks ``rank, rank + world,
...`` and writes its atoms' rows into a *part*: ``rank<r>.indices.npy`` and ``rank<r>.data.npy``,
memory maps laid out as the whole matrix (only the rank's rows are written; the files are sparse)
plus ``rank<r>.atoms.npy``, each written by :func:`hforge.files.atomic_write` (in place when complete).  After a barrier, rank 0
merges the parts (:func:`merge_parts`) into the whole ``sisl.Hamiltonian``: the matrices of the
single-process chunked prediction, with its sparsity pattern, to the rounding of the model's dtype
(another process may sum in another order).
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hforge.errors import FileFormatError
from hforge.files import atomic_write
from hforge.infer.chunks import chunk_grid, chunk_of_atoms, copy_atom_rows
from hforge.infer.plan import DEFAULT_OUTPUT_DTYPE, memory_budget, output_dtype
from hforge.infer.predictor import Predictor
from hforge.infer.problem import Problem
from hforge.infer.report import PredictionReport, StageTimer, peak_rss_bytes, thread_count, torch_threads

__all__ = ["merge_parts", "predict_distributed", "predict_part"]


def _part(parts_dir: Path, rank: int, name: str) -> Path:
    return parts_dir / f"rank{rank}.{name}.npy"


def predict_part(
    predictor: Predictor,
    problem: Problem,
    grid: tuple[int, int, int],
    parts_dir: str | os.PathLike,
    rank: int,
    world: int,
    *,
    dtype: Any = DEFAULT_OUTPUT_DTYPE,
    backend: str = "auto",
    progress: bool | Callable[[int, int], None] = False,
) -> Path:
    """Predict this rank's chunks of ``grid`` into its part files under ``parts_dir``; returns the folder."""
    from numpy.lib.format import open_memmap

    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    mine = problem.occupied_chunks(grid)[rank::world]
    buffers = {
        "indices": ((problem.nnz,), problem.index_dtype),
        "data": ((problem.nnz, 2), dtype),
    }
    with ExitStack() as files:  # each part appears under its name only once complete
        maps = {
            name: open_memmap(files.enter_context(atomic_write(_part(parts_dir, rank, name), None)), mode="w+",
                              dtype=kind, shape=shape)
            for name, (shape, kind) in buffers.items()
        }
        predictor.passes.fill_chunks(
            problem, grid, mine, maps["indices"], maps["data"], dtype=dtype, backend=backend,
            timer=StageTimer(predictor.last_report), progress=progress,
        )
        for array in maps.values():
            array.flush()
    chunk = chunk_of_atoms(problem.frac, grid)
    with atomic_write(_part(parts_dir, rank, "atoms"), "wb") as f:
        np.save(f, np.flatnonzero(np.isin(chunk, mine)))
    return parts_dir


def merge_parts(predictor: Predictor, problem: Problem, parts_dir: str | os.PathLike, world: int) -> Any:
    """The whole ``sisl.Hamiltonian`` from the ``world`` parts under ``parts_dir``.

    Raises:
        FileFormatError: a missing part, or parts that do not cover every atom exactly once.
    """
    parts_dir = Path(parts_dir)
    indices, data = None, None
    seen = np.zeros(problem.n_atoms, dtype=np.int64)
    offset = problem.orbital_offset
    for rank in range(world):
        paths = [_part(parts_dir, rank, name) for name in ("atoms", "indices", "data")]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileFormatError(f"part of rank {rank} incomplete (missing {missing})", path=parts_dir)
        atoms = np.load(paths[0])
        part_indices, part_data = (np.load(p, mmap_mode="r") for p in paths[1:])
        if indices is None:
            indices = np.empty(problem.nnz, dtype=part_indices.dtype)
            data = np.empty((problem.nnz, 2), dtype=part_data.dtype)
        np.add.at(seen, atoms, 1)
        copy_atom_rows(atoms, offset, problem.indptr, 0, part_indices, part_data, problem.indptr, indices, data)
    if not (seen == 1).all():
        raise FileFormatError(
            f"parts cover {int((seen > 0).sum())} of {problem.n_atoms} atoms ({int((seen > 1).sum())} twice)",
            path=parts_dir,
        )
    return problem.csr(indices, data).to_sisl(problem.geometry(predictor.model.basis))


def predict_distributed(
    predictor: Predictor,
    structure: Any,
    parts_dir: str | os.PathLike,
    *,
    parts: int | None = None,
    max_memory: int | str | None = None,
    dtype: Any = DEFAULT_OUTPUT_DTYPE,
    backend: str = "auto",
    progress: bool | Callable[[int, int], None] = False,
    threads: int | None = None,
) -> Any:
    """Predict ``structure`` over the ranks of the default process group (initialised here from
    torchrun's environment if needed, gloo backend); rank 0 returns the ``sisl.Hamiltonian``,
    the others None.  ``parts_dir`` is removed after the merge.

    Spatial chunks ("chunked" mode): ``parts`` of them, or the fewest that fit ``max_memory``, and
    at least ``world``; ``threads``: torch's threads per rank (:func:`~hforge.infer.report.thread_count`).
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = PredictionReport(mode="distributed", device=str(predictor.device))
    predictor.last_report = report
    dtype, max_memory, threads = output_dtype(dtype), memory_budget(max_memory), thread_count(threads)
    problem = predictor.prepare(structure, timer=StageTimer(report))
    plan = predictor.plan(problem, dtype=dtype, max_memory=max_memory, mode="chunked", parts=parts)
    grid = plan.grid if int(np.prod(plan.grid)) >= world else chunk_grid(problem.arrays.cell, world)
    report.n_atoms, report.nnz, report.grid, report.n_parts = problem.n_atoms, problem.nnz, grid, int(np.prod(grid))
    report.n_orbitals = int(problem.n_orb.sum())
    report.csr_bytes = problem.csr_bytes(dtype)
    with torch_threads(threads) as report.torch_threads:
        predict_part(
            predictor, problem, grid, parts_dir, rank, world, dtype=dtype, backend=backend, progress=progress and rank == 0
        )
    dist.barrier()
    if rank != 0:
        return None
    hamiltonian = merge_parts(predictor, problem, parts_dir, world)
    shutil.rmtree(parts_dir, ignore_errors=True)
    report.peak_rss_bytes = peak_rss_bytes()
    return hamiltonian
