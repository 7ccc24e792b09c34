"""HSData from real SIESTA files: reading, exact round trips, sisl equivalence, bad input."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import sisl

from hforge.basis import BasisSet
from hforge.errors import (
    BasisMismatchError,
    FileFormatError,
    GeometryError,
    InvalidMatrixError,
    UnknownSpeciesError,
    UnsupportedSystemError,
)
from hforge.io import HSData, read_hs, write_hs

FIXTURES = [
    "hBN/aiida.HSX",
    "hBN/aiida.nc",
    "hBN/aiida.fdf",
    "Si_pdos_k/Si_pdos.TSHS",
    "Si_pdos_k/Si_pdos.HSX",
    "Si_pdos_k/Si_pdos.fdf",
    "SrTiO3_unpolarized/SrTiO3.HSX",
    "SrTiO3_polarized/SrTiO3.HSX",
    "SrTiO3_polarized/SrTiO3.fdf",
    "H2O_dipole/h2o_dipole.HSX",
]
EXACT = ("s", "mask", "cell", "positions", "nsc", "edge_index", "cell_shift", "species", "block_ptr")


def sisl_hamiltonian(path: Path) -> sisl.Hamiltonian:
    return sisl.get_sile(str(path)).read_hamiltonian()


def gamma_eigenvalues(H: sisl.Hamiltonian) -> np.ndarray:
    return np.concatenate([H.eigh(spin=s) for s in range(H.spin.size(H.dtype))]) if H.spin.is_polarized else H.eigh()


def assert_same(a: HSData, b: HSData, h_ulps: bool = False) -> None:
    for name in EXACT:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.fermi_level == b.fermi_level
    assert a.basis == b.basis
    if h_ulps:  # formats whose readers apply E_F in different units: a few ulps at most
        np.testing.assert_allclose(a.h, b.h, rtol=0, atol=1e-13)
    else:
        np.testing.assert_array_equal(a.h, b.h)


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_reads_like_sisl_and_round_trips(siesta_fixtures, tmp_path, name):
    path = siesta_fixtures / name
    data = read_hs(path)
    H = sisl_hamiltonian(path)
    assert data.n_atoms == H.geometry.na and data.nnz == H.nnz
    assert data.n_orbitals == H.geometry.no and data.nsc.tolist() == H.geometry.nsc.tolist()
    assert data.atom_orbitals.tolist() == np.diff(H.geometry.firsto).tolist()
    np.testing.assert_allclose(gamma_eigenvalues(data.to_sisl()), gamma_eigenvalues(H), rtol=0, atol=1e-9)

    labels = [data.basis.symbols[k] for k in data.species]
    native = ".TSHS" if data.source.endswith(".TSHS") else ".nc"  # the format with the same E_F arithmetic
    for suffix in (".TSHS", ".nc"):
        out = write_hs(data, tmp_path / f"copy{suffix}")
        back = read_hs(out, basis=data.basis, species=labels)
        assert_same(data, back, h_ulps=suffix != native)
        assert back.source == str(out)
        assert sisl.get_sile(str(out)).read_fermi_level() == pytest.approx(data.fermi_level, abs=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.TSHS", "copy.nc"]  # no temp files left


def test_nc_written_by_hforge_keeps_the_basis(siesta_fixtures, tmp_path):
    data = read_hs(siesta_fixtures / "hBN/aiida.nc")
    back = read_hs(write_hs(data, tmp_path / "x.nc"))  # no basis given: read from the file
    assert_same(data, back)


def test_abn_tshs_with_separate_basis_folder(abn_dir, tmp_path):
    """A bare TSHS: species from the fdf beside it, shells from shared/abn/basis (found or given)."""
    path = abn_dir / "runs/abn_8_0/abn_8_0.TSHS"
    data = read_hs(path)
    assert data.basis.symbols == ["B", "N"] and data.species.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    given = read_hs(path, basis=abn_dir / "basis")
    assert_same(data, given)
    H = sisl_hamiltonian(path)
    np.testing.assert_allclose(data.to_sisl().eigh(), H.eigh(), rtol=0, atol=1e-9)
    assert data.fermi_level == sisl.get_sile(str(path)).read_fermi_level()
    # without the fdf the species are unknown
    shutil.copy(path, tmp_path / "bare.TSHS")
    with pytest.raises(BasisMismatchError, match="no basis"):
        read_hs(tmp_path / "bare.TSHS")
    with pytest.raises(BasisMismatchError, match="fdf"):
        read_hs(tmp_path / "bare.TSHS", basis=abn_dir / "basis")
    labels = ["B"] * 4 + ["N"] * 4
    assert_same(data, read_hs(tmp_path / "bare.TSHS", basis=abn_dir / "basis", species=labels))
    write_hs(data, tmp_path / "again.TSHS")
    assert (tmp_path / "again.TSHS").read_bytes() != path.read_bytes()  # sisl's writer, not a copy
    assert_same(data, read_hs(tmp_path / "again.TSHS", basis=data.basis, species=labels))


def test_unshifted_h_reproduces_siesta_eigenvalues_at_its_k_points(abn_dir):
    """h + E_F S at the k-points of the run's .KP gives the absolute eigenvalues of its .EIG
    (SIESTA's last diagonalisation, of the H before the final mixing step: ~0.3 meV apart)."""
    run = abn_dir / "runs/abn_8_0"
    data = read_hs(run / "abn_8_0.TSHS")
    k, _ = sisl.get_sile(str(run / "abn_8_0.KP")).read_data(sisl.Lattice(data.cell))
    eig_file = (run / "abn_8_0.EIG").read_text().split()
    n_orb, _, n_k = (int(x) for x in eig_file[1:4])
    reference = np.array([float(x) for x in eig_file[4:]]).reshape(n_k, n_orb + 1)[:, 1:]
    for ik in (0, 5):
        h, s = data.matrix_at_k(k[ik], "h_unshifted"), data.matrix_at_k(k[ik], "s")
        eig = scipy.linalg.eigh(h, s, eigvals_only=True)
        assert np.abs(eig[:64] - reference[ik, :64]).max() < 1e-3
        shifted = scipy.linalg.eigh(data.matrix_at_k(k[ik], "h"), s, eigvals_only=True)
        assert np.abs(shifted[:64] - reference[ik, :64]).min() > 5.0  # the shifted H is E_F away


def test_pairs_blocks_and_canonical_half(abn_dir):
    data = read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS")
    # pairs are sorted, unique, every one has its partner; onsite pairs are (i, i, 0)
    assert np.all(data.partner >= 0) and np.array_equal(data.partner[data.partner], np.arange(data.n_pairs))
    assert data.onsite.sum() == data.n_atoms
    np.testing.assert_allclose(data.pair_vectors()[data.partner], -data.pair_vectors(), atol=1e-12)
    # H(i, j, n) = H(j, i, -n)^T up to SIESTA's asymmetry (README: 2.4e-8 eV)
    for e in range(0, data.n_pairs, 37):
        np.testing.assert_allclose(data.block(e), data.block(data.partner[e]).T, atol=1e-7)
    # distances within the pair cutoff r_i + r_j + 2 r_KB (H reaches through KB projectors)
    cut = data.basis.pair_cutoffs(include_kb=True)[tuple(data.species[data.edge_index])]
    assert np.all(data.pair_distances() <= cut)
    half = data.canonical_half()
    i, j = half.edge_index
    assert np.all((i < j) | ((i == j) & (half.cell_shift @ np.array([10_000, 100, 1]) >= 0)))
    assert half.n_pairs == (data.n_pairs + data.n_atoms) // 2
    full = half.expand_half()
    for name in ("edge_index", "cell_shift", "block_ptr", "mask", "s"):
        if name == "s":
            np.testing.assert_allclose(full.s, data.s, atol=1e-8)
        else:
            np.testing.assert_array_equal(getattr(full, name), getattr(data, name))
    np.testing.assert_allclose(full.h, data.h, atol=1e-7)
    canonical = data.canonical_pairs()
    np.testing.assert_array_equal(full.h[:, data._gather(canonical)], data.h[:, data._gather(canonical)])
    # h_unshifted
    np.testing.assert_array_equal(data.h_unshifted, data.h + data.fermi_level * data.s)


def test_spin_channels(siesta_fixtures):
    path = siesta_fixtures / "SrTiO3_polarized/SrTiO3.HSX"
    data = read_hs(path)
    assert data.spin == "polarized" and data.n_spin == 2
    H = sisl_hamiltonian(path)
    for channel, name in ((0, "up"), (1, "down")):
        one = read_hs(path, spin=name)
        assert one.n_spin == 1
        np.testing.assert_array_equal(one.h[0], data.h[channel])
        np.testing.assert_allclose(one.to_sisl().eigh(), H.eigh(spin=channel), atol=1e-9)
    assert 0 < np.abs(data.h[0] - data.h[1]).max() < 1e-3  # nearly non-magnetic (README: 1.8e-4 eV)


def test_spin_orbit_is_refused(siesta_fixtures):
    for name in ("Pt2_soc/Pt2_xx.HSX", "Pt2_soc/Pt2.fdf"):
        with pytest.raises(UnsupportedSystemError, match="spin-orbit"):
            read_hs(siesta_fixtures / name)


# ---- bad input ---------------------------------------------------------------------------
@pytest.fixture()
def hbn_copy(siesta_fixtures, tmp_path) -> Path:
    folder = tmp_path / "hBN"
    shutil.copytree(siesta_fixtures / "hBN", folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


@pytest.mark.parametrize("name", ["aiida.HSX", "Si_pdos.TSHS"])
@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_files(siesta_fixtures, tmp_path, name, cut):
    source = next(siesta_fixtures.glob(f"*/{name}"))
    broken = tmp_path / name
    raw = source.read_bytes()
    broken.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(FileFormatError, match="truncated") as info:
        read_hs(broken, basis=BasisSet.from_folder(source.parent), species=None if "HSX" in name else ["Si"] * 2)
    assert str(broken) in str(info.value)


@pytest.mark.parametrize("offset", [0, 2, 30, 60])
def test_flipped_bytes_in_the_header_or_markers(siesta_fixtures, tmp_path, offset):
    source = siesta_fixtures / "Si_pdos_k/Si_pdos.TSHS"
    raw = bytearray(source.read_bytes())
    raw[offset] ^= 0xFF
    broken = tmp_path / "Si_pdos.TSHS"
    broken.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError) as info:
        read_hs(broken, basis=BasisSet.from_folder(source.parent), species=["Si", "Si"])
    assert str(broken) in str(info.value)


def test_corrupted_netcdf(hbn_copy):
    path = hbn_copy / "aiida.nc"
    raw = bytearray(path.read_bytes())
    raw[100:140] = b"\0" * 40
    path.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="sisl cannot read"):
        read_hs(path)


