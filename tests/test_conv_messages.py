"""conv_messages (MACE's channel-wise convolution, summed into receivers): the numba and compiled (cpp)
kernels against the e3nn module itself (the reference) on random tensor products, graphs and both
float dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cpu_kernels import cpp_isas
from hypothesis import given, settings
from hypothesis import strategies as st

from hforge._compat import import_e3nn
from hforge.errors import InputError
from hforge.ops.backends import backend_status
from hforge.ops.conv_messages import conv_messages, conv_program

import_e3nn()

from e3nn import o3  # noqa: E402


def uvu_product(channels: int, l_in: int, l_sh: int, l_out: int, dtype: torch.dtype = torch.float64) -> o3.TensorProduct:
    """MACE's ``conv_tp``: every path ``l1 x l2 -> l3`` of natural parity as a weighted ``uvu`` instruction,
    built in ``dtype`` (e3nn keeps its CG coefficients in the default dtype of construction)."""
    irreps_in1 = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_in + 1)])
    irreps_in2 = o3.Irreps.spherical_harmonics(l_sh)
    outputs, instructions = [], []
    for i1, (_, ir1) in enumerate(irreps_in1):
        for i2, (_, ir2) in enumerate(irreps_in2):
            for ir3 in ir1 * ir2:
                if ir3.l <= l_out:
                    instructions.append((i1, i2, len(outputs), "uvu", True))
                    outputs.append((channels, ir3))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return o3.TensorProduct(
            irreps_in1, irreps_in2, o3.Irreps(outputs), instructions, shared_weights=False, internal_weights=False
        )
    finally:
        torch.set_default_dtype(default)


def random_graph(tp: o3.TensorProduct, n_nodes: int, n_edges: int, dtype: torch.dtype, seed: int) -> tuple:
    """Random node features, harmonics, per-edge weights, senders, receivers and a starting ``out``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_nodes, tp.irreps_in1.dim, generator=generator, dtype=dtype)
    Y = torch.randn(n_edges, tp.irreps_in2.dim, generator=generator, dtype=dtype)
    weights = torch.randn(n_edges, tp.weight_numel, generator=generator, dtype=dtype)
    sender, receiver = torch.randint(0, n_nodes, (2, n_edges), generator=generator)
    start = torch.randn(n_nodes, tp.irreps_out.dim, generator=generator, dtype=dtype)
    return x, Y, weights, sender, receiver, start


@settings(max_examples=10, deadline=None)
@given(
    channels=st.integers(1, 9),
    l_in=st.integers(0, 3),
    l_sh=st.integers(0, 3),
    l_out=st.integers(0, 3),
    n_nodes=st.integers(1, 12),
    n_edges=st.integers(0, 60),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_numba_kernel_equals_the_e3nn_module(channels, l_in, l_sh, l_out, n_nodes, n_edges, double, seed):
    """Forward of the fused kernel = ``index_add_`` of e3nn's own tensor product, added to what ``out`` held."""
    dtype = torch.float64 if double else torch.float32
    tp = uvu_product(channels, l_in, l_sh, l_out, dtype)
    x, Y, weights, sender, receiver, start = random_graph(tp, n_nodes, n_edges, dtype, seed)
    with torch.no_grad():
        want = conv_messages(tp, x, Y, weights, sender, receiver, start.clone(), backend="torch")
        got = conv_messages(tp, x, Y, weights, sender, receiver, start.clone(), backend="numba")
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=0, atol=(1e-5 if dtype == torch.float32 else 1e-12) * scale)
    if n_edges:
        assert not torch.equal(want, start)  # the messages were added


@pytest.mark.parametrize("isa", cpp_isas())
@settings(max_examples=10, deadline=None)
@given(
    channels=st.sampled_from([1, 3, 4, 8, 9, 16, 32]),
    l_in=st.integers(0, 3),
    l_sh=st.integers(0, 3),
    l_out=st.integers(0, 3),
    n_nodes=st.integers(1, 12),
    n_edges=st.integers(1, 60),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpp_kernel_equals_the_e3nn_module(isa, channels, l_in, l_sh, l_out, n_nodes, n_edges, double, seed):
    """The compiled kernel of every instruction set built here (channels in whole vectors or not) = e3nn's
    tensor product + ``index_add_``, and the same bits for 1, 2 or 3 threads."""
    from hforge.ops.conv_messages.cpp import conv_messages_cpp

    dtype = torch.float64 if double else torch.float32
    tp = uvu_product(channels, l_in, l_sh, l_out, dtype)
    x, Y, weights, sender, receiver, start = random_graph(tp, n_nodes, n_edges, dtype, seed)
    with torch.no_grad():
        want = conv_messages(tp, x, Y, weights, sender, receiver, start.clone(), backend="torch")
        edges = (conv_program(tp), x, Y, weights, sender, receiver)
        got = conv_messages_cpp(*edges, start.clone(), isa=isa, threads=1)
        for threads in (2, 3):
            assert torch.equal(conv_messages_cpp(*edges, start.clone(), isa=isa, threads=threads), got)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=(1e-5 if dtype == torch.float32 else 1e-12) * scale)


def test_auto_backend_keeps_gradients_and_runs_the_same_sums():
    """With inputs that need gradients ``auto`` takes the reference (autograd), and ``numba`` or ``cpp`` by
    name refuses; without, ``auto`` (the compiled kernel where it is built) gives the same sums."""
    tp = uvu_product(4, 2, 2, 2)
    x = torch.randn(5, tp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    Y = torch.randn(20, tp.irreps_in2.dim, dtype=torch.float64)
    weights = torch.randn(20, tp.weight_numel, dtype=torch.float64)
    sender, receiver = torch.randint(0, 5, (2, 20))
    out = conv_messages(tp, x, Y, weights, sender, receiver, torch.zeros(5, tp.irreps_out.dim, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert float(grad.abs().max()) > 0
    for backend in ("numba", *(["cpp"] if backend_status()["cpp"].available else [])):
        with pytest.raises(InputError, match="no gradient"):  # asked for by name, the kernel refuses
            conv_messages(tp, x, Y, weights, sender, receiver, torch.zeros_like(out.detach()), backend=backend)
    with torch.no_grad():
        fused = conv_messages(tp, x, Y, weights, sender, receiver, torch.zeros_like(out))
    torch.testing.assert_close(fused, out.detach(), rtol=0, atol=1e-12 * float(out.abs().max()))


def test_a_product_that_is_not_channel_wise_is_refused():
    irreps = o3.Irreps("4x0e+4x1o")
    full = o3.FullyConnectedTensorProduct(irreps, o3.Irreps("1x0e+1x1o"), irreps, shared_weights=False)
    with pytest.raises(InputError, match="not a"):
        conv_program(full)
    assert np.all(np.diff(conv_program(uvu_product(3, 1, 1, 1)).cg_ptr) > 0)
