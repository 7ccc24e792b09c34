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
    FoldedMatrixError,
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


# ---- Γ-only files: H and S folded into the unit cell (nsc 1 1 1) --------------------------------
def tshs_records(path: Path) -> list[bytes]:
    """The payloads of a Fortran sequential file's records (int32 length markers)."""
    content, records, pos = path.read_bytes(), [], 0
    while pos < len(content):
        length = int(np.frombuffer(content[pos : pos + 4], dtype="<i4")[0])
        records.append(content[pos + 4 : pos + 4 + length])
        pos += length + 8
    return records


def scaled_radii(basis: BasisSet, factor: float) -> BasisSet:
    """``basis`` with every orbital radius times ``factor`` (radial tables dropped)."""
    return BasisSet(tuple(
        replace(sp, radials=None, shells=tuple(replace(shell, cutoff=shell.cutoff * factor) for shell in sp.shells))
        for sp in basis
    ))


def test_a_gamma_only_file_with_ambiguous_images_is_read_folded(siesta_fixtures, tmp_path):
    """H2O_dipole is a Γ-only run in a 3 x 30 x 5 Å cell: every block of the file sums several images (atom 0 and its
    own image 3 Å away, ...).  It is read as stored (folded), the basis-reach check judges atom pairs, unfolding is
    refused by name, Γ is the only k-point, and it is written back as it came."""
    path = siesta_fixtures / "H2O_dipole/h2o_dipole.HSX"
    data = read_hs(path)
    assert data.folded and data.gamma_only and data.nsc.tolist() == [1, 1, 1] and not data.cell_shift.any()
    np.testing.assert_allclose(data.to_sisl().eigh(), sisl_hamiltonian(path).eigh(), rtol=0, atol=1e-12)
    with pytest.raises(FoldedMatrixError, match=rf"^{path}: a Γ-only file \(nsc 1 1 1\) .* atom 0 \(O\) couples with itself "
                                                r"through 11 images .*\(-1, 0, 0\) at 3.000 Å.*34 of the file's 34 atom pairs"):
        read_hs(path, unfold=True)
    with pytest.raises(UnsupportedSystemError, match="at Γ only"):
        data.matrix_at_k((0.5, 0, 0))
    assert read_hs(path, unfold=False).folded
    with pytest.raises(BasisMismatchError, match=r"smaller .* it couples atom 0 \(O\) and atom 4 \(H\) \(folded from its "
                                                 r"periodic images, none of them within r_O \+ r_H = 4.0895 Å\)"):
        read_hs(path, basis=scaled_radii(data.basis, 0.8))
    with pytest.raises(BasisMismatchError, match=r"larger .* atom 0 \(O\) and atom 3 \(O\) in cell \(0, 0, 0\), 5.0000 Å"):
        read_hs(path, basis=scaled_radii(data.basis, 1.3))
    out = write_hs(data, tmp_path / "h2o.TSHS")
    back = read_hs(out, basis=data.basis, species=[data.basis.symbols[k] for k in data.species])
    assert back.folded
    assert_same(data, back, h_ulps=True)  # HSX -> TSHS: E_F applied in Ry and eV


def wrapped_into_a_box(folded: HSData) -> HSData:
    """The blocks of a folded file as the periodic pairs of its atoms in a 20 x 30 x 20 Å box, moved so that the
    molecules straddle its faces: pair (i, j, 0) of vector r becomes (i, j, w_j - w_i) of the same vector, w the
    lattice translation that wraps each atom into the box (one image per pair within reach: the box is wide)."""
    box = np.diag([20.0, 30.0, 20.0])
    moved = folded.positions + np.array([-0.3, -0.3, 0.5])
    wrap = np.floor(moved @ np.linalg.inv(box)).astype(np.int64)
    i, j = folded.edge_index
    shift = wrap[j] - wrap[i]
    periodic = replace(folded, cell=box, positions=moved - wrap @ box, cell_shift=shift, nsc=2 * np.abs(shift).max(0) + 1,
                       folded=False, gamma_only=False)
    np.testing.assert_allclose(periodic.pair_vectors(), folded.pair_vectors(), rtol=0, atol=1e-12)
    return periodic


