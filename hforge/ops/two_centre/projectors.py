r"""Short-range atom-centred projector functions and their two-centre integrals with a basis.

A :class:`ProjectorSet` defines, on every atom, the functions ``chi_{n l m}(r) = g_n(|r|) |r|^l
Y_lm(r^)`` (SIESTA's real harmonics, ``m = -l..l``) for ``l = 0..l_max`` and ``n < n_radial``, with
``g_n`` the Löwdin orthonormalisation (per ``l``, weight ``r^(2l+2)``) of the envelope Gaussians
``exp(-a_n r^2) (1 - r^2 / R^2)^2`` inside the radius ``R`` (zero beyond it),
``a_n = (2 n_radial / ((n + 1) R))^2`` (widths spread up to ``R``): the functions of one atom are
orthonormal (Bohr^3).  Functions are ordered shell by shell, ``l`` major then ``n``
(``(0, 0), (0, 1), ..., (1, 0), ...``), ``m`` inside a shell: the layout of an orbital basis with
those shells, so the CG machinery of onsite blocks applies to ``n_proj x n_proj`` matrices in it.

The operator ``O = sum_k sum_ab |chi_ka> D_k,ab <chi_kb|`` (a symmetric ``D_k`` per atom ``k``)
has the matrix ``O_ij = sum_k <phi_i|chi_k> D_k <chi_k|phi_j>`` in the orbital basis, and for every
coefficient vector ``v`` (``psi = sum_i v_i phi_i``)::

    |v^T O v| = |sum_k c_k^T D_k c_k| <= max_k ||D_k||_2 sum_k |c_k|^2 <= max_k ||D_k||_2 * F * v^T S v

with ``c_k = <chi_k|psi>`` and ``F`` the largest eigenvalue of the projectors' Gram matrix
``<chi_ka|chi_k'b>`` over the cell (:meth:`ProjectorDescriptor.gram_blocks`): ``O`` cannot make
states along S's near-null directions, whatever ``D`` is (the matrix of an operator).

:func:`projector_descriptor` holds the programs ``<phi_i|chi_k>`` (``projection``; rows: orbitals
of atom ``i``, columns: projector functions of atom ``k``, ``R = r_k - r_i``) and
``<chi_k|chi_k'>`` (``gram``), built once per basis and set (cached), executed by the two-centre
backends like every other program.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hforge.basis import BasisSet
from hforge.basis.radial import ANG_TO_BOHR, RadialFunction
from hforge.errors import ConfigError
from hforge.ops.two_centre.tables import BlockProgram, Coupling, Profile, ProgramBuilder, RadialTables, build_tables

__all__ = ["ProjectorSet", "ProjectorDescriptor", "projector_descriptor"]

_GRID = 0.005  # Bohr: table step of the radial functions


@dataclass(frozen=True)
class ProjectorSet:
    """The projector functions of every atom (module docstring).

    Attributes:
        radius: ``R`` (Å), where every function ends.
        l_max: largest degree.
        n_radial: radial functions per degree.
    """

    radius: float = 1.2
    l_max: int = 3
    n_radial: int = 3

    def __post_init__(self) -> None:
        if not 0.2 <= float(self.radius) <= 4.0:
            raise ConfigError(f"projector radius {self.radius!r} Å: choose 0.2..4 Å")
        if not isinstance(self.l_max, int) or not 0 <= self.l_max <= 4:
            raise ConfigError(f"projector l_max {self.l_max!r}: choose an integer 0..4")
        if not isinstance(self.n_radial, int) or not 1 <= self.n_radial <= 8:
            raise ConfigError(f"projector n_radial {self.n_radial!r}: choose an integer 1..8")

    @property
    def shells(self) -> list[int]:
        """Degree ``l`` of every shell, in function order."""
        return [l for l in range(self.l_max + 1) for _ in range(self.n_radial)]

    @property
    def n_functions(self) -> int:
        """Functions per atom: ``n_radial (l_max + 1)^2``."""
        return self.n_radial * (self.l_max + 1) ** 2

    def radial_functions(self) -> list[RadialFunction]:
        """The radial parts ``g(r)`` (Bohr; the function is ``g(r) r^l Y_lm``) of every shell, in
        shell order: per degree the ``n_radial`` envelopes Gaussians, orthonormalised (Löwdin) under
        ``int g g' r^(2l+2) dr``, so the functions of one atom are orthonormal."""
        cutoff = self.radius * ANG_TO_BOHR
        r = np.arange(int(np.ceil(cutoff / _GRID)) + 2) * _GRID
        envelope = np.clip(1.0 - (r / cutoff) ** 2, 0.0, None) ** 2
        widths = [(n + 1) * cutoff / (2.0 * self.n_radial) for n in range(self.n_radial)]
        raw = np.stack([np.exp(-((r / width) ** 2)) * envelope for width in widths])
        out = []
        for l in range(self.l_max + 1):
            weight = r ** (2 * l + 2)
            gram = np.trapezoid(raw[:, None, :] * raw[None, :, :] * weight, r, axis=-1)
            w, u = np.linalg.eigh(gram)
            orthonormal = (u @ np.diag(w**-0.5) @ u.T) @ raw
            out += [RadialFunction(_GRID, g, cutoff) for g in orthonormal]
        return out


