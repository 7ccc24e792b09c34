"""Output scaling from the dataset statistics, so that training starts well conditioned.

Every head predicts blocks of order one; this module turns them into eV (H) or overlaps (S):

* **scale**: the standard deviation of the block type (onsite or not x species pair x shell pair) in
  the training data, one number per shell-pair sub-block, so equivariance is kept.  Symmetrised
  over ``(i, a) <-> (j, b)`` (the partner block is the transpose); block types absent from the data
  get the mean scale of the matrix.
* **shift** (onsite blocks only): ``lambda * identity`` on the sub-blocks of two shells of equal
  ``l`` of one atom, invariant under rotations (``D I D^T = I``).  ``lambda`` is the mean onsite
  energy of the shell (H) when ``a == b``, and ``(2l + 1)`` times the mean entry of the sub-block
  otherwise; for S this is the exact onsite overlap.

Tables are buffers (saved with the model) indexed like the CG descriptor: per slot ``(a, b, L)``
(the equivariant heads fold the scale into their mixing weights at no cost per pair) and per block
entry of every pair type (the invariant heads fold it into their output layers).
"""

from __future__ import annotations

import numpy as np
import torch

from hforge.basis import BasisSet
from hforge.io.block_statistics import StoreStatistics

__all__ = ["BlockScaling", "MATRICES"]

#: The matrices a model predicts, in the order of the scaling tables.
MATRICES = ("h", "s")


def _species_map(basis: BasisSet, statistics: StoreStatistics) -> list[int | None]:
    return [statistics.basis.index(sp.symbol) if sp.symbol in statistics.basis else None for sp in basis]


def _shell_tables(basis: BasisSet, statistics: StoreStatistics | None) -> tuple[np.ndarray, np.ndarray]:
    """``scale (2 matrices, 2 kinds, S, S, A, A)`` and ``shift (2, S, A, A)`` in float64."""
    n_sp = len(basis)
    n_shells = max(len(sp.shells) for sp in basis)
    scale = np.full((2, 2, n_sp, n_sp, n_shells, n_shells), np.nan)
    shift = np.zeros((2, n_sp, n_shells, n_shells))
    if statistics is None:
        return np.ones_like(scale), shift
    index = _species_map(basis, statistics)
    for m, name in enumerate(MATRICES):
        std, mean = getattr(statistics, f"{name}_std"), getattr(statistics, f"{name}_mean")
        for si, ki in enumerate(index):
            for sj, kj in enumerate(index):
                if ki is None or kj is None:
                    continue
                na, nb = len(basis[si].shells), len(basis[sj].shells)
                scale[m, :, si, sj, :na, :nb] = std[:, ki, kj, :na, :nb]
        scale[m] = 0.5 * (scale[m] + scale[m].transpose(0, 2, 1, 4, 3))
        for kind in range(2):
            table = scale[m, kind]
            fallback = np.nanmean(table[table > 0]) if np.any(table > 0) else 1.0
            table[~(table > 0)] = fallback
        for s, k in enumerate(index):
            if k is None:
                continue
            shells = basis[s].shells
            for a, sa in enumerate(shells):
                for b, sb in enumerate(shells):
                    if sa.l != sb.l:
                        continue
                    if name == "h" and a == b:
                        orbitals = basis[s].shell_slices[a]
                        lam = np.nanmean(statistics.onsite_mean[k, orbitals])
                    else:
                        lam = (2 * sa.l + 1) * mean[1, k, k, a, b]
                    shift[m, s, a, b] = lam if np.isfinite(lam) else 0.0
    return scale, shift


def _layout(shells: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat ``(S, S, A, A)`` table index of every slot and every block entry; onsite-shift index and mask.

    Slots run over pair types, shell pairs (``a`` major) and ``L``, block entries over pair types,
    rows and columns: the orders of :class:`~hforge.ops.cg_blocks.CGDescriptor`.
    """
    n_sp, n_sh = len(shells), max(len(ls) for ls in shells)
    slot, entry, shift_index, shift_mask = [], [], [], []
    for t in range(n_sp * n_sp):
        si, sj = divmod(t, n_sp)
        for a, la in enumerate(shells[si]):
            for b, lb in enumerate(shells[sj]):
                slot += [((si * n_sp + sj) * n_sh + a) * n_sh + b] * (2 * min(la, lb) + 1)
        shell_i = np.repeat(np.arange(len(shells[si])), [2 * l + 1 for l in shells[si]])
        shell_j = np.repeat(np.arange(len(shells[sj])), [2 * l + 1 for l in shells[sj]])
        m_i = np.concatenate([np.arange(2 * l + 1) for l in shells[si]])
        m_j = np.concatenate([np.arange(2 * l + 1) for l in shells[sj]])
        a, b = np.meshgrid(shell_i, shell_j, indexing="ij")
        entry.append((((si * n_sp + sj) * n_sh + a) * n_sh + b).reshape(-1))
        shift_index.append(((si * n_sh + a) * n_sh + b).reshape(-1))
        same_l = np.asarray(shells[si])[a] == np.asarray(shells[sj])[b]
        shift_mask.append((same_l & (m_i[:, None] == m_j[None, :]) & (si == sj)).reshape(-1))
    return np.asarray(slot), np.concatenate(entry), np.concatenate(shift_index), np.concatenate(shift_mask)


class BlockScaling(torch.nn.Module):
    """Scale and shift tables of H and S for one basis (see the module docstring).

    Args:
        basis: the model's basis.
        statistics: the training data's statistics (:class:`~hforge.io.StoreStatistics`, species
            matched by label); None for unit scale and no shift.
    """

    def __init__(self, basis: BasisSet, statistics: StoreStatistics | None = None) -> None:
        super().__init__()
        scale, shift = _shell_tables(basis, statistics)
        self.register_buffer("scale", torch.from_numpy(scale))
        self.register_buffer("shift", torch.from_numpy(shift))
        slot, entry, shift_index, shift_mask = _layout([[shell.l for shell in sp.shells] for sp in basis])
        self.register_buffer("slot_index", torch.from_numpy(slot), persistent=False)
        self.register_buffer("entry_index", torch.from_numpy(entry), persistent=False)
        self.register_buffer("shift_index", torch.from_numpy(shift_index), persistent=False)
        self.register_buffer("shift_mask", torch.from_numpy(shift_mask), persistent=False)

    def slot_scale(self, matrix: str, onsite: bool) -> torch.Tensor:
        """``(n_slots,)`` scale of every slot ``(a, b, L)`` of every pair type (descriptor order)."""
        return self.scale[MATRICES.index(matrix), int(onsite)].reshape(-1)[self.slot_index]

    def entry_scale(self, matrix: str, onsite: bool) -> torch.Tensor:
        """``(sum of pair block sizes,)`` scale of every block entry (``desc.pair_entry_ptr`` layout)."""
        return self.scale[MATRICES.index(matrix), int(onsite)].reshape(-1)[self.entry_index]

    def entry_shift(self, matrix: str) -> torch.Tensor:
        """``(sum of pair block sizes,)`` onsite shift of every block entry (zero off the diagonal pair types)."""
        values = self.shift[MATRICES.index(matrix)].reshape(-1)[self.shift_index]
        return torch.where(self.shift_mask, values, torch.zeros_like(values))
