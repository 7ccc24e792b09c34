"""``hforge.load(...)`` -> :class:`Predictor`: structure -> ``sisl.Hamiltonian`` (H with S), in bounded memory.

The output's row pointer follows from the pair list alone, so the output buffers are allocated
once (pages mapped up front, :func:`populated_empty`) and filled by one of three modes
(docs/design.md, "Inference"):

- ``whole``: the model's node pass over the periodic cell, then every block pair at once;
- ``streamed``: the node pass over the whole cell once (O(N) memory), then per contiguous atom
  range the blocks of the canonical pairs whose first atom is in it, each pair evaluated once and
  written straight into the final buffers, its block into its rows and its transpose into its
  partner's (``AssemblyPlan.fill(pairs=...)``): working memory O(N + pairs / ranges);
- ``chunked``: spatial chunks (:mod:`hforge.infer.chunks`), each predicted inside a cluster of its
  atoms plus a halo as deep as the model's reach; only its atoms' rows are copied into the buffers.
  Memory is the output plus one chunk, for any cell size.

All three give the whole cell's matrices to float rounding; the plan picks the first that fits
``max_memory`` (default: the output plus :data:`DEFAULT_WORKING_BYTES`).  Every mode composes the
model's public passes (:meth:`~hforge.models.HSModel.node_pass`,
:meth:`~hforge.models.HSModel.pair_pass`, :meth:`~hforge.models.HSModel.physical_blocks`): the one
route from a structure to H and S, which :func:`predict_hamiltonian` (a model and a structure) takes too.

Devices: on CUDA (``device="cuda"``) the node and pair passes run on the GPU (CG blocks by the
Triton kernels), the exact S and H0 on the CPU (numba, copied over), the assembly by the CuPy
kernels straight into CSR buffers on the device; ``max_memory`` is device memory there, and a cell
whose output does not fit on the device is chunked into host buffers.
"""

from __future__ import annotations

import functools
import mmap
import os
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from hforge.errors import BackendUnavailableError, FileFormatError, InputError, ResourceLimitError
from hforge.graph.model_graph import GraphBatch, StructureArrays, structure_arrays
from hforge.graph.neighbours import neighbour_list
from hforge.infer.chunks import (
    Cluster,
    chunk_grid,
    chunk_of_atoms,
    cluster_of_chunk,
    copy_atom_rows,
    csr_row_pointer,
    fractional,
    interplanar_spacings,
    receptive_field,
)
from hforge.infer.overlap import check_learned_overlap
from hforge.io.pairs import block_pointer
from hforge.models.base import HSModel
from hforge.models.predict import sisl_geometry
from hforge.ops.assemble import AssembledCSR, plan_csr_assembly
from hforge.ops.assemble.layout import default_index_dtype
from hforge.structures.validate import validate_structure

__all__ = [
    "DEFAULT_WORKING_BYTES",
    "MODES",
    "PREDICTION_STAGES",
    "Plan",
    "PredictionReport",
    "Predictor",
    "Problem",
    "peak_rss_bytes",
    "populated_empty",
    "predict_hamiltonian",
    "read_frames",
    "read_structure",
    "resolve_device",
]

#: Stages timed in :attr:`PredictionReport.seconds`: neighbour lists and graphs; the model's node
#: pass (trunk, head inputs, onsite blocks); its pair pass (hopping blocks of the learned heads);
#: the exact overlap S; the baseline H0; CSR planning, filling and the hand-over to sisl.
PREDICTION_STAGES = ("neighbour list", "trunk", "heads", "S", "H0", "assembly")

#: Working memory model (bytes), from the peak RSS of aBN/DZP cells with the default config
#: (benchmarks/results/inference_scaling: 0.5-0.7 GB beyond the output and the process's baseline
#: at 10^4-2x10^4 atoms): per atom of a graph (interaction edges, trunk activations, head inputs)
#: and per predicted block value (model output and temporaries, before the output dtype).
BYTES_PER_GRAPH_ATOM = 25_000
BYTES_PER_VALUE = 16

#: Working memory (bytes beyond the output) a prediction without ``max_memory`` may use: the
#: memory goal is peak RSS <= output CSR + 2 GB, the process itself (Python, torch, numba, the
#: model) holding about 0.9 GB of it.
DEFAULT_WORKING_BYTES = 10**9

#: Numbers of atom ranges or chunks tried, fewest first, when ``max_memory`` is below the whole cell's need.
PART_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 4096)

#: Block pairs per step of the model's pair pass in inference: its temporaries (the radial
#: weights: about 7 KB per pair in the default config) stay below glibc's 32 MB mmap threshold, so
#: that every step reuses the heap's pages instead of faulting fresh ones (65536 pairs per step
#: took 20x the page faults and 1.2x the CPU time of 8192 on a 4000-atom cell, one thread).
PAIR_CHUNK = 8192

#: Interaction edges per step of the model's node pass in inference (:meth:`HSModel.node_pass`'s
#: ``chunk``) on the CPU: the trunk's edge messages of a step (about 8 KB per edge with l = 3
#: features) stay in the heap's reused pages.  At 10^4 atoms (4x10^5 edges, abn-dzp, 2 threads)
#: the node pass took 23.4 s and 6.5 GB unchunked, 6.8 s and 0.7 GB in steps of 4096 edges (16384:
#: 9.2 s, 1024: 10.6 s).  On CUDA the steps are :data:`DEVICE_EDGE_CHUNK` edges.
EDGE_CHUNK = 4096
DEVICE_EDGE_CHUNK = 1 << 16

