"""Compiled CPU kernel of :func:`hforge.ops.conv_messages.conv_messages` (``kernels/cpu``), forward only.

The same fusion as the numba kernel on the same :class:`~hforge.ops.conv_messages.ReceiverPlan`
(edges by receiver, chunks that never split one): per edge and instruction
``A[i, k] = sum_j C[i, j, k] Y[e, j]`` as vectors over the flat ``(i, k)`` (the CG dense,
:func:`dense_coupling`), then whole vectors of channels accumulate
``sum_i A[i, k] x[s, i]`` for every output component ``k`` in registers (the instruction's
``2 l3 + 1`` outputs a compile-time count), added to the receiver's row times ``path_weight w[e]``.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np
import torch

from hforge.errors import BackendUnavailableError
from hforge.ops._cpu import ISAS, ConvArgs, load_library
from hforge.ops.conv_messages import ConvProgram, receiver_plan

__all__ = ["conv_messages_cpp", "dense_coupling"]


@lru_cache(maxsize=32)
def dense_coupling(program: ConvProgram, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CG coefficients of every instruction dense, for the kernel: ``(values, offsets, strides)``,
    instruction ``i``'s row ``j < 2 l2 + 1`` at ``values[offsets[i] + j * strides[i]:]`` holding
    ``C[a, j, b]`` at ``a * (2 l3 + 1) + b`` (zero beyond; strides whole 64-byte lines of ``dtype``)."""
    per_line = 64 // np.dtype(dtype).itemsize
    d1, d2, d3 = 2 * program.l1 + 1, 2 * program.l2 + 1, 2 * program.l3 + 1
    strides = -(-(d1 * d3) // per_line) * per_line
    offsets = np.concatenate([[0], np.cumsum(d2 * strides)]).astype(np.int64)
    values = np.zeros(int(offsets[-1]), dtype=dtype)
    for i in range(len(d1)):
        t = slice(program.cg_ptr[i], program.cg_ptr[i + 1])
        flat = offsets[i] + program.cg_j[t] * strides[i] + program.cg_i[t] * d3[i] + program.cg_k[t]
        np.add.at(values, flat, program.cg_val[t])
    return values, offsets[:-1].copy(), strides.astype(np.int64)


def conv_messages_cpp(
    program: ConvProgram,
    x: torch.Tensor,
    Y: torch.Tensor,
    weights: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
    out: torch.Tensor,
    *,
    isa: str | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """As :func:`hforge.ops.conv_messages.conv_messages` (CPU tensors of one float dtype, no gradient,
    degrees up to 7); ``isa``: an instruction set of :data:`hforge.ops._cpu.ISAS` (None: the best here);
    ``threads``: None for torch's thread count."""
    library = load_library()
    if sender.numel() == 0:
        return out
    n_threads = torch.get_num_threads() if threads is None else threads
    plan = receiver_plan(program, x, Y, weights, sender, receiver, out.dtype, 16 * n_threads)
    p = program
    cg_dense, cg_offset, cg_row_stride = dense_coupling(program, plan.path_weight.dtype.type)
    arrays = {
        "chunk_ptr": plan.chunk_ptr, "order": plan.order, "edge_receiver": plan.edge_receiver, "sender_rows": plan.sender_rows,
        "l1": p.l1, "l2": p.l2, "l3": p.l3, "in1_offset": p.in1_offset, "in2_offset": p.in2_offset, "out_offset": p.out_offset,
        "weight_offset": p.weight_offset, "cg_offset": cg_offset, "cg_row_stride": cg_row_stride,
        "path_weight": plan.path_weight, "cg_dense": cg_dense, "x": plan.features, "Y": plan.Y, "w": plan.weights,
        "out": plan.messages,
    }
    args = ConvArgs(
        channels=p.channels, n_instructions=len(p.l1), dim_in1=p.dim_in1, dim_in2=p.dim_in2, dim_out=p.dim_out,
        weight_numel=p.weight_numel, n_chunks=len(plan.chunk_ptr) - 1,
        **{name: array.ctypes.data for name, array in arrays.items()},
    )
    function = library.lib.hforge_conv_messages_f32 if out.dtype == torch.float32 else library.lib.hforge_conv_messages_f64
    status = function(ctypes.byref(args), ISAS[isa] if isa else ISAS[library.isa], n_threads)
    if status == 2:
        raise BackendUnavailableError(f"conv_messages: instruction set {isa} is not in {library.path} or not on this CPU")
    if status != 0:
        raise RuntimeError(f"conv_messages (cpp, {isa or library.isa}): status {status}")
    return plan.add_to(out)
