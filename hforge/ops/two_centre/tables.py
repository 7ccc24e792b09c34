r"""Two-centre integral tables of a basis: built once per basis (cached), executed by the backends.

A two-centre integral couples a function ``A(r) = a(r) Y_{l_A m_A}(r^)`` centred on one atom with
``B(r) = b(r) Y_{l_B m_B}(r^)`` centred on another, ``R = r_B - r_A`` (Bohr):

.. math::

    \langle A | O | B \rangle(R) = \sum_L I_L(|R|) \sum_M s_L\, G(l_A m_A, l_B m_B, L M)\, Y_{LM}(\hat R),
    \qquad I_L(R) = 8 \int_0^\infty k^2 w(k)\, \tilde a(k)\, \tilde b(k)\, j_L(kR)\, dk,

with :math:`\tilde a(k) = \int_0^{r_c} a(r) j_{l_A}(kr) r^2 dr`, ``w = 1`` for the overlap and
``w = k^2`` for the kinetic operator ``-nabla^2`` (Ry with lengths in Bohr), ``G`` the real Gaunt
coefficients of SIESTA's real harmonics (:func:`hforge.basis.conventions.real_harmonics`) and
``s_L = (-1)^((l_A - l_B - L) / 2)`` (the Fourier phases ``i^(l_A - l_B - L)``; ``L`` runs over
``|l_A - l_B| .. l_A + l_B`` in steps of 2).  This is the method of SIESTA's ``matel``.

Numerics: ``a~`` by composite Gauss-Legendre quadrature of SIESTA's spline of the table on
``[0, r_c]``; ``I_L`` by the trapezoid rule on ``k = 0, dk, .., k_max`` (exact for functions of
compact support when ``dk < pi / (r_cA + r_cB + R)``, the sampling theorem SIESTA's ``radfft``
relies on too), tabulated with its exact derivative on a uniform ``R`` grid for cubic Hermite
interpolation.  Measured on the shared aBN cells: S to 1e-7 of SIESTA's.

Programs.  Every operator block (rows: the functions of one atom, columns: those of the other) is
a :class:`BlockProgram`: per ordered species pair, the tables it needs ("slots") and, per block
entry, the terms ``coef * I_slot(|R|) * Y_lm(R^)``.  The kernels (:mod:`.reference`, :mod:`.numba`)
only execute programs; S, the kinetic + two-centre neutral-atom H0, the crystal field of the
neutral-atom potentials and the KB projections are all such programs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from hforge.basis import BasisSet
from hforge.basis.conventions import real_harmonics
from hforge.basis.radial import RadialFunction
from hforge.errors import UnsupportedSystemError

__all__ = ["Profile", "Coupling", "TableSpec", "RadialTables", "BlockProgram", "combine", "gaunt", "build_tables"]

#: SIESTA's radial grids (``matel``/``radfft``): ``NQ`` intervals up to ``Q_MAX`` (Bohr^-1) in k and,
#: conjugate, ``r_k = k * pi / Q_MAX`` up to ``NQ * pi / Q_MAX`` (32.2 Bohr) in r.
NQ = 1024
Q_MAX = 100.0
#: R grid of the tables (Bohr): cubic Hermite interpolation between exact values and derivatives.
R_STEP = 0.01


@dataclass(frozen=True)
class Profile:
    """A radial profile ``scale * r^power * prod(f(r) for f in factors)``, zero beyond the smallest
    factor cut-off, transformed with the spherical Bessel function of order ``l``."""

    factors: tuple[RadialFunction, ...]
    power: int
    l: int  # noqa: E741
    scale: float = 1.0

    @property
    def cutoff(self) -> float:
        return min(f.cutoff for f in self.factors)

    def key(self) -> tuple:
        return (tuple(f.digest() for f in self.factors), self.power, self.l, self.scale)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        out = self.scale * np.asarray(r, dtype=np.float64) ** self.power
        for f in self.factors:
            out = out * f(r)
        return out


@dataclass(frozen=True)
class Coupling:
    """``<a| O |b>`` of two profiles, ``O`` the identity or (``kinetic``) ``-nabla^2``."""

    a: Profile
    b: Profile
    kinetic: bool = False

    @property
    def reach(self) -> float:
        return self.a.cutoff + self.b.cutoff

    def key(self) -> tuple:
        return (self.a.key(), self.b.key(), self.kinetic)


@dataclass(frozen=True)
class TableSpec:
    """One table ``I_L(R)``: the sum of the couplings ``parts`` (all with the same ``l_a, l_b``)."""

    L: int
    parts: tuple[Coupling, ...]

    @property
    def reach(self) -> float:
        return max(p.reach for p in self.parts)

    def key(self) -> tuple:
        return (self.L, tuple(p.key() for p in self.parts))


@dataclass(frozen=True, eq=False)
class RadialTables:
    """Tables ``I_t(R_k)`` and ``dI_t/dR(R_k)`` at ``R_k = k * step`` (Bohr), ``k = 0..n-1``.

    Attributes:
        step: grid step (Bohr).
        values: ``(n_tables, n_points, 2)`` float64: value and derivative; zero beyond each
            table's reach (sum of its profiles' cut-offs).
        reach: ``(n_tables,)`` float64 Bohr.
    """

    step: float
    values: np.ndarray
    reach: np.ndarray

    _tensors: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def n_tables(self) -> int:
        return len(self.values)

    def tensors(self, device: Any, dtype: Any) -> tuple[Any, Any]:
        """``(values, reach)`` as torch tensors on ``device`` (cached per device and dtype)."""
        import torch

        key = (str(device), dtype)
        if key not in self._tensors:
            self._tensors[key] = (
                torch.tensor(self.values, device=device, dtype=dtype),
                torch.tensor(self.reach, device=device, dtype=dtype),
            )
        return self._tensors[key]

    def __call__(self, table: int, r: np.ndarray) -> np.ndarray:
        """Cubic Hermite interpolation of one table at ``r`` (Bohr); zero at and beyond its reach."""
        r = np.asarray(r, dtype=np.float64)
        x = r / self.step
        k = np.clip(np.floor(x).astype(np.int64), 0, self.values.shape[1] - 2)
        t = x - k
        f0, d0 = self.values[table, k, 0], self.values[table, k, 1] * self.step
        f1, d1 = self.values[table, k + 1, 0], self.values[table, k + 1, 1] * self.step
        h00, h10, h01, h11 = (2 * t**3 - 3 * t**2 + 1), (t**3 - 2 * t**2 + t), (-2 * t**3 + 3 * t**2), (t**3 - t**2)
        out = h00 * f0 + h10 * d0 + h01 * f1 + h11 * d1
        return np.where(r < self.reach[table], out, 0.0)


@dataclass(frozen=True, eq=False)
class BlockProgram:
    """Blocks of one operator for every ordered species pair (type ``t = s_i * n_species + s_j``).

    A block of type ``t`` has ``rows[t] x cols[t]`` entries (row-major).  Its slots are the
    tables ``slot_table[slot_ptr[t]:slot_ptr[t+1]]``; entry ``q`` of the block (flat index
    ``e = entry_ptr[t] + q``) is the sum over its terms ``k`` in ``term_ptr[e]:term_ptr[e+1]`` of
    ``term_coef[k] * I_{slot_table[slot_ptr[t] + term_slot[k]]}(|R|) * Y[term_lm[k]](R^)`` with
    ``Y`` the real harmonics up to ``lmax`` (index ``L^2 + L + M``).  At ``R = 0`` (onsite) only
    ``L = 0`` terms survive (``Y_00 = 1 / sqrt(4 pi)``, the others taken as 0).
    """

    name: str
    n_species: int
    rows: np.ndarray
    cols: np.ndarray
    lmax: int
    slot_ptr: np.ndarray
    slot_table: np.ndarray
    entry_ptr: np.ndarray
    term_ptr: np.ndarray
    term_slot: np.ndarray
    term_lm: np.ndarray
    term_coef: np.ndarray

    @property
    def block_size(self) -> np.ndarray:
        """``(n_species**2,)`` int64 entries of each pair type's block."""
        return self.rows * self.cols

    @property
    def max_slots(self) -> int:
        return int(np.diff(self.slot_ptr).max(initial=0))

    def slot_entries(self) -> np.ndarray:
        """``(n_slots_total,)`` int64: one entry (flat, ``entry_ptr`` layout) that each slot's table
        enters (-1 for a slot no term uses): which sub-block a slot belongs to."""
        out = np.full(len(self.slot_table), -1, dtype=np.int64)
        term_entry = np.repeat(np.arange(len(self.term_ptr) - 1), np.diff(self.term_ptr))
        type_of_entry = np.searchsorted(self.entry_ptr, term_entry, side="right") - 1
        out[self.slot_ptr[type_of_entry] + self.term_slot] = term_entry
        return out

    def scaled(self, entry_scale: np.ndarray) -> "BlockProgram":
        """The same program with entry ``e``'s terms multiplied by ``entry_scale[e]``
        (``(entry_ptr[-1],)``): per-entry coefficients folded in at no cost per pair."""
        term_entry = np.repeat(np.arange(len(self.term_ptr) - 1), np.diff(self.term_ptr))
        return replace(self, term_coef=self.term_coef * np.asarray(entry_scale, dtype=np.float64)[term_entry])


