"""Training: losses and metrics in physical units (H and S blocks, generalized eigenvalues).

:mod:`hforge.train.metrics`: block errors (meV, per block type, shift-removed) and the
normalised block losses; :mod:`hforge.train.spectral`: Γ-point generalized-eigenvalue errors
(raw and canonically orthogonalized) and a differentiable eigenvalue loss.
"""

from __future__ import annotations

from hforge.train.metrics import (
    AlignedReference,
    BlockLoss,
    BlockMetrics,
    BlockTypes,
    TypeErrors,
    align_reference,
    best_shift,
    block_loss,
    block_metrics,
    compare_blocks,
    normalization_scales,
    remove_shift,
)

__all__ = [
    "AlignedReference",
    "BlockLoss",
    "BlockMetrics",
    "BlockTypes",
    "TypeErrors",
    "align_reference",
    "best_shift",
    "block_loss",
    "block_metrics",
    "compare_blocks",
    "normalization_scales",
    "remove_shift",
]