@pytest.mark.parametrize("suffix", [".TSHS", ".nc"])
def test_a_gamma_only_file_unfolds_into_its_periodic_pairs_and_is_written_as_it_came(siesta_fixtures, tmp_path, suffix):
    periodic = wrapped_into_a_box(read_hs(siesta_fixtures / "H2O_dipole/h2o_dipole.HSX"))
    assert periodic.cell_shift.any() and periodic.nsc.tolist() == [3, 3, 1]
    labels = [periodic.basis.symbols[k] for k in periodic.species]
    gamma = write_hs(periodic.fold(), tmp_path / f"gamma{suffix}")  # as a Γ-only run of this box writes it
    H = sisl_hamiltonian(gamma)
    assert H.geometry.nsc.tolist() == [1, 1, 1]
    np.testing.assert_allclose(H.eigh(), periodic.to_sisl().eigh(), rtol=0, atol=1e-12)  # sisl: same H(Γ)

    back = read_hs(gamma, basis=periodic.basis, species=labels)
    assert back.gamma_only and not back.folded
    assert_same(replace(periodic, gamma_only=True), back, h_ulps=suffix == ".TSHS")  # HSX -> TSHS: E_F in Ry and eV
    k = (0.5, 0.25, 0.0)  # unfolded, the matrices have their k-dependence back
    np.testing.assert_allclose(back.matrix_at_k(k), periodic.matrix_at_k(k), rtol=0, atol=1e-13)
    assert not np.allclose(periodic.matrix_at_k(k), periodic.matrix_at_k((0, 0, 0)), atol=1e-3)
    again = write_hs(back, tmp_path / f"again{suffix}")
    if suffix == ".TSHS":  # written back as it came: the records of H hold other floats that read as the same eV
        first, second = tshs_records(gamma), tshs_records(again)
        h_records = slice(10 + 2 * back.n_orbitals, 10 + 3 * back.n_orbitals)
        del first[h_records], second[h_records]
        assert first == second
    assert_same(read_hs(again, basis=periodic.basis, species=labels), back)
    kept = read_hs(gamma, basis=periodic.basis, species=labels, unfold=False)
    assert kept.folded and kept.n_pairs == periodic.n_pairs and not kept.cell_shift.any()
    unfolded = write_hs(replace(back, gamma_only=False), tmp_path / f"periodic{suffix}")
    assert sisl_hamiltonian(unfolded).geometry.nsc.tolist() == [3, 3, 1]


def test_the_mgco3_md_run_of_sisl_files_is_read_and_round_trips(tmp_path):
    """The public SIESTA MD run MgCO3_md of zerothi/sisl-files (``$SISL_FILES_TESTS``, sisl's own variable for a
    checkout's ``tests`` folder): a Γ-only HSX of a rhombohedral 10-atom cell, refused before as "not the basis the
    run used".  Its Γ eigenvalues are SIESTA's (md_nose.EIG)."""
    import os

    root = os.environ.get("SISL_FILES_TESTS")
    run = Path(root or "/nonexistent") / "siesta" / "MgCO3_md"
    if not (run / "md_nose.HSX").is_file():
        pytest.skip("zerothi/sisl-files not found: set SISL_FILES_TESTS to its tests folder")
    data = read_hs(run / "md_nose.HSX")
    assert data.folded and data.n_atoms == 10 and data.n_orbitals == 42 and data.nnz == 1750
    assert data.basis.symbols == ["Mg", "C", "O"]
    eig = np.sort(np.asarray(sisl.get_sile(str(run / "md_nose.EIG")).read_data()).ravel())  # sisl: minus E_F
    ours = scipy.linalg.eigh(data.matrix_at_k(which="h_unshifted"), data.matrix_at_k(which="s"), eigvals_only=True)
    np.testing.assert_allclose(ours - data.fermi_level, eig, rtol=0, atol=1e-6 * np.abs(eig).max())
    with pytest.raises(FoldedMatrixError, match=r"atom 0 \(Mg\) couples with itself through 37 images .* 100 of the file's "
                                                r"100 atom pairs"):
        read_hs(run / "md_nose.HSX", unfold=True)
    labels = [data.basis.symbols[k] for k in data.species]
    for suffix in (".TSHS", ".nc"):
        back = read_hs(write_hs(data, tmp_path / f"mg{suffix}"), basis=data.basis, species=labels)
        assert back.folded
        assert_same(data, back, h_ulps=suffix == ".TSHS")


def test_the_tshs_writer_writes_the_records_of_sisls_public_writer(siesta_fixtures, tmp_path):
    """HForge writes TSHS files itself (no private sisl module, no bytes patched): record for record what sisl's public
    writer writes for the same matrices, apart from the values its unit conversions round (cell and positions in
    Bohr, H in Ry) and E_F, which sisl's writer records as 0 and HForge as the file's."""
    data = read_hs(siesta_fixtures / "Si_pdos_k/Si_pdos.TSHS")
    ours = tshs_records(write_hs(data, tmp_path / "ours.TSHS"))
    sisl.get_sile(str(tmp_path / "sisl.TSHS"), "w").write_hamiltonian(data.to_sisl())
    theirs = tshs_records(tmp_path / "sisl.TSHS")
    no = data.n_orbitals
    assert len(ours) == len(theirs) == 11 + 3 * no
    cell_xyz, fermi, h_rows = 3, 6, range(10 + 2 * no, 10 + 3 * no)
    differ = [k for k in range(len(ours)) if ours[k] != theirs[k]]
    assert differ == [cell_xyz, fermi, *[k for k in h_rows if ours[k] != theirs[k]]]
    f8 = lambda record: np.frombuffer(record, dtype="<f8")  # noqa: E731
    np.testing.assert_allclose(f8(ours[cell_xyz]), f8(theirs[cell_xyz]), rtol=1e-15, atol=0)
    ef_ry = f8(ours[fermi])[0]
    assert ef_ry * 13.605693122990 == pytest.approx(data.fermi_level, rel=1e-12) and f8(theirs[fermi])[0] == 0
    s_rows = [f8(ours[k]) for k in range(10 + no, 10 + 2 * no)]
    for s_row, k in zip(s_rows, h_rows):  # sisl writes H - E_F S (E_F = 0 in its object): the same in Ry
        np.testing.assert_allclose(f8(ours[k]) - ef_ry * s_row, f8(theirs[k]), rtol=0, atol=1e-14)

