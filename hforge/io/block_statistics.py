"""Per-orbital and per-block-type statistics of H and S over a set of structures.

Models use them to scale their outputs: the mean onsite energy of every orbital of every
species (diagonal of the onsite blocks of the *unshifted* H), and the mean and standard
deviation of the H and S entries of every block type: (onsite or not, species of the row atom,
species of the column atom, shell of the row orbital, shell of the column orbital).  Only
entries in the files' sparsity patterns count; spin channels are pooled.  Accumulation is
streaming (Chan's pairwise update), so any number of structures fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hforge.basis import BasisSet
from hforge.io.hsdata import HSData

__all__ = ["StoreStatistics", "StatisticsAccumulator", "block_type_shape", "value_block_types"]


def _tables(basis: BasisSet) -> tuple[np.ndarray, int, int]:
    """``(n_species, max_orbitals)`` shell index of every orbital (-1 padding), max orbitals, max shells."""
    max_orb = int(basis.n_orbitals.max())
    max_shell = max(len(sp.shells) for sp in basis)
    table = -np.ones((len(basis), max_orb), dtype=np.int64)
    for k, sp in enumerate(basis):
        table[k, : sp.n_orbitals] = sp.orbital_shell
    return table, max_orb, max_shell


def block_type_shape(basis: BasisSet) -> tuple[int, int, int, int, int]:
    """Shape of the per-block-type arrays: (onsite or not, species i, species j, shell i, shell j)."""
    n_sp, max_shell = len(basis), max(len(sp.shells) for sp in basis)
    return (2, n_sp, n_sp, max_shell, max_shell)


def value_block_types(
    basis: BasisSet, species: np.ndarray, edge_index: np.ndarray, cell_shift: np.ndarray, block_ptr: np.ndarray
) -> np.ndarray:
    """``(n_values,)`` int64 block type of every flat value of a pair list: its flat index into
    arrays of shape :func:`block_type_shape` (``StoreStatistics.h_std.ravel()[types]`` is the std
    of every entry).  Onsite means the pair ``(i, i, 0)``; blocks are row-major (docs/design.md)."""
    table, _, max_shell = _tables(basis)
    species = np.asarray(species, dtype=np.int64)
    edge_index = np.asarray(edge_index, dtype=np.int64)
    sizes = np.diff(np.asarray(block_ptr, dtype=np.int64))
    pair = np.repeat(np.arange(len(sizes)), sizes)
    si, sj = species[edge_index[:, pair]]
    cols = basis.n_orbitals[sj]
    local = np.arange(len(pair)) - np.repeat(np.asarray(block_ptr[:-1], dtype=np.int64), sizes)
    onsite = ((edge_index[0] == edge_index[1]) & ~np.asarray(cell_shift).any(axis=1))[pair]
    n_sp = len(basis)
    return (((onsite * n_sp + si) * n_sp + sj) * max_shell + table[si, local // cols]) * max_shell + table[sj, local % cols]


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per bin (Chan et al. pairwise combination)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> "_Moments":
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def add(self, bins: np.ndarray, values: np.ndarray) -> None:
        size = self.count.size
        n = np.bincount(bins, minlength=size).astype(np.float64)
        total = np.bincount(bins, weights=values, minlength=size)
        mean = np.divide(total, n, out=np.zeros(size), where=n > 0)
        m2 = np.bincount(bins, weights=(values - mean[bins]) ** 2, minlength=size)
        count, old_mean, old_m2 = self.count.ravel(), self.mean.ravel(), self.m2.ravel()
        both = count + n
        delta = mean - old_mean
        with np.errstate(invalid="ignore", divide="ignore"):
            new_mean = np.where(both > 0, old_mean + delta * n / both, 0.0)
            new_m2 = old_m2 + m2 + np.where(both > 0, delta**2 * count * n / both, 0.0)
        self.count = both.reshape(self.count.shape)
        self.mean = new_mean.reshape(self.count.shape)
        self.m2 = new_m2.reshape(self.count.shape)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0))


@dataclass
class StoreStatistics:
    """Statistics of a dataset (eV for H, dimensionless S).

    Attributes:
        basis: the basis whose species and shells index the arrays.
        onsite_count, onsite_mean, onsite_std: ``(n_species, max_orbitals)`` over the diagonal of
            the onsite blocks of the unshifted H, per orbital (NaN where a species has fewer orbitals).
        block_count: ``(2, n_species, n_species, max_shells, max_shells)`` entries per block type;
            axis 0 is 0 for pairs between different sites (including an atom and its own periodic
            images) and 1 for the onsite blocks ``(i, i, 0)``.
        h_mean, h_std, s_mean, s_std: the same shape, of the unshifted H and of S.
    """

    basis: BasisSet
    onsite_count: np.ndarray
    onsite_mean: np.ndarray
    onsite_std: np.ndarray
    block_count: np.ndarray
    h_mean: np.ndarray
    h_std: np.ndarray
    s_mean: np.ndarray
    s_std: np.ndarray

    ARRAYS = ("onsite_count", "onsite_mean", "onsite_std", "block_count", "h_mean", "h_std", "s_mean", "s_std")

    def onsite_energies(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) onsite energy (eV) of every orbital of a species, SIESTA order."""
        k = self.basis.index(symbol)
        n = self.basis[k].n_orbitals
        return self.onsite_mean[k, :n], self.onsite_std[k, :n]

    def block_std(self, symbol_i: str, symbol_j: str, *, matrix: str = "h", onsite: bool = False) -> np.ndarray:
        """``(n_shells_i, n_shells_j)`` standard deviation of H (eV) or S per shell pair."""
        i, j = self.basis.index(symbol_i), self.basis.index(symbol_j)
        values = self.h_std if matrix == "h" else self.s_std
        return values[int(onsite), i, j, : len(self.basis[i].shells), : len(self.basis[j].shells)]

    def to_dict(self) -> dict[str, Any]:
        """Readable nested dict (JSON): per species the onsite energies by orbital name, and per
        species pair and shell pair the mean/std of H and S."""
        species = {}
        for k, sp in enumerate(self.basis):
            n = sp.n_orbitals
            species[sp.symbol] = {
                name: {"mean_eV": float(m), "std_eV": float(s), "count": int(c)}
                for name, m, s, c in zip(
                    sp.orbital_names(), self.onsite_mean[k, :n], self.onsite_std[k, :n], self.onsite_count[k, :n]
                )
            }
        blocks = {}
        for kind, label in ((0, "offsite"), (1, "onsite")):
            for i, si in enumerate(self.basis):
                for j, sj in enumerate(self.basis):
                    entries = {}
                    for a, sa in enumerate(si.shells):
                        for b, sb in enumerate(sj.shells):
                            count = int(self.block_count[kind, i, j, a, b])
                            if count:
                                entries[f"{sa.name}-{sb.name}"] = {
                                    "count": count,
                                    "h_mean_eV": float(self.h_mean[kind, i, j, a, b]),
                                    "h_std_eV": float(self.h_std[kind, i, j, a, b]),
                                    "s_mean": float(self.s_mean[kind, i, j, a, b]),
                                    "s_std": float(self.s_std[kind, i, j, a, b]),
                                }
                    if entries:
                        blocks[f"{label} {si.symbol}-{sj.symbol}"] = entries
        return {"onsite_energies": species, "blocks": blocks}


