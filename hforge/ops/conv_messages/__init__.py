"""Summed messages of a channel-wise tensor-product convolution (MACE's interaction), one op.

``message[r] = sum_{e: receiver[e] = r} TP(x[sender[e]], Y[e], w[e])`` for an e3nn
``TensorProduct`` whose every instruction is ``uvu`` with ``Y`` of multiplicity one (MACE's
``conv_tp``): per instruction ``(l1, l2, l3)`` and channel ``u``,
``out[u, k] = path_weight w[e, u] sum_{i, j} C[i, j, k] x[u, i] Y[j]`` with ``C`` e3nn's
``wigner_3j(l1, l2, l3)`` (the module's own copy, in its dtype, where it has one), outputs of one
``i_out`` summed, in e3nn's layouts (irreps mul-major).

:class:`ConvProgram` is the tensor product as data (built once per module by :func:`conv_program`:
the nonzero CG entries of every instruction, its offsets and path weight); backends only execute it.
``reference``: the module itself on gathered features, then ``index_add_`` (the oracle).
``numba``: gather, product and sum fused, parallel over receivers (no ``(E, dim_out)`` temporary),
forward only (inference; training takes the reference, which autograd differentiates).
``cpp``: the same fusion compiled (``kernels/cpu/conv_messages_isa.cpp``, SIMD over channels, every
output's accumulators in registers), forward only; both kernels run on a :class:`ReceiverPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hforge._compat import import_e3nn
from hforge.errors import InputError
from hforge.ops.backends import resolve_backend

import_e3nn()  # before e3nn's first import (hforge/_compat.py)

from e3nn import o3  # noqa: E402

__all__ = ["ConvProgram", "ReceiverPlan", "conv_messages", "conv_program", "receiver_plan"]

_IMPLEMENTED = ("cpp", "numba", "torch")
CPP_MAX_DEGREE = 7  # kernels/cpu/conv_messages_isa.cpp: kMaxDegree


@dataclass(frozen=True, eq=False)
class ConvProgram:
    """A ``uvu`` tensor product as flat tables (int64 / float64 numpy arrays).

    Attributes:
        channels: the multiplicity ``u`` of every input-1 and output irrep.
        dim_in1, dim_in2, dim_out, weight_numel: the e3nn dimensions.
        l1, l2, l3: ``(I,)`` degrees of every instruction's input-1, input-2 (``Y``) and output irrep.
        in1_offset, in2_offset, out_offset, weight_offset: ``(I,)`` where each starts.
        path_weight: ``(I,)`` e3nn's normalization of every instruction.
        cg_ptr: ``(I + 1,)`` rows of every instruction in ``cg_i, cg_j, cg_k, cg_val`` (its nonzero
            ``C[i, j, k]``, ``j`` an offset into the instruction's ``Y`` irrep).
    """

    channels: int
    dim_in1: int
    dim_in2: int
    dim_out: int
    weight_numel: int
    l1: np.ndarray
    l2: np.ndarray
    l3: np.ndarray
    in1_offset: np.ndarray
    in2_offset: np.ndarray
    out_offset: np.ndarray
    weight_offset: np.ndarray
    path_weight: np.ndarray
    cg_ptr: np.ndarray
    cg_i: np.ndarray
    cg_j: np.ndarray
    cg_k: np.ndarray
    cg_val: np.ndarray


_PROGRAMS: dict[tuple[int, tuple[str, ...]], tuple[Any, ConvProgram]] = {}


def conv_program(tp: Any) -> ConvProgram:
    """The :class:`ConvProgram` of an e3nn ``TensorProduct`` (cached per module); raises
    :class:`~hforge.errors.InputError` for one that is not channel-wise ``uvu`` with per-edge weights."""
    compiled = getattr(tp, "_compiled_main_left_right", None)  # e3nn's generated module: its CG buffers
    buffers = dict(compiled.named_buffers()) if compiled is not None else {}
    key = (id(tp), tuple(str(b.dtype) for b in buffers.values()))
    cached = _PROGRAMS.get(key)
    if cached is not None and cached[0] is tp:
        return cached[1]
    in1, in2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
    muls = {mul for mul, _ in in1} | {mul for mul, _ in out}
    if tp.shared_weights or len(muls) != 1 or any(mul != 1 for mul, _ in in2):
        raise InputError(f"conv_messages: {tp} is not a channel-wise convolution with per-edge weights")
    channels = muls.pop()
    s1, s2, so = in1.slices(), in2.slices(), out.slices()
    rows: dict[str, list] = {name: [] for name in ("l1", "l2", "l3", "o1", "o2", "oo", "ow", "pw", "count", "i", "j", "k", "v")}
    weight = 0
    for ins in tp.instructions:
        if ins.connection_mode != "uvu" or not ins.has_weight:
            raise InputError(f"conv_messages: instruction {ins} of {tp} is not a weighted 'uvu' path")
        l1, l2, l3 = in1[ins.i_in1].ir.l, in2[ins.i_in2].ir.l, out[ins.i_out].ir.l
        own = buffers.get(f"_w3j_{l1}_{l2}_{l3}")  # the module's values (rounded to its dtype), else exact
        cg = own.detach().cpu().double().numpy() if own is not None else o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
        i, j, k = np.nonzero(np.abs(cg) > 1e-14)
        for name, value in (
            ("l1", l1),
            ("l2", l2),
            ("l3", l3),
            ("o1", s1[ins.i_in1].start),
            ("o2", s2[ins.i_in2].start),
            ("oo", so[ins.i_out].start),
            ("ow", weight),
            ("pw", ins.path_weight),
            ("count", len(i)),
        ):
            rows[name].append(value)
        rows["i"] += list(i)
        rows["j"] += list(j)
        rows["k"] += list(k)
        rows["v"] += list(cg[i, j, k])
        weight += int(np.prod(ins.path_shape))
    i64 = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    program = ConvProgram(
        channels=channels,
        dim_in1=in1.dim,
        dim_in2=in2.dim,
        dim_out=out.dim,
        weight_numel=weight,
        l1=i64(rows["l1"]),
        l2=i64(rows["l2"]),
        l3=i64(rows["l3"]),
        in1_offset=i64(rows["o1"]),
        in2_offset=i64(rows["o2"]),
        out_offset=i64(rows["oo"]),
        weight_offset=i64(rows["ow"]),
        path_weight=np.asarray(rows["pw"], dtype=np.float64),
        cg_ptr=np.concatenate([[0], np.cumsum(rows["count"])]).astype(np.int64),
        cg_i=i64(rows["i"]),
        cg_j=i64(rows["j"]),
        cg_k=i64(rows["k"]),
        cg_val=np.asarray(rows["v"], dtype=np.float64),
    )
    _PROGRAMS[key] = (tp, program)
    return program


@dataclass(frozen=True, eq=False)
class ReceiverPlan:
    """What the fused kernels take (numpy, one float dtype): the rows of ``x`` the edges send from,
    gathered and channel-last inside every irrep (``features[row, offset + m * C + u]``), the edges
    ordered by receiver (a stable sort: each receiver sums its edges in their given order, the same bits
    for any thread count), chunks of ``order`` that never split a receiver (one writer per output row),
    and ``messages`` (zeros, channel-last) for the receivers this call touches."""

    program: ConvProgram
    features: np.ndarray
    Y: np.ndarray
    weights: np.ndarray
    sender_rows: np.ndarray
    order: np.ndarray
    edge_receiver: np.ndarray
    chunk_ptr: np.ndarray
    receivers: torch.Tensor
    path_weight: np.ndarray
    cg_val: np.ndarray
    messages_tensor: torch.Tensor

    @property
    def messages(self) -> np.ndarray:
        return self.messages_tensor.numpy()

    def add_to(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` with the summed messages added to the receivers' rows (e3nn layout), in place."""
        p = self.program
        messages = _channel_last(self.messages_tensor, p.l3, p.out_offset, p.channels, inverse=True)
        return out.index_add_(0, self.receivers, messages)


def _channel_last(values: torch.Tensor, degrees: np.ndarray, offsets: np.ndarray, channels: int, inverse: bool) -> torch.Tensor:
    """e3nn's mul-major irreps ``[offset + u * d + m]`` <-> channel-last ``[offset + m * C + u]``."""
    out = torch.empty_like(values)
    for l, offset in sorted(set(zip(degrees.tolist(), offsets.tolist()))):
        d = 2 * l + 1
        block = values[:, offset : offset + d * channels]
        shape = (len(values), d, channels) if inverse else (len(values), channels, d)
        out[:, offset : offset + d * channels] = block.reshape(shape).transpose(1, 2).reshape(len(values), -1)
    return out


def receiver_plan(
    program: ConvProgram, x: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor, sender: torch.Tensor,
    receiver: torch.Tensor, dtype: torch.dtype, n_chunks: int,
) -> ReceiverPlan:
    """The :class:`ReceiverPlan` of ``E >= 1`` edges in ``dtype``, about ``n_chunks`` chunks of equal edge
    counts: only the rows this call touches (senders gathered, receivers compacted: work and memory of
    the edges, not of the cell, for calls on chunks of a large cell's edges)."""
    senders, sender_rows = torch.unique(sender.to(torch.int64), return_inverse=True)
    receivers, receiver_rows = torch.unique(receiver.to(torch.int64), return_inverse=True)
    receiver_np = receiver_rows.numpy()
    order = np.argsort(receiver_np, kind="stable")
    edge_receiver = np.ascontiguousarray(receiver_np[order])
    n_edges = len(order)
    n_chunks = max(1, min(n_edges, n_chunks))
    cuts = (np.arange(1, n_chunks) * n_edges) // n_chunks
    cuts = np.searchsorted(edge_receiver, edge_receiver[cuts], side="left")  # moved to the next receiver change
    as_np = lambda t: t.detach().to(dtype).contiguous().numpy()  # noqa: E731
    real = np.float32 if dtype == torch.float32 else np.float64
    features = _channel_last(x.detach()[senders].to(dtype), program.l1, program.in1_offset, program.channels, inverse=False)
    return ReceiverPlan(
        program=program,
        features=features.numpy(),
        Y=as_np(Y),
        weights=as_np(weights),
        sender_rows=sender_rows.numpy(),
        order=order.astype(np.int64),
        edge_receiver=edge_receiver,
        chunk_ptr=np.unique(np.concatenate([[0], cuts, [n_edges]])).astype(np.int64),
        receivers=receivers,
        path_weight=program.path_weight.astype(real),
        cg_val=program.cg_val.astype(real),
        messages_tensor=torch.zeros(len(receivers), program.dim_out, dtype=dtype),
    )


def conv_messages(
    tp: Any,
    x: torch.Tensor,
    Y: torch.Tensor,
    weights: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
    out: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Adds to ``out (N, dim_out)`` the messages ``tp(x[sender], Y, weights)`` of every edge, each to
    its receiver's row (in place; returns ``out``).

    Args:
        tp: an e3nn ``TensorProduct`` of ``uvu`` instructions (:func:`conv_program`).
        x: ``(N_in, dim_in1)`` node features (e3nn layout).
        Y: ``(E, dim_in2)`` edge attributes (spherical harmonics).
        weights: ``(E, weight_numel)`` per-edge path weights.
        sender, receiver: ``(E,)`` int64 rows of ``x`` and of ``out``.
        backend: ``"auto"``, ``"cpp"`` or ``"numba"`` (no gradient, float32/float64), or ``"torch"``.
    """
    name = resolve_backend(backend, on_gpu=x.is_cuda, implemented=_IMPLEMENTED, op="conv_messages")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, Y, weights, out))
    if name in ("cpp", "numba") and needs_grad:
        if backend != "auto":  # the kernels have no backward: they would drop the gradient silently
            raise InputError(f"conv_messages: the {name} backend has no gradient; use backend='torch' or 'auto'")
        name = "torch"
    if name == "torch":
        from hforge.ops.conv_messages.reference import conv_messages_reference

        return conv_messages_reference(tp, x, Y, weights, sender, receiver, out)
    program = conv_program(tp)
    if name == "cpp" and max(int(program.l1.max(initial=0)), int(program.l3.max(initial=0))) > CPP_MAX_DEGREE:
        if backend != "auto":
            raise InputError(f"conv_messages: the cpp kernel takes degrees up to {CPP_MAX_DEGREE}; use backend='numba'")
        name = "numba"
    if name == "cpp":
        from hforge.ops.conv_messages.cpp import conv_messages_cpp

        return conv_messages_cpp(program, x, Y, weights, sender, receiver, out)
    from hforge.ops.conv_messages.numba import conv_messages_numba

    return conv_messages_numba(program, x, Y, weights, sender, receiver, out)
