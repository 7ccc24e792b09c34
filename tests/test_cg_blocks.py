"""CG block kernels: every backend against the e3nn-based torch reference, rotations, transposes, gradients.

Triton runs on CUDA tensors where torch sees a GPU, else under its CPU interpreter
(``TRITON_INTERPRET=1``, set here before its kernels are built), on small shapes; its results are
moved back and compared with the reference on the CPU.  On a GPU every new shape of the
hypothesis tests is a JIT compile (seconds): they draw few examples there and do not shrink.
Numba and the reference run on random bases up to l = 3.
"""

import os

import numba
import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from e3nn import o3

from hforge.errors import InputError, UnknownSpeciesError
from hforge.ops.backends import backend_status, triton_interpreted
from hforge.ops.cg_blocks import (
    block_pointer,
    blocks_to_irreps,
    cg_descriptor,
    channelwise_from_e3nn,
    edge_blocks,
    irreps_to_blocks,
    onsite_blocks,
)
from hforge.ops.cg_blocks.reference import onsite_blocks_reference

DZP = (0, 0, 1, 1, 2)
FAST = ["numba"] + (["triton"] if backend_status()["triton"].available else [])
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
TRITON_ON_GPU = "triton" in FAST and not triton_interpreted()


def triton_settings(max_examples):
    """Hypothesis settings of the triton tests: on a GPU each drawn shape compiles, so 3 examples, no shrinking."""
    if TRITON_ON_GPU:
        return settings(max_examples=min(max_examples, 3), phases=[Phase.explicit, Phase.reuse, Phase.generate])
    return settings(max_examples=max_examples)


def on_device(backend, *tensors):
    """``tensors`` where ``backend`` runs: CUDA for triton built for the GPU, else the CPU (unchanged)."""
    device = "cuda" if backend == "triton" and not triton_interpreted() else "cpu"
    return [t.to(device) for t in tensors]

# ----------------------------------------------------------------------------- helpers


def random_orthogonal(n, gen):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).numpy()


def conventions_for(shells, kind, gen):
    if kind == "identity":
        return None
    return {l: random_orthogonal(2 * l + 1, gen) for l in sorted({l for ls in shells for l in ls})}


def assert_close(got, expected, rel):
    got, expected = got.detach(), expected.detach()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((got - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rel * scale, f"max error {err:.3e} > {rel:.1e} x {scale:.3e}"


def edge_inputs(desc, channels, n_nodes, n_edges, dtype, gen, geometry=False):
    """Random x, Y, R, W, edges, species; with ``geometry`` Y comes from real edge vectors (returned too)."""
    species = torch.randint(0, desc.n_species, (n_nodes,), generator=gen)
    edge_index = torch.randint(0, n_nodes, (2, n_edges), generator=gen)
    x = torch.randn(n_nodes, channels, desc.node_dim, generator=gen, dtype=dtype)
    vectors = torch.randn(n_edges, 3, generator=gen, dtype=dtype)
    if geometry:
        Y = o3.spherical_harmonics(list(range(desc.l_sh + 1)), vectors, normalize=True, normalization="component")
    else:
        Y = torch.randn(n_edges, desc.n_sh, generator=gen, dtype=dtype)
    R = torch.randn(n_edges, desc.n_paths, channels, generator=gen, dtype=dtype)
    W = desc.init_weights("edge", channels, dtype=dtype, generator=gen)
    return x, Y, R, W, edge_index, species, vectors


def random_rotation(gen, dtype, inversion=False):
    ranges = torch.tensor([2 * torch.pi, torch.pi, 2 * torch.pi], dtype=dtype)
    alpha, beta, gamma = torch.rand(3, generator=gen, dtype=dtype) * ranges
    return o3.angles_to_matrix(alpha, beta, gamma) * (-1 if inversion else 1)


def orbital_rotation(desc, species, rotation):
    """Block-diagonal ``U_l D_l U_l^T`` over the shells of a species (orbitals have parity (-1)^l)."""
    mats = []
    for l in desc.species_shells[species]:
        d = o3.Irrep(l, (-1) ** l).D_from_matrix(rotation)
        u = torch.tensor(desc.convention(l), dtype=rotation.dtype)
        mats.append(u @ d @ u.T)
    return torch.block_diag(*mats)


def blocks_of(values, block_ptr, desc, pair_species):
    out = []
    for e in range(pair_species.shape[1]):
        si, sj = int(pair_species[0, e]), int(pair_species[1, e])
        out.append(values[block_ptr[e] : block_ptr[e + 1]].reshape(int(desc.n_orb[si]), int(desc.n_orb[sj])))
    return out


shell_lists = st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple)
node_irrep_lists = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from([1, -1])), min_size=1, max_size=4, unique=True
).map(tuple)


