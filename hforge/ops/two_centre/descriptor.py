"""The two-centre description of a basis: every table and program, built once and cached.

Programs (:class:`~hforge.ops.two_centre.tables.BlockProgram`; rows: functions of atom ``i``,
columns: functions of atom ``j``, ``R = r_j - r_i`` in Bohr; results in SIESTA's units, Ry):

``overlap``         S: orbitals of ``i`` x orbitals of ``j`` (at ``R = 0``: the onsite S).
``kinetic``         T = ``<phi_i| -nabla^2 |phi_j>`` (Ry; at ``R = 0`` the onsite T).
``potential``       the two-centre neutral-atom terms of a pair of distinct atoms (or images):
                    ``<phi_i| V_NA,i + V_NA,j |phi_j>``.
``self_potential``  ``<phi_i| V_NA,i |phi_j>``: evaluated at ``R = 0``, the one-centre term of an
                    onsite block.
``crystal``     ``<phi_i| V_NA,k |phi_i'>``: orbitals of ``i`` x orbitals of ``i`` for the
                potential of a neighbour ``k`` (type ``(s_i, s_k)``, ``R = r_k - r_i``): the
                crystal field, summed over neighbours onto ``i``'s onsite block.
``projection``      ``<phi_i | chi_k>``: orbitals of ``i`` x KB projector functions of ``k``.

With :attr:`TwoCentreDescriptor.kb_energy` (Ry per projector function) the Kleinman-Bylander
part of H is ``V_KB(i, j) = sum_k P(i, k) diag(E_k) P(j, k)^T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hforge.basis import BasisSet
from hforge.errors import BasisMismatchError
from hforge.ops.two_centre.tables import BlockProgram, Coupling, Profile, ProgramBuilder, RadialTables, build_tables

__all__ = ["PROGRAMS", "TwoCentreDescriptor", "entry_coefficients", "two_centre_descriptor"]

#: Names of the programs of a descriptor.
PROGRAMS = ("overlap", "kinetic", "potential", "self_potential", "crystal", "projection")


@dataclass(frozen=True, eq=False)
class TwoCentreDescriptor:
    """Tables and programs of one basis (see the module docstring).

    Attributes:
        basis: the basis (with radial tables).
        tables: every radial table of every program.
        programs: ``{name: BlockProgram}``; ``potential``, ``self_potential`` and ``crystal`` only
            when every species has its neutral-atom potential.
        kb_energy: per species, ``(n_projector_functions,)`` float64 Ry.
        orbital_reach: ``(n_species,)`` largest orbital cut-off (Bohr).
        projector_reach: ``(n_species,)`` largest KB projector cut-off (Bohr; 0 without projectors).
        potential_reach: ``(n_species,)`` V_NA cut-off (Bohr; 0 without it).
    """

    basis: BasisSet
    tables: RadialTables
    programs: dict[str, BlockProgram]
    kb_energy: tuple[np.ndarray, ...]
    orbital_reach: np.ndarray
    projector_reach: np.ndarray
    potential_reach: np.ndarray

    @property
    def n_species(self) -> int:
        return len(self.basis)

    @property
    def has_potential(self) -> bool:
        return "hopping" in self.programs

    def program(self, name: str) -> BlockProgram:
        """The program ``name``.

        Raises:
            BasisMismatchError: a program of H0 for a basis without neutral-atom potentials.
        """
        if name not in self.programs:
            raise BasisMismatchError(
                f"two-centre program {name!r} needs every species' neutral-atom potential (V_NA), which the "
                "basis lacks: read it from .ion/.ion.nc/.ion.xml files"
            )
        return self.programs[name]


def entry_coefficients(desc: "TwoCentreDescriptor", name: str, table: np.ndarray, onsite: bool) -> np.ndarray:
    """Per entry of program ``name`` (its ``entry_ptr`` layout), ``table[onsite, s_i, s_j, a, b]``
    with ``a, b`` the shells of the entry's row and column orbitals; for ``crystal`` (an onsite block
    of atom ``i`` for a neighbour of species ``s_k``) ``table[1, s_i, s_i, a, b]``.

    Args:
        table: ``(2, n_species, n_species, n_shells, n_shells)`` (``hforge.io`` block-type layout).
    """
    program = desc.program(name)
    basis = desc.basis
    shell_of = [sp.orbital_shell for sp in basis]
    parts = []
    for t in range(len(program.rows)):
        si, sj = divmod(t, desc.n_species)
        if name == "crystal":
            sj = si
        rows, cols = shell_of[si], shell_of[sj]
        parts.append(table[int(onsite), si, sj][rows[:, None], cols[None, :]].reshape(-1))
    return np.concatenate(parts)


def _offsets(sizes: list[int]) -> list[int]:
    return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []


@lru_cache(maxsize=8)
def _descriptor(basis_json: str, digests: tuple[str, ...], basis: BasisSet) -> TwoCentreDescriptor:
    n = len(basis)
    radials = [sp.radials for sp in basis]
    shells = [sp.shells for sp in basis]
    n_orb = [sp.n_orbitals for sp in basis]
    orbital = [[Profile((r.orbitals[a],), sh.l, sh.l) for a, sh in enumerate(s)] for r, s in zip(radials, shells)]
    shell_off = [[sl.start for sl in sp.shell_slices] for sp in basis]
    projector = [[Profile((p.radial,), p.l, p.l) for p in r.projectors] for r in radials]
    proj_off = [_offsets([2 * p.l + 1 for p in r.projectors]) for r in radials]
    n_proj = [sum(2 * p.l + 1 for p in r.projectors) for r in radials]
    has_potential = all(r.neutral_atom is not None for r in radials)
    specs: list = []
    index: dict = {}
    types = [(si, sj) for si in range(n) for sj in range(n)]

    def builder(name: str, rows: list[int], cols: list[int]) -> ProgramBuilder:
        return ProgramBuilder(name, n, rows, cols, specs, index)

    def pair_program(name: str, parts_of) -> ProgramBuilder:
        b = builder(name, [n_orb[si] for si, _ in types], [n_orb[sj] for _, sj in types])
        for t, (si, sj) in enumerate(types):
            for a, sa in enumerate(shells[si]):
                for c, sc in enumerate(shells[sj]):
                    b.add(t, shell_off[si][a], shell_off[sj][c], sa.l, sc.l, parts_of(si, a, sj, c))
        return b

    def with_potential(profile: Profile, s: int) -> Profile:
        return Profile((*profile.factors, radials[s].neutral_atom), profile.power, profile.l)

    builders = [
        pair_program("overlap", lambda si, a, sj, c: [Coupling(orbital[si][a], orbital[sj][c])]),
        pair_program("kinetic", lambda si, a, sj, c: [Coupling(orbital[si][a], orbital[sj][c], kinetic=True)]),
    ]
    if has_potential:
        builders.append(
            pair_program(
                "potential",
                lambda si, a, sj, c: [
                    Coupling(with_potential(orbital[si][a], si), orbital[sj][c]),
                    Coupling(orbital[si][a], with_potential(orbital[sj][c], sj)),
                ],
            )
        )
        builders.append(
            pair_program("self_potential", lambda si, a, sj, c: [Coupling(with_potential(orbital[si][a], si), orbital[sj][c])])
        )
        crystal = builder("crystal", [n_orb[si] for si, _ in types], [n_orb[si] for si, _ in types])
        for t, (si, sk) in enumerate(types):
            potential = Profile((radials[sk].neutral_atom,), 0, 0)
            for a, sa in enumerate(shells[si]):
                for c, sc in enumerate(shells[si]):
                    density = Profile((radials[si].orbitals[a], radials[si].orbitals[c]), sa.l + sc.l, 0)
                    crystal.add_density(t, shell_off[si][a], shell_off[si][c], sa.l, sc.l, density, potential)
        builders.append(crystal)
    projection = builder("projection", [n_orb[si] for si, _ in types], [n_proj[sk] for _, sk in types])
    for t, (si, sk) in enumerate(types):
        for a, sa in enumerate(shells[si]):
            for p, prof in enumerate(projector[sk]):
                projection.add(t, shell_off[si][a], proj_off[sk][p], sa.l, prof.l, [Coupling(orbital[si][a], prof)])
    builders.append(projection)
    lmax = 2 * max([s.l for sp in shells for s in sp] + [p.l for r in radials for p in r.projectors])
    tables = build_tables(specs)
    programs = {b.name: b.build(lmax) for b in builders}
    kb_energy = tuple(np.repeat([p.energy for p in r.projectors], [2 * p.l + 1 for p in r.projectors]) for r in radials)
    return TwoCentreDescriptor(
        basis=basis,
        tables=tables,
        programs=programs,
        kb_energy=kb_energy,
        orbital_reach=np.array([max(t.cutoff for t in r.orbitals) for r in radials]),
        projector_reach=np.array([max((p.radial.cutoff for p in r.projectors), default=0.0) for r in radials]),
        potential_reach=np.array([r.neutral_atom.cutoff if r.neutral_atom is not None else 0.0 for r in radials]),
    )


def two_centre_descriptor(basis: BasisSet) -> TwoCentreDescriptor:
    """The cached :class:`TwoCentreDescriptor` of ``basis`` (built once per basis: a few seconds).

    Raises:
        BasisMismatchError: a species without radial tables.
    """
    basis.require_radials()
    return _descriptor(basis.to_json(radials=False), tuple(sp.radials.digest for sp in basis), basis)