#: Arrays from this size on are mapped with their pages populated (:func:`populated_empty`).
POPULATE_BYTES = 1 << 26


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device of ``device``: ``None`` or ``"auto"`` is CUDA when usable, else the CPU
    (MACE's naming: ``"cuda"``, ``"cuda:1"``, ``"cpu"``).

    Raises:
        BackendUnavailableError: a CUDA device asked for where torch sees none.
        InputError: a device that is neither CPU nor CUDA.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r}: choose cuda, cuda:N or cpu ({exc})") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {str(device)!r}: choose cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {str(device)!r}: torch sees no usable CUDA GPU here (use --device cpu)")
    return device


def populated_empty(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose pages are mapped and zeroed up front (Linux ``MAP_POPULATE``).

    Output buffers of large cells are GB: first-touch page faults, one per 4 KiB page, cost more
    than the writes themselves (measured 1-4 s per GB on a 2-core VM, against 0.5-0.7 s per GB
    populated in one system call).  Below :data:`POPULATE_BYTES`, or off Linux, a plain ``np.empty``.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    flag = getattr(mmap, "MAP_POPULATE", None)
    if nbytes < POPULATE_BYTES or flag is None or not sys.platform.startswith("linux"):
        return np.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flag)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes; Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_frames(path: str | os.PathLike) -> list[Any]:
    """Every frame of a structure file (``ase.io.read(path, index=":")``) as ``ase.Atoms``.

    Raises:
        FileFormatError: a missing or unreadable file, or one without a frame.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileFormatError("a folder, not a structure file" if path.is_dir() else "no such structure file", path=path)
    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises many types for unreadable files
        raise FileFormatError(f"ASE cannot read a structure from it: {type(exc).__name__}: {exc}", path=path) from exc
    if not frames:
        raise FileFormatError("ASE reads no structure from it", path=path)
    return list(frames)


def read_structure(path: str | os.PathLike, *, index: int | None = None) -> Any:
    """One ``ase.Atoms`` read from any file ASE reads: its only frame, or frame ``index``.

    A file of several frames (a trajectory, a multi-structure ``.xyz``) needs ``index``: it is
    refused rather than silently reduced to one frame; :func:`read_frames` gives them all
    (``hforge predict`` predicts each).

    Raises:
        FileFormatError: a missing or unreadable file.
        InputError: several frames and no ``index``, or an ``index`` beyond them.
    """
    frames = read_frames(path)
    if index is None:
        if len(frames) > 1:
            raise InputError(
                f"holds {len(frames)} structures (frames), a prediction takes one: pass a frame "
                "(hforge.infer.read_structure(path, index=k)) or all of them "
                "(predictor.predict_many(hforge.infer.read_frames(path)); `hforge predict` writes one file per frame)",
                path=path,
            )
        return frames[0]
    if not -len(frames) <= index < len(frames):
        raise InputError(f"frame {index} asked for, the file holds {len(frames)}", path=path)
    return frames[index]


@dataclass
class PredictionReport:
    """What the last prediction did: sizes, device, mode, parts (``n_chunks``: atom ranges or
    chunks), torch's intra-op threads, wall time per stage (s, :data:`PREDICTION_STAGES`) and the CPU time of the process
    (all threads) in it, which a machine shared with other jobs stretches far less than the
    wall time, memory (bytes: output CSR, estimated total, peak RSS of the process so far)."""

    n_atoms: int = 0
    device: str = "cpu"
    nnz: int = 0
    mode: str = "whole"
    n_chunks: int = 1
    grid: tuple[int, int, int] = (1, 1, 1)
    csr_bytes: int = 0
    estimated_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PREDICTION_STAGES, 0.0))
    cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PREDICTION_STAGES, 0.0))
    peak_rss_bytes: int = 0
    torch_threads: int = 0

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


class _Timer:
    """``with timer(stage):`` adds the block's wall time to ``report.seconds[stage]`` and the
    process's CPU time in it to ``report.cpu_seconds[stage]``."""

    def __init__(self, report: PredictionReport) -> None:
        self.report = report

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.report.seconds[stage] += time.perf_counter() - start
            self.report.cpu_seconds[stage] += time.process_time() - cpu_start


#: Prediction modes: the whole cell at once; whole-cell descriptors with blocks and assembly per
#: atom range ("streamed"); spatial chunks with halo clusters ("chunked", memory bounded for any size).
MODES = ("whole", "streamed", "chunked")


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


