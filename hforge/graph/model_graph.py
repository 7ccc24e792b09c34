"""Model inputs: one structure, or a batch of them, as the graphs the H/S models consume.

For a structure and a :class:`~hforge.basis.BasisSet`, :class:`GraphBuilder` makes a
:class:`GraphBatch` holding

* the **interaction graph** of the descriptor (MACE): every pair ``(i, j, n)`` with
  ``|r_ij| < r_max``, both directions (``edge_index[0]`` sends, ``edge_index[1]`` receives,
  the edge vector is ``r_ij``);
* the **block pairs**, the blocks the model predicts (docs/design.md, "Model graphs"): per
  structure the onsite pairs ``(i, i, 0)`` of its atoms in atom order, then the canonical half of
  the pairs with ``|r_ij| < cutoff[s_i, s_j]``, sorted by ``(i, j, n)``.  The cut-off is
  ``r_i + r_j`` (the largest orbital radii: exactly the blocks of S), or with ``include_kb`` the
  reach of H through a third atom's Kleinman-Bylander projector, ``r_i + r_j + 2 max r_KB``;
* optionally the **targets** of an :class:`~hforge.io.HSData` aligned to the block pairs: the
  unshifted H (eV), S, and a mask of the entries inside the file's sparsity pattern.

A batch concatenates structures: atom indices are offset by the atoms before, ``block_ptr`` by the
values before; structure ``b`` owns atoms ``atom_ptr[b]:atom_ptr[b + 1]``, pairs
``pair_ptr[b]:pair_ptr[b + 1]`` (its ``n_b`` onsite pairs first) and the contiguous values
``block_ptr[pair_ptr[b]]:block_ptr[pair_ptr[b + 1]]``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError, InputError, UnknownSpeciesError, UnsupportedSystemError
from hforge.graph.neighbours import neighbour_list
from hforge.io.hsdata import HSData
from hforge.io.pairs import block_pointer
from hforge.structures.validate import check_arrays

__all__ = [
    "GraphBatch",
    "GraphBuilder",
    "StructureArrays",
    "align_targets",
    "collate",
    "structure_arrays",
    "uncovered_pairs",
]


@dataclass(frozen=True)
class StructureArrays:
    """A structure as arrays: ``positions (N, 3)`` Å, ``cell (3, 3)`` Å (rows), ``pbc (3,)``,
    ``species (N,)`` int64 indices into a basis."""

    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    species: np.ndarray


def _species_indices(labels: Sequence[str], basis: BasisSet) -> np.ndarray:
    unique, inverse = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    missing = [str(label) for label in unique if label not in basis]  # str: numpy's str_ repr is np.str_('C')
    if missing:
        raise UnknownSpeciesError(f"species {missing} are not in the basis (it has {basis.symbols})")
    return np.array([basis.index(label) for label in unique], dtype=np.int64)[inverse.reshape(-1)]


def structure_arrays(structure: Any, basis: BasisSet, *, species: Sequence[str] | None = None) -> StructureArrays:
    """The arrays of an ``ase.Atoms``, a ``sisl.Geometry``, an :class:`~hforge.io.HSData` (or
    :class:`StructureArrays`, checked and returned).

    Species are matched to ``basis`` by label: ``HSData`` by its basis' labels (whose orbitals must
    be the same), a ``sisl.Geometry`` by ``Atom.tag``, ``ase.Atoms`` by chemical symbol; ``species``
    (one label per atom) overrides them.

    Raises:
        UnknownSpeciesError: a species the basis lacks.
        BasisMismatchError: an ``HSData`` whose species have other orbitals than ``basis``'.
        GeometryError: no atoms, NaN/inf positions, a degenerate periodic cell.
        InputError: an object of another type.
    """
    if isinstance(structure, StructureArrays):
        species_index = np.asarray(structure.species, dtype=np.int64)
        in_range = not species_index.size or 0 <= species_index.min() <= species_index.max() < len(basis)
        if species_index.shape != (len(structure.positions),) or not in_range:
            raise UnknownSpeciesError(f"species indices must be one per atom in 0..{len(basis) - 1}")
        return StructureArrays(*check_arrays(structure.positions, structure.cell, structure.pbc), species_index)
    if isinstance(structure, HSData):
        labels = [structure.basis.symbols[s] for s in structure.species]
        for k, sp in enumerate(structure.basis):
            if sp.symbol in basis and not sp.same_orbitals(basis[sp.symbol]) and k in structure.species:
                raise BasisMismatchError(
                    f"species {sp.symbol!r} has other orbitals in the data than in the basis", path=structure.source
                )
        positions, cell, pbc = structure.positions, structure.cell, structure.pbc
    elif hasattr(structure, "get_chemical_symbols"):  # ase.Atoms
        labels = structure.get_chemical_symbols()
        positions, cell, pbc = structure.get_positions(), np.asarray(structure.get_cell()), structure.get_pbc()
    elif hasattr(structure, "xyz") and hasattr(structure, "lattice"):  # sisl.Geometry
        labels = [structure.atoms[a].tag for a in range(structure.na)]
        positions, cell, pbc = structure.xyz, structure.cell, structure.lattice.pbc
    else:
        raise InputError(f"cannot read a structure from a {type(structure).__name__}: give ase.Atoms, sisl.Geometry or HSData")
    if species is not None:
        labels = list(species)
        if len(labels) != len(positions):
            raise InputError(f"{len(labels)} species labels for {len(positions)} atoms")
    positions, cell, pbc = check_arrays(positions, cell, pbc)
    return StructureArrays(positions, cell, pbc, _species_indices(labels, basis))


@dataclass(frozen=True, eq=False)
class GraphBatch:
    """One or several structures with their interaction graph, block pairs and optional targets.

    Attributes:
        positions: ``(N, 3)`` float64 Å.
        species: ``(N,)`` int64 indices into the model's basis.
        cell: ``(B, 3, 3)`` float64 Å, lattice vectors as rows.
        pbc: ``(B, 3)`` bool.
        atom_ptr: ``(B + 1,)`` int64 first atom of every structure.
        edge_index: ``(2, E_int)`` int64 interaction graph (sender, receiver), both directions.
        edge_shift: ``(E_int, 3)`` int64 cell shift ``n`` of the receiver: ``r = x_j + n @ cell - x_i``.
        pair_index: ``(2, E)`` int64 block pairs (row atom, column atom), layout in the module docstring.
        pair_shift: ``(E, 3)`` int64 cell shift of every block pair.
        pair_ptr: ``(B + 1,)`` int64 first pair of every structure.
        block_ptr: ``(E + 1,)`` int64 offsets of the flat-packed blocks (docs/design.md).
        h: ``(V,)`` float64 target unshifted H (eV) or None.
        s: ``(V,)`` float64 target S or None.
        mask: ``(V,)`` bool, target entries inside the file's sparsity pattern, or None.
        names: a name per structure (file or "structure <k>").
        baseline_h: ``(V,)`` float64 physical baseline H0 (eV) of the block pairs, or None: a cache
            the models fill (``hforge.models.HSModel.with_physics``), computed from the geometry alone.
        exact_s: ``(V,)`` float64 exact overlap of the block pairs, or None (a cache, likewise).
    """

    positions: torch.Tensor
    species: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    atom_ptr: torch.Tensor
    edge_index: torch.Tensor
    edge_shift: torch.Tensor
    pair_index: torch.Tensor
    pair_shift: torch.Tensor
    pair_ptr: torch.Tensor
    block_ptr: torch.Tensor
    h: torch.Tensor | None = None
    s: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    names: tuple[str, ...] = ()
    baseline_h: torch.Tensor | None = None
    exact_s: torch.Tensor | None = None

    @property
    def n_graphs(self) -> int:
        return int(self.atom_ptr.shape[0]) - 1

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_pairs(self) -> int:
        return int(self.pair_index.shape[1])

    @property
    def n_values(self) -> int:
        return int(self.block_ptr[-1])

    @property
    def has_targets(self) -> bool:
        return self.h is not None

    @property
    def batch(self) -> torch.Tensor:
        """``(N,)`` int64 structure of every atom."""
        counts = torch.diff(self.atom_ptr)
        return torch.repeat_interleave(torch.arange(self.n_graphs, device=counts.device), counts)

    @property
    def value_ptr(self) -> torch.Tensor:
        """``(B + 1,)`` int64 first flat value of every structure."""
        return self.block_ptr[self.pair_ptr]

    def onsite_pairs(self) -> torch.Tensor:
        """``(E,)`` bool: the onsite pairs ``(i, i, 0)`` (the first ``n_b`` pairs of every structure)."""
        counts = torch.diff(self.pair_ptr)
        local = torch.arange(self.n_pairs, device=counts.device) - torch.repeat_interleave(self.pair_ptr[:-1], counts)
        return local < torch.repeat_interleave(torch.diff(self.atom_ptr), counts)

    def hopping_pairs(self) -> torch.Tensor | slice:
        """The off-site block pairs: a slice for one structure, else an index tensor."""
        if self.n_graphs == 1:
            return slice(self.n_atoms, self.n_pairs)
        return torch.nonzero(~self.onsite_pairs()).squeeze(1)

    def to(self, device: Any) -> "GraphBatch":
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})

    def structure(self, b: int) -> StructureArrays:
        """The arrays of structure ``b``."""
        a0, a1 = int(self.atom_ptr[b]), int(self.atom_ptr[b + 1])
        return StructureArrays(
            self.positions[a0:a1].cpu().numpy(), self.cell[b].cpu().numpy(), self.pbc[b].cpu().numpy(),
            self.species[a0:a1].cpu().numpy(),
        )

    def structure_pairs(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(edge_index, cell_shift, block_ptr)`` of structure ``b`` as numpy, atom indices and offsets local."""
        p0, p1 = int(self.pair_ptr[b]), int(self.pair_ptr[b + 1])
        edge = (self.pair_index[:, p0:p1] - self.atom_ptr[b]).cpu().numpy()
        ptr = (self.block_ptr[p0 : p1 + 1] - self.block_ptr[p0]).cpu().numpy()
        return edge, self.pair_shift[p0:p1].cpu().numpy(), ptr

    def split_values(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Flat values of the whole batch -> one view per structure."""
        ptr = self.value_ptr.tolist()
        return [values[ptr[b] : ptr[b + 1]] for b in range(self.n_graphs)]


def align_targets(
    data: HSData, pair_index: np.ndarray, pair_shift: np.ndarray, block_ptr: np.ndarray, *, spin: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks of ``data`` on the given pairs: ``(h_unshifted, s, mask)``, each ``(block_ptr[-1],)``.

    ``data`` may hold every directed pair or only the canonical half (partners are rebuilt as
    transposes).  Pairs the file lacks get zeros and ``mask`` False; file pairs not asked for are
    left out (see :func:`uncovered_pairs`).  Atom indices and species must be ``data``'s.

    Args:
        spin: H channel of a spin-polarized file (required there).

    Raises:
        UnsupportedSystemError: a spin-polarized file without ``spin``.
    """
    if data.n_spin > 1 and spin is None:
        raise UnsupportedSystemError("spin-polarized H: choose a channel with spin=0 or 1", path=data.source)
    if np.any(data.partner < 0):
        data = data.expand_half()
    found = data.find_pairs(pair_index[0], pair_index[1], pair_shift)
    sizes = np.diff(block_ptr)
    n_values = int(block_ptr[-1])
    if np.any((found >= 0) & (np.diff(data.block_ptr)[np.maximum(found, 0)] != sizes)):
        raise BasisMismatchError("block sizes of the data differ from the pairs' (another basis?)", path=data.source)
    present = np.repeat(found >= 0, sizes)
    local = np.arange(n_values) - np.repeat(block_ptr[:-1], sizes)
    source = np.repeat(data.block_ptr[np.maximum(found, 0)], sizes) + local
    h = np.zeros(n_values)
    s = np.zeros(n_values)
    mask = np.zeros(n_values, dtype=bool)
    h[present] = data.h_unshifted[0 if spin is None else spin, source[present]]
    s[present] = data.s[source[present]]
    mask[present] = data.mask[source[present]]
    return h, s, mask


def uncovered_pairs(data: HSData, pair_index: np.ndarray, pair_shift: np.ndarray) -> np.ndarray:
    """Indices of ``data``'s pairs whose block is neither a given pair nor the partner of one.

    With block pairs within ``r_i + r_j`` these are the file's H-only (Kleinman-Bylander) blocks.
    """
    rows = np.concatenate([pair_index[0], pair_index[1]])
    cols = np.concatenate([pair_index[1], pair_index[0]])
    found = data.find_pairs(rows, cols, np.concatenate([pair_shift, -pair_shift]))
    covered = np.zeros(data.n_pairs, dtype=bool)
    covered[found[found >= 0]] = True
    return np.flatnonzero(~covered)


@dataclass(frozen=True)
class GraphBuilder:
    """Structure -> :class:`GraphBatch` for a model (its basis, ``r_max`` and pair cut-offs).

    Args:
        basis: the model's basis; species are matched to it by label.
        r_max: cut-off of the interaction graph (Å).
        include_kb: predict H blocks up to ``r_i + r_j + 2 max r_KB`` (the reach of H through
            a third atom's Kleinman-Bylander projector) instead of ``r_i + r_j``.
        spin: H channel of spin-polarized targets.

    Calling it on an ``HSData`` attaches the targets; on ``ase.Atoms`` / ``sisl.Geometry`` not.
    """

    basis: BasisSet
    r_max: float
    include_kb: bool = False
    spin: int | None = None

    def pair_cutoffs(self) -> np.ndarray:
        """``(n_species, n_species)`` Å, the block-pair cut-offs."""
        return self.basis.pair_cutoffs(include_kb=self.include_kb)

    def __call__(
        self, structure: Any, *, targets: bool = True, species: Sequence[str] | None = None, name: str | None = None
    ) -> GraphBatch:
        """The graph of one structure (``ase.Atoms``, ``sisl.Geometry`` or ``HSData``)."""
        arrays = structure_arrays(structure, self.basis, species=species)
        return self.from_arrays(
            arrays,
            data=structure if targets and isinstance(structure, HSData) else None,
            name=name or (getattr(structure, "source", None) or "structure"),
        )

    def from_arrays(self, arrays: StructureArrays, *, data: HSData | None = None, name: str = "structure") -> GraphBatch:
        """The graph of a structure given as arrays (``data``: the targets, same atoms)."""
        positions, cell, pbc, species = arrays.positions, arrays.cell, arrays.pbc, arrays.species
        n_atoms = len(positions)
        interaction = neighbour_list(positions, cell, pbc, self.r_max)
        hopping = neighbour_list(positions, cell, pbc, self.pair_cutoffs(), species=species, half=True)
        onsite = np.arange(n_atoms, dtype=np.int64)
        pair_index = np.concatenate([np.stack([onsite, onsite]), hopping.edge_index], axis=1)
        pair_shift = np.concatenate([np.zeros((n_atoms, 3), dtype=np.int64), hopping.cell_shift])
        block_ptr = block_pointer(self.basis.n_orbitals[species], pair_index)
        targets = {}
        if data is not None:
            h, s, mask = align_targets(data, pair_index, pair_shift, block_ptr, spin=self.spin)
            targets = {"h": torch.from_numpy(h), "s": torch.from_numpy(s), "mask": torch.from_numpy(mask)}
        return GraphBatch(
            positions=torch.from_numpy(positions.copy()),
            species=torch.from_numpy(species.copy()),
            cell=torch.from_numpy(cell.copy())[None],
            pbc=torch.from_numpy(pbc.copy())[None],
            atom_ptr=torch.tensor([0, n_atoms]),
            edge_index=torch.from_numpy(interaction.edge_index),
            edge_shift=torch.from_numpy(interaction.cell_shift),
            pair_index=torch.from_numpy(pair_index),
            pair_shift=torch.from_numpy(pair_shift),
            pair_ptr=torch.tensor([0, pair_index.shape[1]]),
            block_ptr=torch.from_numpy(block_ptr),
            names=(str(name),),
            **targets,
        )


def collate(graphs: Sequence[GraphBatch]) -> GraphBatch:
    """Concatenate graphs (single structures or batches) into one batch (a ``DataLoader`` collate_fn).

    Raises:
        InputError: no graphs, or some with targets and some without.
    """
    if not graphs:
        raise InputError("collate: no graphs")
    if len(graphs) == 1:
        return graphs[0]
    with_targets = {g.has_targets for g in graphs}
    if len(with_targets) > 1:
        raise InputError("collate: some graphs carry targets and some do not")
    atom_offset = np.cumsum([0] + [g.n_atoms for g in graphs])
    pair_offset = np.cumsum([0] + [g.n_pairs for g in graphs])
    value_offset = np.cumsum([0] + [g.n_values for g in graphs])

    def cat_ptr(name: str, offsets: np.ndarray) -> torch.Tensor:
        parts = [getattr(g, name)[:-1] + int(o) for g, o in zip(graphs, offsets)]
        return torch.cat([*parts, torch.tensor([int(offsets[-1])])])

    targets = {}
    if with_targets == {True}:
        targets = {name: torch.cat([getattr(g, name) for g in graphs]) for name in ("h", "s", "mask")}
    for name in ("baseline_h", "exact_s"):  # caches: kept only when every graph has them
        if all(getattr(g, name) is not None for g in graphs):
            targets[name] = torch.cat([getattr(g, name) for g in graphs])
    return GraphBatch(
        positions=torch.cat([g.positions for g in graphs]),
        species=torch.cat([g.species for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        atom_ptr=cat_ptr("atom_ptr", atom_offset),
        edge_index=torch.cat([g.edge_index + int(o) for g, o in zip(graphs, atom_offset)], dim=1),
        edge_shift=torch.cat([g.edge_shift for g in graphs]),
        pair_index=torch.cat([g.pair_index + int(o) for g, o in zip(graphs, atom_offset)], dim=1),
        pair_shift=torch.cat([g.pair_shift for g in graphs]),
        pair_ptr=cat_ptr("pair_ptr", pair_offset),
        block_ptr=cat_ptr("block_ptr", value_offset),
        names=tuple(n for g in graphs for n in g.names),
        **targets,
    )
