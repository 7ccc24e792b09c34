"""``hforge data inspect | convert | stats`` on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sisl
from typer.testing import CliRunner

from hforge.cli.main import app
from hforge.datasets import bundled_path
from hforge.io import HSStore, read_hs
from hforge.io.inspect import describe

runner = CliRunner()


def test_inspect_reports_the_numbers_of_an_independent_reading(siesta_fixtures):
    path = siesta_fixtures / "hBN/aiida.nc"
    result = runner.invoke(app, ["data", "inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    H = sisl.get_sile(str(path)).read_hamiltonian()
    assert info["atoms"] == 2 and info["species"] == {"N": 1, "B": 1} and info["orbitals_per_atom"] == {"N": 13, "B": 13}
    assert info["nsc"] == [9, 9, 1] and info["nnz"] == H.nnz == 15986
    s = H.Sk().toarray()
    assert info["S_min_eigenvalue_gamma"] == pytest.approx(np.linalg.eigvalsh(s)[0], rel=1e-9)
    eig = H.eigh()
    # inspect symmetrizes H and S; sisl takes their lower triangles: the top state (near-singular S) moves by 3e-9 relative
    assert info["eigenvalues_gamma_eV"] == pytest.approx([eig[0], eig[-1]], rel=1e-8)
    assert 0 < info["hermiticity_error_H_eV"] < 1e-7 and 0 < info["symmetry_error_S_gamma"] < 1e-8
    table = runner.invoke(app, ["data", "inspect", str(path)])
    assert table.exit_code == 0 and "S_min_eigenvalue_gamma" in table.output


def test_inspect_names_the_file_of_an_error(tmp_path):
    bad = tmp_path / "x.TSHS"
    bad.write_bytes(b"\x04\x00\x00\x00garbage")
    result = runner.invoke(app, ["data", "inspect", str(bad)])
    assert result.exit_code == 1 and str(bad) in result.output.replace("\n", "")


def test_user_text_is_printed_literally(abn_dir, tmp_path):
    # rich reads "[...]" as markup: "[/y]" in a path crashed the error handler, "[bold]" vanished
    folder = tmp_path / "runs[" / "y]"
    folder.mkdir(parents=True)
    bad = folder / "x.TSHS"
    bad.write_bytes(b"\x04\x00\x00\x00garbage")
    result = runner.invoke(app, ["data", "inspect", str(bad)])
    assert result.exit_code == 1 and f"error: {bad}: truncated" in result.output.replace("\n", "")
    empty = tmp_path / "[bold]abn_8_1"
    empty.mkdir()
    (empty / "abn_8_1.fdf").write_bytes((abn_dir / "runs/abn_8_1/abn_8_1.fdf").read_bytes())
    runs = [str(abn_dir / "runs/abn_8_0"), str(empty)]
    result = runner.invoke(app, ["data", "convert", *runs, "-o", str(tmp_path / "s.h5"), "--basis", str(abn_dir / "basis")])
    assert result.exit_code == 2, result.output  # converted, with one run skipped
    assert f"skipped {empty}: {empty}: no H/S output" in result.output.replace("\n", "")


def test_a_bare_tshs_without_basis_is_described_by_what_needs_none(abn_dir, tmp_path):
    folder = tmp_path / "a" / "b"  # no ion files in it or the two folders above
    folder.mkdir(parents=True)
    for suffix in (".TSHS", ".fdf"):
        (folder / f"abn_8_0{suffix}").write_bytes((abn_dir / f"runs/abn_8_0/abn_8_0{suffix}").read_bytes())
    result = runner.invoke(app, ["data", "inspect", str(folder / "abn_8_0.TSHS"), "--json"])
    assert result.exit_code == 0, result.output
    info, full = json.loads(result.stdout), describe(read_hs(abn_dir / "runs/abn_8_0/abn_8_0.TSHS", validate=False))
    assert info["species"].startswith("unknown: the file carries no basis (give --basis")
    for key in ("atoms", "orbitals", "nsc", "nnz", "fermi_level_eV"):
        assert info[key] == full[key], key
    for key in ("S_min_eigenvalue_gamma", "hermiticity_error_H_eV"):
        assert info[key] == pytest.approx(full[key], rel=1e-9, abs=1e-15), key
    assert info["eigenvalues_gamma_eV"] == pytest.approx(full["eigenvalues_gamma_eV"], rel=1e-9)


def test_convert_with_a_basis_folder(abn_dir, tmp_path):
    out = tmp_path / "s.h5"
    runs = [str(abn_dir / "runs" / name) for name in ("abn_8_0", "abn_8_1")]
    result = runner.invoke(
        app, ["data", "convert", *runs, "-o", str(out), "--basis", str(abn_dir / "basis"), "--train-max-atoms", "4"]
    )
    assert result.exit_code == 0, result.output
    store = HSStore(out)
    assert store.names == ["abn_8_0", "abn_8_1"] and [e["split"] for e in store.manifest] == ["val", "val"]
    missing = runner.invoke(app, ["data", "convert", str(tmp_path / "nothing"), "-o", str(tmp_path / "t.h5")])
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_compressed_runs_convert_and_inspect(compressed_runs, tmp_path):
    run, plain, gz, basis = compressed_runs
    out = tmp_path / "s.h5"
    result = runner.invoke(
        app, ["data", "convert", str(run), str(gz), str(plain), "-o", str(out), "--basis", str(basis), "--half"]
    )
    assert result.exit_code == 0, result.output
    store = HSStore(out)
    assert [e["source"] for e in store.manifest] == [str(run / "abn_32_10.TSHS.xz"), str(gz / "abn_32_10.TSHS.gz"),
                                                       str(plain / "abn_32_10.TSHS")]
    first = store.read(0)
    for k in (1, 2):  # the same structure, whatever the compression
        np.testing.assert_array_equal(store.read(k).h, first.h)
        np.testing.assert_array_equal(store.read(k).s, first.s)
    result = runner.invoke(app, ["data", "inspect", str(run / "abn_32_10.TSHS.xz"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["source"] == str(run / "abn_32_10.TSHS.xz") and info["atoms"] == 32 and info["nnz"] == 564744
    assert info["S_min_eigenvalue_gamma"] == pytest.approx(8.8e-5, rel=0.01)  # abn-extra's README


def test_stats_writes_figures_and_numbers(tmp_path):
    result = runner.invoke(app, ["data", "stats", str(bundled_path("abn-small")), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("onsite_energies.png", "decay_with_distance.png", "h_heatmap.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((tmp_path / "stats.json").read_text())
    assert summary["splits"]["val"]["atoms"] == [24] and summary["splits"]["train"]["atoms"] == [8, 16]
    onsite = summary["statistics"]["onsite_energies"]["N"]
    assert onsite["2sZ1"]["mean_eV"] < onsite["2pyZ1"]["mean_eV"] < 0  # N 2s below 2p
    assert "mean onsite energies" in result.output