def test_nan_entries_and_indefinite_overlap(siesta_fixtures, tmp_path):
    data = read_hs(siesta_fixtures / "hBN/aiida.nc")
    h = data.h.copy()
    h[0, np.flatnonzero(data.mask)[100]] = np.nan
    write_hs(replace(data, h=h), tmp_path / "nan.nc")
    with pytest.raises(InvalidMatrixError, match="NaN") as info:
        read_hs(tmp_path / "nan.nc")
    assert str(tmp_path / "nan.nc") in str(info.value)
    s = data.s.copy()
    s[data.mask & ~data.onsite[data.value_pair]] *= 3.0  # overlaps far too large: S(Γ) indefinite
    write_hs(replace(data, s=s), tmp_path / "bad_s.nc")
    with pytest.raises(InvalidMatrixError, match="not positive definite"):
        read_hs(tmp_path / "bad_s.nc")
    assert read_hs(tmp_path / "bad_s.nc", validate=False).n_pairs == data.n_pairs


def test_overlapping_atoms_and_nan_positions(siesta_fixtures, tmp_path):
    data = read_hs(siesta_fixtures / "hBN/aiida.nc")
    squeezed = replace(data, positions=data.positions * np.array([1.0, 0.2, 1.0]))  # B-N bond 1.45 -> 0.29 Å
    with pytest.raises(GeometryError, match="closer than 0.5"):
        squeezed.validate()
    write_hs(replace(data, positions=data.positions * np.nan), tmp_path / "nan.nc")
    with pytest.raises(GeometryError, match="NaN") as info:
        read_hs(tmp_path / "nan.nc")
    assert str(tmp_path / "nan.nc") in str(info.value)


