"""Training: configs, the trainer, evaluation, losses and metrics in physical units.

:mod:`hforge.train.config`: :class:`TrainConfig` from YAML (:func:`load_config`);
:mod:`hforge.train.trainer`: :class:`Trainer` (checkpoints, resume, data parallelism);
:mod:`hforge.train.evaluation`: :func:`evaluate_structures` (per structure and size group);
:mod:`hforge.train.metrics`: block errors (meV, per block type, shift-removed) and the
normalised block losses; :mod:`hforge.train.spectral`: Γ-point generalized-eigenvalue errors
(raw and canonically orthogonalized) and a differentiable eigenvalue loss.
"""

from __future__ import annotations

from hforge._lazy import lazy_getattr
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

#: Resolved on first use: they import the models (and with them the kernel backends), which
#: ``import hforge.train.metrics`` (e.g. by :mod:`hforge.analysis`) must not.
_LAZY = {
    "TrainConfig": "hforge.train.config",
    "load_config": "hforge.train.config",
    "Evaluation": "hforge.train.evaluation",
    "evaluate_structures": "hforge.train.evaluation",
    "predict_blocks": "hforge.train.evaluation",
    "TrainResult": "hforge.train.trainer",
    "Trainer": "hforge.train.trainer",
}

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
    "Evaluation",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate_structures",
    "load_config",
    "predict_blocks",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
