"""The passes of a prediction: the model's node pass, then its pair pass over the canonical block
pairs, with H0 and the exact S, each block written straight into the output CSR buffers.

:class:`Passes` runs the modes of :mod:`hforge.infer.plan` on a :class:`~hforge.infer.problem.Problem`:

- :meth:`Passes.fill_ranges` (``whole``: one range; ``streamed``): the node pass over the whole
  cell once, then per contiguous atom range the blocks of the canonical pairs whose first atom is
  in it, every pair once, its block written into its rows and its transpose into its partner's;
- :meth:`Passes.fill_chunks` (``chunked``): per spatial chunk (:mod:`hforge.infer.chunks`), the
  model on a non-periodic cluster of the chunk's atoms and a halo as deep as the model's reach;
  only the chunk's atoms' rows are copied into the buffers.

Every mode composes the model's public passes (:meth:`~hforge.models.HSModel.node_pass`,
:meth:`~hforge.models.HSModel.pair_pass`, :meth:`~hforge.models.HSModel.physical_blocks`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hforge.graph.model_graph import GraphBatch, StructureArrays
from hforge.graph.neighbours import neighbour_list
from hforge.infer.chunks import Cluster, chunk_of_atoms, cluster_of_chunk, copy_atom_rows
from hforge.infer.problem import Problem, SpareOutput, populated_empty
from hforge.infer.report import StageTimer, progress_bar, timed_module
from hforge.io.pairs import block_pointer
from hforge.models.base import HSModel, NodeState
from hforge.ops.assemble import AssembledCSR, plan_csr_assembly
from hforge.ops.two_centre.baseline import BASELINE_PARTS

__all__ = ["DEVICE_EDGE_BATCH", "EDGE_BATCH", "PAIR_BATCH", "Passes", "Physics", "Scratch", "on_host", "torch_dtype"]

#: Block pairs per step of the model's pair pass in inference on the CPU: its temporaries (the
#: radial weights, a few KB per pair) stay below glibc's mmap threshold (32 MB), so that every step
#: reuses the heap's pages instead of faulting fresh ones (docs/measurements.md).
PAIR_BATCH = 8192

#: Interaction edges per step of the model's node pass in inference (:meth:`HSModel.node_pass`'s
#: ``chunk``) on the CPU: the trunk's edge messages of a step stay in the heap's reused pages, and
#: the Python work of a step (plans, small ops) is spread over enough edges (docs/measurements.md).
#: On CUDA the steps are :data:`DEVICE_EDGE_BATCH` edges.
EDGE_BATCH = 8192
DEVICE_EDGE_BATCH = 1 << 16


class Passes:
    """The passes of a model over problems, on its device.

    Args:
        model: an :class:`~hforge.models.HSModel` in evaluation mode, on ``device``.
        device: the model's device.
        halo: depth (Å) of a chunk's cluster around it: the model's receptive field
            (:func:`~hforge.infer.chunks.receptive_field`).
    """

    def __init__(self, model: HSModel, device: torch.device, halo: float) -> None:
        self.model, self.device, self.halo = model, device, halo

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def edge_batch(self) -> int:
        """Interaction edges per step of the node pass (:data:`EDGE_BATCH`, :data:`DEVICE_EDGE_BATCH` on CUDA)."""
        return DEVICE_EDGE_BATCH if self.on_gpu else EDGE_BATCH

    def fill_ranges(
        self,
        problem: Problem,
        n_ranges: int,
        *,
        dtype: Any = np.float64,
        backend: str = "auto",
        timer: StageTimer | None = None,
        progress: bool | Callable[[int, int], None] = False,
        physics: "Physics | None" = None,
        spare: SpareOutput | None = None,
    ) -> AssembledCSR:
        """The whole matrices by ranges of pairs ("whole": one range; "streamed"); ``physics``: the
        problem's :class:`Physics` when the caller has it (its neighbour lists), else made here;
        ``spare``: output buffers to fill when they fit (:meth:`Problem.allocate`).

        The model's node pass over the whole cell once; then per slab of the cell along its sweep
        axis (:meth:`~hforge.infer.problem.Problem.ranges`: the canonical pairs whose rear atom lies
        in the slab), the exact parts of the range's blocks (:class:`Physics`: H0, the exact S, the
        separable operator), then the learned blocks (onsite blocks from the node pass, hopping
        blocks from the pair pass), every pair once, written by
        :meth:`~hforge.ops.assemble.AssemblyPlan.fill` with ``pairs=`` into the final buffers (the
        block into its rows, its transpose into its partner's).  On the CPU a range goes in batches
        of :data:`PAIR_BATCH` pairs, model to buffers, so that no temporary outgrows the heap's
        reused pages; on CUDA a range is one batch, and the buffers are on the device.
        """
        timer = timer or StageTimer()
        arrays, model, dtype = problem.arrays, self.model, np.dtype(dtype)
        xp = _array_module(self.on_gpu)
        physics = physics or Physics(model, arrays)
        with timer("graphs"):
            graph = self._graph(arrays, arrays.positions, problem.edge_index, problem.cell_shift, arrays.pbc)
        with timer("trunk"), timed_module(timer, model.separable, "heads", "trunk"), torch.no_grad():
            state = model.node_pass(graph, chunk=self.edge_batch)
            physics.set_operators(state.operators)
        del graph
        with timer("assembly"):
            plan = plan_csr_assembly(
                xp.asarray(problem.edge_index), xp.asarray(problem.cell_shift), xp.asarray(problem.block_ptr),
                xp.asarray(problem.n_orb), nsc=problem.nsc, backend=backend,
            )
            if plan.nnz != problem.nnz:
                raise AssertionError("assembly planned with another nnz than the pair list's row pointer")
            indices, data = problem.allocate(dtype, on_gpu=self.on_gpu, spare=spare)

        scratch = None if self.on_gpu else Scratch(PAIR_BATCH * int(problem.n_orb.max()) ** 2, physics.dtype)
        bar = progress_bar(progress, n_ranges, "atom range")
        for k, pairs in enumerate(problem.ranges(n_ranges)):
            with timer("projections"):
                physics.prepare(problem.edge_index[:, pairs])
            step = PAIR_BATCH if not self.on_gpu else max(len(pairs), 1)
            for lo in range(0, len(pairs), step):
                batch = pairs[lo : lo + step]
                exact = self._physics(problem, physics, batch, timer, swap=problem.flipped[batch], scratch=scratch)
                with timer("heads"), torch.no_grad():
                    learned = self._learned(problem, state, batch)
                with timer("assembly"), torch.no_grad():
                    blocks = self._output_blocks(learned, *exact, dtype)
                    plan.fill(blocks, pairs=xp.asarray(batch), indices_out=indices, data_out=data)
            physics.prepare(None, keep_buffer=k + 1 < n_ranges)
            bar(k + 1)
        bar(None)
        return problem.csr(indices, data)

    def _learned(self, problem: Problem, state: NodeState, pairs: np.ndarray) -> list[torch.Tensor]:
        """The learned heads' blocks (H, then S when learned; the model's dtype and device) of the
        canonical ``pairs`` in their order, flat: onsite pairs (index below the atoms) from the node
        pass, the others from the pair pass."""
        if not state.heads:
            return []
        onsite = pairs < problem.n_atoms
        sizes = problem.n_orb[problem.edge_index[0, pairs]] * problem.n_orb[problem.edge_index[1, pairs]]
        starts = np.cumsum(sizes) - sizes
        hopping = pairs[~onsite]
        chunk = PAIR_BATCH if not self.on_gpu else None
        hop_blocks = self.model.pair_pass(
            state, torch.from_numpy(problem.edge_index[:, hopping]), torch.from_numpy(problem.cell_shift[hopping]), chunk=chunk,
        )
        if not onsite.any():
            return hop_blocks
        atoms = pairs[onsite]
        onsite_ptr = np.concatenate([[0], np.cumsum(problem.n_orb**2)])
        device = state.positions.device
        take = torch.from_numpy(_spans(onsite_ptr[atoms], sizes[onsite])).to(device)
        at_onsite = torch.from_numpy(_spans(starts[onsite], sizes[onsite])).to(device)
        at_hopping = torch.from_numpy(_spans(starts[~onsite], sizes[~onsite])).to(device)
        out = []
        for on, hop in zip(state.onsite, hop_blocks):
            values = on.new_empty(int(sizes.sum()))
            values[at_onsite] = on[take]
            values[at_hopping] = hop
            out.append(values)
        return out

    def _physics(
        self, problem: Problem, physics: Physics, pairs: np.ndarray, timer: StageTimer, swap: np.ndarray | None = None,
        scratch: Scratch | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(H0, exact S, separable operator)`` of the canonical ``pairs`` of ``problem`` (flat in
        their order; None where the model does not use them); ``swap``: the pairs built from their
        column atom's side (:meth:`Physics.separable`); ``scratch``: buffers to write them into."""
        edges, shifts = problem.edge_index[:, pairs], problem.cell_shift[pairs]
        ptr = block_pointer(problem.n_orb, edges)
        n = int(ptr[-1])
        views = (None, None, None) if scratch is None else scratch.views(n)
        with timer("H0"):
            baseline = physics.baseline(edges, shifts, ptr, out=views[0])
        with timer("S"):
            overlap = physics.overlap(edges, shifts, ptr, out=views[1])
        with timer("separable"):
            separable = physics.separable(edges, shifts, ptr, swap, out=views[2])
        return baseline, overlap, separable

    def _output_blocks(
        self, learned: list[torch.Tensor], baseline: np.ndarray | None, overlap: np.ndarray | None,
        separable: np.ndarray | None, dtype: np.dtype,
    ) -> list[Any]:
        """``[H, S]`` as output arrays (numpy, or cupy on CUDA) of ``dtype``: the learned blocks
        (model's dtype and device) with H0 and the exact S (:meth:`~hforge.models.HSModel.physical_blocks`),
        plus the separable operator's blocks."""
        blocks = self.model.physical_blocks(learned, _tensor(baseline), _tensor(overlap))
        h = blocks.h if separable is None else blocks.h + torch.from_numpy(separable).to(blocks.h.device, blocks.h.dtype)
        return [_output_array(values, dtype) for values in (h, blocks.s)]

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
        self, problem: Problem, cluster: Cluster, *, dtype: np.dtype, backend: str = "auto", timer: StageTimer | None = None,
        physics: "Physics | None" = None,
    ) -> AssembledCSR:
        """A CSR (host memory) over the rows from the first to the last core atom of ``cluster``;
        the core atoms' rows are complete (the others' are not and are to be ignored).  Learned
        blocks come from the model on the cluster, H0 and the exact S from the periodic cell."""
        timer = timer or StageTimer()
        arrays, n_orb = problem.arrays, problem.n_orb
        physics = physics or Physics(self.model, arrays)
        xp = _array_module(self.on_gpu)
        with timer("graphs"):
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
        with timer("trunk"), timed_module(timer, self.model.separable, "heads", "trunk"), torch.no_grad():
            state = self.model.node_pass(graph, chunk=self.edge_batch)
            if state.operators is not None:  # the D_k of the atoms the core's pairs reach (complete environments)
                max_radius = float(self.model.basis.pair_cutoffs().max()) / 2
                near = near_core(graph.positions.numpy(), cluster.n_core, max_radius + self.model.config.projector_radius)
                physics.set_operators(state.operators[near], cluster.atoms[near])
        with timer("heads"), torch.no_grad():
            zeros = torch.zeros((cluster_pairs.shape[1], 3), dtype=torch.int64)
            hopping_blocks = self.model.pair_pass(state, torch.from_numpy(cluster_pairs), zeros, chunk=PAIR_BATCH)
            core_end = int(np.sum(n_orb[core] ** 2))  # the core atoms come first in the cluster
            learned = [torch.cat([on[:core_end], hop]) for on, hop in zip(state.onsite, hopping_blocks)]
        with timer("projections"):
            physics.prepare(problem.edge_index[:, pairs])
        exact = self._physics(problem, physics, pairs, timer)
        physics.prepare(None)
        with timer("assembly"), torch.no_grad():
            values = self._output_blocks(learned, *exact, dtype)
            edges, edge_shifts = problem.edge_index[:, pairs], problem.cell_shift[pairs]
            span = (int(core.min()), int(core.max()) + 1)
            plan = plan_csr_assembly(
                xp.asarray(edges), xp.asarray(edge_shifts), xp.asarray(block_pointer(n_orb, edges)), xp.asarray(n_orb),
                nsc=problem.nsc, atoms=span, backend=backend,
            )
            return on_host(plan.fill(values))

    def fill_chunks(
        self,
        problem: Problem,
        grid: tuple[int, int, int],
        chunk_ids: Sequence[int],
        indices: np.ndarray,
        data: np.ndarray,
        *,
        dtype: np.dtype,
        backend: str = "auto",
        timer: StageTimer | None = None,
        progress: bool | Callable[[int, int], None] = False,
        physics: "Physics | None" = None,
    ) -> None:
        """Predict the chunks ``chunk_ids`` of ``grid`` and write their atoms' rows into the
        whole-matrix buffers ``indices (nnz,)`` and ``data (nnz, 2)`` (host arrays or memory maps);
        ``physics`` as :meth:`fill_ranges`."""
        timer = timer or StageTimer()
        frac = problem.frac
        chunk = chunk_of_atoms(frac, grid)
        physics = physics or Physics(self.model, problem.arrays)
        bar = progress_bar(progress, len(chunk_ids), "chunk")
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