def test_basis_missing_a_species_or_with_other_orbital_counts(siesta_fixtures, abn_dir, hbn_copy, tmp_path):
    path = hbn_copy / "aiida.HSX"
    b_only = BasisSet.from_folder(abn_dir / "basis", species_order=["B"])
    with pytest.raises(UnknownSpeciesError, match="'N'") as info:
        read_hs(path, basis=b_only)
    assert str(path) in str(info.value)
    si = BasisSet.from_folder(siesta_fixtures / "Si_pdos_k")
    relabelled = BasisSet(tuple(replace(si["Si"], symbol=s) for s in ("B", "N")))  # 9 orbitals, not 13
    with pytest.raises(BasisMismatchError, match="shells"):
        read_hs(path, basis=relabelled)
    run = tmp_path / "abn_8_0"
    shutil.copytree(abn_dir / "runs/abn_8_0", run)
    with pytest.raises(BasisMismatchError, match="13 orbitals in the file") as info:  # a TSHS has no shells
        read_hs(run / "abn_8_0.TSHS", basis=relabelled)
    assert str(run / "abn_8_0.TSHS") in str(info.value)
    # a basis folder where N has other shells than the HSX records
    folder = tmp_path / "wrong"
    folder.mkdir()
    shutil.copy(abn_dir / "basis/B.ion.nc", folder / "B.ion.nc")
    shutil.copy(siesta_fixtures / "Si_pdos_k/Si.ion.nc", folder / "N.ion.nc")
    with pytest.raises(BasisMismatchError):
        read_hs(path, basis=folder)


