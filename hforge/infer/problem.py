"""A structure ready to predict: structure files read (:func:`read_frames`, :func:`read_structure`),
then its canonical block pairs, the output's supercells and CSR row pointer, the pairs' ranges of
a sweep through the cell (:class:`Problem`, :func:`make_problem`), and the output buffers
(:func:`populated_empty`)."""

from __future__ import annotations

import functools
import logging
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hforge.errors import FileFormatError, InputError
from hforge.graph.model_graph import StructureArrays
from hforge.graph.neighbours import neighbour_list
from hforge.infer.chunks import chunk_of_atoms, csr_row_pointer, fractional, interplanar_spacings, morton_codes
from hforge.io.pairs import block_pointer
from hforge.models.predict import sisl_geometry
from hforge.ops.assemble import AssembledCSR
from hforge.ops.assemble.layout import array_module, default_index_dtype
from hforge.structures.validate import open_cell

__all__ = ["POPULATE_BYTES", "Problem", "SpareOutput", "make_problem", "populated_empty", "read_frames", "read_structure"]

logger = logging.getLogger(__name__)

#: Arrays from this size on are mapped with their pages populated (:func:`populated_empty`).
POPULATE_BYTES = 1 << 26


def read_frames(path: str | os.PathLike) -> list[Any]:
    """Every frame of a structure file (``ase.io.read(path, index=":")``) as ``ase.Atoms``.

    A frame without a cell or periodicity (a plain ``.xyz``) is a cluster: it is predicted with open
    boundaries, and a ``logging`` warning says so.

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
    clusters = [atoms for atoms in frames if not atoms.get_pbc().any() and not atoms.get_cell().any()]
    if clusters:
        which = "it gives" if len(frames) == 1 else f"{len(clusters)} of its {len(frames)} frames give"
        logger.warning(
            "%s: %s no cell: predicted as an isolated cluster (open boundaries); for a periodic structure give its "
            "cell and pbc (e.g. an extended XYZ with Lattice=... pbc=...)", path, which,
        )
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


def populated_empty(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose pages are mapped and zeroed up front (Linux ``MAP_POPULATE``).

    Output buffers of large cells are GB, and first-touch page faults (one per 4 KiB page) cost
    more than the writes themselves; one system call maps them all (docs/measurements.md).  Below
    :data:`POPULATE_BYTES`, or off Linux, a plain ``np.empty``.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    flag = getattr(mmap, "MAP_POPULATE", None)
    if nbytes < POPULATE_BYTES or flag is None or not sys.platform.startswith("linux"):
        return np.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flag)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


class SpareOutput:
    """Output buffers a finished prediction no longer needs (a file written from them), kept for the
    next one: their pages are mapped already, which for GB of output costs more than the writes
    (:func:`populated_empty`).  :meth:`take` hands them out once, as views, when they are large enough
    and of the right dtypes, and otherwise lets them go, so that at most one set is alive."""

    def __init__(self) -> None:
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None

    def keep(self, indices: Any, data: Any) -> None:
        """Keep host ``indices (nnz,)`` and ``data (nnz, 2)`` (anything else is not kept)."""
        host = isinstance(indices, np.ndarray) and isinstance(data, np.ndarray) and data.ndim == 2
        self.arrays = (indices, data) if host and data.flags.c_contiguous and indices.flags.c_contiguous else None

    def drop(self) -> None:
        self.arrays = None

    def take(self, nnz: int, index_dtype: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The kept buffers' first ``nnz`` entries, or None (and nothing kept any more)."""
        arrays, self.arrays = self.arrays, None
        if arrays is None:
            return None
        indices, data = arrays
        if indices.dtype != np.dtype(index_dtype) or data.dtype != np.dtype(dtype) or len(indices) < nnz or len(data) < nnz:
            return None
        return indices[:nnz], data[:nnz]


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
    def cell(self) -> np.ndarray:
        """``(3, 3)`` Å: the structure's cell, with a vector along every non-periodic direction that
        lacks one (:func:`~hforge.structures.open_cell`, the output's cell)."""
        return open_cell(self.arrays.positions, self.arrays.cell, self.arrays.pbc)

    @functools.cached_property
    def _wrapped(self) -> tuple[np.ndarray, np.ndarray]:
        return fractional(self.arrays.positions, self.cell)

    @property
    def frac(self) -> np.ndarray:
        """``(N, 3)`` fractional coordinates (in :attr:`cell`) wrapped into ``[0, 1)``."""
        return self._wrapped[0]

    @property
    def wrap(self) -> np.ndarray:
        """``(N, 3)`` int64 lattice translation taken off by the wrapping."""
        return self._wrapped[1]

    @functools.cached_property
    def pair_reach(self) -> float:
        """Å: the longest block pair (the largest pair cut-off the pairs were found with)."""
        i, j = self.edge_index
        if i.size == 0:
            return 0.0
        vectors = self.arrays.positions[j] + self.cell_shift @ self.arrays.cell - self.arrays.positions[i]
        return float(np.sqrt((vectors**2).sum(axis=1).max()))

    @functools.cached_property
    def sweep_axis(self) -> int:
        """The lattice direction of the widest spacing between lattice planes: the sweep of :meth:`ranges`."""
        return int(np.argmax(interplanar_spacings(self.cell)))

    @functools.cached_property
    def flipped(self) -> np.ndarray:
        """``(E,) bool``: canonical pairs ``(i, j, n)`` whose *owner* is ``j``: the pair's atom behind the
        other along :attr:`sweep_axis` (``j``'s image at ``n`` lies before ``i``; ties and onsite
        pairs: ``i``).  A pair's blocks are computed from its owner's side (:meth:`ranges`)."""
        i, j = self.edge_index
        axis = self.sweep_axis
        x = self.frac[:, axis]
        image = x[j] + (self.cell_shift[:, axis] + self.wrap[j, axis] - self.wrap[i, axis])
        return image < x[i]

    def ranges(self, n_ranges: int) -> list[np.ndarray]:
        """Indices of the canonical pairs of each of ``n_ranges`` slabs of the cell along
        :attr:`sweep_axis` (fractional coordinate ``[r / n, (r + 1) / n)``): the pairs whose owner
        (:attr:`flipped`) lies in the slab, sorted by the owner's Morton code (:func:`morton_codes`),
        owner, then index: each owner's pairs consecutive, and consecutive owners near each other, so
        that a batch of pairs reads the projections of few atoms (the separable contraction runs from
        cache; 13-17 % faster at 10^4 atoms than owners in index order).  Every pair is in one range,
        and the other atoms of a range's pairs lie ahead of its slab within the pair cut-off, so that
        what is computed per atom for a range (projections) reaches one pair cut-off beyond the slab,
        on one side."""
        owner = np.where(self.flipped, self.edge_index[1], self.edge_index[0])
        slab = np.minimum((self.frac[owner, self.sweep_axis] * n_ranges).astype(np.int64), n_ranges - 1)
        order = np.lexsort((np.arange(len(owner)), owner, morton_codes(self.frac)[owner], slab))
        bounds = np.searchsorted(slab[order], np.arange(n_ranges + 1))
        return [order[bounds[r] : bounds[r + 1]] for r in range(n_ranges)]

    def occupied_chunks(self, grid: tuple[int, int, int]) -> np.ndarray:
        """Flat indices of the chunks of ``grid`` holding atoms."""
        return np.unique(chunk_of_atoms(self.frac, grid))

    def allocate(self, dtype: np.dtype, *, on_gpu: bool = False, spare: SpareOutput | None = None) -> tuple[Any, Any]:
        """Empty whole-matrix ``indices (nnz,)`` and ``data (nnz, 2)``: host arrays with their pages
        mapped (:func:`populated_empty`; ``spare``'s when they fit), or CuPy arrays on the current device."""
        if on_gpu:
            import cupy

            return cupy.empty(self.nnz, dtype=self.index_dtype), cupy.empty((self.nnz, 2), dtype=dtype)
        reused = spare.take(self.nnz, self.index_dtype, dtype) if spare is not None else None
        if reused is not None:
            return reused
        return populated_empty(self.nnz, self.index_dtype), populated_empty((self.nnz, 2), dtype)

    def csr(self, indices: Any, data: Any) -> AssembledCSR:
        """The whole matrices on filled buffers (host or CuPy)."""
        return AssembledCSR(
            indptr=array_module(indices).asarray(self.indptr.astype(indices.dtype)), indices=indices, data=data,
            shape=(len(self.indptr) - 1, self.n_cols), nsc=self.nsc,
        )

    def geometry(self, basis: Any) -> Any:
        """``sisl.Geometry`` of the structure with the basis' orbitals."""
        return sisl_geometry(self.arrays, basis)


def make_problem(
    arrays: StructureArrays, pair_cutoffs: np.ndarray, n_orbitals: np.ndarray, nsc: Sequence[int] | None = None
) -> Problem:
    """The :class:`Problem` of checked arrays: onsite pairs, then the canonical half of the pairs
    with ``|r_ij| < pair_cutoffs[s_i, s_j]``; ``n_orbitals`` per species; ``nsc`` (default: the
    reach of the pairs, ``2 max|n| + 1``).

    Raises:
        InputError: an ``nsc`` that is not 3 odd integers reaching every pair.
    """
    n_atoms = len(arrays.positions)
    hopping = neighbour_list(arrays.positions, arrays.cell, arrays.pbc, pair_cutoffs, species=arrays.species, half=True)
    n_orb = n_orbitals[arrays.species]
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
