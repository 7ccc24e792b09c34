"""How a prediction runs: the mode and number of parts that fit a memory budget
(:func:`plan_prediction`), from a model of the working memory (:func:`estimate`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hforge.errors import InputError, ResourceLimitError
from hforge.infer.chunks import chunk_grid, interplanar_spacings
from hforge.infer.problem import Problem

__all__ = [
    "BATCH_BYTES",
    "BYTES_PER_GRAPH_ATOM",
    "BYTES_PER_OPERATOR_GRAPH_ATOM",
    "BYTES_PER_VALUE",
    "DEFAULT_OUTPUT_DTYPE",
    "DEFAULT_WORKING_BYTES",
    "MODES",
    "OUTPUT_DTYPES",
    "PART_COUNTS",
    "Plan",
    "check_parts",
    "estimate",
    "memory_budget",
    "output_dtype",
    "plan_prediction",
]

#: Prediction modes: the whole cell at once; whole-cell descriptors with blocks and assembly per
#: atom range ("streamed"); spatial chunks with halo clusters ("chunked", memory bounded for any size).
MODES = ("whole", "streamed", "chunked")

#: Dtypes of a prediction's output values.
OUTPUT_DTYPES = ("float64", "float32")

#: The output dtype of a prediction unless asked otherwise: float32.  A float32 model's H is float32
#: already; S rounded to float32 moves the full-S spectrum's states within ±2 eV of the gap by < 1 µeV
#: and the highest states (100-200 eV, along S's near-null directions) by ~10 meV (real aBN cells,
#: benchmarks/results/float32_output/, docs/measurements.md), for two thirds of float64's bytes.
DEFAULT_OUTPUT_DTYPE = "float32"

#: Units of :func:`memory_budget` (upper case).
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}

#: Working memory model (bytes), fitted to the peak RSS of aBN/DZP cells (docs/measurements.md): per
#: atom of a graph (interaction edges, trunk activations, head inputs, the node state the pair
#: ranges read) and per predicted block value of a chunk (model output and temporaries, before the
#: output dtype); the batches of pairs of whole and streamed predictions take :data:`BATCH_BYTES`
#: (reused), a separable operator's packed projections their exact size per touched atom.
BYTES_PER_GRAPH_ATOM = 75_000
#: The same for a model without free blocks (H0 + separable operator only: no pair-head inputs),
#: beside its packed projections (measured 18 kB per atom, docs/measurements.md).
BYTES_PER_OPERATOR_GRAPH_ATOM = 20_000
BYTES_PER_VALUE = 16
BATCH_BYTES = 2 * 10**8

#: Working memory (bytes beyond the output) a prediction without ``max_memory`` may use: the
#: memory goal is peak RSS <= output CSR + 2 GB, the process itself (Python, torch, numba, the
#: model) holding about half of it (docs/measurements.md).
DEFAULT_WORKING_BYTES = 10**9

#: Numbers of atom ranges or chunks tried, fewest first, when ``max_memory`` is below the whole cell's need.
PART_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 4096)


@dataclass(frozen=True)
class Plan:
    """How a structure is predicted: ``mode``, ``parts`` (atom ranges or chunks), chunk ``grid``,
    the estimated bytes of the output CSR and of the working memory beyond it, and whether the
    output is assembled where the model runs (False: chunks of a CUDA prediction gathered on the host)."""

    mode: str
    parts: int
    grid: tuple[int, int, int]
    csr_bytes: int
    working_bytes: int
    output_on_device: bool = True

    @property
    def total_bytes(self) -> int:
        return self.csr_bytes + self.working_bytes

    @property
    def device_bytes(self) -> int:
        """Bytes on the model's device (all of them on the CPU)."""
        return self.working_bytes + (self.csr_bytes if self.output_on_device else 0)


def memory_budget(value: int | float | str | None) -> int | None:
    """Bytes of a memory budget (``max_memory``, ``hforge predict --max-memory``): None (no budget),
    a number of bytes, or a size such as ``"8GB"``, ``"512 MiB"``, ``"1e9"``.

    Raises:
        InputError: anything else, or a size that is not finite and positive.
    """
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise InputError(f"max memory {value!r}: give bytes or a size such as 8GB, 512MB, 2GiB")
        try:
            number = float(match.group(1)) * _UNITS[unit]
        except ValueError:
            raise InputError(f"max memory {value!r}: not a number") from None
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InputError(f"max memory {value!r}: give bytes (a number) or a size such as '8GB'")
    if not (math.isfinite(number) and number >= 1):
        raise InputError(f"max memory {value!r}: give a finite, positive size (at least 1 byte)")
    return int(number)


