"""``hforge.load(...)`` -> :class:`Predictor`: structure -> ``sisl.Hamiltonian`` (H with S), in bounded memory.

A prediction is four steps, each in a module one can read alone (docs/design.md, "Inference"):

- the *problem* (:mod:`hforge.infer.problem`): the structure's checked arrays, its canonical
  block pairs and the output's row pointer, which follows from the pairs alone, so that the output
  buffers are allocated once (pages mapped up front) and filled in parts;
- the *plan* (:mod:`hforge.infer.plan`): the mode (``whole``, ``streamed`` by atom ranges,
  ``chunked`` by spatial chunks with a halo) and the parts that fit ``max_memory`` (default: the
  output plus :data:`~hforge.infer.plan.DEFAULT_WORKING_BYTES`);
- the *passes* (:mod:`hforge.infer.passes`): the model's node and pair passes, H0 and the exact S,
  every block written straight into the final buffers;
- the *report* (:mod:`hforge.infer.report`): stages timed, memory, parts.

All modes give the whole cell's matrices to float rounding.  Every mode composes the model's
public passes: the one route from a structure to H and S, which :func:`predict_hamiltonian` (a
model and a structure) takes too.

Devices: on CUDA (``device="cuda"``) the node and pair passes run on the GPU (CG blocks by the
Triton kernels), the exact S and H0 on the CPU (numba, copied over), the assembly by the CuPy
kernels straight into CSR buffers on the device; ``max_memory`` is device memory there, and a cell
whose output does not fit on the device is chunked into host buffers.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from hforge.errors import BackendUnavailableError, InputError, OutOfDomainWarning
from hforge.graph.model_graph import GraphBatch, StructureArrays, structure_arrays
from hforge.infer.chunks import receptive_field
from hforge.infer.output import check_output_path, write_prediction
from hforge.infer.overlap import check_learned_overlap
from hforge.infer.passes import Passes, Physics, on_host, torch_dtype
from hforge.infer.plan import (
    BYTES_PER_GRAPH_ATOM,
    BYTES_PER_OPERATOR_GRAPH_ATOM,
    DEFAULT_OUTPUT_DTYPE,
    Plan,
    check_parts,
    memory_budget,
    output_dtype,
    plan_prediction,
)
from hforge.infer.problem import Problem, SpareOutput, make_problem, read_structure
from hforge.infer.report import PredictionReport, StageTimer, peak_rss_bytes, thread_count, torch_threads
from hforge.models.base import HSModel
from hforge.ops.assemble import AssembledCSR
from hforge.structures.domain import TrainingDomain
from hforge.structures.validate import validate_structure

__all__ = ["Predictor", "predict_hamiltonian", "resolve_device"]

logger = logging.getLogger(__name__)


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


class Predictor:
    """A trained model ready to predict H and S of structures.

    Args:
        model: an :class:`~hforge.models.HSModel` (put in evaluation mode and moved to ``device``).
        source: where it came from (a path or a bundled name), shown in reports.
        device: ``"cuda"``, ``"cuda:N"``, ``"cpu"``, or None: CUDA when usable (:func:`resolve_device`).
        domain: the model's training domain (a checkpoint's ``extra["domain"]``): a structure outside
            it is predicted with an :class:`~hforge.errors.OutOfDomainWarning`; None: not checked.
    """

    def __init__(
        self, model: HSModel, *, source: str | None = None, device: str | torch.device | None = None,
        domain: TrainingDomain | None = None,
    ) -> None:
        self.domain = domain
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.source = source
        self.builder = model.graph_builder()
        self.pair_cutoffs = self.builder.pair_cutoffs()
        self.passes = Passes(self.model, self.device, receptive_field(model.config, float(self.pair_cutoffs.max())))
        self.last_report = PredictionReport()
        self.spare_output = SpareOutput()  # predict_to_file's buffers after their write, for the next one

    def __repr__(self) -> str:
        config = self.model.config
        return f"Predictor({config.kind}, species={list(config.species)}, device={str(self.device)!r}, source={self.source!r})"

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
        self._check_domain(arrays, path)
        return arrays

    def _check_domain(self, arrays: StructureArrays, source: Any) -> None:
        """Warn (:class:`~hforge.errors.OutOfDomainWarning`) when the structure lies outside the training domain."""
        if self.domain is None:
            return
        labels = [self.model.basis.symbols[s] for s in arrays.species]
        found = self.domain.departures(arrays.positions, arrays.cell, arrays.pbc, labels)
        if found:
            where = f"{source}: " if source is not None else ""
            warnings.warn(
                OutOfDomainWarning(
                    f"{where}the structure lies outside the model's training structures ({'; '.join(found)}): its H "
                    "and S are an extrapolation"
                ),
                stacklevel=3,
            )

    def prepare(
        self, structure: Any, *, species: Sequence[str] | None = None, nsc: Sequence[int] | None = None,
        timer: StageTimer | None = None,
    ) -> Problem:
        """The :class:`~hforge.infer.problem.Problem` of ``structure``: checked arrays, canonical
        block pairs and the output CSR row pointer.

        Raises:
            as :meth:`arrays`; InputError: an ``nsc`` that is not 3 odd integers reaching every pair.
        """
        timer = timer or StageTimer()
        arrays = self.arrays(structure, species=species)
        with timer("graphs"):
            return make_problem(arrays, self.pair_cutoffs, self.model.basis.n_orbitals, nsc)

    def plan(
        self, problem: Problem, *, dtype: Any = DEFAULT_OUTPUT_DTYPE, max_memory: int | str | None = None, mode: str = "auto",
        parts: int | None = None, physics: Physics | None = None,
    ) -> Plan:
        """How to predict ``problem`` on this predictor's device (:func:`~hforge.infer.plan.plan_prediction`;
        ``dtype`` and ``max_memory`` as :meth:`predict`; ``physics``: the problem's, when the caller has it)."""
        physics = physics or Physics(self.model, problem.arrays)
        return plan_prediction(
            problem, halo=self.passes.halo, device=self.device, dtype=output_dtype(dtype),
            max_memory=memory_budget(max_memory), mode=mode, parts=parts, pack_bytes_per_atom=physics.pack_bytes_per_atom(),
            graph_bytes_per_atom=BYTES_PER_GRAPH_ATOM if self.model.config.free_blocks else BYTES_PER_OPERATOR_GRAPH_ATOM,
        )

    # ---- prediction -----------------------------------------------------------------------------
    def predict(
        self,
        structure: Any,
        *,
        backend: str = "auto",
        dtype: Any = DEFAULT_OUTPUT_DTYPE,
        max_memory: int | str | None = None,
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
            dtype: dtype of the output values, float32 (default: :data:`~hforge.infer.plan.DEFAULT_OUTPUT_DTYPE`)
                or float64 (the model computes in its own precision).
            max_memory: bytes the prediction may allocate (output CSR included, the process's
                baseline not; device memory on CUDA), or a size such as ``"8GB"``
                (:func:`~hforge.infer.plan.memory_budget`); None: the memory goal (see :meth:`plan`).
            mode: ``"auto"`` (see :meth:`plan`), ``"whole"``, ``"streamed"`` or ``"chunked"``.
            parts: atom ranges ("streamed") or about this many spatial chunks ("chunked").
            species: one species label per atom, overriding the structure's.
            nsc: supercells of the result (odd, at least the pairs' reach; default: their reach).
            progress: a tqdm bar over ranges/chunks (True), or a callback ``(done, total)``.
            threads: torch's intra-op threads during the prediction (restored after); None:
                torch's setting (the caller's, by default the cores; never the machine's load:
                :func:`~hforge.infer.report.thread_count`).
            source: what is predicted, named in warnings (default: ``structure`` when it is a path).

        Returns:
            ``sisl.Hamiltonian``: the unshifted H (eV; SIESTA's energy zero, E_F = 0) and S,
            atoms in the structure's order, orbitals in SIESTA order, supercells (``nsc``) the reach
            of the pairs ``|r_ij| < r_i + r_j``.  :attr:`last_report` describes the run.

        Raises:
            UnknownSpeciesError, GeometryError, FileFormatError: bad input (see :meth:`arrays`),
                before any heavy work.
            InputError: a ``dtype`` other than float64/float32, a ``max_memory`` that is not a
                finite positive size, ``parts`` or ``threads`` not a whole number >= 1, an unknown ``mode``.
            ResourceLimitError: ``max_memory`` below the output plus the smallest part.

        Warns:
            OutOfDomainWarning: the structure lies outside the model's training domain (species
                fractions, closest approaches or neighbour counts; :mod:`hforge.structures.domain`).
            OverlapWarning: a model with a learned S predicted an S(Γ) that is not positive
                definite, or one too large to check (:mod:`hforge.infer.overlap`).
        """
        csr, problem = self._predict(
            structure, backend=backend, dtype=dtype, max_memory=max_memory, mode=mode, parts=parts, species=species,
            nsc=nsc, progress=progress, threads=threads,
        )
        with StageTimer(self.last_report)("assembly"):
            hamiltonian = on_host(csr).to_sisl(problem.geometry(self.model.basis))
        if source is None and isinstance(structure, (str, os.PathLike)):
            source = str(structure)
        check_learned_overlap(self.model, hamiltonian, source=source)
        self._finish_report(source)
        return hamiltonian

    def _finish_report(self, source: str | None) -> None:
        """The report's peak RSS, and its INFO log line."""
        report = self.last_report
        report.peak_rss_bytes = peak_rss_bytes()
        logger.info(
            "%s: %d atoms, nnz %d, %s in %d part(s) on %s, %.1f s (%s), peak RSS %.2f GB", source or "structure",
            report.n_atoms, report.nnz, report.mode, report.n_parts, report.device, sum(report.seconds.values()),
            ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()), report.peak_rss_bytes / 1e9,
        )

    def predict_to_file(self, structure: Any, path: str | os.PathLike, *, source: str | None = None, **options: Any) -> Any:
        """Predict ``structure`` and write its H and S to ``path`` (``.TSHS`` or ``.nc``, atomically),
        streamed from the output buffers (:func:`~hforge.infer.output.write_prediction`: sisl's
        writers copy the matrix several times first).  Options as :meth:`predict`; the write is the
        report's stage ``write``.  Returns the path.

        Raises:
            as :meth:`predict`; FileFormatError, InputError: a bad output path (checked before any
            work); OutputError: the write failed, naming the path.
        """
        path = check_output_path(path, inputs=[structure] if isinstance(structure, (str, os.PathLike)) else [])
        csr, problem = self._predict(structure, reuse_output=True, **options)
        report = self.last_report
        with StageTimer(report)("assembly"):
            csr = on_host(csr)
            geometry = problem.geometry(self.model.basis)
        if source is None and isinstance(structure, (str, os.PathLike)):
            source = str(structure)
        if self.model.learns_overlap:
            check_learned_overlap(self.model, csr.to_sisl(geometry), source=source)
        with StageTimer(report)("write"):
            write_prediction(csr, geometry, path)
        self.spare_output.keep(csr.indices, csr.data)  # written: the next call may fill them again
        self._finish_report(source)
        return path

    def predict_csr(self, structure: Any, **options: Any) -> AssembledCSR:
        """H and S of ``structure`` as an :class:`~hforge.ops.assemble.AssembledCSR` (``data[:, 0]``
        H in eV, ``data[:, 1]`` S), left where it was assembled: CuPy arrays on CUDA (unless the
        cell was chunked into host memory), for GPU eigensolvers (``csr.to_cupy(0)``,
        ``csr.to_cupy(1)``), numpy on the CPU.  Options as :meth:`predict`."""
        csr, _ = self._predict(structure, **options)
        self.last_report.peak_rss_bytes = peak_rss_bytes()
        return csr

    def _predict(
        self, structure: Any, *, backend: str = "auto", dtype: Any = DEFAULT_OUTPUT_DTYPE, max_memory: int | str | None = None,
        mode: str = "auto", parts: int | None = None, species: Sequence[str] | None = None,
        nsc: Sequence[int] | None = None, progress: bool | Callable[[int, int], None] = False,
        threads: int | None = None, reuse_output: bool = False,
    ) -> tuple[AssembledCSR, Problem]:
        """The prediction's CSR and problem; ``reuse_output``: fill :attr:`spare_output`'s buffers when
        they fit (only a caller that does not hand the CSR out: :meth:`predict_to_file`); any other
        call lets them go first, so that they never add to a prediction's memory."""
        spare = self.spare_output if reuse_output else None
        if not reuse_output:
            self.spare_output.drop()
        report = PredictionReport(device=str(self.device))
        self.last_report = report
        timer = StageTimer(report)
        dtype, max_memory = output_dtype(dtype), memory_budget(max_memory)  # options checked before any work
        check_parts(parts, mode)
        threads = thread_count(threads)
        problem = self.prepare(structure, species=species, nsc=nsc, timer=timer)
        report.n_atoms, report.n_orbitals, report.nnz = problem.n_atoms, int(problem.n_orb.sum()), problem.nnz
        physics = Physics(self.model, problem.arrays)  # the cell's neighbour lists, for the plan and the passes
        plan = self.plan(problem, dtype=dtype, max_memory=max_memory, mode=mode, parts=parts, physics=physics)
        report.mode, report.grid, report.n_parts = plan.mode, plan.grid, plan.parts
        report.csr_bytes, report.estimated_bytes = plan.csr_bytes, plan.total_bytes
        with torch_threads(threads) as report.torch_threads:
            if plan.mode in ("whole", "streamed"):
                csr = self.passes.fill_ranges(
                    problem, plan.parts, dtype=dtype, backend=backend, timer=timer, progress=progress, physics=physics,
                    spare=spare,
                )
            else:
                indices, data = problem.allocate(dtype, spare=spare)
                occupied = problem.occupied_chunks(plan.grid)
                self.passes.fill_chunks(
                    problem, plan.grid, occupied, indices, data, dtype=dtype, backend=backend, timer=timer, progress=progress,
                    physics=physics,
                )
                csr = problem.csr(indices, data)
        return csr, problem

    def predict_many(
        self, structures: Iterable[Any], *, batch_atoms: int = 2048, backend: str = "auto", dtype: Any = DEFAULT_OUTPUT_DTYPE,
        threads: int | None = None,
    ) -> list[Any]:
        """H and S of many small structures (whole cells), batched through the model.

        Args:
            structures: as :meth:`predict`; all are checked before the first model pass (an error
                names the structure at fault: ``structure k``, counted from 0).
            batch_atoms: atoms per model pass (a larger structure gets a pass of its own).
            backend, dtype, threads: as :meth:`predict`.

        Returns:
            One ``sisl.Hamiltonian`` per structure, in order.
        """
        from hforge.graph.model_graph import collate
        from hforge.models.predict import assemble_prediction

        dtype, threads = output_dtype(dtype), thread_count(threads)
        self.spare_output.drop()
        graphs = []
        for k, structure in enumerate(structures):
            try:
                graphs.append(self.builder.from_arrays(self.arrays(structure), name=f"structure {k}"))
            except InputError as error:  # which of them, counted from 0
                raise type(error)(f"structure {k}: {error.message}", path=error.path) from None
        results: list[Any] = []
        batch: list[GraphBatch] = []
        backend = "numba" if backend == "auto" else backend  # blocks come back to the host

        def flush() -> None:
            if not batch:
                return
            graph = collate(batch)
            # no_grad, not inference_mode: per-basis tables cached during a prediction (CG
            # descriptors) must stay usable by autograd when the same process trains later.
            with torch.no_grad(), torch_threads(threads):
                blocks = self.model(graph)
            blocks = type(blocks)(h=blocks.h.to(torch_dtype(dtype)), s=blocks.s.to(torch_dtype(dtype)))
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
    on the model's device, the model's training mode left as it was.

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
        return predictor.predict(structure, species=species, backend=backend, nsc=nsc, mode="whole", dtype=np.float64)
    finally:
        model.train(training)
