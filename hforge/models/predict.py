"""Predicted blocks -> ``sisl.Hamiltonian`` (H with S): the assembly of a predicted batch, and the geometry.

A structure's H and S come from :func:`hforge.infer.predict_hamiltonian` (the inference layer, which
composes the model's passes: one route from a structure to H and S)."""

from __future__ import annotations

from typing import Any, Sequence

from hforge.graph.model_graph import GraphBatch, StructureArrays
from hforge.models.base import HSBlocks, HSModel
from hforge.ops.assemble import assemble_csr
from hforge.structures.validate import open_cell

__all__ = ["assemble_prediction", "sisl_geometry"]

def sisl_geometry(arrays: StructureArrays, basis: Any) -> Any:
    """``sisl.Geometry`` of a structure with the basis' orbitals (SIESTA order), open boundaries along
    its non-periodic directions, whose missing vectors get a box (:func:`hforge.structures.open_cell`)."""
    import sisl

    cell = open_cell(arrays.positions, arrays.cell, arrays.pbc)
    atoms = basis.to_sisl()
    lattice = sisl.Lattice(cell)
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