def combine(
    programs: Sequence[BlockProgram], tables: RadialTables, entry_scales: Sequence[np.ndarray]
) -> tuple[BlockProgram, RadialTables]:
    """One program (and its tables) for ``sum_p entry_scale_p * program_p``, when the programs share
    their structure (same slots and terms: the pair programs of one basis do) and every scale is
    constant over the entries of each slot's sub-block: each slot's table becomes the weighed sum
    of the programs' tables, so the sum costs one program evaluation."""
    first = programs[0]
    for other in programs[1:]:
        same = all(np.array_equal(getattr(first, f), getattr(other, f)) for f in ("slot_ptr", "entry_ptr", "term_ptr", "term_slot", "term_lm"))
        if not same or not np.allclose(first.term_coef, other.term_coef):
            raise ValueError("combine: the programs differ in structure")
    entry = first.slot_entries()
    values = np.zeros((len(first.slot_table),) + tables.values.shape[1:])
    reach = np.zeros(len(first.slot_table))
    for program, scale in zip(programs, entry_scales):
        weight = np.where(entry >= 0, np.asarray(scale)[np.maximum(entry, 0)], 0.0)
        values += weight[:, None, None] * tables.values[program.slot_table]
        reach = np.maximum(reach, np.where(weight != 0, tables.reach[program.slot_table], 0.0))
    values.setflags(write=False)
    combined = replace(first, name="+".join(p.name for p in programs), slot_table=np.arange(len(first.slot_table)))
    return combined, RadialTables(tables.step, values, reach)


