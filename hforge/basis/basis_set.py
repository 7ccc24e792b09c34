"""Atomic-orbital basis sets as SIESTA defines them: shells, species, and the whole set.

Orbital order (SIESTA's, kept everywhere in HForge): shell by shell as in the ``.ion`` file,
and ``m = -l..l`` inside a shell, i.e. p: py pz px; d: dxy dyz dz2 dxz dx2-y2.
Lengths are in Å.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from hforge.basis.radial import BOHR_TO_ANG, SpeciesRadials
from hforge.errors import BasisMismatchError, UnknownSpeciesError, UnsupportedSystemError

__all__ = ["Shell", "SpeciesBasis", "BasisSet", "MAX_L", "HASH_DIGITS"]

#: Highest angular momentum HForge handles (SIESTA bases rarely go past f).
MAX_L = 3

#: Radii enter :attr:`BasisSet.hash` rounded to this many decimals (Å), so that the same
#: basis read from ``.ion`` (17 digits), ``.ion.xml`` (12) or ``.ion.nc`` hashes alike.
HASH_DIGITS = 4

_L_LETTERS = "spdf"
_M_NAMES = {
    0: ("",),
    1: ("y", "z", "x"),
    2: ("xy", "yz", "z2", "xz", "x2-y2"),
    3: ("y(3x2-y2)", "xyz", "yz2", "z3", "xz2", "z(x2-y2)", "x(x2-3y2)"),
}


@dataclass(frozen=True)
class Shell:
    """One radial function times the ``2l + 1`` real spherical harmonics of its ``l``.

    Attributes:
        n: principal quantum number.
        l: angular momentum (0..3).
        zeta: 1 for the first zeta, 2 for the split-valence second, ...
        polarized: True for a polarization shell (SIESTA's ``P``).
        cutoff: radius (Å) beyond which the orbital is zero; None where the source does not
            record it (a bare HSX file).
    """

    n: int
    l: int
    zeta: int = 1
    polarized: bool = False
    cutoff: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.l <= MAX_L:
            raise UnsupportedSystemError(f"shell with l = {self.l}: HForge handles l = 0..{MAX_L}")

    @property
    def n_orbitals(self) -> int:
        """``2 l + 1``."""
        return 2 * self.l + 1

    @property
    def irrep(self) -> str:
        """The e3nn irrep of the shell: ``0e``, ``1o``, ``2e``, ``3o``."""
        return f"{self.l}{'e' if self.l % 2 == 0 else 'o'}"

    @property
    def name(self) -> str:
        """SIESTA-style name, e.g. ``2pZ2`` or ``3dZ1P``."""
        return f"{self.n}{_L_LETTERS[self.l]}Z{self.zeta}{'P' if self.polarized else ''}"

    def orbital_names(self) -> list[str]:
        """One name per orbital, m = -l..l, e.g. ``2pyZ1 2pzZ1 2pxZ1``."""
        head, tail = f"{self.n}{_L_LETTERS[self.l]}", f"Z{self.zeta}{'P' if self.polarized else ''}"
        return [f"{head}{m}{tail}" for m in _M_NAMES[self.l]]

    def same_orbitals(self, other: "Shell") -> bool:
        """True if both shells hold the same orbitals (n, l, zeta), whatever their radii and flags."""
        return (self.n, self.l, self.zeta) == (other.n, other.l, other.zeta)


@dataclass(frozen=True)
class SpeciesBasis:
    """The basis of one chemical species.

    Attributes:
        symbol: the species label as SIESTA names it (``ChemicalSpeciesLabel``; usually the
            chemical symbol, e.g. ``B``).
        Z: atomic number (negative for SIESTA ghost atoms).
        shells: the shells in SIESTA's order.
        kb_projectors: ``(l, radius Å)`` of each Kleinman-Bylander projector where the source
            records them (``.ion*`` files), else None.  H couples orbitals up to
            ``r_i + r_j + 2 max(kb radius)`` apart through a third atom's projector.
        valence_charge: electrons of the neutral atom that the pseudopotential treats
            explicitly (Z_valence; B 3, N 5), where the source records it (``.ion*`` files, the
            BASIS group of a ``.nc``), else None.  Like the radii it describes the pseudopotential,
            not the orbitals: equality and :attr:`BasisSet.hash` ignore it.
        radials: the radial tables of the orbitals, KB projectors and neutral-atom potential
            (:class:`~hforge.basis.radial.SpeciesRadials`) where the source holds them (ion
            files), else None.  They define the exact two-centre integrals (S, the kinetic
            matrix, the KB projections); equality and :attr:`BasisSet.hash` ignore them (the radii
            are in the shells).
    """

    symbol: str
    Z: int
    shells: tuple[Shell, ...]
    kb_projectors: tuple[tuple[int, float], ...] | None = None
    valence_charge: float | None = field(default=None, compare=False)
    radials: SpeciesRadials | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbol", str(self.symbol))  # not numpy's str_ (its repr would reach messages)
        object.__setattr__(self, "shells", tuple(self.shells))
        if self.kb_projectors is not None:
            object.__setattr__(self, "kb_projectors", tuple((int(l), float(r)) for l, r in self.kb_projectors))
        if self.valence_charge is not None:
            object.__setattr__(self, "valence_charge", float(self.valence_charge))
        if self.radials is not None and len(self.radials.orbitals) != len(self.shells):
            raise BasisMismatchError(
                f"species {self.symbol!r}: {len(self.radials.orbitals)} radial tables for {len(self.shells)} shells"
            )
        for shell, table in zip(self.shells, self.radials.orbitals if self.radials is not None else ()):
            if shell.cutoff is not None and not np.isclose(shell.cutoff, table.cutoff * BOHR_TO_ANG, rtol=1e-4):
                raise BasisMismatchError(
                    f"species {self.symbol!r}: shell n={shell.n} l={shell.l} zeta={shell.zeta} has the cut-off "
                    f"{shell.cutoff:.5f} Å but its radial table ends at {table.cutoff * BOHR_TO_ANG:.5f} Å"
                )

    @property
    def n_orbitals(self) -> int:
        """Number of orbitals of one atom of this species."""
        return sum(shell.n_orbitals for shell in self.shells)

    @property
    def irreps(self) -> str:
        """e3nn irreps of the orbital set in SIESTA's shell order, e.g. ``2x0e+2x1o+1x2e``.

        Consecutive shells of equal ``l`` are merged; the order is never changed, so that
        e3nn's layout (copy by copy, ``2l+1`` components each) matches SIESTA's orbital order.
        """
        parts: list[list] = []
        for shell in self.shells:
            if parts and parts[-1][1] == shell.irrep:
                parts[-1][0] += 1
            else:
                parts.append([1, shell.irrep])
        return "+".join(f"{mul}x{ir}" for mul, ir in parts)

    @property
    def cutoff(self) -> float | None:
        """Largest orbital radius (Å), or None if a shell's radius is unknown."""
        radii = [shell.cutoff for shell in self.shells]
        return None if any(r is None for r in radii) else max(radii)

    @property
    def kb_cutoff(self) -> float | None:
        """Largest Kleinman-Bylander projector radius (Å), or None if unknown."""
        return max(r for _, r in self.kb_projectors) if self.kb_projectors else None

    @property
    def orbital_l(self) -> np.ndarray:
        """``(n_orbitals,)`` int64: l of each orbital."""
        return np.repeat([s.l for s in self.shells], [s.n_orbitals for s in self.shells]).astype(np.int64)

    @property
    def orbital_m(self) -> np.ndarray:
        """``(n_orbitals,)`` int64: m of each orbital (-l..l inside each shell)."""
        return np.concatenate([np.arange(-s.l, s.l + 1) for s in self.shells]).astype(np.int64)

    @property
    def orbital_shell(self) -> np.ndarray:
        """``(n_orbitals,)`` int64: index of the shell of each orbital."""
        return np.repeat(np.arange(len(self.shells)), [s.n_orbitals for s in self.shells]).astype(np.int64)

    @property
    def shell_slices(self) -> list[slice]:
        """Orbital slice of each shell inside the atom's orbitals."""
        stops = np.cumsum([s.n_orbitals for s in self.shells])
        return [slice(int(stop - s.n_orbitals), int(stop)) for s, stop in zip(self.shells, stops)]

    def orbital_names(self) -> list[str]:
        """One name per orbital, e.g. ``2sZ1 2sZ2 2pyZ1 ... 3dx2-y2Z1P``."""
        return [name for shell in self.shells for name in shell.orbital_names()]

    def same_orbitals(self, other: "SpeciesBasis") -> bool:
        """True if both hold the same shells (n, l, zeta) in the same order."""
        return len(self.shells) == len(other.shells) and all(
            a.same_orbitals(b) for a, b in zip(self.shells, other.shells)
        )

    # ---- conversions -------------------------------------------------------------------
    @classmethod
    def from_sisl(
        cls,
        atom: Any,
        kb_projectors: Iterable[tuple[int, float]] | None = None,
        valence_charge: float | None = None,
        radials: SpeciesRadials | None = None,
    ) -> "SpeciesBasis":
        """From a :class:`sisl.Atom` whose orbitals carry n, l, m, zeta (and P, R).

        Raises:
            BasisMismatchError: the atom's orbitals carry no shell information (e.g. the
                placeholder atoms of a bare TSHS) or are not in SIESTA's m = -l..l order.
        """
        shells: list[Shell] = []
        orbitals = list(atom.orbitals)
        i = 0
        while i < len(orbitals):
            orb = orbitals[i]
            l = getattr(orb, "l", None)
            if l is None or getattr(orb, "n", None) is None or int(l) < 0:
                raise BasisMismatchError(
                    f"species {atom.tag!r}: its orbitals carry no n, l, m (placeholder atoms); "
                    "give the basis as a folder of .ion/.ion.nc/.ion.xml files"
                )
            l = int(l)
            group = orbitals[i : i + 2 * l + 1]
            ms = [int(o.m) for o in group]
            if ms != list(range(-l, l + 1)) or any(
                (o.n, o.l, o.zeta, bool(o.P)) != (orb.n, orb.l, orb.zeta, bool(orb.P)) for o in group
            ):
                raise BasisMismatchError(
                    f"species {atom.tag!r}: orbitals {i}..{i + 2 * l} are not one shell in SIESTA's m = -l..l order"
                )
            radius = float(orb.R) if np.isfinite(orb.R) and orb.R > 0 else None
            shells.append(Shell(int(orb.n), l, int(orb.zeta), bool(orb.P), radius))
            i += 2 * l + 1
        kb = None if kb_projectors is None else tuple(kb_projectors)
        return cls(str(atom.tag), int(atom.Z), tuple(shells), kb, valence_charge, radials)

    def to_sisl(self) -> Any:
        """A :class:`sisl.Atom` with one :class:`sisl.AtomicOrbital` per orbital (R = cutoff)."""
        import sisl

        orbitals = [
            sisl.AtomicOrbital(
                n=s.n, l=s.l, m=m, zeta=s.zeta, P=s.polarized, R=-1.0 if s.cutoff is None else s.cutoff
            )
            for s in self.shells
            for m in range(-s.l, s.l + 1)
        ]
        return sisl.Atom(self.Z, orbitals, tag=self.symbol)

    def to_dict(self, *, radials: bool = True) -> dict:
        """JSON-serialisable, exact (floats kept to the last bit through ``repr``); the radial
        tables (``radials``, about 5,000 numbers a species) only when asked and present."""
        out = {
            "symbol": self.symbol,
            "Z": self.Z,
            "shells": [[s.n, s.l, s.zeta, s.polarized, s.cutoff] for s in self.shells],
            "kb_projectors": None if self.kb_projectors is None else [list(p) for p in self.kb_projectors],
            "valence_charge": self.valence_charge,
        }
        if radials and self.radials is not None:
            out["radials"] = self.radials.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SpeciesBasis":
        """Inverse of :meth:`to_dict`."""
        kb = data.get("kb_projectors")
        radials = data.get("radials")
        return cls(
            data["symbol"],
            int(data["Z"]),
            tuple(Shell(int(n), int(l), int(z), bool(p), None if r is None else float(r)) for n, l, z, p, r in data["shells"]),
            None if kb is None else tuple((int(l), float(r)) for l, r in kb),
            data.get("valence_charge"),
            None if radials is None else SpeciesRadials.from_dict(radials),
        )


@dataclass(frozen=True)
class BasisSet:
    """An ordered set of species bases; structures index species by position in it.

    Attributes:
        species: the species, in order.
    """

    species: tuple[SpeciesBasis, ...]
    _index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "species", tuple(self.species))
        symbols = [sp.symbol for sp in self.species]
        if len(set(symbols)) != len(symbols):
            raise BasisMismatchError(f"species listed twice in a basis set: {symbols}")
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(symbols)})

    def __len__(self) -> int:
        return len(self.species)

    def __iter__(self) -> Iterator[SpeciesBasis]:
        return iter(self.species)

    def __getitem__(self, key: int | str) -> SpeciesBasis:
        return self.species[self.index(key) if isinstance(key, str) else key]

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._index

    @property
    def symbols(self) -> list[str]:
        """Species labels in order."""
        return [sp.symbol for sp in self.species]

    def index(self, symbol: str) -> int:
        """Position of a species.

        Raises:
            UnknownSpeciesError: the basis has no such species.
        """
        try:
            return self._index[symbol]
        except KeyError:
            raise UnknownSpeciesError(f"species {symbol!r} is not in the basis (it has {self.symbols})") from None

    @property
    def n_orbitals(self) -> np.ndarray:
        """``(n_species,)`` int64: orbitals per atom of each species."""
        return np.array([sp.n_orbitals for sp in self.species], dtype=np.int64)

    @property
    def valence_charges(self) -> np.ndarray:
        """``(n_species,)`` float64 Z_valence of each species (NaN where the source does not record it)."""
        return np.array([np.nan if sp.valence_charge is None else sp.valence_charge for sp in self.species])

    @property
    def irreps(self) -> list[str]:
        """e3nn irreps string of each species."""
        return [sp.irreps for sp in self.species]

    def pair_cutoffs(self, *, include_kb: bool = False) -> np.ndarray:
        """``(n_species, n_species)`` float64 Å: ``r_i + r_j`` (largest orbital radii).

        Two orbitals further apart than this have zero overlap S.  With ``include_kb`` the
        reach of H through a third atom's KB projector, ``r_i + r_j + 2 max r_KB``, is used.

        Raises:
            BasisMismatchError: a radius is unknown (basis read from a bare HSX file).
        """
        radii = []
        for sp in self.species:
            if sp.cutoff is None:
                raise BasisMismatchError(f"species {sp.symbol!r} has no orbital radii; read the basis from .ion files")
            radii.append(sp.cutoff)
        r = np.asarray(radii, dtype=np.float64)
        cut = r[:, None] + r[None, :]
        if include_kb:
            kb = [sp.kb_cutoff for sp in self.species]
            if any(k is None for k in kb):
                raise BasisMismatchError("the basis records no Kleinman-Bylander radii; read it from .ion files")
            cut = cut + 2.0 * max(kb)
        return cut

    @cached_property
    def hash(self) -> str:
        """Stable SHA-256 (hex) of the basis: species, Z, shells, radii rounded to 1e-4 Å."""

        def rounded(x: float | None) -> float | None:
            return None if x is None else round(float(x), HASH_DIGITS)

        canon = [
            [
                sp.symbol,
                sp.Z,
                [[s.n, s.l, s.zeta, s.polarized, rounded(s.cutoff)] for s in sp.shells],
                None if sp.kb_projectors is None else [[l, rounded(r)] for l, r in sp.kb_projectors],
            ]
            for sp in self.species
        ]
        return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()

    def select(self, symbols: Sequence[str]) -> "BasisSet":
        """The species ``symbols``, in that order.

        Raises:
            UnknownSpeciesError: one of them is missing.
        """
        return BasisSet(tuple(self[s] for s in symbols))

    # ---- conversions -------------------------------------------------------------------
    @classmethod
    def from_sisl(cls, atoms: Any) -> "BasisSet":
        """From :class:`sisl.Atoms` (or a list of :class:`sisl.Atom`): one species per unique atom."""
        unique = list(atoms.atom) if hasattr(atoms, "atom") else list(atoms)
        return cls(tuple(SpeciesBasis.from_sisl(atom) for atom in unique))

    def to_sisl(self) -> list:
        """One :class:`sisl.Atom` per species."""
        return [sp.to_sisl() for sp in self.species]

    @classmethod
    def from_folder(cls, folder: Any, species_order: Sequence[str] | None = None) -> "BasisSet":
        """Read every species found as ``<label>.ion.nc``, ``.ion.xml`` or ``.ion`` in ``folder``.

        Args:
            folder: a directory of SIESTA ion files.
            species_order: labels in the order wanted (a subset is fine); default: by Z, then label.

        Raises:
            FileFormatError: no ion file in the folder, or one that cannot be read.
            UnknownSpeciesError: a species of ``species_order`` has no ion file.
        """
        from hforge.basis.readers import read_basis_folder

        return read_basis_folder(folder, species_order)

    @classmethod
    def from_files(cls, paths: Iterable[Any]) -> "BasisSet":
        """One species per ion file (``.ion``, ``.ion.nc``, ``.ion.xml``), in the order given."""
        from hforge.basis.readers import read_ion

        return cls(tuple(read_ion(p) for p in paths))

    @property
    def has_radials(self) -> bool:
        """True if every species carries its radial tables (needed for exact two-centre integrals)."""
        return all(sp.radials is not None for sp in self.species)

    def require_radials(self) -> "BasisSet":
        """``self``, after checking that every species carries its radial tables.

        Raises:
            BasisMismatchError: a species without radial tables (basis read from an HSX/TSHS file,
                or a checkpoint written before HForge kept them), named.
        """
        missing = [sp.symbol for sp in self.species if sp.radials is None]
        if missing:
            raise BasisMismatchError(
                f"species {missing} carry no radial tables (exact S and H0 need them): read the basis "
                "from .ion/.ion.nc/.ion.xml files"
            )
        return self

    def to_dict(self, *, radials: bool = True) -> dict:
        """JSON-serialisable and exact; :meth:`from_dict` inverts it (``radials=False`` leaves the
        radial tables out)."""
        return {"species": [sp.to_dict(radials=radials) for sp in self.species]}

    @classmethod
    def from_dict(cls, data: dict) -> "BasisSet":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(SpeciesBasis.from_dict(sp) for sp in data["species"]))

    def to_json(self, *, radials: bool = True) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(radials=radials))

    @classmethod
    def from_json(cls, text: str) -> "BasisSet":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