@dataclass(frozen=True, eq=False)
class ProjectorDescriptor:
    """The two-centre programs of a basis with a projector set.

    Attributes:
        projectors: the set.
        projection: ``<phi_i|chi_k>`` per ordered species pair ``(s_i, s_k)`` (dimensionless).
        gram: ``<chi_k|chi_k'>`` per ordered species pair.
        tables: the radial tables of both programs.
        n_proj: ``(n_species,)`` functions per atom (the same set on every species).
        orbital_reach: ``(n_species,)`` largest orbital radius (Bohr); a projection pair ``(i, k)``
            reaches ``orbital_reach[s_i] + R``.
    """

    projectors: ProjectorSet
    projection: BlockProgram
    gram: BlockProgram
    tables: RadialTables
    n_proj: np.ndarray
    orbital_reach: np.ndarray


@lru_cache(maxsize=8)
def _descriptor(basis_json: str, digests: tuple[str, ...], basis: BasisSet, projectors: ProjectorSet) -> ProjectorDescriptor:
    n = len(basis)
    radial = projectors.radial_functions()
    ls = projectors.shells
    profiles = [Profile((f,), l, l) for f, l in zip(radial, ls)]
    offsets = np.concatenate([[0], np.cumsum([2 * l + 1 for l in ls])]).astype(int)
    n_proj = int(offsets[-1])
    specs: list = []
    index: dict = {}
    types = [(si, sk) for si in range(n) for sk in range(n)]
    projection = ProgramBuilder("projection", n, [basis[si].n_orbitals for si, _ in types], [n_proj] * len(types), specs, index)
    gram = ProgramBuilder("gram", n, [n_proj] * len(types), [n_proj] * len(types), specs, index)
    for t, (si, _) in enumerate(types):
        species = basis[si]
        for a, shell in enumerate(species.shells):
            orbital = Profile((species.radials.orbitals[a],), shell.l, shell.l)
            for p, prof in enumerate(profiles):
                projection.add(t, species.shell_slices[a].start, int(offsets[p]), shell.l, prof.l, [Coupling(orbital, prof)])
        for p, left in enumerate(profiles):
            for q, right in enumerate(profiles):
                gram.add(t, int(offsets[p]), int(offsets[q]), left.l, right.l, [Coupling(left, right)])
    lmax = 2 * max([s.l for sp in basis for s in sp.shells] + [projectors.l_max])
    tables = build_tables(specs)
    return ProjectorDescriptor(
        projectors=projectors,
        projection=projection.build(lmax),
        gram=gram.build(lmax),
        tables=tables,
        n_proj=np.full(n, n_proj, dtype=np.int64),
        orbital_reach=np.array([max(t.cutoff for t in sp.radials.orbitals) for sp in basis]),
    )


def projector_descriptor(basis: BasisSet, projectors: ProjectorSet) -> ProjectorDescriptor:
    """The cached :class:`ProjectorDescriptor` of ``basis`` and ``projectors`` (a few seconds once).

    Raises:
        BasisMismatchError: a species without radial tables.
    """
    basis.require_radials()
    return _descriptor(basis.to_json(radials=False), tuple(sp.radials.digest for sp in basis), basis, projectors)
