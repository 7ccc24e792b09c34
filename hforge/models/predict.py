"""Whole-cell prediction: structure -> ``sisl.Hamiltonian`` (H with S), and the assembly of predicted batches."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from hforge.graph.model_graph import GraphBatch, StructureArrays
from hforge.models.base import HSBlocks, HSModel
from hforge.ops.assemble import assemble_csr

__all__ = ["assemble_prediction", "predict_hamiltonian", "sisl_geometry"]

#: Vacuum (Å) around a molecule given without a cell.
VACUUM = 10.0


def sisl_geometry(arrays: StructureArrays, basis: Any) -> Any:
    """``sisl.Geometry`` of a structure with the basis' orbitals (SIESTA order); a molecule without a
    cell gets a box of its extent plus :data:`VACUUM` Å, with open boundaries."""
    import sisl

    cell = arrays.cell
    if not arrays.pbc.any() and abs(np.linalg.det(cell)) < 1e-6:
        cell = np.diag(np.ptp(arrays.positions, axis=0) + VACUUM)
    atoms = basis.to_sisl()
    lattice = sisl.Lattice(cell.copy())
    if not arrays.pbc.all():
        lattice.set_boundary_condition(
            [sisl.BoundaryCondition.PERIODIC if p else sisl.BoundaryCondition.OPEN for p in arrays.pbc]
        )
    return sisl.Geometry(arrays.positions.copy(), atoms=[atoms[s] for s in arrays.species], lattice=lattice)


def assemble_prediction(
    model: HSModel, graph: GraphBatch, blocks: HSBlocks, b: int = 0, *, backend: str = "auto", nsc: Sequence[int] | None = None
) -> Any:
    """Structure ``b`` of a predicted batch as a ``sisl.Hamiltonian`` (unshifted H in eV, with S)."""
    edge, shift, block_ptr = graph.structure_pairs(b)
    h, s = (values.detach().cpu().numpy() for values in (graph.split_values(blocks.h)[b], graph.split_values(blocks.s)[b]))
    arrays = graph.structure(b)
    csr = assemble_csr(edge, shift, block_ptr, (h, s), model.basis.n_orbitals[arrays.species], nsc=nsc, backend=backend)
    return csr.to_sisl(sisl_geometry(arrays, model.basis))


def predict_hamiltonian(
    model: HSModel,
    structure: Any,
    *,
    species: Sequence[str] | None = None,
    backend: str = "auto",
    nsc: Sequence[int] | None = None,
) -> Any:
    """H and S of a whole structure predicted by ``model``, as a non-orthogonal ``sisl.Hamiltonian``.

    The one route from a structure to H and S: :meth:`hforge.infer.Predictor.predict` (whole
    cell, float64 output) on the model's device, the model's training mode left as it was.

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
        UnknownSpeciesError, GeometryError: as :meth:`hforge.infer.Predictor.arrays`.
    """
    from hforge.infer.predictor import Predictor  # inference composes the model: imported on use

    training = model.training
    try:
        predictor = Predictor(model, device=model.device)
        return predictor.predict(structure, species=species, backend=backend, nsc=nsc, mode="whole")
    finally:
        model.train(training)
