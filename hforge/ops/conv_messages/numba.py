"""Numba kernel of :func:`hforge.ops.conv_messages.conv_messages`, float32 and float64, forward only.

Edges are grouped by receiver (a stable sort, so every receiver sums its edges in their given
order: the same bits for any thread count) and the receivers split in chunks of equal edge counts;
per edge and instruction ``A[i, k] = sum_j C[i, j, k] Y[e, j]`` (the sparse CG entries), then
``out[r, u, k] += path_weight w[e, u] sum_i x[s, u, i] A[i, k]`` straight into the receiver's row.
No ``(E, dim_out)`` message tensor is written (e3nn's path writes and concatenates one per chunk).
"""

from __future__ import annotations

import numpy as np
import torch

from hforge._numba import numba  # its threads started, torch's thread count kept (hforge/_numba.py)
from hforge.ops.conv_messages import ConvProgram, receiver_plan

__all__ = ["conv_messages_numba"]

_FASTMATH = {"reassoc", "contract", "nsz"}


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _conv_messages(
    x,
    Y,
    w,
    sender,
    order,
    chunk_ptr,
    edge_receiver,
    channels,
    l1,
    l3,
    in1_offset,
    in2_offset,
    out_offset,
    weight_offset,
    path_weight,
    cg_ptr,
    cg_i,
    cg_j,
    cg_k,
    cg_val,
    out,
):  # pragma: no cover
    """``x`` and ``out`` channel-last within every irrep (``[offset + m * C + u]``): the channel loops
    are contiguous (vectorized)."""
    n_ins = l1.shape[0]
    d1_max, d3_max = 2 * l1.max() + 1, 2 * l3.max() + 1
    for chunk in numba.prange(chunk_ptr.shape[0] - 1):
        A = np.zeros((d1_max, d3_max), dtype=out.dtype)
        part = np.zeros((d3_max, channels), dtype=out.dtype)
        scale = np.zeros(channels, dtype=out.dtype)
        for q in range(chunk_ptr[chunk], chunk_ptr[chunk + 1]):
            e = order[q]
            s, r = sender[e], edge_receiver[q]
            for ins in range(n_ins):
                d1, d3 = 2 * l1[ins] + 1, 2 * l3[ins] + 1
                A[:d1, :d3] = 0.0
                for t in range(cg_ptr[ins], cg_ptr[ins + 1]):
                    A[cg_i[t], cg_k[t]] += cg_val[t] * Y[e, in2_offset[ins] + cg_j[t]]
                part[:d3, :] = 0.0
                o1, oo, ow = in1_offset[ins], out_offset[ins], weight_offset[ins]
                for a in range(d1):
                    row = o1 + a * channels
                    for b in range(d3):
                        coef = A[a, b]
                        for u in range(channels):
                            part[b, u] += coef * x[s, row + u]
                for u in range(channels):
                    scale[u] = path_weight[ins] * w[e, ow + u]
                for b in range(d3):
                    row = oo + b * channels
                    for u in range(channels):
                        out[r, row + u] += scale[u] * part[b, u]


def conv_messages_numba(
    program: ConvProgram,
    x: torch.Tensor,
    Y: torch.Tensor,
    weights: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """As :func:`hforge.ops.conv_messages.conv_messages` (CPU tensors of one float dtype, no gradient)."""
    if sender.numel() == 0:
        return out
    plan = receiver_plan(program, x, Y, weights, sender, receiver, out.dtype, 16 * numba.get_num_threads())
    p = program
    with numba.parallel_chunksize(1):
        _conv_messages(
            plan.features, plan.Y, plan.weights, plan.sender_rows, plan.order, plan.chunk_ptr, plan.edge_receiver,
            p.channels, p.l1, p.l3, p.in1_offset, p.in2_offset, p.out_offset, p.weight_offset, plan.path_weight,
            p.cg_ptr, p.cg_i, p.cg_j, p.cg_k, plan.cg_val, plan.messages,
        )
    return plan.add_to(out)