@lru_cache(maxsize=8)
def _gaunt(l1max: int, l2max: int) -> np.ndarray:
    lmax = l1max + l2max
    z, wz = np.polynomial.legendre.leggauss(lmax + 2)
    n_phi = 2 * lmax + 2
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    s = np.sqrt(1 - z**2)
    points = np.stack(np.broadcast_arrays(s[:, None] * np.cos(phi), s[:, None] * np.sin(phi), z[:, None]), -1).reshape(-1, 3)
    weights = (wz[:, None] * np.full(n_phi, 2 * np.pi / n_phi)).reshape(-1)
    y = real_harmonics(lmax, points)
    g = np.einsum("p,pa,pb,pc->abc", weights, y[:, : (l1max + 1) ** 2], y[:, : (l2max + 1) ** 2], y)
    g[np.abs(g) < 1e-14] = 0.0
    g.setflags(write=False)
    return g


def gaunt(l1max: int, l2max: int) -> np.ndarray:
    """Real Gaunt coefficients ``G[l1^2+l1+m1, l2^2+l2+m2, L^2+L+M] = int Y_l1m1 Y_l2m2 Y_LM dΩ``.

    Exact (Gauss-Legendre in cos θ, uniform in φ) for SIESTA's real harmonics; shape
    ``((l1max+1)^2, (l2max+1)^2, (l1max+l2max+1)^2)``, read-only.
    """
    return _gaunt(int(l1max), int(l2max))


