"""Basis sets read from SIESTA's ion files, HSX/nc files and sisl atoms."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sisl

from hforge.basis import BasisSet, Shell, SpeciesBasis, read_ion
from hforge.errors import BasisMismatchError, FileFormatError, UnknownSpeciesError, UnsupportedSystemError

SUFFIXES = (".ion", ".ion.nc", ".ion.xml")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_abn_basis_matches_its_readme(abn_dir, suffix):
    """README of shared/abn: DZP, 13 orbitals, 2s(Z1) 2s(Z2) 2p(Z1) 2p(Z2) 3d(P), radii in Å."""
    b = read_ion(abn_dir / "basis" / f"B{suffix}")
    n = read_ion(abn_dir / "basis" / f"N{suffix}")
    assert (b.symbol, b.Z, n.symbol, n.Z) == ("B", 5, "N", 7)
    for sp in (b, n):
        assert sp.n_orbitals == 13
        assert sp.irreps == "2x0e+2x1o+1x2e"
        assert [(s.n, s.l, s.zeta, s.polarized) for s in sp.shells] == [
            (2, 0, 1, False), (2, 0, 2, False), (2, 1, 1, False), (2, 1, 2, False), (3, 2, 1, True)
        ]
        assert len(sp.kb_projectors) == 4 and [l for l, _ in sp.kb_projectors] == [0, 0, 1, 1]
    np.testing.assert_allclose([s.cutoff for s in b.shells], [3.024, 2.023, 3.740, 2.513, 3.740], atol=6e-4)
    np.testing.assert_allclose([s.cutoff for s in n.shells], [2.257, 1.427, 2.780, 1.753, 2.780], atol=6e-4)
    cut = BasisSet((b, n)).pair_cutoffs()
    np.testing.assert_allclose(cut, [[7.48, 6.52], [6.52, 5.56]], atol=6e-3)


def test_three_file_kinds_give_the_same_basis_and_hash(abn_dir):
    bases = [BasisSet.from_files([abn_dir / "basis" / f"{s}{suffix}" for s in "BN"]) for suffix in SUFFIXES]
    assert len({b.hash for b in bases}) == 1
    assert all(b[k].same_orbitals(bases[0][k]) for b in bases for k in range(2))
    # radii agree to the 11 digits of the XML file
    for b in bases[1:]:
        np.testing.assert_allclose([s.cutoff for s in b["N"].shells], [s.cutoff for s in bases[0]["N"].shells], rtol=1e-10)


def test_from_folder_orders_and_selects_species(abn_dir, tmp_path):
    assert BasisSet.from_folder(abn_dir / "basis").symbols == ["B", "N"]  # by Z
    assert BasisSet.from_folder(abn_dir / "basis", species_order=["N", "B"]).symbols == ["N", "B"]
    with pytest.raises(UnknownSpeciesError, match="Si"):
        BasisSet.from_folder(abn_dir / "basis", species_order=["B", "Si"])
    with pytest.raises(FileFormatError, match="no .ion"):
        BasisSet.from_folder(tmp_path)


def test_hash_changes_with_the_basis_and_json_round_trip_is_exact(siesta_fixtures):
    si = BasisSet.from_files([siesta_fixtures / "Si_pdos_k/Si.ion.nc"])
    assert si["Si"].irreps == "1x0e+1x1o+1x2e"
    again = BasisSet.from_json(si.to_json())
    assert again == si and again.hash == si.hash
    shells = list(si["Si"].shells)
    shells[0] = Shell(shells[0].n, 0, 1, False, shells[0].cutoff + 0.01)
    changed = BasisSet((SpeciesBasis("Si", 14, tuple(shells), si["Si"].kb_projectors),))
    assert changed.hash != si.hash


def test_semicore_and_double_d_species(siesta_fixtures):
    basis = BasisSet.from_folder(siesta_fixtures / "SrTiO3_unpolarized", species_order=["Sr", "Ti", "O"])
    assert basis.irreps == ["3x0e+2x1o+1x2e", "3x0e+2x1o+2x2e", "2x0e+2x1o+1x2e"]
    assert basis.n_orbitals.tolist() == [14, 19, 13]


def test_from_sisl_atom_and_back(siesta_fixtures):
    atom = sisl.get_sile(str(siesta_fixtures / "hBN/B.ion.nc")).read_basis()
    sp = SpeciesBasis.from_sisl(atom)
    back = sp.to_sisl()
    assert [(o.n, o.l, o.m, o.zeta, o.P) for o in back.orbitals] == [(o.n, o.l, o.m, o.zeta, o.P) for o in atom.orbitals]
    assert back.Z == 5 and back.tag == "B"
    assert sp.orbital_names()[:5] == ["2sZ1", "2sZ2", "2pyZ1", "2pzZ1", "2pxZ1"]
    with pytest.raises(BasisMismatchError, match="placeholder"):
        SpeciesBasis.from_sisl(sisl.Atom(1, [-1] * 4))


def test_truncated_and_foreign_ion_files_are_refused(abn_dir, tmp_path):
    text = (abn_dir / "basis/B.ion").read_text()
    cut = tmp_path / "B.ion"
    cut.write_text(text[: len(text) // 3])
    with pytest.raises(FileFormatError, match="truncated"):
        read_ion(cut)
    broken = tmp_path / "N.ion.nc"
    broken.write_bytes((abn_dir / "basis/N.ion.nc").read_bytes()[:500])
    with pytest.raises(FileFormatError, match=str(broken)):
        read_ion(broken)
    with pytest.raises(FileFormatError, match="not a SIESTA ion file"):
        read_ion(tmp_path / "B.psf")


def test_l_above_3_is_unsupported():
    with pytest.raises(UnsupportedSystemError):
        Shell(5, 4)


def test_missing_radii_are_reported(siesta_fixtures, tmp_path):
    shutil.copy(siesta_fixtures / "hBN/aiida.HSX", tmp_path / "aiida.HSX")
    atoms = sisl.get_sile(str(tmp_path / "aiida.HSX")).read_geometry().atoms
    basis = BasisSet.from_sisl(atoms)  # HSX: shells without radii
    assert basis.symbols == ["N", "B"] and basis["B"].cutoff is None
    with pytest.raises(BasisMismatchError, match="radii"):
        basis.pair_cutoffs()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_valence_charge_from_every_ion_format(abn_dir, suffix):
    """Z_valence of the aBN pseudopotentials: B 3, N 5 (the ``Valence charge`` of each file)."""
    basis = BasisSet.from_files([abn_dir / "basis" / f"{s}{suffix}" for s in "BN"])
    np.testing.assert_array_equal(basis.valence_charges, [3.0, 5.0])
    again = BasisSet.from_json(basis.to_json())
    np.testing.assert_array_equal(again.valence_charges, [3.0, 5.0])
    # metadata of the pseudopotential: a basis without it is the same basis
    stripped = BasisSet.from_dict({"species": [{**sp, "valence_charge": None} for sp in basis.to_dict()["species"]]})
    assert stripped == basis and stripped.hash == basis.hash
    assert np.isnan(stripped.valence_charges).all()


def test_valence_charge_from_the_basis_group_of_a_siesta_nc(siesta_fixtures):
    from hforge.io import read_hs

    data = read_hs(siesta_fixtures / "hBN" / "aiida.nc")
    assert {sp.symbol: sp.valence_charge for sp in data.basis} == {"B": 3.0, "N": 5.0}


def test_a_shell_cut_off_other_than_its_radial_table_is_refused():
    import dataclasses

    from hforge.datasets import load
    from hforge.errors import BasisMismatchError

    sp = load("abn-small").basis.species[0]
    assert sp.radials is not None
    stretched = tuple(dataclasses.replace(s, cutoff=s.cutoff * 1.01) for s in sp.shells)
    with pytest.raises(BasisMismatchError, match="radial table ends at"):
        dataclasses.replace(sp, shells=stretched)
    dataclasses.replace(sp, shells=stretched, radials=None)  # no tables: nothing to disagree with
