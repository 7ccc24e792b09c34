"""The SIESTA <-> e3nn spherical-harmonic convention, proven against independent oracles:
sisl's orbital functions, e3nn's harmonics and Wigner-D matrices, and real SIESTA overlaps."""

from __future__ import annotations

import numpy as np
import pytest
import sisl
import torch
from e3nn import o3
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hforge.basis import BasisSet, conventions
from hforge.io import read_hs

L_VALUES = range(4)
finite = st.floats(-1.0, 1.0, allow_nan=False)
directions = arrays(np.float64, (12, 3), elements=finite).filter(lambda v: np.all(np.linalg.norm(v, axis=1) > 1e-3))
# Rotations as e3nn's Euler angles: e3nn's own matrix and Wigner-D come from the same angles
# (D_from_matrix goes back to angles through arccos, which loses ~1e-8 near the identity).
rotations = st.tuples(st.floats(0, 2 * np.pi), st.floats(0, np.pi), st.floats(0, 2 * np.pi))


def rotation_matrix(angles: tuple[float, float, float]) -> np.ndarray:
    return o3.angles_to_matrix(*(torch.tensor(a, dtype=torch.float64) for a in angles)).numpy()


def sisl_harmonics(l: int, v: np.ndarray) -> np.ndarray:
    """The oracle: sisl's SphericalOrbital.psi with a flat radial part (value 1 at |r| = 1)."""
    orbital = sisl.SphericalOrbital(l, (np.linspace(0, 3, 200), np.ones(200)))
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    return np.stack([orbital.psi(unit, m) for m in range(-l, l + 1)], axis=1)


def e3nn_harmonics(l: int, v: np.ndarray) -> np.ndarray:
    return o3.spherical_harmonics(l, torch.from_numpy(v), normalize=True, normalization="component").numpy()


def e3nn_wigner(irreps: str, angles: tuple[float, float, float]) -> np.ndarray:
    return o3.Irreps(irreps).D_from_angles(*(torch.tensor(a, dtype=torch.float64) for a in angles)).numpy()


def e3nn_wigner_of_matrix(irreps: str, rotation: np.ndarray) -> np.ndarray:
    return o3.Irreps(irreps).D_from_matrix(torch.from_numpy(rotation)).numpy()


@pytest.mark.parametrize("l", L_VALUES)
@given(v=directions)
def test_closed_form_harmonics_equal_sisl_orbitals(l, v):
    # sisl goes through the polar angles: theta = arccos(z / r) is off by up to sqrt(machine eps)
    # ~ 1.5e-8 next to the poles (hypothesis found v = (0, 1e-8, 1): sisl gives 0 for y z, 1.1e-8 exact)
    np.testing.assert_allclose(conventions.siesta_real_harmonics(l, v), sisl_harmonics(l, v), rtol=0, atol=1e-7)


@pytest.mark.parametrize("l", L_VALUES)
@given(v=directions)
def test_change_of_basis_maps_siesta_to_e3nn_harmonics(l, v):
    y = np.sqrt(4 * np.pi) * conventions.siesta_real_harmonics(l, v) @ conventions.change_of_basis(l)
    np.testing.assert_allclose(y, e3nn_harmonics(l, v), atol=1e-12)


@pytest.mark.parametrize("l", L_VALUES)
def test_change_of_basis_is_orthogonal_and_found_by_least_squares(l):
    o = conventions.change_of_basis(l)
    np.testing.assert_allclose(o @ o.T, np.eye(2 * l + 1), atol=1e-15)
    # independent derivation: least squares of e3nn's harmonics on sisl's, as the lead measured
    v = np.random.default_rng(l).normal(size=(300, 3))
    fit = np.linalg.lstsq(sisl_harmonics(l, v), e3nn_harmonics(l, v), rcond=None)[0] / np.sqrt(4 * np.pi)
    np.testing.assert_allclose(fit, o, atol=1e-12)


def test_l1_is_the_signed_permutation_x_y_z_equals_minus_px_minus_py_plus_pz():
    # rows: SIESTA py, pz, px; columns: e3nn x, y, z
    np.testing.assert_array_equal(conventions.change_of_basis(1), [[0, -1, 0], [0, 0, 1], [-1, 0, 0]])
    for l in (2, 3):  # genuine rotations, not signed permutations
        o = conventions.change_of_basis(l)
        assert np.any((np.abs(o) > 1e-12) & (np.abs(np.abs(o) - 1) > 1e-12))


@pytest.mark.parametrize("l", L_VALUES)
@given(angles=rotations)
def test_siesta_rotation_is_e3nn_wigner_d_in_the_other_basis(l, angles):
    rotation = rotation_matrix(angles)
    o = conventions.change_of_basis(l)
    d_e3nn = e3nn_wigner(f"1x{l}{'e' if l % 2 == 0 else 'o'}", angles)
    np.testing.assert_allclose(o.T @ conventions.siesta_rotation(l, rotation) @ o, d_e3nn, atol=1e-10)


@pytest.mark.parametrize("l", L_VALUES)
@given(angles=rotations, v=directions)
def test_e3nn_wigner_rotates_converted_siesta_harmonics(l, angles, v):
    """Y_e3nn(R v) = D(R) Y_e3nn(v), with Y_e3nn built from SIESTA's harmonics and O_l."""
    rotation = rotation_matrix(angles)
    o = conventions.change_of_basis(l)
    d = e3nn_wigner(f"1x{l}{'e' if l % 2 == 0 else 'o'}", angles)
    y = conventions.siesta_real_harmonics(l, v) @ o
    y_rotated = conventions.siesta_real_harmonics(l, v @ rotation.T) @ o
    assert np.abs(y_rotated - y @ d.T).max() < 1e-10


