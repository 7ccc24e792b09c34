"""MACE's channel-wise convolution summed into receivers (the trunk's ``conv_tp``): hforge's fused
kernels (the compiled ``cpp`` one, which ``auto`` takes where it is built, and numba) against e3nn's
module + ``index_add_`` (mace-torch's own path, and the op's reference).

    .venv/bin/python -m pytest benchmarks/bench_conv_messages.py --benchmark-only --benchmark-group-by=param:n_edges

The tensor product is the bundled ``abn-dzp``'s second interaction: ``16x(0e+1o+2e+3o) x
Y(l <= 3) -> 23 uvu paths`` (1,584 outputs per edge), float32, 40 edges per receiver, random
features, harmonics and per-edge weights; every size is first checked against the reference.  e3nn
runs in chunks of 4,096 edges (as the trunk did before the kernel: one call on 4x10^5 edges would
hold a 2.5 GB message tensor).  cuequivariance-torch's CPU path is not a peer here: on the CPU it
is slower than e3nn on the CG blocks (bench_cg_blocks.py), so e3nn is the strongest baseline at
hand.  Sizes: 2x10^4 edges (small), 4x10^5 (full: a 10^4-atom cell's interaction edges).
``extra_info``: ``ratio_*`` (e3nn / hforge per interleaved round; for ``cpp-vs-numba``, numba / cpp).
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import pytest
import torch

from benchmarks._bench import interleaved, sizes
from hforge.ops.conv_messages import conv_messages

EDGES_PER_NODE = 40
CHUNK = 4096


@cache
def _case(n_edges: int) -> SimpleNamespace:
    import hforge

    tp = hforge.load("abn-dzp").model.trunk.interactions[1].conv_tp.float()
    generator = torch.Generator().manual_seed(0)
    n_nodes = max(1, n_edges // EDGES_PER_NODE)
    return SimpleNamespace(
        tp=tp,
        x=torch.randn(n_nodes, tp.irreps_in1.dim, generator=generator),
        Y=torch.randn(n_edges, tp.irreps_in2.dim, generator=generator),
        w=torch.randn(n_edges, tp.weight_numel, generator=generator),
        sender=torch.randint(0, n_nodes, (n_edges,), generator=generator),
        receiver=torch.sort(torch.randint(0, n_nodes, (n_edges,), generator=generator)).values,
        n_nodes=n_nodes,
    )


def _run(case: SimpleNamespace, backend: str) -> torch.Tensor:
    out = torch.zeros(case.n_nodes, case.tp.irreps_out.dim)
    with torch.no_grad():
        for start in range(0, len(case.sender), CHUNK):
            part = slice(start, start + CHUNK)
            edges = (case.Y[part], case.w[part], case.sender[part], case.receiver[part])
            conv_messages(case.tp, case.x, *edges, out, backend=backend)
    return out


@pytest.mark.parametrize("n_edges", sizes([20_000], [400_000]))
@pytest.mark.parametrize("pair", ["numba-vs-e3nn", "cpp-vs-e3nn", "cpp-vs-numba"])
def test_hforge_against_e3nn(benchmark, n_edges, pair):
    from hforge.ops.backends import backend_status

    mine, peer = pair.split("-vs-")
    backends = {"e3nn": "torch", "numba": "numba", "cpp": "cpp"}
    if "cpp" in (mine, peer) and not backend_status()["cpp"].available:
        pytest.skip(f"the cpp backend is unavailable here: {backend_status()['cpp'].reason}")
    benchmark.group = "conv_messages"
    case = _case(n_edges)
    want = _run(case, "torch")
    for backend in (backends[mine], backends[peer]):
        got = _run(case, backend)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    ratio = interleaved(benchmark, lambda: _run(case, backends[peer]), lambda: _run(case, backends[mine]))
    if ratio is not None:
        print(f"\n{n_edges} edges: {peer} / hforge-{mine} {ratio}")
