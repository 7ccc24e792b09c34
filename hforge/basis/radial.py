"""Radial tables of a SIESTA basis: orbitals, Kleinman-Bylander projectors, neutral-atom potential.

SIESTA's ion files (``.ion``, ``.ion.nc``, ``.ion.xml``) tabulate every radial function on a
uniform grid ``r_k = k * delta`` (Bohr, ``k = 0..n-1``, the last point at the cut-off) and SIESTA
evaluates them with a cubic spline whose first derivative is zero at ``r = 0`` and whose second
derivative is zero at the last point (``rad_setup_d2`` with ``yp1 = 0, ypn = huge``); beyond the
cut-off a function is zero.  :class:`RadialFunction` is that table and that spline, exactly.

Conventions (SIESTA's, kept here; lengths in Bohr, energies in Ry as in the files):

- an orbital of shell ``(n, l, zeta)`` is ``phi(r) = f(r) r^l Y_lm(r^)`` with ``f`` the table and
  ``Y_lm`` SIESTA's real harmonics (:func:`hforge.basis.conventions.siesta_real_harmonics`);
  ``int f(r)^2 r^(2l+2) dr = 1``;
- a KB projector is ``chi(r) = f(r) r^l Y_lm(r^)`` with its reference energy ``E`` (Ry): the
  non-local pseudopotential is ``sum |chi> E <chi|`` (SIESTA's ``nlefsm``);
- the neutral-atom potential ``V_NA(r)`` (Ry; local pseudopotential plus the Hartree potential of
  the atom's valence charge) is tabulated as it is, with no ``r^l``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["RadialFunction", "KBProjector", "SpeciesRadials", "BOHR_TO_ANG", "ANG_TO_BOHR", "RY_TO_EV"]

def _unit(name: str, to: str) -> float:
    from sisl.unit.siesta import unit_convert

    return float(unit_convert(name, to))


#: Å per Bohr, the constant sisl uses for SIESTA files (CODATA 2018), and so HForge for every
#: length it reads or writes.  SIESTA itself converts Å with 0.529177 (``units.f90``): a structure
#: SIESTA read in Å sits 4e-7 (relative) away from the positions sisl reads back from SIESTA's
#: Bohr files, which moves two-centre integrals by at most ~3e-7.  HForge keeps sisl's Å
#: everywhere, so that data read from SIESTA files is reproduced exactly.
BOHR_TO_ANG = _unit("Bohr", "Ang")
ANG_TO_BOHR = 1.0 / BOHR_TO_ANG

#: eV per Rydberg, the constant sisl uses for SIESTA files (their H is in Ry): HForge's H is in eV.
RY_TO_EV = _unit("Ry", "eV")


@dataclass(frozen=True, eq=False)
class RadialFunction:
    """One tabulated radial function of a SIESTA ion file.

    Attributes:
        delta: grid spacing (Bohr); the table holds ``f(k * delta)``, ``k = 0..n-1``.
        values: ``(n,)`` float64, read-only.
        cutoff: radius (Bohr) beyond which the function is zero (the file's, normally
            ``(n - 1) * delta``).
    """

    delta: float
    values: np.ndarray
    cutoff: float

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "delta", float(self.delta))
        object.__setattr__(self, "cutoff", float(self.cutoff))
        if values.ndim != 1 or len(values) < 4 or not self.delta > 0 or not np.isfinite(values).all():
            raise ValueError(f"a radial table needs >= 4 finite values and delta > 0 (got {values.shape}, {self.delta})")

    @property
    def n_points(self) -> int:
        return len(self.values)

    @cached_property
    def spline(self) -> Any:
        """SIESTA's spline of the table: ``f'(0) = 0``, ``f''`` = 0 at the last point."""
        from scipy.interpolate import CubicSpline

        r = np.arange(self.n_points) * self.delta
        return CubicSpline(r, self.values, bc_type=((1, 0.0), (2, 0.0)))

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """``f(r)`` (float64, shape of ``r``), zero at and beyond the cut-off as in SIESTA."""
        r = np.asarray(r, dtype=np.float64)
        inside = r < self.cutoff
        return np.where(inside, self.spline(np.where(inside, r, 0.0)), 0.0)

    def digest(self) -> bytes:
        """Bytes that identify the table exactly (cache keys)."""
        return np.array([self.delta, self.cutoff]).tobytes() + self.values.tobytes()

    def to_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "cutoff": self.cutoff, "values": self.values.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RadialFunction":
        return cls(float(data["delta"]), np.asarray(data["values"], dtype=np.float64), float(data["cutoff"]))


@dataclass(frozen=True, eq=False)
class KBProjector:
    """A Kleinman-Bylander projector: angular momentum ``l``, reference energy (Ry), radial table ``chi/r^l``."""

    l: int
    energy: float
    radial: RadialFunction

    def to_dict(self) -> dict[str, Any]:
        return {"l": self.l, "energy": self.energy, "radial": self.radial.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KBProjector":
        return cls(int(data["l"]), float(data["energy"]), RadialFunction.from_dict(data["radial"]))


@dataclass(frozen=True, eq=False)
class SpeciesRadials:
    """The radial tables of one species, in the order of its shells and projectors.

    Attributes:
        orbitals: one table ``phi/r^l`` per shell (SIESTA's shell order).
        projectors: the KB projectors in the file's order.
        neutral_atom: ``V_NA(r)`` (Ry), or None where the file lacks it.
    """

    orbitals: tuple[RadialFunction, ...]
    projectors: tuple[KBProjector, ...] = ()
    neutral_atom: RadialFunction | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "orbitals", tuple(self.orbitals))
        object.__setattr__(self, "projectors", tuple(self.projectors))

    @cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of every table and energy: equal digests, equal radial functions."""
        h = hashlib.sha256()
        for table in self.orbitals:
            h.update(table.digest())
        for p in self.projectors:
            h.update(np.array([p.l, p.energy]).tobytes() + p.radial.digest())
        if self.neutral_atom is not None:
            h.update(self.neutral_atom.digest())
        return h.hexdigest()

    def matches(self, other: "SpeciesRadials", rtol: float = 1e-8) -> bool:
        """Same tables and energies to ``rtol`` (an ``.ion.xml`` file keeps 12 digits, ``.ion`` 16)."""

        def close(a: RadialFunction, b: RadialFunction) -> bool:
            return (
                a.n_points == b.n_points
                and np.isclose(a.delta, b.delta, rtol=rtol)
                and np.isclose(a.cutoff, b.cutoff, rtol=rtol)
                and np.allclose(a.values, b.values, rtol=rtol, atol=rtol * float(np.abs(a.values).max()))
            )

        return (
            len(self.orbitals) == len(other.orbitals)
            and all(close(a, b) for a, b in zip(self.orbitals, other.orbitals))
            and len(self.projectors) == len(other.projectors)
            and all(
                p.l == q.l and np.isclose(p.energy, q.energy, rtol=rtol) and close(p.radial, q.radial)
                for p, q in zip(self.projectors, other.projectors)
            )
            and (self.neutral_atom is None) == (other.neutral_atom is None)
            and (self.neutral_atom is None or close(self.neutral_atom, other.neutral_atom))
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable and exact (floats through ``repr``)."""
        return {
            "orbitals": [t.to_dict() for t in self.orbitals],
            "projectors": [p.to_dict() for p in self.projectors],
            "neutral_atom": None if self.neutral_atom is None else self.neutral_atom.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpeciesRadials":
        vna = data.get("neutral_atom")
        return cls(
            tuple(RadialFunction.from_dict(t) for t in data["orbitals"]),
            tuple(KBProjector.from_dict(p) for p in data.get("projectors", ())),
            None if vna is None else RadialFunction.from_dict(vna),
        )
