"""The oracle of :func:`hforge.ops.conv_messages.conv_messages`: the e3nn module on every edge's
gathered features, then one ``index_add_`` into the receivers (differentiable by autograd)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["conv_messages_reference"]


def conv_messages_reference(
    tp: Any,
    x: torch.Tensor,
    Y: torch.Tensor,
    weights: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out.index_add_(0, receiver, tp(x[sender], Y, weights))``."""
    return out.index_add_(0, receiver, tp(x[sender], Y, weights))
