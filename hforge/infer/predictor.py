"""``hforge.load(...)`` -> :class:`Predictor`: structure -> ``sisl.Hamiltonian`` (H with S), in bounded memory.

The output's row pointer follows from the pair list alone, so the output buffers are allocated
once and filled by one of three modes (docs/design.md, "Inference"):

- ``whole``: one graph of the periodic cell, one model pass, one CSR assembly;
- ``streamed``: descriptors of the whole cell once (O(N) memory), then per contiguous atom range
  the hopping blocks of the pairs touching it, assembled by row range straight into the buffers;
- ``chunked``: spatial chunks (:mod:`hforge.infer.chunks`), each predicted inside a cluster of its
  atoms plus a halo as deep as the model's reach; only its atoms' rows are copied into the buffers.
  Memory is the output plus one chunk, for any cell size.

All three give the whole cell's matrices to float rounding; ``max_memory`` picks the first that fits.
"""

from __future__ import annotations

import functools
import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from hforge.errors import FileFormatError, InputError, ResourceLimitError
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
from hforge.models.base import HSModel, pair_vectors
from hforge.models.predict import sisl_geometry
from hforge.ops.assemble import AssembledCSR, assemble_csr, plan_csr_assembly
from hforge.ops.assemble.layout import default_index_dtype
from hforge.structures.validate import validate_structure

__all__ = [
    "MODES",
    "PREDICTION_STAGES",
    "Plan",
    "PredictionReport",
    "Predictor",
    "Problem",
    "peak_rss_bytes",
    "read_frames",
    "read_structure",
]

#: Stages timed in :attr:`PredictionReport.seconds`.
PREDICTION_STAGES = ("neighbour list", "descriptors", "blocks", "assembly")

#: Working memory model (bytes), from the peak RSS of aBN/DZP cells with the default config
#: (benchmarks/results/inference_scaling: 0.5-0.7 GB beyond the output and the process's baseline
#: at 10^4-2x10^4 atoms): per atom of a graph (interaction edges, trunk activations, head inputs)
#: and per predicted block value (model output and temporaries, before the output dtype).
BYTES_PER_GRAPH_ATOM = 25_000
BYTES_PER_VALUE = 16

#: Numbers of atom ranges or chunks tried, fewest first, when ``max_memory`` is below the whole cell's need.
PART_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 4096)


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
    """What the last prediction did: sizes, mode, parts (``n_chunks``: atom ranges or chunks), wall
    time per stage (s; in ``whole`` mode "descriptors" is the trunk alone, the heads' inputs count
    under "blocks"), memory (bytes)."""

    n_atoms: int = 0
    nnz: int = 0
    mode: str = "whole"
    n_chunks: int = 1
    grid: tuple[int, int, int] = (1, 1, 1)
    csr_bytes: int = 0
    estimated_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PREDICTION_STAGES, 0.0))
    peak_rss_bytes: int = 0

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


class _Timer:
    """``with timer(stage):`` adds the block's wall time to ``report.seconds[stage]``."""

    def __init__(self, report: PredictionReport) -> None:
        self.report = report

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.report.seconds[stage] += time.perf_counter() - start


#: Prediction modes: the whole cell at once; whole-cell descriptors with blocks and assembly per
#: atom range ("streamed"); spatial chunks with halo clusters ("chunked", memory bounded for any size).
MODES = ("whole", "streamed", "chunked")


@dataclass(frozen=True)
class Plan:
    """How a structure is predicted: ``mode``, ``parts`` (atom ranges or chunks), chunk ``grid``,
    and the estimated bytes of the output CSR and of the working memory beyond it."""

    mode: str
    parts: int
    grid: tuple[int, int, int]
    csr_bytes: int
    working_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.csr_bytes + self.working_bytes