@given(angles=rotations)
def test_block_transforms_round_trip_and_commute_with_rotation(angles, abn_basis):
    rotation = rotation_matrix(angles)
    b, n = abn_basis["B"], abn_basis["N"]
    block = np.random.default_rng(0).normal(size=(b.n_orbitals, n.n_orbitals))
    np.testing.assert_allclose(conventions.e3nn_to_siesta(conventions.siesta_to_e3nn(block, b, n), b, n), block, atol=1e-14)
    d_b, d_n = e3nn_wigner(b.irreps, angles), e3nn_wigner(n.irreps, angles)
    via_e3nn = conventions.e3nn_to_siesta(d_b @ conventions.siesta_to_e3nn(block, b, n) @ d_n.T, b, n)
    assert np.abs(via_e3nn - conventions.rotate_blocks(block, rotation, b, n)).max() < 1e-10


@pytest.fixture(scope="module")
def abn_basis(abn_dir) -> BasisSet:
    return BasisSet.from_folder(abn_dir / "basis")


# ---- real data -------------------------------------------------------------------------
def rotation_to_z(u: np.ndarray) -> np.ndarray:
    """A proper rotation taking the direction u onto +z."""
    u = u / np.linalg.norm(u)
    v, c = np.cross(u, [0.0, 0.0, 1.0]), u[2]
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1 - c) / s**2


def slater_koster_residual(data, rotate) -> np.ndarray:
    """Per off-site S block: max |B'[m1, m2]| over m1 != m2 relative to max |B|, where B' is the block
    rotated so that the bond lies along z.  A two-centre integral couples only m1 == m2 there."""
    vectors = data.pair_vectors()
    out = []
    for e in np.flatnonzero(~data.onsite):
        block = data.block(e, "s")
        if np.abs(block).max() < 1e-3:
            continue
        si, sj = (data.basis[k] for k in data.species[data.edge_index[:, e]])
        rotated = rotate(block, rotation_to_z(vectors[e]), si, sj)
        off = si.orbital_m[:, None] != sj.orbital_m[None, :]
        out.append(np.abs(rotated[off]).max() / np.abs(block).max())
    return np.array(out)


def test_real_overlaps_have_slater_koster_form_after_rotation_with_e3nn_wigner(siesta_fixtures, abn_dir, abn_basis):
    """S is a two-centre integral: rotated onto the bond axis with e3nn's Wigner-D (through the
    change of basis), every S block of real aBN and hBN runs couples only equal m."""

    def rotate_e3nn(block, rotation, si, sj):
        d_i, d_j = e3nn_wigner_of_matrix(si.irreps, rotation), e3nn_wigner_of_matrix(sj.irreps, rotation)
        return conventions.e3nn_to_siesta(d_i @ conventions.siesta_to_e3nn(block, si, sj) @ d_j.T, si, sj)

    for path in (abn_dir / "runs/abn_8_0/abn_8_0.TSHS", siesta_fixtures / "hBN/aiida.nc"):
        residual = slater_koster_residual(read_hs(path), rotate_e3nn)
        assert len(residual) > 50
        assert residual.max() < 1e-7, path


def test_slater_koster_check_fails_with_a_wrong_p_sign(abn_dir):
    """Negative control: flipping the sign of px (m = +1), a plausible convention mistake, breaks it."""
    data = read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS")

    def rotate_wrong(block, rotation, si, sj):
        flip_i = np.where((si.orbital_l == 1) & (si.orbital_m == 1), -1.0, 1.0)
        flip_j = np.where((sj.orbital_l == 1) & (sj.orbital_m == 1), -1.0, 1.0)
        return conventions.rotate_blocks(block * flip_i[:, None] * flip_j[None, :], rotation, si, sj)

    assert slater_koster_residual(data, rotate_wrong).max() > 0.1


def test_hbn_blocks_of_symmetry_equivalent_pairs_are_related_by_the_rotation(siesta_fixtures):
    """hBN is invariant under a 120° rotation about z through its N atom: the blocks of pairs
    mapped onto each other satisfy B(R r) = D B(r) D^T, S to 1e-8 and H to SIESTA's mesh noise."""
    data = read_hs(siesta_fixtures / "hBN/aiida.nc")
    assert np.allclose(data.positions[0], 0.0)
    angle = 2 * np.pi / 3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    vectors = data.pair_vectors()
    worst = {"h": 0.0, "s": 0.0}
    matched = 0
    for e in range(data.n_pairs):
        i, j = data.edge_index[:, e]
        target = np.flatnonzero(
            (data.edge_index[0] == i)
            & (data.edge_index[1] == j)
            & (np.linalg.norm(vectors - rotation @ vectors[e], axis=1) < 1e-6)
        )
        assert len(target) == 1
        matched += 1
        si, sj = data.basis[data.species[i]], data.basis[data.species[j]]
        for which in worst:
            predicted = conventions.rotate_blocks(data.block(e, which), rotation, si, sj)
            worst[which] = max(worst[which], np.abs(predicted - data.block(target[0], which)).max())
    assert matched == data.n_pairs
    assert worst["s"] < 1e-8
    assert worst["h"] < 1e-3  # eV; the real-space mesh breaks the symmetry slightly
