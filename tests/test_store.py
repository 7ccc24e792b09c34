"""The dataset store: conversion of real SIESTA runs, resumability, atomicity, statistics, splits."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import hforge.io.store as store_module
from hforge.datasets import HSDataset, load
from hforge.errors import ConfigError, ConvergenceError, FileFormatError, FoldedMatrixError, InputError
from hforge.io import HSStore, SplitRule, convert, read_hs
from hforge.io.runs import check_log, find_runs, run_output


def copy_run(abn_dir: Path, name: str, dest: Path) -> Path:
    run = dest / name
    shutil.copytree(abn_dir / "runs" / name, run)
    for f in run.iterdir():
        f.chmod(0o644)
    return run


@pytest.fixture()
def runs(abn_dir, tmp_path) -> Path:
    """A folder of runs: two good aBN cells, an unconverged one, an unfinished one, one without output."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(abn_dir / "basis", tmp_path / "basis")  # the shared layout: runs/ beside basis/
    for name in ("abn_8_0", "abn_8_1"):
        copy_run(abn_dir, name, root)
    bad = copy_run(abn_dir, "abn_8_2", root)
    log = gzip.decompress((bad / "abn_8_2.out.gz").read_bytes()).decode()
    cut = log.index("SCF Convergence by")
    (bad / "abn_8_2.out.gz").write_bytes(
        gzip.compress((log[:cut] + "SCF_NOT_CONV: SCF did not converge in maximum number of steps (required).\n").encode())
    )
    killed = copy_run(abn_dir, "abn_8_3", root)
    (killed / "abn_8_3.out.gz").write_bytes(gzip.compress(log[: len(log) // 2].encode()))
    empty = root / "abn_8_4"
    empty.mkdir()
    shutil.copy(abn_dir / "runs/abn_8_4/abn_8_4.fdf", empty)
    return root


def test_run_checks(runs):
    assert [p.name for p in find_runs([runs])] == ["abn_8_0", "abn_8_1", "abn_8_2", "abn_8_3", "abn_8_4"]
    assert run_output(runs / "abn_8_0").name == "abn_8_0.TSHS"
    with pytest.raises(ConvergenceError, match="did not converge") as info:
        run_output(runs / "abn_8_2")
    assert "abn_8_2.out.gz" in str(info.value)
    with pytest.raises(ConvergenceError, match="did not finish"):
        run_output(runs / "abn_8_3")
    with pytest.raises(ConvergenceError, match="no H/S output"):
        run_output(runs / "abn_8_4")
    plain = runs / "x.out"
    plain.write_text("scf: 1\nSCF cycle converged after 11 iterations\nJob completed\n")
    check_log(plain)


def test_convert_reports_and_skips_bad_runs_and_stores_exact_data(runs, tmp_path, abn_dir):
    skipped = []
    report = convert([runs], tmp_path / "s.h5", progress=False, on_skip=lambda run, exc: skipped.append(type(exc)))
    assert report.converted == ["abn_8_0", "abn_8_1"] and report.reused == []
    assert [Path(run).name for run, _ in report.skipped] == ["abn_8_2", "abn_8_3", "abn_8_4"]
    assert skipped == [ConvergenceError] * 3
    assert not (tmp_path / "s.h5.parts").exists()
    store = HSStore(tmp_path / "s.h5")
    assert store.names == ["abn_8_0", "abn_8_1"] and store.basis.symbols == ["B", "N"]
    for entry in store.manifest:
        original = read_hs(runs / entry["name"] / f"{entry['name']}.TSHS")
        stored = store.read(entry["name"])
        for name in ("h", "s", "mask", "edge_index", "cell_shift", "block_ptr", "positions", "cell", "species", "nsc"):
            np.testing.assert_array_equal(getattr(stored, name), getattr(original, name), err_msg=name)
        assert stored.fermi_level == original.fermi_level and stored.basis == original.basis
        assert entry["source_sha256"] == store_module.file_sha256(original.source)
        assert entry["species"] == {"B": 4, "N": 4} and entry["split"] == "train" and entry["nnz"] == original.nnz


def test_conversion_resumes_after_a_kill_and_never_leaves_a_half_store(runs, tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    real_read = store_module.read_hs
    calls = []

    def killed_on_second(path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_read(path, **kwargs)

    monkeypatch.setattr(store_module, "read_hs", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        convert([runs / "abn_8_0", runs / "abn_8_1"], out, progress=False)
    assert not out.exists()
    assert len(list((tmp_path / "s.h5.parts").glob("*.h5"))) == 1
    assert not list(tmp_path.glob(".*tmp*")) and not list((tmp_path / "s.h5.parts").glob(".*tmp*"))
    monkeypatch.setattr(store_module, "read_hs", real_read)
    report = convert([runs / "abn_8_0", runs / "abn_8_1"], out, progress=False)
    assert report.reused == ["abn_8_0"] and report.converted == ["abn_8_1"]
    # adding a run to a finished store re-reads only the new one
    (runs / "abn_8_2" / "abn_8_2.out.gz").unlink()
    report = convert([runs], out, progress=False, append=True)
    assert report.reused == ["abn_8_0", "abn_8_1"] and report.converted == ["abn_8_2"]
    assert len(HSStore(out)) == 3


def test_reconverting_a_store_with_relative_sources_reuses_it(runs, tmp_path):
    """A store recording sources relative to a folder (as the bundled sample does) can be
    regenerated in place: the structures taken over from the old store keep their real source."""
    out = tmp_path / "s.h5"
    for expected in (["abn_8_0", "abn_8_1"], []):
        shutil.rmtree(tmp_path / "s.h5.parts", ignore_errors=True)  # reuse the old store, not the parts
        report = convert([runs / "abn_8_0", runs / "abn_8_1"], out, relative_to=runs.parent, compression="gzip", progress=False,
                         overwrite=True)
        assert report.converted == expected
        assert [e["source"] for e in HSStore(out).manifest] == [f"{runs.name}/abn_8_{k}/abn_8_{k}.TSHS" for k in (0, 1)]


def test_nothing_converted_writes_nothing(runs, tmp_path):
    with pytest.raises(FileFormatError, match="nothing written"):
        convert([runs / "abn_8_4"], tmp_path / "s.h5", progress=False)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.parts").exists()


def test_a_file_at_the_output_that_is_not_a_store_is_kept(runs, tmp_path):
    out = tmp_path / "s.h5"
    out.write_bytes(b"not a store")
    refused = f"^{out}: the output exists and is not a readable HForge store .*delete or move it"
    with pytest.raises(FileFormatError, match=refused):
        convert([runs / "abn_8_0"], out, progress=False)
    assert out.read_bytes() == b"not a store" and not (tmp_path / "s.h5.parts").exists()


def test_inspect_warns_about_a_run_that_did_not_converge(runs):
    from typer.testing import CliRunner

    from hforge.cli.main import app

    result = CliRunner().invoke(app, ["data", "inspect", str(runs / "abn_8_2" / "abn_8_2.TSHS"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # the warning goes to stderr: stdout stays JSON
    assert info["siesta_log"] == {"path": str(runs / "abn_8_2" / "abn_8_2.out.gz"), "state": "unconverged",
                                  "detail": "the SCF did not converge (SCF_NOT_CONV in the SIESTA log)"}
    assert "warning:" in result.stderr and "not those of a converged calculation" in result.stderr.replace("\n", " ")
    result = CliRunner().invoke(app, ["data", "inspect", str(runs / "abn_8_0" / "abn_8_0.TSHS"), "--json"])
    assert json.loads(result.stdout)["siesta_log"]["state"] == "converged" and "warning" not in result.stderr


def test_statistics_match_a_direct_computation(runs, tmp_path, siesta_fixtures):
    convert([runs / "abn_8_0", runs / "abn_8_1"], tmp_path / "s.h5", progress=False)
    store = HSStore(tmp_path / "s.h5")
    data = [store.read(k) for k in range(len(store))]
    stats = store.statistics
    for symbol in ("B", "N"):
        k = store.basis.index(symbol)
        diagonals = np.array(
            [
                np.diag(d.block(e, "h_unshifted"))
                for d in data
                for e in np.flatnonzero(d.onsite)
                if d.species[d.edge_index[0, e]] == k
            ]
        )
        mean, std = stats.onsite_energies(symbol)
        np.testing.assert_allclose(mean, diagonals.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(std, diagonals.std(axis=0), rtol=1e-9)
    # B-N off-site, shells 2pZ1 (index 2) x 2sZ1 (index 0): entries collected block by block
    b, n = store.basis.index("B"), store.basis.index("N")
    h_vals, s_vals = [], []
    for d in data:
        for e in np.flatnonzero(~d.onsite):
            if tuple(d.species[d.edge_index[:, e]]) == (b, n):
                rows, cols = slice(2, 5), slice(0, 1)
                mask = d.mask[d.block_ptr[e] : d.block_ptr[e + 1]].reshape(13, 13)[rows, cols]
                h_vals.append(d.block(e, "h_unshifted")[rows, cols][mask])
                s_vals.append(d.block(e, "s")[rows, cols][mask])
    h_vals, s_vals = np.concatenate(h_vals), np.concatenate(s_vals)
    assert stats.block_count[0, b, n, 2, 0] == len(h_vals)
    np.testing.assert_allclose(stats.h_mean[0, b, n, 2, 0], h_vals.mean(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.block_std("B", "N")[2, 0], h_vals.std(), rtol=1e-9)
    np.testing.assert_allclose(stats.block_std("B", "N", matrix="s")[2, 0], s_vals.std(), rtol=1e-9)
    assert "2sZ1" in stats.to_dict()["onsite_energies"]["B"]


def test_splits_half_float32_and_torch_dataset(runs, tmp_path, abn_dir):
    run16 = copy_run(abn_dir, "abn_16_0", runs)
    out = tmp_path / "s.h5"
    convert([runs / "abn_8_0", run16], out, progress=False, half=True, dtype=np.float32, split_rule=SplitRule(8, 16))
    store = HSStore(out)
    assert store.half and store.dtype == np.float32
    assert [e["split"] for e in store.manifest] == ["train", "val"]
    original = read_hs(run16 / "abn_16_0.TSHS")
    stored = store.read("abn_16_0")
    assert stored.h.dtype == np.float32
    np.testing.assert_array_equal(stored.mask, original.mask)
    np.testing.assert_array_equal(stored.edge_index, original.edge_index)
    np.testing.assert_allclose(stored.h, original.h, rtol=0, atol=2e-6)  # float32 + SIESTA's 1e-8 asymmetry
    np.testing.assert_allclose(stored.s, original.s, rtol=0, atol=1e-7)
    full = (tmp_path / "full.h5")
    convert([runs / "abn_8_0", run16], full, progress=False)
    assert out.stat().st_size < 0.3 * full.stat().st_size

    train = HSDataset(out, split="train")
    assert len(train) == 1 and train[0].n_atoms == 8
    everything = load(out)
    loader = torch.utils.data.DataLoader(everything, batch_size=2, collate_fn=list)
    (batch,) = list(loader)
    assert [d.n_atoms for d in batch] == [8, 16]
    clone = pickle.loads(pickle.dumps(everything.store))
    np.testing.assert_array_equal(clone.read(1).h, stored.h)


def test_not_a_store(tmp_path, siesta_fixtures):
    with pytest.raises(FileFormatError, match="no such store"):
        HSStore(tmp_path / "none.h5")
    with pytest.raises(FileFormatError, match="cannot read the store|not an HForge store"):
        HSStore(siesta_fixtures / "hBN/aiida.nc")


def test_converting_into_an_existing_store_appends_or_refuses(runs, tmp_path, siesta_fixtures):
    """New-user probe: a second `hforge data convert -o s.h5` replaced the store's structures by its own and
    exited 0 ("1 structures"); now it is refused unless --append or --overwrite says what becomes of them."""
    from typer.testing import CliRunner

    from hforge.cli.main import app

    out = tmp_path / "s.h5"
    convert([runs / "abn_8_0", runs / "abn_8_1"], out, progress=False)
    before = out.read_bytes()
    si = siesta_fixtures / "Si_pdos_k"
    result = CliRunner().invoke(app, ["data", "convert", str(si), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert f"error: {out}: the store exists and holds 2 structures" in result.output.replace("\n", "")
    assert out.read_bytes() == before

    result = CliRunner().invoke(app, ["data", "convert", str(si), "-o", str(out), "--append"])
    assert result.exit_code == 0, result.output
    store = HSStore(out)
    assert store.names == ["abn_8_0", "abn_8_1", "Si_pdos_k"] and store.basis.symbols == ["B", "N", "Si"]
    assert [e["split"] for e in store.manifest] == ["train"] * 3
    for name, source in (("abn_8_0", runs / "abn_8_0" / "abn_8_0.TSHS"), ("Si_pdos_k", si / "Si_pdos.TSHS")):
        stored, original = store.read(name), read_hs(source)
        assert [store.basis.symbols[k] for k in stored.species] == [original.basis.symbols[k] for k in original.species]
        for field in ("h", "s", "mask", "edge_index", "cell_shift", "positions", "cell"):
            np.testing.assert_array_equal(getattr(stored, field), getattr(original, field), err_msg=field)
    store.close()
    appended = out.read_bytes()
    report = convert([si, runs / "abn_8_1"], out, progress=False, append=True)  # held already: nothing changes
    assert report.reused == ["Si_pdos_k", "abn_8_1"] and report.converted == [] and out.read_bytes() == appended
    with pytest.raises(ConfigError, match="--append to a store of float64: convert with the same dtype"):
        convert([runs / "abn_8_0"], out, progress=False, append=True, dtype=np.float32)

    report = convert([si], out, progress=False, overwrite=True)
    assert HSStore(out).names == ["Si_pdos_k"] and report.reused == ["Si_pdos_k"]
    with pytest.raises(InputError, match="choose one"):
        convert([si], out, progress=False, overwrite=True, append=True)


def test_a_gamma_only_file_folded_beyond_unfolding_is_not_stored(siesta_fixtures, tmp_path):
    """H2O_dipole is a Γ-only run (nsc 1 1 1) in a 3 x 30 x 5 Å cell: its blocks sum periodic images that cannot be
    told apart, so a store (the blocks of every periodic pair) cannot hold it; the run is skipped by name."""
    skipped = []
    with pytest.raises(FileFormatError, match="nothing written"):
        convert([siesta_fixtures / "H2O_dipole"], tmp_path / "s.h5", progress=False,
                on_skip=lambda run, exc: skipped.append(exc))
    assert [type(e) for e in skipped] == [FoldedMatrixError]
    assert "Γ-only run's, folded into the unit cell" in str(skipped[0])
