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
from hforge.ops.conv_messages import ConvProgram

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


def _channel_last(values: torch.Tensor, degrees: np.ndarray, offsets: np.ndarray, channels: int, inverse: bool) -> torch.Tensor:
    """e3nn's mul-major irreps ``[offset + u * d + m]`` <-> channel-last ``[offset + m * C + u]``."""
    out = torch.empty_like(values)
    for l, offset in sorted(set(zip(degrees.tolist(), offsets.tolist()))):
        d = 2 * l + 1
        block = values[:, offset : offset + d * channels]
        shape = (len(values), d, channels) if inverse else (len(values), channels, d)
        out[:, offset : offset + d * channels] = block.reshape(shape).transpose(1, 2).reshape(len(values), -1)
    return out


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
    dtype = out.dtype
    # only the rows this call touches: senders gathered and receivers compacted (work and memory of
    # the edges, not of the cell: calls on chunks of a large cell's edges)
    senders, sender_rows = torch.unique(sender.to(torch.int64), return_inverse=True)
    receivers, receiver_rows = torch.unique(receiver.to(torch.int64), return_inverse=True)
    receiver_np = receiver_rows.numpy()
    order = np.argsort(receiver_np, kind="stable")
    edge_receiver = np.ascontiguousarray(receiver_np[order])
    n_edges = len(order)
    n_chunks = max(1, min(n_edges, 16 * numba.get_num_threads()))
    cuts = (np.arange(1, n_chunks) * n_edges) // n_chunks
    # chunk boundaries moved to the next receiver change: one writer per receiver row
    cuts = np.searchsorted(edge_receiver, edge_receiver[cuts], side="left")
    chunk_ptr = np.unique(np.concatenate([[0], cuts, [n_edges]])).astype(np.int64)
    as_np = lambda t: t.detach().to(dtype).contiguous().numpy()  # noqa: E731
    real = np.float32 if dtype == torch.float32 else np.float64
    p = program
    features = _channel_last(x.detach()[senders].to(dtype), p.l1, p.in1_offset, p.channels, inverse=False)
    messages = out.new_zeros(len(receivers), out.shape[1])
    with numba.parallel_chunksize(1):
        _conv_messages(
            features.numpy(),
            as_np(Y),
            as_np(weights),
            sender_rows.numpy(),
            order.astype(np.int64),
            chunk_ptr,
            edge_receiver,
            p.channels,
            p.l1,
            p.l3,
            p.in1_offset,
            p.in2_offset,
            p.out_offset,
            p.weight_offset,
            p.path_weight.astype(real),
            p.cg_ptr,
            p.cg_i,
            p.cg_j,
            p.cg_k,
            p.cg_val.astype(real),
            messages.numpy(),
        )
    return out.index_add_(0, receivers, _channel_last(messages, p.l3, p.out_offset, p.channels, inverse=True))
