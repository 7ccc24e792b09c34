r"""SIESTA's real spherical harmonics and their exact change of basis to e3nn's (l = 0..3).

SIESTA (and sisl, ``SphericalOrbital.psi``) orders the ``2l+1`` orbitals of a shell by
``m = -l..l`` and uses real harmonics with the Condon-Shortley phase, i.e. ``(-1)^m`` times the
usual sign-free real harmonics (``m < 0``: :math:`\sin |m|\varphi`, ``m > 0``:
:math:`\cos m\varphi`, polar axis z):

* l = 1: ``py = -√(3/4π) y/r``, ``pz = +√(3/4π) z/r``, ``px = -√(3/4π) x/r``;
* l = 2: ``dxy, dyz, dz2, dxz, dx2-y2`` with signs ``+ - + - +``;
* l = 3: ``m = -3..3`` with signs ``- + - + - + -``.

e3nn's harmonics (``o3.spherical_harmonics``, ``normalization='component'``) are the sign-free
real harmonics evaluated at the cyclically permuted point ``(z, x, y)``: l = 1 is ``√3 (x, y, z)/r``
and for l >= 2 the polar axis is y.  The two conventions differ per l by an orthogonal matrix
:math:`O_l` (rows: SIESTA's m, columns: e3nn's components):

.. math::  Y^{e3nn}_l(\hat r) = \sqrt{4\pi}\; Y^{SIESTA}_l(\hat r)\, O_l

For l = 1 it is a signed permutation, e3nn ``(x, y, z) = (-px, -py, +pz)``; for l = 2, 3 it is a
genuine rotation of the ``2l+1`` components (entries ``1/2, √3/2, 1/4, √6/4, √10/4, √15/4``).

An orbital block ``B`` (rows: orbitals of atom i, columns: orbitals of atom j, SIESTA order)
becomes ``U_i^T B U_j`` in e3nn's convention, with ``U`` the block-diagonal matrix of the
:math:`O_l` of the atom's shells; a rotation R then acts as ``D_i(R) B D_j(R)^T`` with e3nn's
Wigner matrices.  ``tests/test_conventions.py`` proves all of this against sisl's orbitals,
e3nn's Wigner-D and the overlap blocks of real SIESTA runs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from hforge.basis.basis_set import MAX_L
from hforge.errors import UnsupportedSystemError

if TYPE_CHECKING:
    from hforge.basis.basis_set import SpeciesBasis

__all__ = [
    "real_harmonics",
    "siesta_real_harmonics",
    "change_of_basis",
    "species_change_of_basis",
    "siesta_to_e3nn",
    "e3nn_to_siesta",
    "siesta_rotation",
    "species_rotation",
    "rotate_blocks",
]

_S3, _S6, _S10, _S15 = np.sqrt(3.0), np.sqrt(6.0), np.sqrt(10.0), np.sqrt(15.0)

# O_l: rows SIESTA m = -l..l, columns e3nn components; Y_e3nn = sqrt(4 pi) Y_siesta @ O_l.
_CHANGE_OF_BASIS = {
    0: np.array([[1.0]]),
    1: np.array(
        [
            [0.0, -1.0, 0.0],  # py -> -y
            [0.0, 0.0, 1.0],  # pz -> +z
            [-1.0, 0.0, 0.0],  # px -> -x
        ]
    ),
    2: np.array(
        [
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, -1.0, 0.0],
            [0.0, 0.0, -0.5, 0.0, _S3 / 2],
            [-1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, -_S3 / 2, 0.0, -0.5],
        ]
    ),
    3: np.array(
        [
            [0.0, 0.0, 0.0, _S10 / 4, 0.0, _S6 / 4, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, _S6 / 4, 0.0, -_S10 / 4, 0.0],
            [0.0, 0.0, 0.0, 0.0, -_S6 / 4, 0.0, _S10 / 4],
            [-_S15 / 4, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, -_S10 / 4, 0.0, -_S6 / 4],
            [0.25, 0.0, _S15 / 4, 0.0, 0.0, 0.0, 0.0],
        ]
    ),
}
for _matrix in _CHANGE_OF_BASIS.values():
    _matrix.setflags(write=False)


def _check_l(l: int) -> None:
    if not 0 <= l <= MAX_L:
        raise UnsupportedSystemError(f"l = {l}: HForge handles l = 0..{MAX_L}")


def siesta_real_harmonics(l: int, vectors: np.ndarray) -> np.ndarray:
    r"""SIESTA's real spherical harmonics :math:`Y_{lm}(\hat r)`, m = -l..l, in closed form.

    Orthonormal on the unit sphere (:math:`\sum_m Y_{lm}^2 = (2l+1)/4\pi`); written out here
    independently of sisl, which tests use as the oracle.

    Args:
        l: 0..3.
        vectors: ``(..., 3)`` directions (any length > 0; normalized here).

    Returns:
        ``(..., 2l+1)`` float64.
    """
    _check_l(l)
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    pi = np.pi
    if l == 0:
        out = [np.full_like(x, 0.5 / np.sqrt(pi))]
    elif l == 1:
        c = np.sqrt(3 / (4 * pi))
        out = [-c * y, c * z, -c * x]
    elif l == 2:
        c = 0.5 * np.sqrt(15 / pi)
        out = [c * x * y, -c * y * z, 0.25 * np.sqrt(5 / pi) * (3 * z * z - 1), -c * x * z, 0.5 * c * (x * x - y * y)]
    else:
        c3, c2, c1 = 0.25 * np.sqrt(35 / (2 * pi)), 0.25 * np.sqrt(105 / pi), 0.25 * np.sqrt(21 / (2 * pi))
        out = [
            -c3 * y * (3 * x * x - y * y),
            2 * c2 * x * y * z,
            -c1 * y * (5 * z * z - 1),
            0.25 * np.sqrt(7 / pi) * (5 * z**3 - 3 * z),
            -c1 * x * (5 * z * z - 1),
            c2 * z * (x * x - y * y),
            -c3 * x * (x * x - 3 * y * y),
        ]
    return np.stack(out, axis=-1)


def real_harmonics(lmax: int, vectors: np.ndarray) -> np.ndarray:
    r"""SIESTA's real spherical harmonics of every degree ``0..lmax`` (any ``lmax``), stacked.

    The same functions as :func:`siesta_real_harmonics` (Condon-Shortley phase, polar axis z,
    ``m < 0``: :math:`\sin |m|\varphi`), from the recursion of the associated Legendre
    functions in Cartesian form (no trigonometry): with ``u = (x + iy)^m``,
    ``Y_lm = (-1)^m \sqrt{2} N_lm p_lm(z) Re u`` (``m > 0``), ``... Im u`` (``m < 0``),
    ``Y_l0 = N_l0 p_l0(z)``, ``p_lm = d^m P_l / dz^m``, ``N_lm = \sqrt{(2l+1)(l-m)! / (4π (l+m)!)}``.
    Used for the couplings of two-centre integrals, where products of two orbitals' harmonics
    need degrees up to twice the basis' largest ``l``.

    Args:
        lmax: largest degree.
        vectors: ``(..., 3)`` directions (any length > 0; normalized here).

    Returns:
        ``(..., (lmax+1)^2)`` float64, degree ``l`` at ``l^2 .. l^2 + 2l`` (m = -l..l).
    """
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    out = np.zeros(v.shape[:-1] + ((lmax + 1) ** 2,))
    u = np.ones_like(x) + 0j
    for m in range(lmax + 1):
        p_prev = np.zeros_like(z)
        p = np.full_like(z, float(np.prod(np.arange(1, 2 * m, 2))))  # (2m-1)!!
        for l in range(m, lmax + 1):
            if l > m:
                p, p_prev = ((2 * l - 1) * z * p - (l + m - 1) * p_prev) / (l - m), p
            norm = np.sqrt((2 * l + 1) / (4 * np.pi) * math.factorial(l - m) / math.factorial(l + m))
            if m == 0:
                out[..., l * l + l] = norm * p
            else:
                c = (-1) ** m * np.sqrt(2.0) * norm * p
                out[..., l * l + l + m] = c * u.real
                out[..., l * l + l - m] = c * u.imag
        u = u * (x + 1j * y)
    return out


def change_of_basis(l: int) -> np.ndarray:
    r"""The orthogonal ``(2l+1, 2l+1)`` float64 matrix :math:`O_l` (read-only).

    Rows are SIESTA's orbitals (m = -l..l), columns e3nn's components:
    ``Y_e3nn = sqrt(4π) Y_siesta @ O_l``; a vector of SIESTA coefficients ``c`` is
    ``O_l.T @ c`` in e3nn's basis.
    """
    _check_l(l)
    return _CHANGE_OF_BASIS[l]


@lru_cache(maxsize=None)
def _species_change_of_basis(ls: tuple[int, ...]) -> np.ndarray:
    sizes = [2 * l + 1 for l in ls]
    u = np.zeros((sum(sizes), sum(sizes)))
    start = 0
    for l, size in zip(ls, sizes):
        u[start : start + size, start : start + size] = _CHANGE_OF_BASIS[l]
        start += size
    u.setflags(write=False)
    return u


def species_change_of_basis(species: "SpeciesBasis") -> np.ndarray:
    """Block-diagonal ``(n_orb, n_orb)`` matrix U of one species' shells (read-only, cached)."""
    return _species_change_of_basis(tuple(s.l for s in species.shells))


