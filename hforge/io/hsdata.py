"""``HSData``: one structure with its H and S in block-sparse form (docs/design.md).

Pairs ``e = (i, j, n)`` couple the orbitals of atom ``i`` (rows) with those of atom ``j``
displaced by the lattice translation ``n`` (columns): ``r_ij = positions[j] + n @ cell -
positions[i]``.  Every directed pair of the source file is kept, onsite pairs ``(i, i, 0)``
included, sorted by ``(i, j, n)``.  The dense orbital block of pair ``e`` lies row-major at
``values[block_ptr[e]:block_ptr[e + 1]]``; entries outside the file's sparsity pattern are 0
and ``mask`` is False there.  Energies in eV, lengths in Å, S dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, Sequence

import numpy as np

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError, GeometryError, InvalidMatrixError, UnsupportedSystemError
from hforge.io.pairs import is_canonical, pair_vectors

__all__ = ["HSData", "DENSE_CHECK_MAX_ORBITALS", "MIN_DISTANCE"]

#: ``validate`` checks that S(Γ) is positive definite only up to this many orbitals (dense).
DENSE_CHECK_MAX_ORBITALS = 6000

#: Atoms closer than this (Å) are overlapping: no SIESTA run of a real material has them.
MIN_DISTANCE = 0.5

_SPIN_KINDS = {1: "unpolarized", 2: "polarized"}


def _pair_keys(edge_index: np.ndarray, cell_shift: np.ndarray, n_atoms: int, low: np.ndarray, span: np.ndarray) -> np.ndarray:
    """int64 keys ordering pairs by (i, j, n0, n1, n2)."""
    shifted = cell_shift - low
    key = edge_index[0] * n_atoms + edge_index[1]
    for axis in range(3):
        key = key * span[axis] + shifted[:, axis]
    return key


@dataclass(eq=False)
class HSData:
    """One structure: geometry, basis, directed atom pairs and flat-packed H/S blocks.

    Attributes:
        cell: ``(3, 3)`` float64 Å, rows are lattice vectors.
        positions: ``(N, 3)`` float64 Å.
        species: ``(N,)`` int64 indices into ``basis.species``.
        basis: the orbitals of each species (SIESTA order inside a block).
        edge_index: ``(2, E)`` int64 (row atom i, column atom j) of each pair.
        cell_shift: ``(E, 3)`` int64 lattice translation n of atom j.
        block_ptr: ``(E + 1,)`` int64 offsets of the row-major blocks.
        h: ``(n_spin, n_values)`` float64 eV, H as sisl reads every SIESTA file: ``H - E_F S``
            (E_F = 0).  The files store the unshifted H and E_F; models learn :attr:`h_unshifted`.
        s: ``(n_values,)`` float64 overlap.
        mask: ``(n_values,)`` bool, True for entries in the file's sparsity pattern.
        fermi_level: E_F in eV (the TSHS/HSX/nc value; ``h_unshifted = h + E_F s``).
        pbc: ``(3,)`` bool periodicity.
        nsc: ``(3,)`` int64 number of supercells per lattice direction (odd).
        source: path of the file it was read from, if any.
        folded: the blocks are a Γ-only file's, folded into the unit cell: every pair is
            ``(i, j, 0)`` and its block sums the periodic images of ``j`` within reach, which could
            not be told apart (:mod:`hforge.io.reach`).  Only Γ quantities mean anything then
            (:meth:`matrix_at_k` refuses other k-points), and the pairs are not the structure's.
        gamma_only: the source was a Γ-only file (nsc 1 1 1, images folded); :func:`~hforge.io.write_hs`
            writes the matrices folded again (:meth:`fold`), so that a file read and written comes
            out as it came.  Set for folded data and for Γ-only files unfolded by their unique images.
    """

    cell: np.ndarray
    positions: np.ndarray
    species: np.ndarray
    basis: BasisSet
    edge_index: np.ndarray
    cell_shift: np.ndarray
    block_ptr: np.ndarray
    h: np.ndarray
    s: np.ndarray
    mask: np.ndarray
    fermi_level: float = 0.0
    pbc: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=bool))
    nsc: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.int64))
    source: str | None = None
    folded: bool = False
    gamma_only: bool = False

    def __post_init__(self) -> None:
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.species = np.asarray(self.species, dtype=np.int64)
        self.edge_index = np.asarray(self.edge_index, dtype=np.int64).reshape(2, -1)
        self.cell_shift = np.asarray(self.cell_shift, dtype=np.int64).reshape(-1, 3)
        self.block_ptr = np.asarray(self.block_ptr, dtype=np.int64)
        self.h = np.asarray(self.h)
        if self.h.ndim == 1:
            self.h = self.h[None, :]
        self.s = np.asarray(self.s)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(3)
        self.nsc = np.asarray(self.nsc, dtype=np.int64).reshape(3)
        self.fermi_level = float(self.fermi_level)
        n_values = int(self.block_ptr[-1]) if len(self.block_ptr) else 0
        checks = {
            "species": self.species.shape == (len(self.positions),),
            "cell_shift": self.cell_shift.shape[0] == self.edge_index.shape[1],
            "block_ptr": self.block_ptr.shape == (self.edge_index.shape[1] + 1,),
            "h": self.h.shape[1] == n_values and self.h.shape[0] in _SPIN_KINDS,
            "s": self.s.shape == (n_values,),
            "mask": self.mask.shape == (n_values,),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise BasisMismatchError(f"HSData arrays of inconsistent shapes: {bad}", path=self.source)
        self.folded, self.gamma_only = bool(self.folded), bool(self.gamma_only or self.folded)
        if self.folded and (self.cell_shift.any() or (self.nsc != 1).any()):
            raise BasisMismatchError("folded HSData must have nsc 1 1 1 and every pair in cell (0, 0, 0)", path=self.source)

    # ---- sizes ------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @property
    def n_pairs(self) -> int:
        return self.edge_index.shape[1]

    @property
    def n_values(self) -> int:
        return int(self.block_ptr[-1])

    @property
    def n_spin(self) -> int:
        return self.h.shape[0]

    @property
    def spin(self) -> str:
        """``unpolarized`` or ``polarized``."""
        return _SPIN_KINDS[self.n_spin]

    @property
    def nnz(self) -> int:
        """Entries in the file's sparsity pattern."""
        return int(np.count_nonzero(self.mask))

    @cached_property
    def atom_orbitals(self) -> np.ndarray:
        """``(N,)`` int64 orbitals of each atom."""
        return self.basis.n_orbitals[self.species]

    @cached_property
    def orbital_offsets(self) -> np.ndarray:
        """``(N + 1,)`` int64 first orbital of each atom (SIESTA's ``lasto`` with a leading 0)."""
        return np.concatenate([[0], np.cumsum(self.atom_orbitals)]).astype(np.int64)

    @property
    def n_orbitals(self) -> int:
        """Orbitals in the unit cell."""
        return int(self.orbital_offsets[-1])

    @cached_property
    def block_shapes(self) -> np.ndarray:
        """``(E, 2)`` int64 (rows, columns) of each block."""
        return self.atom_orbitals[self.edge_index].T.copy()

    @cached_property
    def onsite(self) -> np.ndarray:
        """``(E,)`` bool, True for the onsite pairs ``(i, i, 0)``."""
        return (self.edge_index[0] == self.edge_index[1]) & ~self.cell_shift.any(axis=1)

    # ---- geometry of the pairs ----------------------------------------------------------
    def pair_vectors(self) -> np.ndarray:
        """``(E, 3)`` float64 Å: ``positions[j] + n @ cell - positions[i]``."""
        return pair_vectors(self.positions, self.cell, self.edge_index, self.cell_shift)

    def pair_distances(self) -> np.ndarray:
        """``(E,)`` float64 Å."""
        return np.linalg.norm(self.pair_vectors(), axis=1)

    # ---- matrices -----------------------------------------------------------------------
    @property
    def h_unshifted(self) -> np.ndarray:
        """``(n_spin, n_values)`` H + E_F S in eV: the Hamiltonian models learn."""
        return self.h + self.fermi_level * self.s

    def block(self, e: int, which: Literal["h", "s", "h_unshifted"] = "h", spin: int = 0) -> np.ndarray:
        """The ``(n_orb_i, n_orb_j)`` block of pair ``e`` (a view for ``h`` and ``s``)."""
        values = self.s if which == "s" else (self.h if which == "h" else self.h_unshifted)[spin]
        rows, cols = self.block_shapes[e]
        return values[self.block_ptr[e] : self.block_ptr[e + 1]].reshape(rows, cols)

    @cached_property
    def value_pair(self) -> np.ndarray:
        """``(n_values,)`` int64 pair index of every flat value."""
        return np.repeat(np.arange(self.n_pairs), np.diff(self.block_ptr))

    def value_orbitals(self) -> tuple[np.ndarray, np.ndarray]:
        """``(n_values,)`` local (row, column) orbital of every flat value inside its block."""
        local = np.arange(self.n_values) - self.block_ptr[self.value_pair]
        cols = self.block_shapes[self.value_pair, 1]
        return local // cols, local % cols

    # ---- pair bookkeeping -----------------------------------------------------------------
    def find_pairs(self, i: np.ndarray, j: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Index of the pairs ``(i, j, shift)`` (arrays), -1 where absent."""
        shift = np.asarray(shift, dtype=np.int64).reshape(-1, 3)
        low = np.minimum(self.cell_shift.min(axis=0, initial=0), shift.min(axis=0, initial=0))
        span = np.maximum(self.cell_shift.max(axis=0, initial=0), shift.max(axis=0, initial=0)) - low + 1
        keys = _pair_keys(self.edge_index, self.cell_shift, self.n_atoms, low, span)
        order = np.argsort(keys, kind="stable")
        query = _pair_keys(np.stack([np.asarray(i), np.asarray(j)]).astype(np.int64), shift, self.n_atoms, low, span)
        pos = np.minimum(np.searchsorted(keys[order], query), len(keys) - 1)
        found = keys[order][pos] == query if len(keys) else np.zeros(len(query), bool)
        return np.where(found, order[pos] if len(keys) else -1, -1)

    @cached_property
    def partner(self) -> np.ndarray:
        """``(E,)`` int64 index of the reverse pair ``(j, i, -n)`` (-1 if the file lacks it)."""
        return self.find_pairs(self.edge_index[1], self.edge_index[0], -self.cell_shift)

    def canonical_pairs(self) -> np.ndarray:
        """Sorted indices of the canonical half: ``i < j``, or ``i == j`` and n lexicographically
        positive, plus the onsite pairs (docs/design.md); the rest are their partners."""
        return np.flatnonzero(is_canonical(self.edge_index, self.cell_shift))

    def _subset(self, pairs: np.ndarray, blocks: dict[str, np.ndarray]) -> "HSData":
        """A copy with the pairs ``pairs`` in that order and the given flat ``h``, ``s``, ``mask``."""
        sizes = np.diff(self.block_ptr)[pairs]
        return replace(
            self,
            edge_index=self.edge_index[:, pairs],
            cell_shift=self.cell_shift[pairs],
            block_ptr=np.concatenate([[0], np.cumsum(sizes)]),
            **blocks,
        )

    def _gather(self, pairs: np.ndarray, transpose: np.ndarray | None = None) -> np.ndarray:
        """Flat value indices of the blocks ``pairs`` (row-major; transposed where ``transpose``)."""
        sizes = np.diff(self.block_ptr)[pairs]
        starts = np.repeat(self.block_ptr[pairs], sizes)
        local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        if transpose is None:
            return starts + local
        rows, cols = self.block_shapes[pairs].T
        rows_v, cols_v = np.repeat(rows, sizes), np.repeat(cols, sizes)
        flip = np.repeat(transpose, sizes)
        # value (r, c) of the transposed block of shape (cols, rows) is source value (c, r)
        r, c = local // np.where(flip, rows_v, cols_v), local % np.where(flip, rows_v, cols_v)
        return starts + np.where(flip, c * cols_v + r, local)

    def canonical_half(self) -> "HSData":
        """A copy holding only the canonical pairs (see :meth:`canonical_pairs`)."""
        pairs = self.canonical_pairs()
        idx = self._gather(pairs)
        return self._subset(pairs, {"h": self.h[:, idx], "s": self.s[idx], "mask": self.mask[idx]})

    def expand_half(self) -> "HSData":
        """Inverse of :meth:`canonical_half`: add every missing partner ``(j, i, -n)`` as the
        transposed block, and sort pairs by ``(i, j, n)``."""
        missing = self.partner < 0
        src = np.concatenate([np.arange(self.n_pairs), np.flatnonzero(missing)])
        flip = np.concatenate([np.zeros(self.n_pairs, bool), np.ones(int(missing.sum()), bool)])
        edge = np.concatenate([self.edge_index, self.edge_index[::-1, missing]], axis=1)
        shift = np.concatenate([self.cell_shift, -self.cell_shift[missing]])
        low, span = shift.min(axis=0), np.ptp(shift, axis=0) + 1
        order = np.argsort(_pair_keys(edge, shift, self.n_atoms, low, span), kind="stable")
        src, flip = src[order], flip[order]
        idx = self._gather(src, flip)
        sizes = np.diff(self.block_ptr)[src]
        return replace(
            self,
            edge_index=edge[:, order],
            cell_shift=shift[order],
            block_ptr=np.concatenate([[0], np.cumsum(sizes)]),
            h=self.h[:, idx],
            s=self.s[idx],
            mask=self.mask[idx],
        )

    def fold(self) -> "HSData":
        """H and S folded into the unit cell, as a Γ-only SIESTA run stores them: the blocks of all
        pairs ``(i, j, n)`` summed into ``(i, j, 0)`` (masks joined), ``nsc = 1 1 1``, :attr:`folded` set.
        H(Γ) and S(Γ) are unchanged."""
        key = self.edge_index[0] * self.n_atoms + self.edge_index[1]
        unique, first, group = np.unique(key, return_index=True, return_inverse=True)
        sizes = np.diff(self.block_ptr)[first]
        block_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        local = np.arange(self.n_values) - self.block_ptr[self.value_pair]
        target = block_ptr[group[self.value_pair]] + local
        n_values = int(block_ptr[-1])
        if len(unique) == self.n_pairs:  # one image per atom pair: blocks moved, not summed (-0.0 kept)
            h, s = np.empty_like(self.h), np.empty_like(self.s)
            h[:, target], s[target] = self.h, self.s
        else:
            h = np.stack([np.bincount(target, weights=channel, minlength=n_values) for channel in self.h])
            s = np.bincount(target, weights=self.s, minlength=n_values)
        mask = np.zeros(n_values, dtype=bool)
        mask[target[self.mask]] = True
        return replace(
            self,
            edge_index=self.edge_index[:, first],
            cell_shift=np.zeros((len(unique), 3), dtype=np.int64),
            block_ptr=block_ptr,
            h=h.astype(self.h.dtype, copy=False),
            s=s.astype(self.s.dtype, copy=False),
            mask=mask,
            nsc=np.ones(3, dtype=np.int64),
            folded=True,
        )

    def select_spin(self, spin: int) -> "HSData":
        """The structure with one spin channel (0: up, 1: down)."""
        return replace(self, h=self.h[spin : spin + 1].copy())

    def astype(self, dtype: Any) -> "HSData":
        """H and S cast to ``dtype`` (e.g. float32 for a compact store)."""
        return replace(self, h=self.h.astype(dtype), s=self.s.astype(dtype))

    # ---- dense matrices -------------------------------------------------------------------
    def _orbital_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masked values: (flat index, global row orbital, global column orbital in the unit cell)."""
        flat = np.flatnonzero(self.mask)
        pair = self.value_pair[flat]
        local = flat - self.block_ptr[pair]
        cols = self.block_shapes[pair, 1]
        i, j = self.edge_index[:, pair]
        return flat, self.orbital_offsets[i] + local // cols, self.orbital_offsets[j] + local % cols

    def matrix_at_k(
        self, k: Sequence[float] = (0.0, 0.0, 0.0), which: Literal["h", "s", "h_unshifted"] = "h", spin: int = 0
    ) -> np.ndarray:
        """Dense ``(n_orb, n_orb)`` Bloch matrix ``Σ_n M(n) exp(2πi k·n)`` (k in reduced units).

        Real float64 at Γ, complex128 elsewhere.

        Raises:
            UnsupportedSystemError: a k-point other than Γ of :attr:`folded` matrices.
        """
        if self.folded and np.any(np.asarray(k) != 0):
            raise UnsupportedSystemError(
                "H and S folded into the unit cell (a Γ-only file) are known at Γ only", path=self.source
            )
        values = self.s if which == "s" else (self.h if which == "h" else self.h_unshifted)[spin]
        flat, rows, cols = self._orbital_coords()
        k = np.asarray(k, dtype=np.float64)
        data = values[flat].astype(np.float64)
        if np.any(k != 0):
            data = data * np.exp(2j * np.pi * (self.cell_shift[self.value_pair[flat]] @ k))
        out = np.zeros((self.n_orbitals, self.n_orbitals), dtype=data.dtype)
        np.add.at(out, (rows, cols), data)
        return out

    # ---- checks ---------------------------------------------------------------------------
    def validate(self, *, dense_check: bool = True) -> "HSData":
        """Check that the matrices can come from a SIESTA run; returns self.

        Checks: finite positions, no two atoms closer than 0.5 Å, a cell of non-zero volume;
        finite H and S; every pair has its partner ``(j, i, -n)``; S(Γ) positive definite (dense Cholesky, up to
        :data:`DENSE_CHECK_MAX_ORBITALS` orbitals, when ``dense_check``).

        Raises:
            GeometryError: NaN positions, overlapping atoms or a degenerate cell.
            InvalidMatrixError: naming the source file and the first offending entries.
        """
        if not (np.isfinite(self.positions).all() and np.isfinite(self.cell).all()):
            raise GeometryError("NaN or infinite positions or cell", path=self.source)
        if self.pbc.any() and abs(np.linalg.det(self.cell)) < 1e-6:
            raise GeometryError(f"degenerate cell (volume {np.linalg.det(self.cell):.3g} Å^3)", path=self.source)
        close = (self.pair_distances() < MIN_DISTANCE) & ~self.onsite
        if close.any():
            e = int(np.flatnonzero(close)[0])
            raise GeometryError(
                f"atoms closer than {MIN_DISTANCE} Å: pair {self._describe_pair(e)} at {self.pair_distances()[e]:.3f} Å",
                path=self.source,
            )
        for name, values in (("H", self.h), ("S", self.s)):
            bad = ~np.isfinite(values)
            if bad.any():
                flat = np.flatnonzero(bad.reshape(-1, self.n_values).any(axis=0))
                raise InvalidMatrixError(
                    f"{name} has {int(bad.sum())} NaN/inf entries (first in pairs {self._describe(flat[:3])})",
                    path=self.source,
                )
        if np.any(self.partner < 0):
            e = int(np.flatnonzero(self.partner < 0)[0])
            raise InvalidMatrixError(
                f"pair {self._describe_pair(e)} has no partner (j, i, -n): the sparsity is not symmetric",
                path=self.source,
            )
        if dense_check and self.n_orbitals <= DENSE_CHECK_MAX_ORBITALS:
            s_gamma = self.matrix_at_k(which="s")
            try:
                np.linalg.cholesky(0.5 * (s_gamma + s_gamma.T))
            except np.linalg.LinAlgError:
                low = float(np.linalg.eigvalsh(0.5 * (s_gamma + s_gamma.T))[0])
                raise InvalidMatrixError(
                    f"S at Γ is not positive definite (smallest eigenvalue {low:.3e})", path=self.source
                ) from None
        return self

    def _describe_pair(self, e: int) -> str:
        i, j = self.edge_index[:, e]
        return f"({int(i)}, {int(j)}, {tuple(int(x) for x in self.cell_shift[e])})"

    def _describe(self, flat: np.ndarray) -> str:
        return ", ".join(self._describe_pair(int(e)) for e in np.unique(self.value_pair[flat]))

    # ---- sisl -----------------------------------------------------------------------------
    @classmethod
    def from_sisl(
        cls,
        hamiltonian: Any,
        basis: BasisSet | None = None,
        *,
        fermi_level: float = 0.0,
        species: np.ndarray | None = None,
        source: str | None = None,
    ) -> "HSData":
        """From a non-orthogonal :class:`sisl.Hamiltonian` (unpolarized or polarized).

        Args:
            hamiltonian: H (as sisl reads it: E_F = 0) with its overlap.
            basis: the basis; default: built from the geometry's atoms (they must carry n, l, m).
                Atoms are matched to its species by label (``Atom.tag``) unless ``species`` is given.
            fermi_level: E_F (eV) of the file.
            species: ``(N,)`` species indices into ``basis`` (overrides the atom labels).
            source: path recorded in :attr:`source`.

        Raises:
            UnsupportedSystemError: non-collinear or spin-orbit H, or an orthogonal basis.
            UnknownSpeciesError / BasisMismatchError: atoms that the basis lacks or disagrees with.
        """
        H = hamiltonian
        geom = H.geometry
        if H.spin.kind not in (H.spin.UNPOLARIZED, H.spin.POLARIZED):
            raise UnsupportedSystemError(
                f"{H.spin!s} Hamiltonian: HForge handles unpolarized and collinear spin-polarized H only",
                path=source,
            )
        if H.orthogonal:
            raise UnsupportedSystemError("orthogonal H without S: not a SIESTA Hamiltonian", path=source)
        if basis is None:
            basis = BasisSet.from_sisl(geom.atoms)
            species = geom.atoms.species if species is None else species
        elif species is None:
            lookup = np.array([basis.index(atom.tag) for atom in geom.atoms.atom], dtype=np.int64)
            species = lookup[geom.atoms.species]
        species = np.asarray(species, dtype=np.int64)
        counts = basis.n_orbitals[species]
        file_counts = np.diff(geom.firsto)
        if not np.array_equal(counts, file_counts):
            a = int(np.flatnonzero(counts != file_counts)[0])
            raise BasisMismatchError(
                f"atom {a} has {int(file_counts[a])} orbitals in the file but the basis gives its species "
                f"{basis.symbols[species[a]]!r} {int(counts[a])}",
                path=source,
            )

        n_spin = H.spin.size(H.dtype)
        s_csr = H.tocsr(dim=H.S_idx)
        h_csr = [H.tocsr(dim=d) for d in range(n_spin)]
        for m in h_csr:
            if not (np.array_equal(m.indptr, s_csr.indptr) and np.array_equal(m.indices, s_csr.indices)):
                raise BasisMismatchError("H and S sparsity patterns differ", path=source)
        no = geom.no
        rows = np.repeat(np.arange(no, dtype=np.int64), np.diff(s_csr.indptr))
        image, col_orb = np.divmod(s_csr.indices.astype(np.int64), no)
        sc_off = np.asarray(geom.lattice.sc_off, dtype=np.int64)
        rank = np.empty(len(sc_off), dtype=np.int64)  # lexicographic rank of every image
        rank[np.lexsort(sc_off.T[::-1])] = np.arange(len(sc_off))
        o2a = np.repeat(np.arange(geom.na, dtype=np.int64), file_counts)
        ai, aj = o2a[rows], o2a[col_orb]
        keys = (ai * geom.na + aj) * len(sc_off) + rank[image]  # sorts pairs by (i, j, n)
        _, first, pair = np.unique(keys, return_index=True, return_inverse=True)
        edge_index = np.stack([ai[first], aj[first]])
        cell_shift = sc_off[image[first]]
        sizes = counts[edge_index[0]] * counts[edge_index[1]]
        block_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(file_counts)])
        flat = block_ptr[pair] + (rows - offsets[ai]) * counts[aj] + (col_orb - offsets[aj])
        n_values = int(block_ptr[-1])
        h = np.zeros((n_spin, n_values), dtype=np.float64)
        for d, m in enumerate(h_csr):
            h[d, flat] = m.data
        s = np.zeros(n_values, dtype=np.float64)
        s[flat] = s_csr.data
        mask = np.zeros(n_values, dtype=bool)
        mask[flat] = True
        return cls(
            cell=np.array(geom.cell),
            positions=np.array(geom.xyz),
            species=species,
            basis=basis,
            edge_index=edge_index,
            cell_shift=cell_shift,
            block_ptr=block_ptr,
            h=h,
            s=s,
            mask=mask,
            fermi_level=fermi_level,
            pbc=np.asarray(geom.lattice.pbc, dtype=bool),
            nsc=np.asarray(geom.nsc, dtype=np.int64),
            source=source,
        )

    def to_sisl_geometry(self) -> Any:
        """:class:`sisl.Geometry` with the basis' orbitals and the supercell ``nsc``."""
        import sisl

        atoms = self.basis.to_sisl()
        lattice = sisl.Lattice(self.cell.copy(), nsc=self.nsc)
        if not self.pbc.all():
            lattice.set_boundary_condition(
                [sisl.BoundaryCondition.PERIODIC if p else sisl.BoundaryCondition.OPEN for p in self.pbc]
            )
        return sisl.Geometry(self.positions.copy(), atoms=[atoms[s] for s in self.species], lattice=lattice)

    def to_sisl(self) -> Any:
        """:class:`sisl.Hamiltonian` with overlap, SIESTA orbital order and supercell, E_F = 0
        (as sisl reads SIESTA files; add ``fermi_level`` with ``H.shift`` for absolute energies)."""
        import scipy.sparse as sp
        import sisl

        geom = self.to_sisl_geometry()
        flat, rows, cols = self._orbital_coords()
        shift = self.cell_shift[self.value_pair[flat]]
        half = geom.nsc // 2
        if np.any(np.abs(shift) > half):
            raise BasisMismatchError(f"cell shifts beyond nsc = {self.nsc.tolist()}", path=self.source)
        cols = geom.lattice.sc_index(shift) * geom.no + cols
        shape = (geom.no, geom.no_s)

        def matrix(values: np.ndarray) -> sp.csr_matrix:
            return sp.csr_matrix((values[flat].astype(np.float64), (rows, cols)), shape=shape)

        return sisl.Hamiltonian.fromsp(geom, [matrix(self.h[d]) for d in range(self.n_spin)], S=matrix(self.s))
