"""Training: configs, the trainer, evaluation and the losses.

:mod:`hforge.train.config`: :class:`TrainConfig` from YAML (:func:`load_config`);
:mod:`hforge.train.trainer`: :class:`Trainer` (checkpoints, resume, data parallelism);
:mod:`hforge.train.evaluation`: :func:`evaluate_structures` (per structure and size group);
:mod:`hforge.train.losses`: the normalised block losses and the differentiable Γ eigenvalue loss.
The metrics they report (meV, per block type, shift-removed; Γ eigenvalues) are :mod:`hforge.metrics`.
"""

from __future__ import annotations

from hforge._lazy import lazy_getattr
from hforge.train.losses import (
    BlockLoss,
    EigenvalueTarget,
    block_loss,
    eigenvalue_loss,
    eigenvalue_target,
    normalization_scales,
    remove_shift,
)

#: Resolved on first use: they import the models (e3nn, MACE and the kernel backends), which
#: ``import hforge.train.losses`` does not need.
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
    "BlockLoss",
    "EigenvalueTarget",
    "block_loss",
    "eigenvalue_loss",
    "eigenvalue_target",
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