def siesta_to_e3nn(blocks: np.ndarray, species_i: "SpeciesBasis", species_j: "SpeciesBasis") -> np.ndarray:
    """Orbital blocks from SIESTA's convention to e3nn's: ``U_i^T B U_j``.

    Args:
        blocks: ``(..., n_orb_i, n_orb_j)``.
    """
    return species_change_of_basis(species_i).T @ np.asarray(blocks) @ species_change_of_basis(species_j)


def e3nn_to_siesta(blocks: np.ndarray, species_i: "SpeciesBasis", species_j: "SpeciesBasis") -> np.ndarray:
    """Inverse of :func:`siesta_to_e3nn`: ``U_i B U_j^T``."""
    return species_change_of_basis(species_i) @ np.asarray(blocks) @ species_change_of_basis(species_j).T


# Fixed, well-spread sample directions for fitting rotation matrices (exact: the fit is a
# square, well-conditioned linear solve on a (2l+1)-dimensional function space).
_FIT_DIRECTIONS = np.random.default_rng(20240611).normal(size=(32, 3))


def siesta_rotation(l: int, rotation: np.ndarray) -> np.ndarray:
    r"""Real Wigner matrix of a rotation in SIESTA's convention, ``(2l+1, 2l+1)`` float64.

    Defined by :math:`Y_l(R\hat r) = D_l(R)\, Y_l(\hat r)`, so an l-shell orbital block rotates
    as ``D_l1 B D_l2^T``.  Computed from :func:`siesta_real_harmonics` alone (no e3nn).

    Args:
        rotation: ``(3, 3)`` proper rotation acting on column vectors.
    """
    y0 = siesta_real_harmonics(l, _FIT_DIRECTIONS)
    y1 = siesta_real_harmonics(l, _FIT_DIRECTIONS @ np.asarray(rotation, dtype=np.float64).T)
    return np.linalg.lstsq(y0, y1, rcond=None)[0].T


def species_rotation(species: "SpeciesBasis", rotation: np.ndarray) -> np.ndarray:
    """Block-diagonal ``(n_orb, n_orb)`` SIESTA-convention rotation of one species' orbitals."""
    per_l = {l: siesta_rotation(l, rotation) for l in {s.l for s in species.shells}}
    d = np.zeros((species.n_orbitals, species.n_orbitals))
    for shell, sl in zip(species.shells, species.shell_slices):
        d[sl, sl] = per_l[shell.l]
    return d


def rotate_blocks(
    blocks: np.ndarray, rotation: np.ndarray, species_i: "SpeciesBasis", species_j: "SpeciesBasis"
) -> np.ndarray:
    """Blocks of the rotated structure, SIESTA convention: ``D_i(R) B D_j(R)^T``."""
    return species_rotation(species_i, rotation) @ np.asarray(blocks) @ species_rotation(species_j, rotation).T