@st.composite
def descriptors(draw, max_species=3, max_l=3, max_node_l=3, max_l_sh=3):
    shells = draw(st.lists(shell_lists.filter(lambda ls: max(ls) <= max_l), min_size=1, max_size=max_species))
    node = draw(node_irrep_lists.filter(lambda ns: max(l for l, _ in ns) <= max_node_l))
    l_sh = draw(st.integers(0, max_l_sh))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    conventions = conventions_for(shells, draw(st.sampled_from(["identity", "random"])), gen)
    return cg_descriptor(shells, node_irreps=node, l_sh=l_sh, conventions=conventions)


# ----------------------------------------------------------------------------- descriptor


def test_dzp_boron_nitride_layout():
    desc = cg_descriptor([DZP, DZP], node_irreps="32x0e+32x1o+32x2e", l_sh=3)
    assert desc.n_orb.tolist() == [13, 13]
    assert desc.pair_block_size.tolist() == [169] * 4
    irreps = o3.Irreps(desc.irreps_of_pair(0, 1))
    assert irreps.dim == 169 and irreps.num_irreps == 45
    assert sorted(str(ir) for _, ir in irreps.sort().irreps.simplify()) == sorted(
        ["0e", "1o", "1e", "2e", "2o", "3o", "3e", "4e"]
    )
    assert desc.n_paths == 2 * desc.n_side_paths == 52
    assert desc.n_mix % 4 == 0  # the same rows for the 4 ordered pair types B-B, B-N, N-B, N-N
    assert (desc.mix_ptr[desc.slot_ptr] % (desc.n_mix // 4) == 0).all()


def test_init_weights_give_unit_variance_slots():
    desc = cg_descriptor([DZP, DZP], node_irreps="16x0e+16x1o+16x2e", l_sh=3)
    gen = torch.Generator().manual_seed(0)
    x, Y, R, _, edge_index, species, _ = edge_inputs(desc, 16, 40, 400, torch.float64, gen, geometry=True)
    W = desc.init_weights("edge", 16, dtype=torch.float64, generator=gen)
    assert W.shape == (desc.n_mix, 16)
    variance = float(edge_blocks(x, Y, R, W, edge_index, species, desc).var())
    assert 0.5 < variance < 2.0
    W_onsite = desc.init_weights("onsite", 16, generator=gen)
    assert W_onsite.shape == (desc.n_onsite, 16) and W_onsite.dtype == torch.get_default_dtype()
    with pytest.raises(InputError, match="kind"):
        desc.init_weights("pair", 16)


def test_descriptor_is_cached_and_validates():
    assert cg_descriptor([DZP]) is cg_descriptor([list(DZP)])
    with pytest.raises(InputError, match="orthogonal"):
        cg_descriptor([DZP], conventions={1: np.ones((3, 3))})
    with pytest.raises(InputError, match="shape"):
        cg_descriptor([DZP], conventions={2: np.eye(3)})
    with pytest.raises(InputError, match="shell l"):
        cg_descriptor([[0, 7]])
    with pytest.raises(InputError, match="at least one"):
        cg_descriptor([[]])
    with pytest.raises(InputError, match="multiplicity"):
        cg_descriptor([DZP], node_irreps="8x0e+4x1o")


@given(desc=descriptors(max_species=2), seed=st.integers(0, 2**31))
@settings(max_examples=10)
def test_transposed_slots_give_transposed_blocks(desc, seed):
    """``slot_transpose``/``slot_sign`` agree with e3nn's wigner_3j: relabelled irreps -> B^T."""
    gen = torch.Generator().manual_seed(seed)
    for si in range(desc.n_species):
        for sj in range(desc.n_species):
            t, t_rev = si * desc.n_species + sj, sj * desc.n_species + si
            c = torch.randn(int(desc.pair_block_size[t]), generator=gen, dtype=torch.float64)
            c_rev = torch.zeros_like(c)
            for s in range(desc.slot_ptr[t], desc.slot_ptr[t + 1]):
                s_rev, n = desc.slot_transpose[s], 2 * desc.slot_L[s] + 1
                assert desc.slot_pair_type[s_rev] == t_rev
                c_rev[desc.slot_offset[s_rev] : desc.slot_offset[s_rev] + n] = (
                    desc.slot_sign[s] * c[desc.slot_offset[s] : desc.slot_offset[s] + n]
                )
            b = irreps_to_blocks(c, torch.tensor([[si], [sj]]), desc, backend="torch")
            b_rev = irreps_to_blocks(c_rev, torch.tensor([[sj], [si]]), desc, backend="torch")
            ni, nj = int(desc.n_orb[si]), int(desc.n_orb[sj])
            torch.testing.assert_close(b_rev.reshape(nj, ni), b.reshape(ni, nj).T, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- irreps_to_blocks


def _compare_irreps_to_blocks(backend, desc, n_pairs, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    pair_species = torch.randint(0, desc.n_species, (2, n_pairs), generator=gen)
    size = int(block_pointer(pair_species, desc)[-1])
    coeffs = torch.randn(size, generator=gen, dtype=dtype, requires_grad=True)
    fast_coeffs, fast_species = on_device(backend, coeffs.detach(), pair_species)
    fast_coeffs.requires_grad_()
    blocks = irreps_to_blocks(fast_coeffs, fast_species, desc, backend=backend)
    expected = irreps_to_blocks(coeffs, pair_species, desc, backend="torch")
    assert blocks.device == fast_coeffs.device
    assert_close(blocks.cpu(), expected, TOL[dtype])
    assert_close(blocks_to_irreps(blocks, fast_species, desc, backend=backend).cpu(), coeffs, TOL[dtype])
    grad = torch.randn(size, generator=gen, dtype=dtype)
    (g_fast,) = torch.autograd.grad(blocks, fast_coeffs, *on_device(backend, grad))
    (g_ref,) = torch.autograd.grad(expected, coeffs, grad)
    assert_close(g_fast.cpu(), g_ref, TOL[dtype])


floats = st.sampled_from([torch.float32, torch.float64])


@given(desc=descriptors(), n_pairs=st.integers(0, 12), dtype=floats, seed=st.integers(0, 2**31))
@settings(max_examples=15)
def test_numba_irreps_to_blocks_matches_reference(desc, n_pairs, dtype, seed):
    _compare_irreps_to_blocks("numba", desc, n_pairs, dtype, seed)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one numba thread here: nothing to compare")
def test_numba_gradients_are_bitwise_the_same_for_any_thread_count_and_schedule():
    """float32 DZP blocks from 16 channels, ~40 edges per atom: dW is summed over hundreds of edges per
    weight, where any change of summation order shows in the last bits (it did with per-thread buffers)."""
    desc = cg_descriptor([DZP, DZP], node_irreps="16x0e+16x1o+16x2e", l_sh=4)
    gen = torch.Generator().manual_seed(5)
    x, Y, R, W, edge_index, species, _ = edge_inputs(desc, 16, 200, 8000, torch.float32, gen)
    grad = None
    threads = numba.get_num_threads()
    gradients = []
    try:
        for n in (numba.config.NUMBA_NUM_THREADS, 1, numba.config.NUMBA_NUM_THREADS, 1):
            numba.set_num_threads(n)
            inputs = [t.clone().requires_grad_(True) for t in (x, Y, R, W)]
            out = edge_blocks(*inputs, edge_index, species, desc, symmetric=True, backend="numba")
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(6)) if grad is None else grad
            gradients.append(torch.autograd.grad(out, inputs, grad))
    finally:
        numba.set_num_threads(threads)
    for other in gradients[1:]:
        for name, a, b in zip("xYRW", gradients[0], other):
            assert torch.equal(a, b), name


@pytest.mark.skipif("triton" not in FAST, reason="triton unavailable")
@given(desc=descriptors(max_species=2), n_pairs=st.integers(0, 6), dtype=floats, seed=st.integers(0, 2**31))
@triton_settings(max_examples=6)
def test_triton_irreps_to_blocks_matches_reference(desc, n_pairs, dtype, seed):
    _compare_irreps_to_blocks("triton", desc, n_pairs, dtype, seed)


def test_irreps_to_blocks_is_orthogonal_and_differentiable():
    desc = cg_descriptor([DZP, (0, 1, 2, 3)], conventions=conventions_for([DZP], "random", torch.Generator().manual_seed(1)))
    pair_species = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]])
    size = int(block_pointer(pair_species, desc)[-1])
    coeffs = torch.randn(size, dtype=torch.float64)
    blocks = irreps_to_blocks(coeffs, pair_species, desc, backend="torch")
    torch.testing.assert_close(blocks.norm(), coeffs.norm())
    desc = cg_descriptor([(0, 1), (1, 2)])
    pair_species = torch.tensor([[0, 1], [1, 0]])
    coeffs = torch.randn(int(block_pointer(pair_species, desc)[-1]), dtype=torch.float64, requires_grad=True)
    for backend in ["torch", *FAST]:
        c, species = on_device(backend, coeffs.detach(), pair_species)
        fn = lambda c, b=backend, s=species: irreps_to_blocks(c, s, desc, backend=b)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (c.requires_grad_(),), fast_mode=True)