def test_missing_and_unknown_files(tmp_path, siesta_fixtures):
    with pytest.raises(FileFormatError, match="no such file"):
        read_hs(tmp_path / "none.TSHS")
    (tmp_path / "x.DM").write_bytes(b"0")
    with pytest.raises(FileFormatError, match="unknown"):
        read_hs(tmp_path / "x.DM")
    with pytest.raises(FileFormatError, match="basis file"):
        read_hs(siesta_fixtures / "hBN/B.ion.nc")
    (tmp_path / "run.fdf").write_text("SystemLabel run\n")
    with pytest.raises(FileFormatError, match="run.TSHS"):
        read_hs(tmp_path / "run.fdf")


def test_failed_write_leaves_nothing(siesta_fixtures, tmp_path):
    data = read_hs(siesta_fixtures / "hBN/aiida.nc")
    bad = replace(data, cell_shift=data.cell_shift * 10)  # shifts beyond nsc: refused mid-way
    with pytest.raises(BasisMismatchError, match="nsc"):
        write_hs(bad, tmp_path / "x.TSHS")
    with pytest.raises(FileFormatError, match="writes"):
        write_hs(data, tmp_path / "x.HSX")
    assert list(tmp_path.iterdir()) == []


def test_compressed_files_read_like_their_decompressed_copies(compressed_runs, tmp_path):
    from hforge.io.runs import find_runs, run_output

    run, plain, gz, basis = compressed_runs
    reference = read_hs(plain / "abn_32_10.TSHS", basis=basis)
    assert reference.n_atoms == 32 and reference.nnz == 564744  # abn-extra's README
    for path in (run / "abn_32_10.TSHS.xz", gz / "abn_32_10.TSHS.gz", gz / "abn_32_10.fdf"):
        data = read_hs(path, basis=None if path.parent == run else basis)  # abn-extra/basis is found beside the runs
        assert_same(data, reference)
        assert data.source == str(path if path.suffix != ".fdf" else gz / "abn_32_10.TSHS.gz")
    assert run_output(run) == run / "abn_32_10.TSHS.xz" and run_output(gz) == gz / "abn_32_10.TSHS.gz"
    assert find_runs([tmp_path / "gz", run.parent])[:2] == [gz, run]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "abn_32_10.TSHS.xz").write_bytes((run / "abn_32_10.TSHS.xz").read_bytes()[:100_000])  # truncated
    with pytest.raises(FileFormatError, match=f"^{bad / 'abn_32_10.TSHS.xz'}: cannot decompress it"):
        read_hs(bad / "abn_32_10.TSHS.xz", basis=basis)
    (bad / "x.TSHS.gz").write_bytes(b"not gzip at all")
    with pytest.raises(FileFormatError, match="x.TSHS.gz: cannot decompress it"):
        read_hs(bad / "x.TSHS.gz", basis=basis)
    import gzip

    with gzip.open(bad / "y.TSHS.gz", "wb") as f:
        f.write(b"\x04\x00\x00\x00garbage")  # a valid gzip of a corrupted TSHS: named by the compressed path
    with pytest.raises(FileFormatError, match=f"^{bad / 'y.TSHS.gz'}: truncated"):
        read_hs(bad / "y.TSHS.gz", basis=basis)