class Predictor:
    """A trained model ready to predict H and S of structures.

    Args:
        model: an :class:`~hforge.models.HSModel` (put in evaluation mode).
        source: where it came from (a path or a bundled name), shown in reports.
    """

    def __init__(self, model: HSModel, *, source: str | None = None) -> None:
        self.model = model.eval()
        self.source = source
        self.builder = model.graph_builder()
        self.pair_cutoffs = self.builder.pair_cutoffs()
        self.halo = receptive_field(model.config, float(self.pair_cutoffs.max()))
        self.last_report = PredictionReport()

    def __repr__(self) -> str:
        config = self.model.config
        return f"Predictor({config.kind}, species={list(config.species)}, source={self.source!r})"

    @property
    def species(self) -> tuple[str, ...]:
        return tuple(self.model.basis.symbols)

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

        ``mode="auto"``: the whole cell when it fits ``max_memory`` (or no budget is given), else
        the fewest atom ranges ("streamed") that fit, else the fewest spatial chunks ("chunked").
        An explicit ``mode`` uses ``parts`` ranges or chunks (default: the fewest that fit).

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
        modes = [mode] if mode != "auto" else ["whole", "streamed"] + (["chunked"] if periodic else [])
        candidates = []
        for name in modes:
            counts = [1] if name == "whole" else [parts] if parts else [c for c in PART_COUNTS if c <= max(problem.n_atoms, 2)]
            for count in counts:
                plan = self._estimate(problem, name, count, dtype)
                if max_memory is None or plan.total_bytes <= max_memory:
                    return plan
                candidates.append(plan)
        best = min(candidates, key=lambda p: p.working_bytes)
        raise ResourceLimitError(
            f"max_memory={_gb(max_memory)} is below what this prediction needs: at least {_gb(best.total_bytes)} "
            f"(output CSR {_gb(best.csr_bytes)} + {best.mode} in {best.parts} parts, {_gb(best.working_bytes)})"
        )

    def _estimate(self, problem: "Problem", mode: str, parts: int, dtype: np.dtype) -> Plan:
        """Estimated working bytes beyond the output (see :data:`BYTES_PER_GRAPH_ATOM`, :data:`BYTES_PER_VALUE`)."""
        per_value = BYTES_PER_VALUE + 2 * dtype.itemsize
        n_atoms, n_values = problem.n_atoms, problem.n_values
        grid = (1, 1, 1)
        if mode == "whole":
            working = n_atoms * BYTES_PER_GRAPH_ATOM + n_values * per_value
        elif mode == "streamed":  # pairs crossing ranges are evaluated twice: at most 2 V / parts
            working = n_atoms * BYTES_PER_GRAPH_ATOM + min(2 * n_values / parts, n_values) * per_value
        else:
            grid = chunk_grid(problem.arrays.cell, parts)
            spacing = interplanar_spacings(problem.arrays.cell)
            cluster = float(np.prod((spacing / np.asarray(grid) + 2 * self.halo) / spacing))
            core_values = min(2 * n_values / int(np.prod(grid)), n_values)  # pairs touching the core
            local_csr = 2 * core_values * (2 * dtype.itemsize + 8)
            working = n_atoms * cluster * BYTES_PER_GRAPH_ATOM + core_values * per_value + local_csr
        return Plan(mode, int(np.prod(grid)) if mode == "chunked" else parts, grid, problem.csr_bytes(dtype), int(working))

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
        progress: bool | Callable[[int, int], None] = False,
        source: str | None = None,
    ) -> Any:
        """H and S of ``structure`` as a non-orthogonal ``sisl.Hamiltonian``.

        Args:
            structure: ``ase.Atoms``, ``sisl.Geometry``, :class:`~hforge.io.HSData` or a path to a
                file ASE reads.
            backend: CSR assembly backend (``"auto"``, ``"numba"``, ``"torch"``, ``"cupy"``).
            dtype: dtype of the output values (the model computes in its own precision).
            max_memory: bytes the prediction may allocate (output CSR included, the process's
                baseline not); None: no limit.
            mode: ``"auto"`` (see :meth:`plan`), ``"whole"``, ``"streamed"`` or ``"chunked"``.
            parts: atom ranges ("streamed") or about this many spatial chunks ("chunked").
            species: one species label per atom, overriding the structure's.
            progress: a tqdm bar over ranges/chunks (True), or a callback ``(done, total)``.
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
        report = PredictionReport()
        self.last_report = report
        timer = _Timer(report)
        dtype = np.dtype(dtype)
        problem = self.prepare(structure, species=species, timer=timer)
        report.n_atoms, report.nnz = problem.n_atoms, problem.nnz
        plan = self.plan(problem, dtype=dtype, max_memory=max_memory, mode=mode, parts=parts)
        report.mode, report.grid, report.n_chunks = plan.mode, plan.grid, plan.parts
        report.csr_bytes, report.estimated_bytes = plan.csr_bytes, plan.total_bytes
        if plan.mode == "whole":
            csr = self._predict_whole(problem, dtype, backend, timer)
            _progress_bar(progress, 1)(1)
        elif plan.mode == "streamed":
            csr = self._predict_streamed(problem, plan.parts, dtype, backend, timer, progress)
        else:
            indices, data = problem.allocate(dtype)
            occupied = problem.occupied_chunks(plan.grid)
            self.fill_chunks(
                problem, plan.grid, occupied, indices, data, dtype=dtype, backend=backend, timer=timer, progress=progress
            )
            csr = problem.csr(indices, data)
        with timer("assembly"):
            hamiltonian = csr.to_sisl(problem.geometry(self.model.basis))
        if source is None and isinstance(structure, (str, os.PathLike)):
            source = str(structure)
        check_learned_overlap(self.model, hamiltonian, source=source)
        report.peak_rss_bytes = peak_rss_bytes()
        return hamiltonian

    def prepare(self, structure: Any, *, species: Sequence[str] | None = None, timer: "_Timer | None" = None) -> "Problem":
        """Checked arrays, canonical block pairs and the output CSR row pointer of ``structure``.

        Raises:
            as :meth:`arrays`.
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
            return Problem(
                arrays=arrays,
                edge_index=edge_index,
                cell_shift=cell_shift,
                n_orb=n_orb,
                nsc=tuple(2 * int(r) + 1 for r in reach),
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

    # ---- internals ------------------------------------------------------------------------------
    def _blocks(self, graph: GraphBatch, timer: _Timer) -> tuple[np.ndarray, np.ndarray]:
        """Model pass; the trunk's time goes to "descriptors", the rest to "blocks"."""
        trunk_seconds = []

        def before(module: Any, args: Any) -> None:
            trunk_seconds.append(-time.perf_counter())

        def after(module: Any, args: Any, output: Any) -> None:
            trunk_seconds[-1] += time.perf_counter()

        hooks = [self.model.trunk.register_forward_pre_hook(before), self.model.trunk.register_forward_hook(after)]
        start = time.perf_counter()
        try:
            with torch.no_grad():
                blocks = self.model(graph)
        finally:
            for hook in hooks:
                hook.remove()
        total = time.perf_counter() - start
        timer.report.seconds["descriptors"] += sum(trunk_seconds)
        timer.report.seconds["blocks"] += total - sum(trunk_seconds)
        return blocks.h.numpy(), blocks.s.numpy()

    def _predict_whole(self, problem: "Problem", dtype: np.dtype, backend: str, timer: _Timer) -> AssembledCSR:
        arrays = problem.arrays
        with timer("neighbour list"):
            graph = self._graph(arrays, arrays.positions, problem.edge_index, problem.cell_shift, arrays.pbc)
        h, s = self._blocks(graph, timer)
        with timer("assembly"):
            values = (h.astype(dtype, copy=False), s.astype(dtype, copy=False))
            return assemble_csr(
                problem.edge_index, problem.cell_shift, graph.block_ptr.numpy(), values, problem.n_orb,
                nsc=problem.nsc, backend=backend,
            )

    def _predict_streamed(
        self, problem: "Problem", n_ranges: int, dtype: np.dtype, backend: str, timer: _Timer, progress: Any
    ) -> AssembledCSR:
        """Descriptors of the whole cell once; hopping blocks and assembly per contiguous atom range,
        straight into the whole-matrix buffers (row-range assembly).  A pair whose atoms fall in two
        ranges is evaluated for both (less often when the atom order is spatially coherent)."""
        arrays, model = problem.arrays, self.model
        with timer("neighbour list"):
            graph = self._graph(arrays, arrays.positions, problem.edge_index, problem.cell_shift, arrays.pbc)
        with timer("descriptors"), torch.no_grad():
            inputs = node_inputs(model, graph)
        indices, data = problem.allocate(dtype)
        n_atoms = problem.n_atoms
        i, j = problem.edge_index[:, n_atoms:]
        shifts = problem.cell_shift[n_atoms:]
        onsite_ptr = np.zeros(n_atoms + 1, dtype=np.int64)
        np.cumsum(problem.n_orb**2, out=onsite_ptr[1:])
        bounds = np.linspace(0, n_atoms, n_ranges + 1).round().astype(np.int64)
        offset = problem.orbital_offset
        bar = _progress_bar(progress, n_ranges)
        for k in range(n_ranges):
            a0, a1 = int(bounds[k]), int(bounds[k + 1])
            if a0 == a1:
                continue
            with timer("blocks"), torch.no_grad():
                first, last = np.searchsorted(i, [a0, a1])
                selected = np.concatenate([np.arange(first, last), np.flatnonzero((j >= a0) & (j < a1) & (i < a0))])
                pairs = np.stack([i[selected], j[selected]])
                learned = hopping_blocks(model, graph, inputs, pairs, shifts[selected])
                values = [
                    np.concatenate([onsite[onsite_ptr[a0] : onsite_ptr[a1]], hop])
                    for onsite, hop in zip(inputs.onsite, learned)
                ]
                range_atoms = np.arange(a0, a1)
                edges = np.concatenate([np.stack([range_atoms, range_atoms]), pairs], axis=1)
                edge_shifts = np.concatenate([np.zeros((a1 - a0, 3), dtype=np.int64), shifts[selected]])
                values = [v.astype(dtype, copy=False) for v in self._physics(problem, edges, edge_shifts, values)]
            with timer("assembly"):
                plan = plan_csr_assembly(
                    edges, edge_shifts, _block_ptr(problem.n_orb, edges), problem.n_orb, nsc=problem.nsc,
                    atoms=(a0, a1), backend=backend,
                )
                v0, v1 = int(problem.indptr[offset[a0]]), int(problem.indptr[offset[a1]])
                if plan.nnz != v1 - v0:
                    raise AssertionError("row range planned with another nnz than the pair list's")
                plan.fill(values, indices_out=indices[v0:v1], data_out=data[v0:v1])
            bar(k + 1)
        bar(None)
        return problem.csr(indices, data)

    def _physics(
        self, problem: "Problem", edges: np.ndarray, shifts: np.ndarray, learned: list[np.ndarray]
    ) -> list[np.ndarray]:
        """``[H, S]`` flat on the pairs ``edges``: the learned H plus the baseline H0 (when the model
        uses one), and the learned or the exact S (float64)."""
        from hforge.ops.two_centre import baseline_blocks, overlap_blocks

        model, arrays = self.model, problem.arrays
        geometry = (model.basis, arrays.species, arrays.positions, arrays.cell)
        ptr = _block_ptr(problem.n_orb, edges)
        h = learned[0]
        if model.config.baseline == "h0":
            h = h + baseline_blocks(*geometry, arrays.pbc, edges, shifts, block_ptr=ptr, coefficients=model.baseline_coefficients)
        s = learned[1] if model.learns_overlap else overlap_blocks(*geometry, edges, shifts, block_ptr=ptr)
        return [h, s]

    def _graph(self, arrays, positions, pair_index, pair_shift, pbc, species=None) -> GraphBatch:
        """Model graph on given block pairs (onsite pairs of every atom first)."""
        species = arrays.species if species is None else species
        interaction = neighbour_list(positions, arrays.cell, pbc, self.model.config.r_max)
        return GraphBatch(
            positions=torch.from_numpy(np.ascontiguousarray(positions)),
            species=torch.from_numpy(np.ascontiguousarray(species)),
            cell=torch.from_numpy(arrays.cell.copy())[None],
            pbc=torch.from_numpy(np.asarray(pbc).copy())[None],
            atom_ptr=torch.tensor([0, len(positions)]),
            edge_index=torch.from_numpy(interaction.edge_index),
            edge_shift=torch.from_numpy(interaction.cell_shift),
            pair_index=torch.from_numpy(np.ascontiguousarray(pair_index)),
            pair_shift=torch.from_numpy(np.ascontiguousarray(pair_shift)),
            pair_ptr=torch.tensor([0, pair_index.shape[1]]),
            block_ptr=torch.from_numpy(_block_ptr(self.model.basis.n_orbitals[species], pair_index)),
        )

    def chunk_rows(
        self, problem: "Problem", cluster: Cluster, *, dtype: np.dtype, backend: str = "auto", timer: _Timer | None = None
    ) -> AssembledCSR:
        """A CSR over the rows from the first to the last core atom of ``cluster``; the core atoms'
        rows are complete (the others' are not and are to be ignored)."""
        timer = timer or _Timer(PredictionReport())
        arrays, n_orb = problem.arrays, problem.n_orb
        with timer("neighbour list"):
            core = cluster.atoms[: cluster.n_core]
            in_core = np.zeros(problem.n_atoms, dtype=bool)
            in_core[core] = True
            touching = np.flatnonzero(in_core[problem.edge_index[0]] | in_core[problem.edge_index[1]])
            pairs, shifts = problem.edge_index[:, touching], problem.cell_shift[touching]
            hopping = ~((pairs[0] == pairs[1]) & ~shifts.any(axis=1))
            pairs, shifts = pairs[:, hopping], shifts[hopping]
            # the block of (i, j, n) is the cluster pair of the same vector: (i, j at n) or (i at -n, j)
            row_in_core = in_core[pairs[0]]
            core_index = np.full(problem.n_atoms, -1, dtype=np.int64)
            core_index[core] = np.arange(cluster.n_core)
            wrapped = shifts + problem.wrap[pairs[1]] - problem.wrap[pairs[0]]  # between wrapped positions
            ci = np.where(row_in_core, core_index[pairs[0]], cluster.lookup(pairs[0], -wrapped))
            cj = np.where(row_in_core, cluster.lookup(pairs[1], wrapped), core_index[pairs[1]])
            if (ci < 0).any() or (cj < 0).any():
                raise AssertionError("chunk halo misses a pair partner (halo narrower than the pair cut-off)")
            n_cluster = len(cluster.atoms)
            everyone = np.arange(n_cluster, dtype=np.int64)
            cluster_pairs = np.concatenate([np.stack([everyone, everyone]), np.stack([ci, cj])], axis=1)
            graph = self._graph(
                arrays, cluster.positions(arrays.positions, problem.wrap, arrays.cell), cluster_pairs,
                np.zeros((cluster_pairs.shape[1], 3), dtype=np.int64), np.zeros(3, dtype=bool),
                species=arrays.species[cluster.atoms],
            )
        h, s = self._blocks(graph, timer)
        with timer("assembly"):
            block_ptr = graph.block_ptr.numpy()
            core_end, hop_begin = int(block_ptr[cluster.n_core]), int(block_ptr[n_cluster])
            values = [np.concatenate([m[:core_end], m[hop_begin:]]).astype(dtype, copy=False) for m in (h, s)]
            edges = np.concatenate([np.stack([core, core]), pairs], axis=1)
            edge_shifts = np.concatenate([np.zeros((len(core), 3), dtype=np.int64), shifts])
            span = (int(core.min()), int(core.max()) + 1)
            plan = plan_csr_assembly(
                edges, edge_shifts, _block_ptr(n_orb, edges), n_orb, nsc=problem.nsc, atoms=span, backend=backend
            )
            return plan.fill(values)

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
        whole-matrix buffers ``indices (nnz,)`` and ``data (nnz, 2)`` (arrays or memory maps)."""
        timer = timer or _Timer(PredictionReport())
        frac = problem.frac
        chunk = chunk_of_atoms(frac, grid)
        bar = _progress_bar(progress, len(chunk_ids))
        for done, index in enumerate(chunk_ids, start=1):
            cluster = cluster_of_chunk(frac, chunk, int(index), grid, problem.arrays.cell, self.halo)
            rows = self.chunk_rows(problem, cluster, dtype=dtype, backend=backend, timer=timer)
            with timer("assembly"):
                copy_atom_rows(
                    cluster.atoms[: cluster.n_core], problem.orbital_offset, rows.indptr, rows.row_offset,
                    rows.indices, rows.data, problem.indptr, indices, data,
                )
            del rows
            bar(done)
        bar(None)


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

    def allocate(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Empty whole-matrix ``indices (nnz,)`` and ``data (nnz, 2)``."""
        return np.empty(self.nnz, dtype=self.index_dtype), np.empty((self.nnz, 2), dtype=dtype)

    def csr(self, indices: np.ndarray, data: np.ndarray) -> AssembledCSR:
        """The whole matrices on filled buffers."""
        return AssembledCSR(
            indptr=self.indptr.astype(indices.dtype), indices=indices, data=data,
            shape=(len(self.indptr) - 1, self.n_cols), nsc=self.nsc,
        )

    def geometry(self, basis: Any) -> Any:
        """``sisl.Geometry`` of the structure with the basis' orbitals."""
        return sisl_geometry(self.arrays, basis)


@dataclass(frozen=True)
class NodeInputs:
    """What hopping blocks need from the whole cell: the learned heads' inputs and scales, their
    onsite blocks (flat numpy, atom order; H, then S when learned), and positions/cell in the
    model's dtype."""

    heads: list[tuple[Any, Any]]
    scales: list[torch.Tensor]
    onsite: list[np.ndarray]
    positions: torch.Tensor
    cell: torch.Tensor


def node_inputs(model: HSModel, graph: GraphBatch) -> NodeInputs:
    """The per-atom part of ``model.forward`` on a one-structure graph (trunk, head inputs, onsite
    blocks of the learned heads)."""
    positions, cell, species = graph.positions.to(model.dtype), graph.cell.to(model.dtype), graph.species
    vectors = pair_vectors(positions, cell, graph.batch, graph.edge_index, graph.edge_shift)
    features = model.trunk(species, vectors, graph.edge_index)
    h_inputs, s_inputs = model.head_inputs(features, species, graph.edge_index, vectors)
    named = [(model.h_head, h_inputs, "h")] + ([(model.s_head, s_inputs, "s")] if model.learns_overlap else [])
    onsite = [model._onsite(head, inputs, species, name).numpy() for head, inputs, name in named]
    scales = [head.hopping_scale(model.scaling) for head, _, _ in named]
    return NodeInputs([(head, inputs) for head, inputs, _ in named], scales, onsite, positions, cell)


def hopping_blocks(
    model: HSModel, graph: GraphBatch, inputs: NodeInputs, pairs: np.ndarray, shifts: np.ndarray
) -> list[np.ndarray]:
    """Flat blocks of the learned heads (H, then S when learned) for ``pairs (2, E)`` with
    ``shifts (E, 3)`` (the pair part of ``model.forward``, before any baseline)."""
    species = graph.species
    parts: list[list[np.ndarray]] = [[] for _ in inputs.heads]
    chunk = model.config.pair_chunk
    for start in range(0, pairs.shape[1], chunk):
        index = torch.from_numpy(np.ascontiguousarray(pairs[:, start : start + chunk]))
        shift = torch.from_numpy(np.ascontiguousarray(shifts[start : start + chunk]))
        r = pair_vectors(inputs.positions, inputs.cell, graph.batch, index, shift)
        distances = torch.linalg.norm(r, dim=1)
        for out, (head, head_inputs), scale in zip(parts, inputs.heads, inputs.scales):
            out.append(head.hopping(head_inputs, species, index, r, distances, scale).numpy())
    empty = np.zeros(0, dtype=np.float32)
    return [np.concatenate(p) if p else empty for p in parts]


def _block_ptr(n_orb: np.ndarray, pair_index: np.ndarray) -> np.ndarray:
    ptr = np.zeros(pair_index.shape[1] + 1, dtype=np.int64)
    np.cumsum(n_orb[pair_index[0]] * n_orb[pair_index[1]], out=ptr[1:])
    return ptr


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