# ----------------------------------------------------------------------------- edge_blocks


def _compare_edge_blocks(backend, desc, channels, n_nodes, n_edges, dtype, symmetric, seed, need_Y=True):
    gen = torch.Generator().manual_seed(seed)
    x, Y, R, W, edge_index, species, _ = edge_inputs(desc, channels, n_nodes, n_edges, dtype, gen)
    inputs = [t.clone().requires_grad_(name != "Y" or need_Y) for name, t in zip("xYRW", (x, Y, R, W))]
    fast_inputs = [t.detach().requires_grad_(t.requires_grad) for t in on_device(backend, *inputs)]
    got = edge_blocks(*fast_inputs, *on_device(backend, edge_index, species), desc, symmetric=symmetric, backend=backend)
    expected = edge_blocks(*inputs, edge_index, species, desc, symmetric=symmetric, backend="torch")
    assert got.dtype == dtype and got.shape == expected.shape and got.device == fast_inputs[0].device
    assert_close(got.cpu(), expected, TOL[dtype])
    if n_edges == 0:
        return
    grad = torch.randn(got.shape, generator=gen, dtype=dtype)
    wrt = [t for t in inputs if t.requires_grad]
    fast = [g.cpu() for g in torch.autograd.grad(got, [t for t in fast_inputs if t.requires_grad], *on_device(backend, grad))]
    if expected.grad_fn is None:  # no path reaches any slot: blocks and gradients are zero
        reference = [torch.zeros_like(t) for t in wrt]
    else:
        reference = torch.autograd.grad(expected, wrt, grad, allow_unused=True, materialize_grads=True)
    for g_fast, g_ref in zip(fast, reference):
        assert_close(g_fast, g_ref, 10 * TOL[dtype])