def stretched_basis(source: Path, folder: Path, factors: dict[str, float]) -> Path:
    """Copies of ``source``'s ``.ion`` files in ``folder``, every orbital's radial table of species ``s``
    stretched by ``factors[s]``: the same shells with other radii (as another PAO.EnergyShift gives)."""
    folder.mkdir()
    for ion in sorted(source.glob("*.ion")):
        factor = factors.get(ion.name[: -len(".ion")], 1.0)
        lines = ion.read_text().splitlines(keepends=True)
        in_orbitals = False
        for k, line in enumerate(lines):
            if line.startswith("# PAOs"):
                in_orbitals = True
            elif line.startswith("# KBs"):
                in_orbitals = False
            elif in_orbitals and line.rstrip().endswith("# npts, delta, cutoff"):
                npts, delta, cutoff = line.split()[:3]
                lines[k] = f" {npts}    {float(delta) * factor!r}     {float(cutoff) * factor!r}     # npts, delta, cutoff\n"
        (folder / ion.name).write_text("".join(lines))
    return folder


def test_a_basis_with_other_radii_is_refused(abn_dir, tmp_path):
    from typer.testing import CliRunner

    from hforge.cli.main import app

    tshs = abn_dir / "runs/abn_8_0/abn_8_0.TSHS"
    same = stretched_basis(abn_dir / "basis", tmp_path / "same", {})
    copy, original = read_hs(tshs, basis=same), read_hs(tshs, basis=abn_dir / "basis")  # the copies themselves are right
    for name in ("edge_index", "cell_shift", "s", "h"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(original, name))
    smaller = stretched_basis(abn_dir / "basis", tmp_path / "smaller", {"B": 0.95, "N": 0.95})
    assert BasisSet.from_folder(smaller)["B"].cutoff == pytest.approx(0.95 * 3.7396194, rel=1e-7)
    with pytest.raises(BasisMismatchError, match=rf"^{tshs}: the basis' orbital radii \(B 3.5526, N 2.6411 Å\) are smaller .*"
                                                 r"species pairs B-B \(80\)"):  # only B's radius reaches that far
        read_hs(tshs, basis=smaller)
    larger = stretched_basis(abn_dir / "basis", tmp_path / "larger", {"N": 1.1})
    with pytest.raises(BasisMismatchError, match=rf"^{tshs}: the basis' orbital radii \(B 3.7396, N 3.0581 Å\) are larger .*N-N"):
        read_hs(tshs, basis=larger)
    result = CliRunner().invoke(app, ["data", "inspect", str(tshs), "--basis", str(larger)])
    assert result.exit_code == 1 and f"error: {tshs}: the basis' orbital radii" in result.output.replace("\n", "")