def output_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype of a prediction's output values, one of :data:`OUTPUT_DTYPES`.

    Raises:
        InputError: any other dtype (float16 and integers are not kernels' output types).
    """
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in OUTPUT_DTYPES:
        raise InputError(f"dtype {dtype!r}: the output is {' or '.join(OUTPUT_DTYPES)}")
    return resolved


def check_parts(parts: Any, mode: str) -> None:
    """Refuse a ``parts`` that is not None or a whole number >= 1, or > 1 with mode ``whole`` (InputError)."""
    if parts is None:
        return
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise InputError(f"parts={parts!r}: give a whole number >= 1 of atom ranges or spatial chunks")
    if mode == "whole" and parts != 1:
        raise InputError(f"parts={parts}: mode 'whole' is one part; atom ranges are mode 'streamed', spatial chunks 'chunked'")


def estimate(
    problem: Problem, mode: str, parts: int, dtype: np.dtype, *, halo: float, on_gpu: bool, pack_bytes_per_atom: float = 0.0,
    graph_bytes_per_atom: float = BYTES_PER_GRAPH_ATOM,
) -> Plan:
    """The plan of ``mode`` in ``parts`` with its estimated working bytes beyond the output
    (``graph_bytes_per_atom``: :data:`BYTES_PER_GRAPH_ATOM` or :data:`BYTES_PER_OPERATOR_GRAPH_ATOM`;
    :data:`BATCH_BYTES`, :data:`BYTES_PER_VALUE`); ``halo`` (Å) is the depth of a chunk's cluster
    around it (the model's receptive field), ``pack_bytes_per_atom`` a separable operator's packed
    projections per atom (:meth:`~hforge.infer.passes.Physics.pack_bytes_per_atom`).

    Whole and streamed: the node state of the whole cell, the reused batches, and the projections
    of a range's touched atoms: a slab of ``1 / parts`` of the cell and the atoms up to one pair
    cut-off ahead of it (:meth:`~hforge.infer.problem.Problem.ranges`)."""
    per_value = BYTES_PER_VALUE + 2 * dtype.itemsize
    n_atoms, n_values = problem.n_atoms, problem.n_values
    grid = (1, 1, 1)
    if mode in ("whole", "streamed"):
        spacing = float(interplanar_spacings(problem.cell)[problem.sweep_axis])
        touched = min(1.0, 1.0 / parts + problem.pair_reach / spacing)
        working = n_atoms * (graph_bytes_per_atom + touched * pack_bytes_per_atom) + BATCH_BYTES
    else:
        grid = chunk_grid(problem.arrays.cell, parts)
        spacing = interplanar_spacings(problem.arrays.cell)
        cluster = float(np.prod((spacing / np.asarray(grid) + 2 * halo) / spacing))
        core_values = min(2 * n_values / int(np.prod(grid)), n_values)  # pairs touching the core
        local_csr = 2 * core_values * (2 * dtype.itemsize + 8)
        working = n_atoms * cluster * (graph_bytes_per_atom + pack_bytes_per_atom) + core_values * per_value + local_csr
    on_device = not (on_gpu and mode == "chunked")
    return Plan(
        mode, int(np.prod(grid)) if mode == "chunked" else parts, grid, problem.csr_bytes(dtype), int(working), on_device
    )


def plan_prediction(
    problem: Problem,
    *,
    halo: float,
    device: torch.device,
    dtype: np.dtype,
    max_memory: int | None = None,
    mode: str = "auto",
    parts: int | None = None,
    pack_bytes_per_atom: float = 0.0,
    graph_bytes_per_atom: float = BYTES_PER_GRAPH_ATOM,
) -> Plan:
    """Choose how to predict ``problem`` (``pack_bytes_per_atom``, ``graph_bytes_per_atom``: as :func:`estimate`).

    ``mode="auto"``: the whole cell when it fits the budget, else the fewest atom ranges
    ("streamed") that fit, else the fewest spatial chunks ("chunked").  The budget is
    ``max_memory``, or without one the output CSR plus :data:`DEFAULT_WORKING_BYTES` (the
    memory goal), where the plan of least working memory is taken when none fits.  An
    explicit ``mode`` uses ``parts`` ranges or chunks (default: the fewest that fit).  On
    CUDA the budget is device memory (default: what is free on the device): a cell whose
    output does not fit there is chunked, its rows gathered into host buffers.

    Raises:
        ResourceLimitError: ``max_memory`` below the output plus the smallest part (named).
        InputError: an unknown mode, ``parts`` not a whole number >= 1 (or > 1 with mode
            ``whole``), or chunks of a cell not periodic along a, b and c.
    """
    if mode not in ("auto", *MODES):
        raise InputError(f"mode {mode!r}: choose auto or one of {', '.join(MODES)}")
    check_parts(parts, mode)
    periodic = bool(problem.arrays.pbc.all())
    if mode == "chunked" and not periodic:
        raise InputError("chunked prediction needs a cell periodic along a, b and c")
    on_gpu = device.type == "cuda"
    budget = max_memory
    if budget is None:
        budget = problem.csr_bytes(dtype) + DEFAULT_WORKING_BYTES if not on_gpu else _free_device_bytes(device)
    modes = [mode] if mode != "auto" else ["whole", "streamed"] + (["chunked"] if periodic else [])
    candidates = []
    for name in modes:
        counts = [1] if name == "whole" else [parts] if parts else [c for c in PART_COUNTS if c <= max(problem.n_atoms, 2)]
        for count in counts:
            plan = estimate(problem, name, count, dtype, halo=halo, on_gpu=on_gpu, pack_bytes_per_atom=pack_bytes_per_atom,
                            graph_bytes_per_atom=graph_bytes_per_atom)
            if plan.device_bytes <= budget:
                return plan
            candidates.append(plan)
    best = min(candidates, key=lambda p: (p.device_bytes, p.working_bytes))
    if max_memory is None:  # no budget given: the least memory there is
        return best
    raise ResourceLimitError(
        f"max_memory={_gb(max_memory)} is below what this prediction needs: at least {_gb(best.device_bytes)} "
        f"(output CSR {_gb(best.csr_bytes if best.output_on_device else 0)} + {best.mode} in {best.parts} parts, "
        f"{_gb(best.working_bytes)})"
    )


def _free_device_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device (bytes), 10 % kept back for torch's caching allocator and CuPy's pool."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(0.9 * free)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"