# ---- radial transforms ------------------------------------------------------------------------
def _forward_transforms(profiles: Sequence[Profile], k: np.ndarray, r: np.ndarray) -> list[np.ndarray]:
    """``int p(r) j_l(k r) r^2 dr`` of every profile on the k grid: the trapezoid rule on SIESTA's
    r grid (``radfft``), one Bessel matrix per ``l``."""
    from scipy.special import spherical_jn

    dr = r[1] - r[0]
    out: list[np.ndarray] = [np.empty(0)] * len(profiles)
    by_l: dict[int, list[int]] = {}
    for n, p in enumerate(profiles):
        by_l.setdefault(p.l, []).append(n)
    for l, members in by_l.items():
        g = np.stack([profiles[n](r) * r**2 * dr for n in members], axis=1)
        result = spherical_jn(l, np.outer(k, r)) @ g
        for column, n in enumerate(members):
            out[n] = result[:, column]
    return out


def build_tables(specs: Sequence[TableSpec]) -> RadialTables:
    """Compute the tables of ``specs`` (in order) on the R grid; see the module docstring."""
    from scipy.special import spherical_jn

    dk = math.pi / (NQ * math.pi / Q_MAX)
    k = np.arange(1, NQ) * dk  # SIESTA's sums skip k = 0 (weight k^2 = 0) and k = Q_MAX
    r = np.arange(1, NQ) * (math.pi / Q_MAX)
    weights = 8.0 * dk * k**2
    reach = np.array([s.reach for s in specs])
    if (reach > r[-1]).any():
        raise UnsupportedSystemError(f"two-centre integrals reach {reach.max():.1f} Bohr, beyond SIESTA's {r[-1]:.1f}")
    n_points = int(math.ceil(float(reach.max(initial=R_STEP)) / R_STEP)) + 2
    grid = np.arange(n_points) * R_STEP
    profiles = {p.key(): p for spec in specs for c in spec.parts for p in (c.a, c.b)}
    transforms = dict(zip(profiles, _forward_transforms(list(profiles.values()), k, r)))

    def integrand(spec: TableSpec) -> np.ndarray:
        return weights * sum(
            transforms[c.a.key()] * transforms[c.b.key()] * (k**2 if c.kinetic else 1.0) for c in spec.parts
        )

    values = np.zeros((len(specs), n_points, 2))
    by_l: dict[int, list[int]] = {}
    for t, spec in enumerate(specs):
        by_l.setdefault(spec.L, []).append(t)
    kr = np.outer(k, grid)
    for L, members in by_l.items():
        weighted = np.stack([integrand(specs[t]) for t in members])
        values[members, :, 0] = weighted @ spherical_jn(L, kr)
        values[members, :, 1] = weighted @ (spherical_jn(L, kr, derivative=True) * k[:, None])
    values[grid[None, :] >= reach[:, None]] = 0.0
    values.setflags(write=False)
    return RadialTables(R_STEP, values, reach)


