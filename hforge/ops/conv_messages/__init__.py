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

__all__ = ["ConvProgram", "conv_messages", "conv_program"]

_IMPLEMENTED = ("numba", "torch")


@dataclass(frozen=True, eq=False)
class ConvProgram:
    """A ``uvu`` tensor product as flat tables (int64 / float64 numpy arrays).

    Attributes:
        channels: the multiplicity ``u`` of every input-1 and output irrep.
        dim_in1, dim_in2, dim_out, weight_numel: the e3nn dimensions.
        l1, l3: ``(I,)`` degrees of every instruction's input-1 and output irrep.
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
    rows: dict[str, list] = {name: [] for name in ("l1", "l3", "o1", "o2", "oo", "ow", "pw", "count", "i", "j", "k", "v")}
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
        backend: ``"auto"``, ``"numba"`` (no gradient) or ``"torch"``.
    """
    name = resolve_backend(backend, on_gpu=x.is_cuda, implemented=_IMPLEMENTED, op="conv_messages")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, Y, weights, out))
    if name == "numba" and needs_grad:
        if backend != "auto":  # the kernel has no backward: it would drop the gradient silently
            raise InputError("conv_messages: the numba backend has no gradient; use backend='torch' or 'auto'")
        name = "torch"
    if name == "torch":
        from hforge.ops.conv_messages.reference import conv_messages_reference

        return conv_messages_reference(tp, x, Y, weights, sender, receiver, out)
    from hforge.ops.conv_messages.numba import conv_messages_numba

    return conv_messages_numba(conv_program(tp), x, Y, weights, sender, receiver, out)