class Predictor:
    """A trained model ready to predict H and S of structures.

    Args:
        model: an :class:`~hforge.models.HSModel` (put in evaluation mode and moved to ``device``).
        source: where it came from (a path or a bundled name), shown in reports.
        device: ``"cuda"``, ``"cuda:N"``, ``"cpu"``, or None: CUDA when usable (:func:`resolve_device`).
    """

    def __init__(self, model: HSModel, *, source: str | None = None, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.source = source
        self.builder = model.graph_builder()
        self.pair_cutoffs = self.builder.pair_cutoffs()
        self.halo = receptive_field(model.config, float(self.pair_cutoffs.max()))
        self.last_report = PredictionReport()

    def __repr__(self) -> str:
        config = self.model.config
        return f"Predictor({config.kind}, species={list(config.species)}, device={str(self.device)!r}, source={self.source!r})"

    @property
    def species(self) -> tuple[str, ...]:
        return tuple(self.model.basis.symbols)

    @property
    def edge_chunk(self) -> int:
        """Interaction edges per step of the node pass (:data:`EDGE_CHUNK`, :data:`DEVICE_EDGE_CHUNK` on CUDA)."""
        return DEVICE_EDGE_CHUNK if self.on_gpu else EDGE_CHUNK

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    # ---- inputs ---------------------------------------------------------------------------------
    def arrays(self, structure: Any, *, species: Sequence[str] | None = None) -> StructureArrays:
        """The checked arrays of ``structure`` (``ase.Atoms``, ``sisl.Geometry``, ``HSData`` or a file path).

        Raises:
            FileFormatError: an unreadable file.
            UnknownSpeciesError: a species the model was not trained on.
            GeometryError: no atoms, NaN/inf positions, an empty or degenerate cell, atoms closer than 0.5 Å.
        """
        path = None
        if isinstance(structure, (str, os.PathLike)):
            path = structure
            structure = read_structure(structure)
        try:
            arrays = structure_arrays(structure, self.model.basis, species=species)
            from ase import Atoms

            validate_structure(Atoms(positions=arrays.positions, cell=arrays.cell, pbc=arrays.pbc), path=path)
        except InputError as error:
            if path is not None and error.path is None:
                raise type(error)(error.message, path=path) from None
            raise
        return arrays

    # ---- planning -------------------------------------------------------------------------------
    def plan(
        self, problem: "Problem", *, dtype: Any = np.float64, max_memory: int | None = None, mode: str = "auto",
        parts: int | None = None,
    ) -> Plan:
        """Choose how to predict ``problem``.

        ``mode="auto"``: the whole cell when it fits the budget, else the fewest atom ranges
        ("streamed") that fit, else the fewest spatial chunks ("chunked").  The budget is
        ``max_memory``, or without one the output CSR plus :data:`DEFAULT_WORKING_BYTES` (the
        memory goal), where the plan of least working memory is taken when none fits.  An
        explicit ``mode`` uses ``parts`` ranges or chunks (default: the fewest that fit).  On
        CUDA the budget is device memory (default: what is free on the device): a cell whose
        output does not fit there is chunked, its rows gathered into host buffers.

        Raises:
            ResourceLimitError: ``max_memory`` below the output plus the smallest part (named).
            InputError: an unknown mode, or chunks of a cell not periodic along a, b and c.
        """
        dtype = np.dtype(dtype)
        if mode not in ("auto", *MODES):
            raise InputError(f"mode {mode!r}: choose auto or one of {', '.join(MODES)}")
        periodic = bool(problem.arrays.pbc.all())
        if mode == "chunked" and not periodic:
            raise InputError("chunked prediction needs a cell periodic along a, b and c")
        budget = max_memory
        if budget is None:
            budget = problem.csr_bytes(dtype) + DEFAULT_WORKING_BYTES if not self.on_gpu else _free_device_bytes(self.device)
        modes = [mode] if mode != "auto" else ["whole", "streamed"] + (["chunked"] if periodic else [])
        candidates = []
        for name in modes:
            counts = [1] if name == "whole" else [parts] if parts else [c for c in PART_COUNTS if c <= max(problem.n_atoms, 2)]
            for count in counts:
                plan = self._estimate(problem, name, count, dtype)
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

    def _estimate(self, problem: "Problem", mode: str, parts: int, dtype: np.dtype) -> Plan:
        """Estimated working bytes beyond the output (see :data:`BYTES_PER_GRAPH_ATOM`, :data:`BYTES_PER_VALUE`)."""
        per_value = BYTES_PER_VALUE + 2 * dtype.itemsize
        n_atoms, n_values = problem.n_atoms, problem.n_values
        grid = (1, 1, 1)
        if mode in ("whole", "streamed"):  # every pair once, in the range of its first atom
            working = n_atoms * BYTES_PER_GRAPH_ATOM + min(1.2 * n_values / parts, n_values) * per_value
        else:
            grid = chunk_grid(problem.arrays.cell, parts)
            spacing = interplanar_spacings(problem.arrays.cell)
            cluster = float(np.prod((spacing / np.asarray(grid) + 2 * self.halo) / spacing))
            core_values = min(2 * n_values / int(np.prod(grid)), n_values)  # pairs touching the core
            local_csr = 2 * core_values * (2 * dtype.itemsize + 8)
            working = n_atoms * cluster * BYTES_PER_GRAPH_ATOM + core_values * per_value + local_csr
        on_device = not (self.on_gpu and mode == "chunked")
        return Plan(
            mode, int(np.prod(grid)) if mode == "chunked" else parts, grid, problem.csr_bytes(dtype), int(working), on_device
        )

    # ---- prediction -----------------------------------------------------------------------------
    def predict(
        self,
        structure: Any,
        *,
        backend: str = "auto",
        dtype: Any = np.float64,
        max_memory: int | None = None,
        mode: str = "auto",
        parts: int | None = None,
        species: Sequence[str] | None = None,
        nsc: Sequence[int] | None = None,
        progress: bool | Callable[[int, int], None] = False,
        threads: int | None = None,
        source: str | None = None,
    ) -> Any:
        """H and S of ``structure`` as a non-orthogonal ``sisl.Hamiltonian`` (host memory).

        Args:
            structure: ``ase.Atoms``, ``sisl.Geometry``, :class:`~hforge.io.HSData` or a path to a
                file ASE reads.
            backend: CSR assembly backend (``"auto"``: numba on the CPU, cupy on CUDA; ``"torch"``).
            dtype: dtype of the output values (the model computes in its own precision).
            max_memory: bytes the prediction may allocate (output CSR included, the process's
                baseline not; device memory on CUDA); None: the memory goal (see :meth:`plan`).
            mode: ``"auto"`` (see :meth:`plan`), ``"whole"``, ``"streamed"`` or ``"chunked"``.
            parts: atom ranges ("streamed") or about this many spatial chunks ("chunked").
            species: one species label per atom, overriding the structure's.
            nsc: supercells of the result (odd, at least the pairs' reach; default: their reach).
            progress: a tqdm bar over ranges/chunks (True), or a callback ``(done, total)``.
            threads: torch's intra-op threads during the prediction (restored after); None:
                one where the machine is oversubscribed, else torch's setting (:func:`_torch_threads`).
            source: what is predicted, named in warnings (default: ``structure`` when it is a path).

        Returns:
            ``sisl.Hamiltonian``: the unshifted H (eV; SIESTA's energy zero, E_F = 0) and S,
            atoms in the structure's order, orbitals in SIESTA order, supercells (``nsc``) the reach
            of the pairs ``|r_ij| < r_i + r_j``.  :attr:`last_report` describes the run.

        Raises:
            UnknownSpeciesError, GeometryError, FileFormatError: bad input (see :meth:`arrays`),
                before any heavy work.
            ResourceLimitError: ``max_memory`` below the output plus the smallest part.

        Warns:
            OverlapWarning: a model with a learned S predicted an S(Γ) that is not positive
                definite, or one too large to check (:mod:`hforge.infer.overlap`).
        """
        csr, problem = self._predict(
            structure, backend=backend, dtype=dtype, max_memory=max_memory, mode=mode, parts=parts, species=species,
            nsc=nsc, progress=progress, threads=threads,
        )
        timer = _Timer(self.last_report)
        with timer("assembly"):
            hamiltonian = _on_host(csr).to_sisl(problem.geometry(self.model.basis))
        if source is None and isinstance(structure, (str, os.PathLike)):
            source = str(structure)
        check_learned_overlap(self.model, hamiltonian, source=source)
        self.last_report.peak_rss_bytes = peak_rss_bytes()
        return hamiltonian

    def predict_csr(self, structure: Any, **options: Any) -> AssembledCSR:
        """H and S of ``structure`` as an :class:`~hforge.ops.assemble.AssembledCSR` (``data[:, 0]``
        H in eV, ``data[:, 1]`` S), left where it was assembled: CuPy arrays on CUDA (unless the
        cell was chunked into host memory), for GPU eigensolvers (``csr.to_cupy(0)``,
        ``csr.to_cupy(1)``), numpy on the CPU.  Options as :meth:`predict`."""
        csr, _ = self._predict(structure, **options)
        self.last_report.peak_rss_bytes = peak_rss_bytes()
        return csr

    def _predict(
        self, structure: Any, *, backend: str = "auto", dtype: Any = np.float64, max_memory: int | None = None,
        mode: str = "auto", parts: int | None = None, species: Sequence[str] | None = None,
        nsc: Sequence[int] | None = None, progress: bool | Callable[[int, int], None] = False,
        threads: int | None = None,
    ) -> tuple[AssembledCSR, "Problem"]:
        report = PredictionReport(device=str(self.device))
        self.last_report = report
        timer = _Timer(report)
        dtype = np.dtype(dtype)
        problem = self.prepare(structure, species=species, nsc=nsc, timer=timer)
        report.n_atoms, report.nnz = problem.n_atoms, problem.nnz
        plan = self.plan(problem, dtype=dtype, max_memory=max_memory, mode=mode, parts=parts)
        report.mode, report.grid, report.n_chunks = plan.mode, plan.grid, plan.parts
        report.csr_bytes, report.estimated_bytes = plan.csr_bytes, plan.total_bytes
        with _torch_threads(threads) as report.torch_threads:
            if plan.mode in ("whole", "streamed"):
                csr = self.fill_ranges(problem, plan.parts, dtype=dtype, backend=backend, timer=timer, progress=progress)
            else:
                indices, data = problem.allocate(dtype)
                occupied = problem.occupied_chunks(plan.grid)
                self.fill_chunks(
                    problem, plan.grid, occupied, indices, data, dtype=dtype, backend=backend, timer=timer, progress=progress
                )
                csr = problem.csr(indices, data)
        return csr, problem

    def prepare(
        self, structure: Any, *, species: Sequence[str] | None = None, nsc: Sequence[int] | None = None,
        timer: "_Timer | None" = None,
    ) -> "Problem":
        """Checked arrays, canonical block pairs and the output CSR row pointer of ``structure``.

        Raises:
            as :meth:`arrays`; InputError: an ``nsc`` that is not 3 odd integers reaching every pair.
        """
        timer = timer or _Timer(PredictionReport())
        arrays = self.arrays(structure, species=species)
        with timer("neighbour list"):
            n_atoms = len(arrays.positions)
            hopping = neighbour_list(
                arrays.positions, arrays.cell, arrays.pbc, self.pair_cutoffs, species=arrays.species, half=True
            )
            n_orb = self.model.basis.n_orbitals[arrays.species]
            onsite = np.arange(n_atoms, dtype=np.int64)
            edge_index = np.concatenate([np.stack([onsite, onsite]), hopping.edge_index], axis=1)
            cell_shift = np.concatenate([np.zeros((n_atoms, 3), dtype=np.int64), hopping.cell_shift])
            reach = np.abs(cell_shift).max(axis=0)
            if nsc is None:
                nsc = tuple(2 * int(r) + 1 for r in reach)
            nsc = tuple(int(n) for n in nsc)
            if len(nsc) != 3 or any(n % 2 == 0 or n < 2 * int(r) + 1 for n, r in zip(nsc, reach)):
                raise InputError(f"nsc {list(nsc)}: give 3 odd integers of at least {[2 * int(r) + 1 for r in reach]}")
            return Problem(
                arrays=arrays,
                edge_index=edge_index,
                cell_shift=cell_shift,
                n_orb=n_orb,
                nsc=nsc,
                indptr=csr_row_pointer(edge_index, cell_shift, n_orb),
                n_values=int((n_orb[edge_index[0]] * n_orb[edge_index[1]]).sum()),
            )

    def predict_many(
        self, structures: Iterable[Any], *, batch_atoms: int = 2048, backend: str = "auto", dtype: Any = np.float64
    ) -> list[Any]:
        """H and S of many small structures (whole cells), batched through the model.

        Args:
            structures: as :meth:`predict`; all are checked before the first model pass.
            batch_atoms: atoms per model pass (a larger structure gets a pass of its own).
            backend, dtype: as :meth:`predict`.

        Returns:
            One ``sisl.Hamiltonian`` per structure, in order.
        """
        from hforge.graph.model_graph import collate
        from hforge.models.predict import assemble_prediction

        dtype = np.dtype(dtype)
        graphs = [self.builder.from_arrays(self.arrays(s), name=f"structure {k}") for k, s in enumerate(structures)]
        results: list[Any] = []
        batch: list[GraphBatch] = []
        backend = "numba" if backend == "auto" else backend  # blocks come back to the host

        def flush() -> None:
            if not batch:
                return
            graph = collate(batch)
            # no_grad, not inference_mode: per-basis tables cached during a prediction (CG
            # descriptors) must stay usable by autograd when the same process trains later.
            with torch.no_grad():
                blocks = self.model(graph)
            blocks = type(blocks)(h=blocks.h.to(_torch_dtype(dtype)), s=blocks.s.to(_torch_dtype(dtype)))
            results.extend(assemble_prediction(self.model, graph, blocks, b, backend=backend) for b in range(graph.n_graphs))
            for hamiltonian in results[len(results) - graph.n_graphs :]:
                check_learned_overlap(self.model, hamiltonian)
            batch.clear()

        for graph in graphs:
            if batch and sum(g.n_atoms for g in batch) + graph.n_atoms > batch_atoms:
                flush()
            batch.append(graph)
        flush()
        return results

    # ---- the modes ------------------------------------------------------------------------------
    def fill_ranges(
        self,
        problem: "Problem",
        n_ranges: int,
        *,
        dtype: Any = np.float64,
        backend: str = "auto",
        timer: "_Timer | None" = None,
        progress: bool | Callable[[int, int], None] = False,
    ) -> AssembledCSR:
        """The whole matrices by atom ranges ("whole": one range; "streamed").

        The model's node pass over the whole cell once; then per contiguous atom range, the
        blocks of the canonical pairs whose first atom is in it (onsite blocks from the node
        pass, hopping blocks from the pair pass, plus H0 and the exact S), every pair once,
        written by :meth:`~hforge.ops.assemble.AssemblyPlan.fill` with ``pairs=`` into the
        final buffers (the block into its rows, its transpose into its partner's).  On the CPU
        a range goes in batches of :data:`PAIR_CHUNK` pairs, model to buffers, so that no
        temporary outgrows the heap's reused pages; on CUDA a range is one batch, and the
        buffers are on the device.
        """
        timer = timer or _Timer(PredictionReport())
        arrays, model, dtype = problem.arrays, self.model, np.dtype(dtype)
        n_atoms, n_orb = problem.n_atoms, problem.n_orb
        xp = _array_module(self.on_gpu)
        physics = _Physics(model, arrays)
        with timer("neighbour list"):
            graph = self._graph(arrays, arrays.positions, problem.edge_index, problem.cell_shift, arrays.pbc)
        with timer("trunk"), torch.no_grad():
            state = model.node_pass(graph, chunk=self.edge_chunk)
        del graph
        with timer("assembly"):
            plan = plan_csr_assembly(
                xp.asarray(problem.edge_index), xp.asarray(problem.cell_shift), xp.asarray(problem.block_ptr),
                xp.asarray(n_orb), nsc=problem.nsc, backend=backend,
            )
            if plan.nnz != problem.nnz:
                raise AssertionError("assembly planned with another nnz than the pair list's row pointer")
            indices, data = problem.allocate(dtype, on_gpu=self.on_gpu)

        hop_rows = problem.edge_index[0, n_atoms:]
        onsite_ptr = np.concatenate([[0], np.cumsum(n_orb**2)])
        bounds = np.linspace(0, n_atoms, n_ranges + 1).round().astype(np.int64)
        bar = _progress_bar(progress, n_ranges)
        for k in range(n_ranges):
            a0, a1 = int(bounds[k]), int(bounds[k + 1])
            first, last = (int(x) + n_atoms for x in np.searchsorted(hop_rows, [a0, a1]))
            # H0 and S of the whole range at once: H0's projections are shared by neighbouring pairs
            exact = self._physics(problem, physics, np.concatenate([np.arange(a0, a1), np.arange(first, last)]), timer)
            value = np.concatenate([[0], np.cumsum(np.diff(problem.block_ptr)[np.r_[a0:a1, first:last]])])
            step = PAIR_CHUNK if not self.on_gpu else max(a1 - a0, last - first, 1)
            batches = [(lo, min(lo + step, a1), lo - a0) for lo in range(a0, a1, step)]
            batches += [(lo, min(lo + step, last), lo - first + a1 - a0) for lo in range(first, last, step)]
            for lo, hi, local in batches:
                with timer("heads"), torch.no_grad():
                    if lo < n_atoms:  # onsite blocks: from the node pass
                        learned = [on[onsite_ptr[lo] : onsite_ptr[hi]] for on in state.onsite]
                    else:  # hopping blocks: the pair pass
                        pairs, shifts = problem.edge_index[:, lo:hi], problem.cell_shift[lo:hi]
                        chunk = PAIR_CHUNK if not self.on_gpu else None
                        learned = model.pair_pass(state, torch.from_numpy(pairs), torch.from_numpy(shifts), chunk=chunk)
                with timer("assembly"), torch.no_grad():
                    window = slice(value[local], value[local + hi - lo])
                    blocks = self._output_blocks(learned, *(None if x is None else x[window] for x in exact), dtype)
                    plan.fill(blocks, pairs=xp.arange(lo, hi), indices_out=indices, data_out=data)
            del exact
            bar(k + 1)
        bar(None)
        return problem.csr(indices, data)

    def _physics(
        self, problem: "Problem", physics: "_Physics", pairs: np.ndarray, timer: _Timer
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(H0, exact S)`` of the canonical ``pairs`` of ``problem`` (float64, flat; None where
        the model does not use them)."""
        edges, shifts = problem.edge_index[:, pairs], problem.cell_shift[pairs]
        ptr = block_pointer(problem.n_orb, edges)
        with timer("H0"):
            baseline = physics.baseline(edges, shifts, ptr)
        with timer("S"):
            overlap = physics.overlap(edges, shifts, ptr)
        return baseline, overlap

    def _output_blocks(
        self, learned: list[torch.Tensor], baseline: np.ndarray | None, overlap: np.ndarray | None, dtype: np.dtype
    ) -> list[Any]:
        """``[H, S]`` as output arrays (numpy, or cupy on CUDA) of ``dtype``: the learned blocks
        (model's dtype and device) with H0 and the exact S (:meth:`~hforge.models.HSModel.physical_blocks`)."""
        blocks = self.model.physical_blocks(learned, _tensor(baseline), _tensor(overlap))
        return [_output_array(values, dtype) for values in (blocks.h, blocks.s)]

    def _graph(self, arrays, positions, pair_index, pair_shift, pbc, species=None) -> GraphBatch:
        """Model graph on given block pairs (onsite pairs of every atom first)."""
        species = arrays.species if species is None else species
        interaction = neighbour_list(positions, arrays.cell, pbc, self.model.config.r_max)
        return GraphBatch(
            positions=torch.from_numpy(np.array(positions)),  # copies: a store's arrays are read-only memory maps
            species=torch.from_numpy(np.array(species)),
            cell=torch.from_numpy(arrays.cell.copy())[None],
            pbc=torch.from_numpy(np.asarray(pbc).copy())[None],
            atom_ptr=torch.tensor([0, len(positions)]),
            edge_index=torch.from_numpy(interaction.edge_index),
            edge_shift=torch.from_numpy(interaction.cell_shift),
            pair_index=torch.from_numpy(np.ascontiguousarray(pair_index)),
            pair_shift=torch.from_numpy(np.ascontiguousarray(pair_shift)),
            pair_ptr=torch.tensor([0, pair_index.shape[1]]),
            block_ptr=torch.from_numpy(block_pointer(self.model.basis.n_orbitals[species], pair_index)),
        )

    def chunk_rows(
        self, problem: "Problem", cluster: Cluster, *, dtype: np.dtype, backend: str = "auto", timer: _Timer | None = None,
        physics: "_Physics | None" = None,
    ) -> AssembledCSR:
        """A CSR (host memory) over the rows from the first to the last core atom of ``cluster``;
        the core atoms' rows are complete (the others' are not and are to be ignored).  Learned
        blocks come from the model on the cluster, H0 and the exact S from the periodic cell."""
        timer = timer or _Timer(PredictionReport())
        arrays, n_orb = problem.arrays, problem.n_orb
        physics = physics or _Physics(self.model, arrays)
        xp = _array_module(self.on_gpu)
        with timer("neighbour list"):
            core = cluster.atoms[: cluster.n_core]
            in_core = np.zeros(problem.n_atoms, dtype=bool)
            in_core[core] = True
            # canonical pairs touching the core: its onsite pairs (in core order), then hopping pairs
            pairs = np.flatnonzero(in_core[problem.edge_index[0]] | in_core[problem.edge_index[1]])
            hopping = pairs[pairs >= problem.n_atoms]
            hop_pairs, hop_shifts = problem.edge_index[:, hopping], problem.cell_shift[hopping]
            # the block of (i, j, n) is the cluster pair of the same vector: (i, j at n) or (i at -n, j)
            row_in_core = in_core[hop_pairs[0]]
            core_index = np.full(problem.n_atoms, -1, dtype=np.int64)
            core_index[core] = np.arange(cluster.n_core)
            wrapped = hop_shifts + problem.wrap[hop_pairs[1]] - problem.wrap[hop_pairs[0]]  # between wrapped positions
            ci = np.where(row_in_core, core_index[hop_pairs[0]], cluster.lookup(hop_pairs[0], -wrapped))
            cj = np.where(row_in_core, cluster.lookup(hop_pairs[1], wrapped), core_index[hop_pairs[1]])
            if (ci < 0).any() or (cj < 0).any():
                raise AssertionError("chunk halo misses a pair partner (halo narrower than the pair cut-off)")
            cluster_pairs = np.stack([ci, cj])
            graph = self._graph(
                arrays, cluster.positions(arrays.positions, problem.wrap, arrays.cell), cluster_pairs,
                np.zeros((cluster_pairs.shape[1], 3), dtype=np.int64), np.zeros(3, dtype=bool),
                species=arrays.species[cluster.atoms],
            )
        with timer("trunk"), torch.no_grad():
            state = self.model.node_pass(graph, chunk=self.edge_chunk)
        with timer("heads"), torch.no_grad():
            zeros = torch.zeros((cluster_pairs.shape[1], 3), dtype=torch.int64)
            hopping_blocks = self.model.pair_pass(state, torch.from_numpy(cluster_pairs), zeros, chunk=PAIR_CHUNK)
            core_end = int(np.sum(n_orb[core] ** 2))  # the core atoms come first in the cluster
            learned = [torch.cat([on[:core_end], hop]) for on, hop in zip(state.onsite, hopping_blocks)]
        exact = self._physics(problem, physics, pairs, timer)
        with timer("assembly"), torch.no_grad():
            values = self._output_blocks(learned, *exact, dtype)
            edges, edge_shifts = problem.edge_index[:, pairs], problem.cell_shift[pairs]
            span = (int(core.min()), int(core.max()) + 1)
            plan = plan_csr_assembly(
                xp.asarray(edges), xp.asarray(edge_shifts), xp.asarray(block_pointer(n_orb, edges)), xp.asarray(n_orb),
                nsc=problem.nsc, atoms=span, backend=backend,
            )
            return _on_host(plan.fill(values))

    def fill_chunks(
        self,
        problem: "Problem",
        grid: tuple[int, int, int],
        chunk_ids: Sequence[int],
        indices: np.ndarray,
        data: np.ndarray,
        *,
        dtype: np.dtype,
        backend: str = "auto",
        timer: _Timer | None = None,
        progress: bool | Callable[[int, int], None] = False,
    ) -> None:
        """Predict the chunks ``chunk_ids`` of ``grid`` and write their atoms' rows into the
        whole-matrix buffers ``indices (nnz,)`` and ``data (nnz, 2)`` (host arrays or memory maps)."""
        timer = timer or _Timer(PredictionReport())
        frac = problem.frac
        chunk = chunk_of_atoms(frac, grid)
        physics = _Physics(self.model, problem.arrays)
        bar = _progress_bar(progress, len(chunk_ids))
        for done, index in enumerate(chunk_ids, start=1):
            cluster = cluster_of_chunk(frac, chunk, int(index), grid, problem.arrays.cell, self.halo)
            rows = self.chunk_rows(problem, cluster, dtype=dtype, backend=backend, timer=timer, physics=physics)
            with timer("assembly"):
                copy_atom_rows(
                    cluster.atoms[: cluster.n_core], problem.orbital_offset, rows.indptr, rows.row_offset,
                    rows.indices, rows.data, problem.indptr, indices, data,
                )
            del rows
            bar(done)
        bar(None)


def predict_hamiltonian(
    model: HSModel,
    structure: Any,
    *,
    species: Sequence[str] | None = None,
    backend: str = "auto",
    nsc: Sequence[int] | None = None,
) -> Any:
    """H and S of a whole structure predicted by ``model``, as a non-orthogonal ``sisl.Hamiltonian``.

    The one route from a structure to H and S: :meth:`Predictor.predict` (whole cell, float64 output)
    on the model's device, the model's training mode left as it was.  (It lived in
    ``hforge.models`` before; the models' layer does not import the inference layer.)

    Args:
        model: an :class:`~hforge.models.HSModel`.
        structure: ``ase.Atoms``, ``sisl.Geometry`` or :class:`~hforge.io.HSData`.
        species: a species label per atom, overriding the structure's.
        backend: the CSR assembly backend.
        nsc: supercells of the result (default: the reach of the predicted pairs).

    Returns:
        ``sisl.Hamiltonian`` with the unshifted H (eV; SIESTA's energy zero, E_F not subtracted) and
        S, orbitals in SIESTA order, blocks within the model's pair cut-offs (``r_i + r_j``).

    Raises:
        UnknownSpeciesError, GeometryError: as :meth:`Predictor.arrays`.
    """
    training = model.training
    try:
        predictor = Predictor(model, device=model.device)
        return predictor.predict(structure, species=species, backend=backend, nsc=nsc, mode="whole")
    finally:
        model.train(training)


@dataclass(frozen=True, eq=False)
class Problem:
    """A structure ready to predict: checked arrays, canonical block pairs (onsite first), the
    output's supercells and row pointer (block-dense CSR, :func:`~hforge.infer.chunks.csr_row_pointer`)."""

    arrays: StructureArrays
    edge_index: np.ndarray
    cell_shift: np.ndarray
    n_orb: np.ndarray
    nsc: tuple[int, int, int]
    indptr: np.ndarray
    n_values: int

    @property
    def n_atoms(self) -> int:
        return len(self.n_orb)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def n_cols(self) -> int:
        return int(self.n_orb.sum()) * int(np.prod(self.nsc))

    @property
    def index_dtype(self) -> np.dtype:
        return default_index_dtype(self.n_cols, self.nnz)

    @property
    def orbital_offset(self) -> np.ndarray:
        offset = np.zeros(self.n_atoms + 1, dtype=np.int64)
        np.cumsum(self.n_orb, out=offset[1:])
        return offset

    @functools.cached_property
    def block_ptr(self) -> np.ndarray:
        """``(E + 1,)`` int64 offsets of the flat-packed blocks of the canonical pairs."""
        return block_pointer(self.n_orb, self.edge_index)

    def csr_bytes(self, dtype: np.dtype) -> int:
        """Bytes of the output CSR (H and S values, column indices, row pointer)."""
        return self.nnz * (2 * np.dtype(dtype).itemsize + self.index_dtype.itemsize) + self.indptr.nbytes

    @functools.cached_property
    def _wrapped(self) -> tuple[np.ndarray, np.ndarray]:
        return fractional(self.arrays.positions, self.arrays.cell)

    @property
    def frac(self) -> np.ndarray:
        """``(N, 3)`` fractional coordinates wrapped into ``[0, 1)``."""
        return self._wrapped[0]

    @property
    def wrap(self) -> np.ndarray:
        """``(N, 3)`` int64 lattice translation taken off by the wrapping."""
        return self._wrapped[1]

    def occupied_chunks(self, grid: tuple[int, int, int]) -> np.ndarray:
        """Flat indices of the chunks of ``grid`` holding atoms."""
        return np.unique(chunk_of_atoms(self.frac, grid))

    def allocate(self, dtype: np.dtype, *, on_gpu: bool = False) -> tuple[Any, Any]:
        """Empty whole-matrix ``indices (nnz,)`` and ``data (nnz, 2)``: host arrays with their pages
        mapped (:func:`populated_empty`), or CuPy arrays on the current device."""
        if on_gpu:
            import cupy

            return cupy.empty(self.nnz, dtype=self.index_dtype), cupy.empty((self.nnz, 2), dtype=dtype)
        return populated_empty(self.nnz, self.index_dtype), populated_empty((self.nnz, 2), dtype)

    def csr(self, indices: Any, data: Any) -> AssembledCSR:
        """The whole matrices on filled buffers (host or CuPy)."""
        from hforge.ops.assemble.layout import array_module

        return AssembledCSR(
            indptr=array_module(indices).asarray(self.indptr.astype(indices.dtype)), indices=indices, data=data,
            shape=(len(self.indptr) - 1, self.n_cols), nsc=self.nsc,
        )

    def geometry(self, basis: Any) -> Any:
        """``sisl.Geometry`` of the structure with the basis' orbitals."""
        return sisl_geometry(self.arrays, basis)


class _Physics:
    """The exact S and the baseline H0 of block pairs of one structure, as the model uses them
    (float64 numpy, CPU: :mod:`hforge.ops.two_centre`); None for what the model does not use.
    H0's per-cell work (neighbour lists of the potentials and projectors) is done once, on first use."""

    def __init__(self, model: HSModel, arrays: StructureArrays) -> None:
        self.model, self.arrays = model, arrays

    @functools.cached_property
    def _baseline(self) -> Any:
        from hforge.ops.two_centre import BaselineContext

        a, coefficients = self.arrays, self.model.baseline_coefficients
        if coefficients is None:
            return None
        return BaselineContext(self.model.basis, a.species, a.positions, a.cell, a.pbc, coefficients)

    def overlap(self, edges: np.ndarray, shifts: np.ndarray, block_ptr: np.ndarray) -> np.ndarray | None:
        if self.model.learns_overlap:
            return None
        from hforge.ops.two_centre import overlap_blocks

        a = self.arrays
        return overlap_blocks(self.model.basis, a.species, a.positions, a.cell, edges, shifts, block_ptr=block_ptr)

    def baseline(self, edges: np.ndarray, shifts: np.ndarray, block_ptr: np.ndarray) -> np.ndarray | None:
        context = self._baseline
        return None if context is None else context.blocks(edges, shifts, block_ptr)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Torch's intra-op threads for a prediction, yielded, and restored after.

    None: one thread where the machine is oversubscribed (1-minute load average at least the
    cores), else torch's setting.  Torch's threads meet at a barrier in every op: with other jobs
    on the cores a descheduled thread stalls each of the pair pass's many small ops.  Measured on
    the shared 2-core VM (load 6, 4000 atoms, default model, same process, interleaved): one torch
    thread 29-35 s wall and 14-18 CPU s, two 48-59 s and 24-31 CPU s.  Numba's kernels keep their
    threads (one parallel region per call).
    """
    before = torch.get_num_threads()
    if threads is None:
        cores = os.cpu_count() or 1
        threads = 1 if hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores else before
    torch.set_num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        torch.set_num_threads(before)


def _tensor(values: np.ndarray | None) -> torch.Tensor | None:
    return None if values is None else torch.from_numpy(values)


def _output_array(values: torch.Tensor, dtype: np.dtype) -> Any:
    """A flat block tensor as an output array of ``dtype``: numpy (no copy when it is the dtype
    already) for CPU tensors, CuPy (sharing the memory) for CUDA tensors."""
    values = values.detach().to(_torch_dtype(dtype))
    if values.is_cuda:
        import cupy

        return cupy.asarray(values)
    return values.numpy()


def _array_module(on_gpu: bool) -> Any:
    if on_gpu:
        import cupy

        return cupy
    return np


def _on_host(csr: AssembledCSR) -> AssembledCSR:
    """``csr`` with host buffers: itself, or its CuPy buffers copied into populated host arrays."""
    if not hasattr(csr.indices, "get"):
        return csr
    indices = csr.indices.get(out=populated_empty(csr.indices.shape, csr.indices.dtype))
    data = csr.data.get(out=populated_empty(csr.data.shape, csr.data.dtype))
    return AssembledCSR(
        indptr=csr.indptr.get(), indices=indices, data=data, shape=csr.shape, nsc=csr.nsc, row_offset=csr.row_offset
    )


def _free_device_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device (bytes), 10 % kept back for torch's caching allocator and CuPy's pool."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(0.9 * free)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _progress_bar(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int | None], None]:
    """``update(done)``, ``update(None)`` closes: tqdm for True, the callback, or nothing."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="chunks", unit="chunk")

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update