# ---- programs ---------------------------------------------------------------------------------
@dataclass
class ProgramBuilder:
    """Collects the terms of one program (:meth:`add`, :meth:`add_density`), then packs them
    (:meth:`build`); tables are shared through ``specs``/``spec_index`` across programs."""

    name: str
    n_species: int
    rows: list[int]
    cols: list[int]
    specs: list[TableSpec]
    spec_index: dict[tuple, int]
    terms: dict[int, list[list[tuple[int, int, float]]]] = field(default_factory=dict)
    slots: dict[int, dict[int, int]] = field(default_factory=dict)

    def _block(self, t: int) -> tuple[list[list[tuple[int, int, float]]], dict[int, int], int]:
        ncol = self.cols[t]
        block = self.terms.setdefault(t, [[] for _ in range(self.rows[t] * ncol)])
        return block, self.slots.setdefault(t, {}), ncol

    def table(self, spec: TableSpec) -> int:
        key = spec.key()
        if key not in self.spec_index:
            self.spec_index[key] = len(self.specs)
            self.specs.append(spec)
        return self.spec_index[key]

    def add(self, t: int, row0: int, col0: int, la: int, lb: int, parts: Sequence[Coupling], scale: float = 1.0) -> None:
        """Add the coupling of functions of degree ``la`` (rows ``row0..``) and ``lb`` (cols ``col0..``),
        the sum of ``parts``, to the blocks of type ``t``."""
        block, slots, ncol = self._block(t)
        g = gaunt(la, lb)
        for L in range(abs(la - lb), la + lb + 1, 2):
            sign = -1.0 if ((la - lb - L) // 2) % 2 else 1.0
            slot = slots.setdefault(self.table(TableSpec(L, tuple(parts))), len(slots))
            for ma in range(2 * la + 1):
                for mb in range(2 * lb + 1):
                    for M in range(2 * L + 1):
                        c = g[la * la + ma, lb * lb + mb, L * L + M]
                        if c != 0.0:
                            block[(row0 + ma) * ncol + col0 + mb].append((slot, L * L + M, scale * sign * c))

    def add_density(self, t: int, row0: int, col0: int, la: int, lb: int, density: Profile, potential: Profile) -> None:
        """Add ``<phi_a | V | phi_b>`` with both functions on one atom (degree ``la`` at rows
        ``row0..``, ``lb`` at columns ``col0..``) and a spherical potential on the other atom.  ``density`` is the product's radial part (its ``l`` is
        replaced by each ``L``), ``potential`` an ``l = 0`` profile.  With
        ``phi_a phi_b = sum_LM G(la ma, lb mb, LM) rho(r) Y_LM`` and ``V = sqrt(4 pi) V Y_00``,
        each term is ``G * I_L(R) * Y_LM(R^)`` (``I_L`` of ``rho`` at order ``L`` and ``V``)."""
        block, slots, ncol = self._block(t)
        g = gaunt(la, lb)
        for L in range(abs(la - lb), la + lb + 1, 2):
            spec = TableSpec(L, (Coupling(Profile(density.factors, density.power, L, density.scale), potential),))
            slot = slots.setdefault(self.table(spec), len(slots))
            for ma in range(2 * la + 1):
                for mb in range(2 * lb + 1):
                    for M in range(2 * L + 1):
                        c = g[la * la + ma, lb * lb + mb, L * L + M]
                        if c != 0.0:
                            block[(row0 + ma) * ncol + col0 + mb].append((slot, L * L + M, c))

    def build(self, lmax: int) -> BlockProgram:
        """The packed program (``lmax``: largest degree of the harmonics its terms use)."""
        n_types = self.n_species**2
        slot_ptr, slot_table, entry_ptr, term_ptr = [0], [], [0], [0]
        term_slot, term_lm, term_coef = [], [], []
        for t in range(n_types):
            size = self.rows[t] * self.cols[t]
            slots = self.slots.get(t, {})
            slot_table.extend(sorted(slots, key=slots.get))
            slot_ptr.append(len(slot_table))
            block = self.terms.get(t, [[] for _ in range(size)])
            for entry in block:
                merged: dict[tuple[int, int], float] = {}
                for slot, lm, c in entry:
                    merged[(slot, lm)] = merged.get((slot, lm), 0.0) + c
                for (slot, lm), c in sorted(merged.items()):
                    term_slot.append(slot)
                    term_lm.append(lm)
                    term_coef.append(c)
                term_ptr.append(len(term_slot))
            entry_ptr.append(entry_ptr[-1] + size)

        def i64(x: list) -> np.ndarray:
            return np.asarray(x, dtype=np.int64)

        return BlockProgram(
            self.name, self.n_species, i64(self.rows), i64(self.cols), lmax, i64(slot_ptr), i64(slot_table),
            i64(entry_ptr), i64(term_ptr), i64(term_slot), i64(term_lm), np.asarray(term_coef, dtype=np.float64),
        )


def _orbital(basis: BasisSet, s: int, a: int, extra: tuple[RadialFunction, ...] = ()) -> Profile:
    """Profile of shell ``a`` of species ``s`` (``f r^l``), times ``extra`` factors."""
    shell, table = basis[s].shells[a], basis[s].radials.orbitals[a]
    return Profile((table, *extra), shell.l, shell.l)


def shell_offsets(basis: BasisSet, s: int) -> list[int]:
    return [sl.start for sl in basis[s].shell_slices]


def projector_offsets(basis: BasisSet, s: int) -> list[int]:
    sizes = [2 * p.l + 1 for p in basis[s].radials.projectors]
    return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []


def n_projector_functions(basis: BasisSet, s: int) -> int:
    """Number of KB projector functions (``sum 2l+1``) of species ``s``."""
    return sum(2 * p.l + 1 for p in basis[s].radials.projectors)