@given(
    desc=descriptors(),
    channels=st.integers(1, 6),
    n_nodes=st.integers(1, 5),
    n_edges=st.integers(0, 10),
    dtype=floats,
    symmetric=st.booleans(),
    need_Y=st.booleans(),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=20)
def test_numba_edge_blocks_match_reference(desc, channels, n_nodes, n_edges, dtype, symmetric, need_Y, seed):
    _compare_edge_blocks("numba", desc, channels, n_nodes, n_edges, dtype, symmetric, seed, need_Y)


@given(
    desc=descriptors(),
    channels=st.integers(1, 6),
    n_sets=st.integers(1, 3),
    n_edges=st.integers(0, 10),
    dtype=floats,
    symmetric=st.booleans(),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=20)
def test_weight_sets_equal_one_reference_call_per_set(desc, channels, n_sets, n_edges, dtype, symmetric, seed):
    """``W (K, n_mix, C)``: numba's fused sets (no gradient) and the per-set route (gradients) give
    the reference's blocks of every set."""
    gen = torch.Generator().manual_seed(seed)
    x, Y, R, _, edge_index, species, _ = edge_inputs(desc, channels, 4, n_edges, dtype, gen)
    W = torch.randn((n_sets, desc.n_mix, channels), generator=gen, dtype=dtype)
    expected = torch.stack([edge_blocks(x, Y, R, w, edge_index, species, desc, symmetric=symmetric, backend="torch") for w in W])
    with torch.no_grad():
        fused = edge_blocks(x, Y, R, W, edge_index, species, desc, symmetric=symmetric, backend="numba")
    assert fused.shape == expected.shape == (n_sets, int(block_pointer(species[edge_index], desc)[-1]))
    assert_close(fused, expected, TOL[dtype])
    W.requires_grad_()
    per_set = edge_blocks(x, Y, R, W, edge_index, species, desc, symmetric=symmetric, backend="numba")
    assert_close(per_set.detach(), expected, TOL[dtype])
    if n_edges:
        grad = torch.randn(per_set.shape, generator=gen, dtype=dtype)
        W_ref = W.detach().clone().requires_grad_()
        reference = torch.stack(
            [edge_blocks(x, Y, R, w, edge_index, species, desc, symmetric=symmetric, backend="torch") for w in W_ref]
        )

        def gradient(blocks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            """dW of <grad, blocks>: zero where no path of these edges reaches a slot (blocks independent of W)."""
            if not blocks.requires_grad:
                return torch.zeros_like(weights)
            return torch.autograd.grad(blocks, weights, grad, allow_unused=True, materialize_grads=True)[0]

        assert_close(gradient(per_set, W), gradient(reference, W_ref), 10 * TOL[dtype])


@pytest.mark.skipif("triton" not in FAST, reason="triton unavailable")
@given(
    desc=descriptors(max_species=2, max_l=2, max_node_l=2, max_l_sh=2),
    channels=st.integers(1, 3),
    n_edges=st.integers(0, 6),
    dtype=floats,
    symmetric=st.booleans(),
    seed=st.integers(0, 2**31),
)
@triton_settings(max_examples=5)
def test_triton_edge_blocks_match_reference(desc, channels, n_edges, dtype, symmetric, seed):
    _compare_edge_blocks("triton", desc, channels, 3, n_edges, dtype, symmetric, seed)


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON_ON_GPU, reason="triton runs in its CPU interpreter here (no GPU, or TRITON_INTERPRET set)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_edge_blocks_on_gpu_at_model_size(dtype):
    """The benchmark's shapes (DZP B/N, 32x0e+32x1o+32x2e, l_sh 3), which the interpreter cannot afford: one compile per dtype."""
    desc = cg_descriptor([DZP, DZP], node_irreps="32x0e+32x1o+32x2e", l_sh=3)
    _compare_edge_blocks("triton", desc, 32, 20, 300, dtype, symmetric=True, seed=4)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_edge_blocks_gradcheck(backend):
    desc = cg_descriptor([(0, 1), (1,)], node_irreps="0e+1o+1e", l_sh=1)
    gen = torch.Generator().manual_seed(3)
    x, Y, R, W, edge_index, species, _ = edge_inputs(desc, 2, 3, 4, torch.float64, gen)
    inputs = tuple(t.requires_grad_() for t in (x, Y, R, W))

    def fn(x, Y, R, W):
        return edge_blocks(x, Y, R, W, edge_index, species, desc, symmetric=True, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    if backend != "torch":  # the fused backward is not differentiable: a second derivative must fail loudly
        with pytest.raises(RuntimeError, match="second derivatives"):
            torch.autograd.grad(fn(*inputs).sum(), inputs[0], create_graph=True)


def _rotated_case(desc, dtype, backend, symmetric, inversion, seed):
    """Blocks before and after rotating the inputs; inputs built in float64, then cast to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x, _, R, W, edge_index, species, vectors = edge_inputs(desc, 4, 4, 9, f64, gen)
    rotation = random_rotation(gen, f64, inversion)
    d_node = torch.block_diag(*[o3.Irrep(l, p).D_from_matrix(rotation) for l, p in desc.node_irreps])
    ls = list(range(desc.l_sh + 1))
    Y = o3.spherical_harmonics(ls, vectors, normalize=True, normalization="component")
    Y_rot = o3.spherical_harmonics(ls, vectors @ rotation.T, normalize=True, normalization="component")
    graph = on_device(backend, edge_index, species)

    def blocks(*inputs):
        inputs = on_device(backend, *(t.to(dtype) for t in inputs))
        return edge_blocks(*inputs, *graph, desc, symmetric=symmetric, backend=backend).cpu()

    before = blocks(x, Y, R, W)
    after = blocks(x @ d_node.T, Y_rot, R, W)
    pair_species = species[edge_index]
    block_ptr = block_pointer(pair_species, desc)
    pairs = zip(blocks_of(before, block_ptr, desc, pair_species), blocks_of(after, block_ptr, desc, pair_species))
    for e, (b, b_rot) in enumerate(pairs):
        di = orbital_rotation(desc, int(pair_species[0, e]), rotation)
        dj = orbital_rotation(desc, int(pair_species[1, e]), rotation)
        yield di @ b.to(f64) @ dj.T, b_rot.to(f64)


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_blocks_are_equivariant(backend, dtype):
    """Rotations and inversion: ``B(g x, g r) = D'_{l_a} B(x, r) D'_{l_b}^T`` for every shell pair."""
    gen = torch.Generator().manual_seed(11)
    small = backend == "triton"
    shells = [(0, 1, 2), (0, 1)] if small else [DZP, (0, 1, 2, 3)]
    conventions = conventions_for(shells, "random", gen)
    desc = cg_descriptor(shells, node_irreps="0e+1o+2e+1e", l_sh=2, conventions=conventions)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for symmetric, inversion in [(False, False), (True, True)]:
        for expected, got in _rotated_case(desc, dtype, backend, symmetric, inversion, seed=5):
            assert_close(got, expected, tol)


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_mode_transposes_reversed_pairs(backend, dtype):
    """With ``Y(-r)`` and side-swapped radial weights, the block of ``(j, i, -n)`` is the transpose of ``(i, j, n)``."""
    gen = torch.Generator().manual_seed(7)
    desc = cg_descriptor([(0, 1, 2), (0, 0, 1)], node_irreps="0e+1o+2e", l_sh=2)
    x, _, R, W, edge_index, species, vectors = edge_inputs(desc, 3, 4, 6, dtype, gen)
    ls = list(range(desc.l_sh + 1))
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    vectors = torch.cat([vectors, -vectors])
    Y = o3.spherical_harmonics(ls, vectors, normalize=True, normalization="component")
    R = torch.cat([R, R[:, torch.tensor(desc.path_swap)]])
    values = edge_blocks(*on_device(backend, x, Y, R, W, edge_index, species), desc, symmetric=True, backend=backend).cpu()
    pair_species = species[edge_index]
    blocks = blocks_of(values, block_pointer(pair_species, desc), desc, pair_species)
    half = len(blocks) // 2
    for forward, backward in zip(blocks[:half], blocks[half:]):
        assert_close(backward, forward.T, 1e-6 if dtype == torch.float32 else 1e-13)
    plain = edge_blocks(*on_device(backend, x, Y, R, W, edge_index, species), desc, symmetric=False, backend=backend).cpu()
    assert not torch.allclose(plain, values)  # the symmetrization does something


def test_edge_blocks_without_edges_and_bad_input():
    desc = cg_descriptor([DZP], node_irreps="0e+1o", l_sh=1)
    gen = torch.Generator().manual_seed(0)
    x, Y, R, W, edge_index, species, _ = edge_inputs(desc, 2, 3, 0, torch.float32, gen)
    for backend in ["torch", *FAST]:
        assert edge_blocks(*on_device(backend, x, Y, R, W, edge_index, species), desc, backend=backend).shape == (0,)
    x, Y, R, W, edge_index, species, _ = edge_inputs(desc, 2, 3, 4, torch.float32, gen)
    with pytest.raises(InputError, match="R has shape"):
        edge_blocks(x, Y, R[:, :-1], W, edge_index, species, desc)
    with pytest.raises(InputError, match="dtype"):
        edge_blocks(x.double(), Y, R, W, edge_index, species, desc)
    with pytest.raises(InputError, match="outside"):
        edge_blocks(x, Y, R, W, edge_index + 10, species, desc)
    with pytest.raises(UnknownSpeciesError):
        edge_blocks(x, Y, R, W, edge_index, species + 1, desc)
    with pytest.raises(InputError, match="without l_sh"):
        edge_blocks(x, Y, R, W, edge_index, species, cg_descriptor([DZP], node_irreps="0e+1o"))
    with pytest.raises(InputError, match="block_ptr"):
        edge_blocks(x, Y, R, W, edge_index, species, desc, block_ptr=torch.arange(5))
    with pytest.raises(InputError, match="block_ptr"):
        edge_blocks(x, Y, R, W, edge_index, species, desc, block_ptr=block_pointer(species[edge_index], desc) + 1)


# ----------------------------------------------------------------------------- onsite and layout helpers


@given(desc=descriptors(), channels=st.integers(1, 4), n_atoms=st.integers(0, 5), seed=st.integers(0, 2**31))
@settings(max_examples=15)
def test_onsite_blocks_match_reference_and_are_symmetric(desc, channels, n_atoms, seed):
    gen = torch.Generator().manual_seed(seed)
    species = torch.randint(0, desc.n_species, (n_atoms,), generator=gen)
    x = torch.randn(n_atoms, channels, desc.node_dim, generator=gen, dtype=torch.float64)
    W = torch.randn(desc.n_onsite, channels, generator=gen, dtype=torch.float64)
    values = onsite_blocks(x, W, species, desc)
    pair_species = torch.stack([species, species])
    block_ptr = block_pointer(pair_species, desc)
    assert_close(values, onsite_blocks_reference(x, W, species, block_ptr, desc), 1e-12)
    for b in blocks_of(values, block_ptr, desc, pair_species):
        assert torch.equal(b, b.T)


def test_onsite_blocks_are_equivariant_and_differentiable():
    gen = torch.Generator().manual_seed(2)
    shells = [DZP, (0, 1, 2, 3)]
    desc = cg_descriptor(shells, node_irreps="0e+1o+1e+2e+2o+3o+3e+4e", conventions=conventions_for(shells, "random", gen))
    species = torch.tensor([0, 1, 1])
    x = torch.randn(3, 2, desc.node_dim, generator=gen, dtype=torch.float64)
    W = torch.randn(desc.n_onsite, 2, generator=gen, dtype=torch.float64)
    rotation = random_rotation(gen, torch.float64, inversion=True)
    d_node = torch.block_diag(*[o3.Irrep(l, p).D_from_matrix(rotation) for l, p in desc.node_irreps])
    pair_species = torch.stack([species, species])
    block_ptr = block_pointer(pair_species, desc)
    before = blocks_of(onsite_blocks(x, W, species, desc), block_ptr, desc, pair_species)
    after = blocks_of(onsite_blocks(x @ d_node.T, W, species, desc), block_ptr, desc, pair_species)
    for s, b, b_rot in zip(species.tolist(), before, after):
        d = orbital_rotation(desc, s, rotation)
        assert_close(b_rot, d @ b @ d.T, 1e-12)
    assert torch.autograd.gradcheck(
        lambda x, W: onsite_blocks(x, W, species, desc), (x.requires_grad_(), W.requires_grad_()), fast_mode=True
    )


def test_channelwise_from_e3nn():
    irreps = o3.Irreps("3x0e+3x1o+3x2e")
    features = torch.randn(4, irreps.dim)
    x = channelwise_from_e3nn(features, "3x0e+3x1o+3x2e")
    assert x.shape == (4, 3, 9)
    torch.testing.assert_close(x[:, :, 0], features[:, :3])
    torch.testing.assert_close(x[:, :, 1:4], features[:, 3:12].reshape(4, 3, 3))
    torch.testing.assert_close(x[:, :, 4:9], features[:, 12:27].reshape(4, 3, 5))
    with pytest.raises(InputError, match="multiplicity"):
        channelwise_from_e3nn(features, "0e+1o")