@dataclass
class StatisticsAccumulator:
    """Feed structures with :meth:`add`, then :meth:`result`."""

    basis: BasisSet
    _onsite: _Moments = field(init=False)
    _h: _Moments = field(init=False)
    _s: _Moments = field(init=False)

    def __post_init__(self) -> None:
        self._max_orb = int(self.basis.n_orbitals.max())
        n_sp = len(self.basis)
        self._onsite = _Moments.zeros((n_sp, self._max_orb))
        block_shape = block_type_shape(self.basis)
        self._h = _Moments.zeros(block_shape)
        self._s = _Moments.zeros(block_shape)

    def add(self, data: HSData) -> None:
        """Accumulate one structure (its basis must be :attr:`basis`)."""
        mask = data.mask
        pair = data.value_pair[mask]
        rows, cols = (x[mask] for x in data.value_orbitals())
        si = data.species[data.edge_index[0, pair]]
        onsite = data.onsite[pair]
        bins = value_block_types(self.basis, data.species, data.edge_index, data.cell_shift, data.block_ptr)[mask]
        h = data.h_unshifted[:, mask].astype(np.float64)
        s = data.s[mask].astype(np.float64)
        diagonal = onsite & (rows == cols)
        for channel in h:
            self._h.add(bins, channel)
            self._onsite.add(si[diagonal] * self._max_orb + rows[diagonal], channel[diagonal])
        self._s.add(bins, s)

    def result(self) -> StoreStatistics:
        nan_empty = lambda m, x: np.where(m.count > 0, x, np.nan)  # noqa: E731
        return StoreStatistics(
            basis=self.basis,
            onsite_count=self._onsite.count.astype(np.int64),
            onsite_mean=nan_empty(self._onsite, self._onsite.mean),
            onsite_std=nan_empty(self._onsite, self._onsite.std),
            block_count=self._s.count.astype(np.int64),
            h_mean=nan_empty(self._h, self._h.mean),
            h_std=nan_empty(self._h, self._h.std),
            s_mean=nan_empty(self._s, self._s.mean),
            s_std=nan_empty(self._s, self._s.std),
        )
