"""Fused CG edge blocks against the same math composed from e3nn and from cuequivariance-torch,
on the CPU (default) or on a GPU (``HFORGE_BENCH_DEVICE=cuda``, run by scripts/gpu_check.sh).

    .venv/bin/python -m pytest benchmarks/bench_cg_blocks.py --benchmark-only --benchmark-group-by=param:n_edges
    HFORGE_BENCH_DEVICE=cuda python3 -m pytest benchmarks/bench_cg_blocks.py --benchmark-only

Model size: DZP boron/nitrogen (13 orbitals, 169 coupled irreps 0e..4e per pair), node features
32x0e+32x1o+32x2e, spherical harmonics up to l_sh = 3, 52 uvu paths (26 from each atom of the
pair), float32, 100 edges per atom.  Every implementation is first checked against hforge's
torch reference on a slice of the same inputs (same weights, mapped): the blocks, and for
``forward_backward`` the gradients of x and R (and W for hforge's kernels); then it is timed on
the same inputs, at least 3 rounds after a warm-up, each peer's round interleaved with a round
of ``hforge-numba`` (``hforge-triton`` on the GPU; ``extra_info["ratio_median"]``, ``ratio_min``,
``ratio_max``: peer / hforge):

* ``e3nn``: ``o3.TensorProduct`` (uvu, per-edge weights R) on ``x_i`` and on ``x_j``, then per
  pair type an ``o3.Linear`` to the pair's coupled irreps and the dense change of basis
  (graph2mat's composition), scattered into the flat-packed blocks;
* ``cueq``: the same with ``cuet.ChannelWiseTensorProduct`` and ``cuet.Linear``
  (``method="naive"``, cuequivariance-torch's pure-torch path);
* ``cueq-fused`` (GPU): the same cuequivariance-torch composition with its fused CUDA kernels
  (``method="uniform_1d"``, from the ``cuequivariance-ops-torch`` wheels; skipped, with the reason,
  where they are not installed);
* ``hforge-<backend>``: :func:`hforge.ops.cg_blocks.edge_blocks`, e3nn-layout features converted
  inside the timed call: ``numba`` and ``torch`` on the CPU, ``triton`` and ``torch`` on the GPU.

On the GPU every timed call ends with ``torch.cuda.synchronize()``, and ``peak_extra_mb`` is the
peak of ``torch.cuda.max_memory_allocated`` above the memory allocated before the call; every
implementation runs every size in one call (no chunks: the GPU has the memory).

At 10^5 edges e3nn's composition in one call is killed for memory (24 GB machine), so both
compositions run in chunks of 10^4 edges (forward: concatenated; backward: accumulated per
chunk); hforge runs every size in one call.  Sizes: 2,000 edges (``HFORGE_BENCH_SIZE=small``, the
default), 10^4 and 10^5 (``full``: benchmarks/results/cg_blocks/, the README's figures).

``extra_info`` of each benchmark holds ``peak_extra_mb`` (largest peak RSS above the RSS before
a timed call, through ``/proc/self/clear_refs``), ``output_mb``, ``input_grad_mb`` and
``features_mb`` (the e3nn -> channel-wise copy of the node features made inside hforge's timed call).
hforge-numba's forward asserts its memory contract: peak extra <= output + that copy + 1 MB of
fixed-size scratch (thread buffers, the chunked block-pointer check), at every size.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import re
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from e3nn import o3

from benchmarks._bench import interleaved, sizes, timed
from hforge.ops.cg_blocks import block_pointer, cg_descriptor, channelwise_from_e3nn, edge_blocks
from hforge.ops.cg_blocks.reference import change_of_basis

DZP = (0, 0, 1, 1, 2)
CHANNELS = 32
NODE_IRREPS = f"{CHANNELS}x0e+{CHANNELS}x1o+{CHANNELS}x2e"
L_SH = 3
EDGES_PER_ATOM = 100
EDGE_COUNTS = sizes([2_000], [10_000, 100_000])
BASELINE_CHUNK = 10_000
DTYPE = torch.float32
DEVICE = torch.device(os.environ.get("HFORGE_BENCH_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
#: HForge's fast kernel here: timed alone, and interleaved with every other implementation.
FAST = "hforge-triton" if ON_GPU else "hforge-numba"
SCRATCH_MB = 1.0  # hforge-numba forward: fixed-size scratch allowed above output + features copy


@cache
def make_case(n_edges: int) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(0)
    desc = cg_descriptor([DZP, DZP], node_irreps=NODE_IRREPS, l_sh=L_SH)
    n_atoms = max(2, n_edges // EDGES_PER_ATOM)
    species = torch.randint(0, 2, (n_atoms,), generator=gen)
    edge_index = torch.randint(0, n_atoms, (2, n_edges), generator=gen)
    vectors = torch.randn(n_edges, 3, generator=gen, dtype=DTYPE)
    Y = o3.spherical_harmonics(list(range(L_SH + 1)), vectors, normalize=True, normalization="component")
    x = torch.randn(n_atoms, o3.Irreps(NODE_IRREPS).dim, generator=gen, dtype=DTYPE)
    R = torch.randn(n_edges, desc.n_paths, CHANNELS, generator=gen, dtype=DTYPE)
    W = desc.init_weights("edge", CHANNELS, dtype=DTYPE, generator=gen)
    pair_species = species[edge_index]
    pair_type = pair_species[0] * desc.n_species + pair_species[1]
    tensors = dict(
        x=x, Y=Y, R=R, W=W, edge_index=edge_index, species=species, pair_type=pair_type,
        block_ptr=block_pointer(pair_species, desc), grad=torch.randn(int(n_edges * 169), generator=gen, dtype=DTYPE),
    )
    return SimpleNamespace(desc=desc, **{k: v.to(DEVICE) for k, v in tensors.items()})


def _hforge(backend: str):
    def run(case, x, R, W):
        xc = channelwise_from_e3nn(x, NODE_IRREPS)
        return edge_blocks(xc, case.Y, R, W, case.edge_index, case.species, case.desc, block_ptr=case.block_ptr, backend=backend)

    return run


def _side_path(desc, q: int, l2: int, L: int) -> int:
    """The side-0 path coupling node irrep ``q`` with ``Y_l2`` into ``L``."""
    hits = [p for p in range(desc.n_side_paths) if (desc.path_node_irrep[p], desc.path_l2[p], desc.path_L[p]) == (q, l2, L)]
    assert len(hits) == 1
    return hits[0]


class _Composition(torch.nn.Module):
    """Tensor product on both atoms, per-pair-type linear mixing, dense change of basis, flat-packed scatter."""

    def __init__(self, desc, W):
        super().__init__()
        self.desc = desc
        self.setup()
        self.linears = torch.nn.ModuleList([self.make_linear(t, W) for t in range(desc.n_pair_types)])
        self.cob = [change_of_basis(desc, t, DTYPE, DEVICE).T.contiguous() for t in range(desc.n_pair_types)]

    def forward(self, case, x, R, W=None):  # W: the linears hold the mixing weights
        m = torch.cat([self.tensor_product(case, x, R, side) for side in (0, 1)], dim=1)
        out = torch.empty(int(case.block_ptr[-1]), dtype=x.dtype, device=x.device)
        for t in range(self.desc.n_pair_types):
            idx = torch.nonzero(case.pair_type == t).squeeze(1)
            blocks = self.linears[t](m[idx]) @ self.cob[t]
            positions = case.block_ptr[idx][:, None] + torch.arange(blocks.shape[1], device=x.device)
            out = out.index_put((positions.reshape(-1),), blocks.reshape(-1))
        return out

    def mixing_row(self, t: int, i_in: int, i_out: int) -> int:
        """W row of the input segment ``i_in`` (path order of the linear's input) into slot ``i_out`` of pair type ``t``."""
        d = self.desc
        s = d.slot_ptr[t] + i_out
        return int(d.mix_ptr[s] + d.path_rank[self.input_paths[i_in]])


class E3nnComposition(_Composition):
    def setup(self):
        desc = self.desc
        side = [(int(desc.path_node_irrep[p]), int(desc.path_l2[p]), p) for p in range(desc.n_side_paths)]
        self.mid = o3.Irreps(
            [(CHANNELS, (int(desc.path_L[p]), int(desc.key_parity[desc.path_key[p]]))) for p in range(desc.n_side_paths)]
        )
        self.input_paths = list(range(desc.n_paths))
        self.tp = o3.TensorProduct(
            NODE_IRREPS, o3.Irreps.spherical_harmonics(L_SH), self.mid, [(q, l2, p, "uvu", True) for q, l2, p in side],
            shared_weights=False, internal_weights=False, irrep_normalization="component", path_normalization="none",
        )

    def make_linear(self, t, W):
        d = self.desc
        linear = o3.Linear(self.mid + self.mid, d.irreps_of_pair(t // d.n_species, t % d.n_species))
        with torch.no_grad():
            linear.weight.copy_(
                torch.cat([W[self.mixing_row(t, ins.i_in, ins.i_out)] / ins.path_weight for ins in linear.instructions])
            )
        return linear

    def tensor_product(self, case, x, R, side):
        d = self.desc
        weights = R[:, side * d.n_side_paths : (side + 1) * d.n_side_paths].reshape(R.shape[0], -1)
        return self.tp(x[case.edge_index[side]], case.Y, weights)


class CueComposition(_Composition):
    method = "naive"  # cuequivariance-torch's pure-torch path

    def setup(self):
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        desc = self.desc
        self.cue, self.cuet = cue, cuet
        keys = [cue.O3(L, p) for L, p in desc.keys]
        node, sh = cue.Irreps("O3", NODE_IRREPS), cue.Irreps("O3", "+".join(f"{l}{'eo'[l % 2]}" for l in range(L_SH + 1)))
        poly = cue.descriptors.channelwise_tensor_product(node, sh, keys)
        self.tp_out = poly.operands[-1].irreps
        # cue's output segment w <-> hforge side path, and cue's coefficients / (sqrt(2L+1) e3nn wigner_3j) (+1 or -1)
        self.segment_path, self.segment_sign = [], []
        for path in sorted(poly.polynomial.operations[0][1].paths, key=lambda pa: pa.indices[0]):
            w, q, l2, out = path.indices
            assert w == out
            p = _side_path(desc, q, l2, list(self.tp_out)[out].ir.l)
            l1, L = int(desc.path_l1[p]), int(desc.path_L[p])
            ref = math.sqrt(2 * L + 1) * o3.wigner_3j(l1, l2, L, dtype=torch.float64).numpy()
            self.segment_path.append(p)
            self.segment_sign.append(float(np.sum(np.asarray(path.coefficients) * ref) / np.sum(ref * ref)))
        self.input_paths = self.segment_path + [p + desc.n_side_paths for p in self.segment_path]
        self.tp = cuet.ChannelWiseTensorProduct(
            node, sh, keys, layout=cue.mul_ir, shared_weights=False, internal_weights=False, method=self.method, dtype=DTYPE,
            device=DEVICE,
        )
        self.sign = torch.tensor(self.segment_sign, dtype=DTYPE, device=DEVICE)

    def make_linear(self, t, W):
        cue, cuet, d = self.cue, self.cuet, self.desc
        irreps_in = self.tp_out + self.tp_out
        irreps_out = cue.Irreps("O3", d.irreps_of_pair(t // d.n_species, t % d.n_species))
        linear = cuet.Linear(
            irreps_in, irreps_out, layout=cue.mul_ir, internal_weights=True, shared_weights=True,
            method="naive" if self.method == "naive" else "fused_tp", dtype=DTYPE, device=DEVICE,
        )
        stp = cue.descriptors.linear(irreps_in, irreps_out).polynomial.operations[0][1]
        weight = torch.zeros_like(linear.weight)
        for path in stp.paths:
            w, i_in, i_out = path.indices
            coefficient = float(np.asarray(path.coefficients))
            weight[0, w * CHANNELS : (w + 1) * CHANNELS] = W[self.mixing_row(t, i_in, i_out)] / coefficient
        with torch.no_grad():
            linear.weight.copy_(weight)
        return linear

    def tensor_product(self, case, x, R, side):
        d = self.desc
        paths = torch.tensor(self.segment_path, device=DEVICE) + side * d.n_side_paths
        weights = (R[:, paths] * self.sign[None, :, None]).reshape(R.shape[0], -1)
        return self.tp(x, case.Y, weights, indices_1=case.edge_index[side])


class CueFusedComposition(CueComposition):
    method = "uniform_1d"  # cuequivariance-torch's fused CUDA kernels (cuequivariance-ops-torch)


def _cueq_fused_missing() -> str | None:
    """Why cuEquivariance's fused kernels cannot run here, or None."""
    if not ON_GPU:
        return "cuEquivariance's fused kernels run on CUDA only"
    try:
        import cuequivariance_ops_torch  # noqa: F401
    except ImportError as exc:
        return f"cuequivariance-ops-torch is not installed ({exc}); see scripts/gpu_check.sh"
    return None


def _on_device(module):
    return module.to(DEVICE) if isinstance(module, torch.nn.Module) else module


if ON_GPU:
    IMPLEMENTATIONS = {
        "e3nn": lambda desc, W: _on_device(E3nnComposition(desc, W)),
        "cueq-fused": lambda desc, W: _on_device(CueFusedComposition(desc, W)),
        "hforge-triton": lambda desc, W: _hforge("triton"),
        "hforge-torch": lambda desc, W: _hforge("torch"),
    }
else:
    IMPLEMENTATIONS = {
        "e3nn": lambda desc, W: E3nnComposition(desc, W),
        "cueq": lambda desc, W: CueComposition(desc, W),
        "hforge-numba": lambda desc, W: _hforge("numba"),
        "hforge-torch": lambda desc, W: _hforge("torch"),
    }


def _slice(case: SimpleNamespace, start: int, stop: int) -> SimpleNamespace:
    """The edges ``start:stop`` of a case (block pointers rebased to 0); the case itself when that is all of it."""
    if (start, stop) == (0, case.edge_index.shape[1]):
        return case  # no rebased copy of block_ptr inside the measured call
    part = SimpleNamespace(**vars(case))
    part.edge_index, part.Y, part.pair_type = case.edge_index[:, start:stop], case.Y[start:stop], case.pair_type[start:stop]
    part.block_ptr = case.block_ptr[start : stop + 1] - case.block_ptr[start]
    part.grad = case.grad[int(case.block_ptr[start]) : int(case.block_ptr[stop])]
    return part


CHECK_EDGES = 300


def _check(name: str, fn, case, mode: str) -> None:
    """The implementation reproduces hforge's torch reference on the first CHECK_EDGES edges: the
    blocks, and in ``forward_backward`` the gradients (x and R; W too where W is an input)."""
    small, reference = _slice(case, 0, CHECK_EDGES), _hforge("torch")
    small.R = case.R[:CHECK_EDGES]
    got, expected = _call(fn, small, mode, CHECK_EDGES), _call(reference, small, mode, CHECK_EDGES)
    for what, a, b in zip(("blocks",) if mode == "forward" else ("dx", "dR", "dW"), _tuple(got), _tuple(expected)):
        if a is None:  # the compositions hold W in their linear layers
            continue
        err = float((a - b).abs().max() / b.abs().max())
        assert err < 1e-4, f"{name}: {what} differs from hforge's reference by {err:.2e} (relative)"


def _tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _call(fn, case, mode: str, chunk: int):
    """One forward (no grad) or forward + backward, ``chunk`` edges at a time (gradients accumulate)."""
    n_edges = case.edge_index.shape[1]
    if mode == "forward":
        with torch.no_grad():
            parts = [
                fn(_slice(case, a, min(a + chunk, n_edges)), case.x, case.R[a : a + chunk], case.W)
                for a in range(0, n_edges, chunk)
            ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    x, R, W = (t.detach().requires_grad_() for t in (case.x, case.R, case.W))
    if chunk >= n_edges:
        fn(case, x, R, W).backward(case.grad)
    for a in range(0, n_edges if chunk < n_edges else 0, chunk):
        part = _slice(case, a, min(a + chunk, n_edges))
        fn(part, x, R[a : a + chunk], W).backward(part.grad)
    if isinstance(fn, torch.nn.Module):
        fn.zero_grad(set_to_none=True)
    return x.grad, R.grad, W.grad


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _synchronized(result):
    """``result``, after the GPU finished its work (a timer around the call then sees the kernels)."""
    if ON_GPU:
        torch.cuda.synchronize()
    return result


def _with_peak_memory(fn, peaks: list):
    """``fn`` that also appends its peak RSS above the RSS before the call (MiB; Linux) to ``peaks``;
    on the GPU, its peak of allocated device memory above what was allocated before, after a synchronize."""

    def run_gpu(*args):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn(*args)
        torch.cuda.synchronize()
        peaks.append((torch.cuda.max_memory_allocated() - before) / 2**20)
        return result

    if ON_GPU:
        return run_gpu

    def run(*args):
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # give freed heap pages back, so that the next call's pages show in RSS
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            return fn(*args)
        before = _rss_kib("VmRSS")
        result = fn(*args)
        peaks.append((_rss_kib("VmHWM") - before) / 1024)
        return result

    return run


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("n_edges", EDGE_COUNTS, ids=lambda n: f"E{n:.0e}".replace("+0", ""))
def test_cg_blocks(benchmark, n_edges, impl, mode):
    if impl == "hforge-torch" and n_edges > 10_000:
        pytest.skip("the reference materializes every path: tests only")
    if impl == "cueq-fused" and _cueq_fused_missing():
        pytest.skip(_cueq_fused_missing())
    case = make_case(n_edges)
    fn = IMPLEMENTATIONS[impl](case.desc, case.W)
    _check(impl, fn, case, mode)  # also a first warm-up (e3nn code generation, numba compilation)
    # e3nn and cueq at 1e5 edges in one call exceed the 24 GB of this machine (measured: OOM-killed
    # at 24 GB in e3nn's forward); they run in chunks of BASELINE_CHUNK edges, hforge in one call.
    chunk = n_edges if impl.startswith("hforge") or ON_GPU else BASELINE_CHUNK
    peaks: list[float] = []
    benchmark.group = f"cg_blocks {n_edges:.0e} edges {DEVICE.type}"
    run = lambda: _with_peak_memory(_call, peaks)(fn, case, mode, chunk)  # noqa: E731
    if impl == FAST:
        timed(benchmark, run)
    else:
        fast = _hforge(FAST.removeprefix("hforge-"))
        interleaved(benchmark, run, lambda: _synchronized(_call(fast, case, mode, n_edges)))
    benchmark.extra_info.update(
        chunk=chunk,
        peak_extra_mb=round(max(peaks), 1) if peaks else math.nan,
        output_mb=round(int(case.block_ptr[-1]) * 4 / 2**20, 1),
        input_grad_mb=0.0 if mode == "forward" else round((case.x.numel() + case.R.numel() + case.W.numel()) * 4 / 2**20, 1),
        features_mb=round(case.x.numel() * 4 / 2**20, 2),
    )
    if impl == "hforge-numba" and mode == "forward" and peaks:
        info = benchmark.extra_info
        limit = int(case.block_ptr[-1]) * 4 / 2**20 + case.x.numel() * 4 / 2**20 + SCRATCH_MB
        assert max(peaks) <= limit, f"peak extra {max(peaks):.1f} MB > {limit:.1f} MB (output {info['output_mb']} MB)"