class Physics:
    """The exact parts of H and S of block pairs of one structure, as the model uses them (CPU,
    numpy; :mod:`hforge.ops.two_centre`), None for what the model does not use: the exact S and the
    baseline H0 (float64), and with a separable operator (``ModelConfig.separable``) its blocks for
    the matrices ``D_k`` handed over by :meth:`set_operators` after the node pass (the model's dtype).
    Where the baseline's V_KB has one coefficient ``c`` (the operator baseline ``T + V_KB + c0 S``),
    ``c V_KB`` joins the separable operator's contraction (:class:`~hforge.ops.two_centre.separable.SeparableContext`'s
    ``kb_scale``: one sum over the KB and the learned projectors) and :meth:`baseline` is the rest.
    The per-cell work (neighbour lists) is done once, on first use."""

    def __init__(self, model: HSModel, arrays: StructureArrays) -> None:
        self.model, self.arrays = model, arrays
        self.operators: np.ndarray | None = None
        self.dtype = np.dtype(str(model.dtype).removeprefix("torch."))
        self._packed: Any = None

    @functools.cached_property
    def kb_scale(self) -> float | None:
        """``c`` of V_KB when it joins the separable operator, else None."""
        coefficients = self.model.baseline_coefficients
        if self.model.separable is None or coefficients is None:
            return None
        kb = coefficients[BASELINE_PARTS.index("kb")]
        return float(kb.flat[0]) if np.all(kb == kb.flat[0]) else None

    @functools.cached_property
    def _baseline(self) -> Any:
        from hforge.ops.two_centre import BaselineContext

        a, coefficients = self.arrays, self.model.baseline_coefficients
        if coefficients is None:
            return None
        if self.kb_scale is not None:  # V_KB is the separable contraction's
            coefficients = coefficients.copy()
            coefficients[BASELINE_PARTS.index("kb")] = 0.0
        return BaselineContext(self.model.basis, a.species, a.positions, a.cell, a.pbc, coefficients)

    @functools.cached_property
    def _separable(self) -> Any:
        from hforge.ops.two_centre.separable import SeparableContext

        a = self.arrays
        return SeparableContext(
            self.model.basis, self.model.config.projectors, a.species, a.positions, a.cell, a.pbc, kb_scale=self.kb_scale
        )

    def set_operators(self, operators: torch.Tensor | None, atoms: np.ndarray | None = None) -> None:
        """The node pass's ``D_k (n, n_p, n_p)`` of the structure's atoms ``atoms`` (all when None;
        a chunk's cluster atoms, periodic indices, repeated images holding the same ``D``)."""
        if operators is None:
            return
        values = operators.detach().cpu().numpy().astype(self.dtype, copy=False)
        if atoms is None:
            self.operators = values
            return
        if self.operators is None:
            self.operators = np.zeros((len(self.arrays.species),) + values.shape[1:], dtype=self.dtype)
        self.operators[atoms] = values

    def pack_bytes_per_atom(self) -> float:
        """Bytes per atom of the separable operator's packed projections of the whole cell (0 without one)."""
        if self.model.separable is None:
            return 0.0
        every = np.ones(len(self.arrays.species), dtype=bool)
        return self._separable.pack_nbytes(every, self.dtype) / len(every)

    def prepare(self, edges: np.ndarray | None, *, keep_buffer: bool = False) -> None:
        """Pack the projections of the atoms that the pairs ``edges (2, E)`` touch (a range's), for the
        separable blocks of any of these pairs; None drops them, ``keep_buffer`` keeps their memory for the
        next range's pack (:meth:`~hforge.ops.two_centre.separable.SeparableContext.release`: the same
        bytes as the range just done, so no higher peak)."""
        if self.model.separable is None:
            return
        self._separable.release(self._packed if keep_buffer or edges is not None else None)
        self._packed = None
        if edges is None:
            return
        touched = np.zeros(len(self.arrays.species), dtype=bool)
        touched[np.asarray(edges).reshape(-1)] = True
        self._packed = self._separable.pack(touched, self.dtype)

    def overlap(
        self, edges: np.ndarray, shifts: np.ndarray, block_ptr: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """The exact S (float64) of the pairs (into ``out`` when given), or None for a model that learns S."""
        if self.model.learns_overlap:
            return None
        from hforge.ops.two_centre import overlap_blocks

        a = self.arrays
        return overlap_blocks(self.model.basis, a.species, a.positions, a.cell, edges, shifts, block_ptr=block_ptr, out=out)

    def baseline(
        self, edges: np.ndarray, shifts: np.ndarray, block_ptr: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray | None:
        """H0 (eV, float64; into ``out`` when given) of the pairs without the V_KB that the separable
        contraction holds, or None."""
        context = self._baseline
        return None if context is None else context.blocks(edges, shifts, block_ptr, out=out)

    def separable(
        self, edges: np.ndarray, shifts: np.ndarray, block_ptr: np.ndarray, swap: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The separable operator's blocks (plus ``c V_KB``, :attr:`kb_scale`) of the pairs in the model's
        dtype (into ``out`` when given), or None without one; ``swap``: pairs built from their column
        atom's side (:meth:`~hforge.ops.two_centre.separable.SeparableContext.operator_blocks`); the
        projections :meth:`prepare` packed, when it did."""
        if self.model.separable is None:
            return None
        if self.operators is None:
            raise AssertionError("separable blocks asked for before the node pass handed over its operators")
        return self._separable.operator_blocks(
            edges, shifts, block_ptr, self.operators, swap=swap, dtype=self.dtype, out=out, packed=self._packed
        )


class Scratch:
    """Reused flat buffers of a batch's exact blocks (H0 and S float64, the separable operator in the
    model's dtype): below glibc's mmap threshold they come from the heap's reused pages, so that no
    batch faults fresh memory (docs/measurements.md)."""

    def __init__(self, capacity: int, dtype: np.dtype) -> None:
        self.buffers = (np.empty(capacity), np.empty(capacity), np.empty(capacity, dtype=dtype))

    def views(self, n: int) -> tuple[np.ndarray, ...]:
        """The first ``n`` values of every buffer."""
        return tuple(buffer[:n] for buffer in self.buffers)


def near_core(positions: np.ndarray, n_core: int, reach: float) -> np.ndarray:
    """``(n,)`` bool: the cluster atoms (core first) within ``reach`` Å of a core atom, the core included."""
    from scipy.spatial import cKDTree

    near = np.zeros(len(positions), dtype=bool)
    near[:n_core] = True
    if n_core and len(positions) > n_core:
        distance, _ = cKDTree(positions[:n_core]).query(positions[n_core:], distance_upper_bound=reach + 1e-6)
        near[n_core:] = np.isfinite(distance)
    return near


def _spans(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(sum sizes,)`` int64: ``starts[k], starts[k] + 1, ..., starts[k] + sizes[k] - 1`` of every span, in order."""
    sizes = np.asarray(sizes, dtype=np.int64)
    ends = np.cumsum(sizes)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - sizes), sizes) + np.arange(int(ends[-1]) if len(ends) else 0)


def _tensor(values: np.ndarray | None) -> torch.Tensor | None:
    return None if values is None else torch.from_numpy(values)


def _output_array(values: torch.Tensor, dtype: np.dtype) -> Any:
    """A flat block tensor as an output array of ``dtype``: numpy (no copy when it is the dtype
    already) for CPU tensors, CuPy (sharing the memory) for CUDA tensors."""
    values = values.detach().to(torch_dtype(dtype))
    if values.is_cuda:
        import cupy

        return cupy.asarray(values)
    return values.numpy()


def _array_module(on_gpu: bool) -> Any:
    if on_gpu:
        import cupy

        return cupy
    return np


def on_host(csr: AssembledCSR) -> AssembledCSR:
    """``csr`` with host buffers: itself, or its CuPy buffers copied into populated host arrays."""
    if not hasattr(csr.indices, "get"):
        return csr
    indices = csr.indices.get(out=populated_empty(csr.indices.shape, csr.indices.dtype))
    data = csr.data.get(out=populated_empty(csr.data.shape, csr.data.dtype))
    return AssembledCSR(
        indptr=csr.indptr.get(), indices=indices, data=data, shape=csr.shape, nsc=csr.nsc, row_offset=csr.row_offset
    )


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
