"""Compact stores: H only (canonical half, fixed point), S computed from the basis on reading and checked at
conversion; export back to TSHS.  Oracles: the SIESTA files themselves, read by sisl through ``read_hs``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hforge.cli.main import app
from hforge.datasets import HSDataset, load, open_store
from hforge.errors import InputError, OverlapMismatchError
from hforge.io import HSStore, convert, read_hs, write_store
from hforge.io.inspect import hermiticity_error
from hforge.io.store import H_QUANTUM, S_TOLERANCE
from hforge.ops.two_centre import overlap_blocks

runner = CliRunner()


@pytest.fixture()
def runs(abn_dir, tmp_path) -> Path:
    """Two 8-atom runs and a 16-atom one, as in shared/abn (runs/ beside basis/)."""
    root = tmp_path / "runs"
    shutil.copytree(abn_dir / "basis", tmp_path / "basis")
    for name in ("abn_8_0", "abn_8_1", "abn_16_2"):
        shutil.copytree(abn_dir / "runs" / name, root / name)
        for f in (root / name).iterdir():
            f.chmod(0o644)
    return root


def test_compact_store_keeps_h_to_its_quantum_and_recomputes_the_runs_s(runs, tmp_path):
    report = convert([runs], tmp_path / "c.h5", overlap=overlap_blocks, progress=False)
    assert report.converted == ["abn_8_0", "abn_8_1", "abn_16_2"] and not report.skipped
    store = open_store(tmp_path / "c.h5")
    assert store.compact and store.half and store.version == 2
    full = HSStore(convert([runs], tmp_path / "full.h5", progress=False).store)
    assert [e["split"] for e in store.manifest] == [e["split"] for e in full.manifest]
    for name in store.names:
        source = read_hs(runs / name / f"{name}.TSHS")
        stored = store.read(name)
        for field in ("edge_index", "cell_shift", "block_ptr", "mask", "positions", "cell", "species", "nsc"):
            np.testing.assert_array_equal(getattr(stored, field), getattr(source, field), err_msg=field)
        assert stored.fermi_level == source.fermi_level and stored.basis == source.basis
        # H: the canonical half exactly on the grid, the partners its transposes (SIESTA's asymmetry dropped)
        canonical = source.canonical_pairs()
        half = source.canonical_half()
        np.testing.assert_array_equal(stored.canonical_half().h, np.rint(half.h / H_QUANTUM) * H_QUANTUM)
        bound = H_QUANTUM / 2 + hermiticity_error(source, "h")
        assert np.abs(stored.h - source.h).max() <= bound
        assert np.abs(stored.h[:, stored._gather(canonical)] - source.h[:, source._gather(canonical)]).max() <= H_QUANTUM / 2
        # S: computed from the basis, the run's to the two-centre integrals' precision, 0 outside the file's pattern
        assert np.abs(stored.s - source.s).max() < 1e-8
        assert not stored.s[~stored.mask].any()
        # the manifest's provenance: the run's input and SIESTA's version
        provenance = store.provenance(name)
        assert provenance["fdf"] == (runs / name / f"{name}.fdf").read_text()
        assert provenance["siesta"] == "master-post-4.1-268" and provenance["record"] is None
    np.testing.assert_allclose(store.statistics.h_mean, full.statistics.h_mean, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(store.statistics.s_mean, full.statistics.s_mean, rtol=0, atol=1e-8, equal_nan=True)


def test_compact_stores_are_read_through_the_dataset_paths_only(runs, tmp_path):
    path = convert([runs / "abn_8_0"], tmp_path / "c.h5", overlap=overlap_blocks, progress=False).store
    bare = HSStore(path)
    with pytest.raises(InputError, match="open_store"):
        bare.read(0)
    through = [open_store(bare).read(0), HSDataset(path)[0], load(path)[0], HSDataset(bare)[0]]
    for data in through[1:]:
        np.testing.assert_array_equal(data.s, through[0].s)
        np.testing.assert_array_equal(data.h, through[0].h)


def test_a_structure_whose_s_is_not_the_basis_s_is_refused_by_name(runs, tmp_path):
    data = read_hs(runs / "abn_8_0" / "abn_8_0.TSHS")
    entries = np.flatnonzero(data.mask)
    s = data.s.copy()
    s[entries[1000]] += 10 * S_TOLERANCE
    e = data.value_pair[entries[1000]]
    (i, j), shift = data.edge_index[:, e], tuple(data.cell_shift[e].tolist())
    with pytest.raises(OverlapMismatchError, match=r"by 1\.0+e-05 \(> 1e-06\)") as info:
        write_store(tmp_path / "c.h5", [("abn_8_0", replace(data, s=s), "")], basis=data.basis, overlap=overlap_blocks)
    assert info.value.path == str(runs / "abn_8_0" / "abn_8_0.TSHS")
    assert f"atoms {i} (B) and {j} (B), cell {shift}" in info.value.message
    assert not (tmp_path / "c.h5").exists() and not list(tmp_path.glob(".c.*"))


def test_compact_store_of_a_32_atom_cell_is_six_times_smaller_than_its_tshs_xz(compressed_runs, tmp_path):
    run, _, _, basis = compressed_runs
    path = convert([run], tmp_path / "c.h5", basis=basis, overlap=overlap_blocks, progress=False).store
    xz = (run / "abn_32_10.TSHS.xz").stat().st_size
    assert xz >= 6 * path.stat().st_size  # measured 6.7x, the store's basis tables included
    source = read_hs(run / "abn_32_10.TSHS.xz", basis=basis)
    assert np.abs(open_store(path).read(0).s - source.s).max() < 1e-8


def test_export_writes_a_tshs_sisl_reads_with_the_stored_h_and_exact_s(runs, tmp_path):
    import sisl

    store = tmp_path / "c.h5"
    assert runner.invoke(app, ["data", "convert", str(runs / "abn_16_2"), "-o", str(store), "--compact"]).exit_code == 0
    out = tmp_path / "export" / "abn_16_2.TSHS"
    out.parent.mkdir()
    result = runner.invoke(app, ["data", "export", str(store), "abn_16_2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    shutil.copy(runs / "abn_16_2" / "abn_16_2.fdf", out.parent)  # the species of a bare TSHS
    exported = read_hs(out, basis=runs.parent / "basis")
    stored = open_store(store).read(0)
    source = read_hs(runs / "abn_16_2" / "abn_16_2.TSHS")
    np.testing.assert_allclose(exported.h, stored.h, rtol=0, atol=1e-13)  # the store's H (E_F S added and removed)
    np.testing.assert_array_equal(exported.s, stored.s)  # the exact S
    assert np.abs(exported.h - source.h).max() <= H_QUANTUM / 2 + hermiticity_error(source, "h")
    assert np.abs(exported.s - source.s).max() < 1e-8
    assert exported.fermi_level == source.fermi_level
    hamiltonian = sisl.get_sile(out).read_hamiltonian()
    assert hamiltonian.nnz == source.nnz and hamiltonian.geometry.na == 16
    missing = runner.invoke(app, ["data", "export", str(store), "abn_99", "-o", str(tmp_path / "x.TSHS")])
    assert missing.exit_code == 1 and "no structure 'abn_99'" in missing.output


def test_training_and_evaluation_read_a_compact_store(runs, tmp_path):
    """A tiny model trains on a compact store and `hforge evaluate` reads it: the same errors as on the full store
    (H within 2^-21 eV, S exact) to 1e-4 relative."""
    import json

    from hforge.models import load_checkpoint
    from hforge.train.config import load_config
    from hforge.train.evaluation import evaluate_structures
    from hforge.train.trainer import Trainer

    compact = convert([runs], tmp_path / "c.h5", overlap=overlap_blocks, progress=False).store
    full = convert([runs], tmp_path / "full.h5", progress=False).store
    config = {
        "data": {"source": str(compact), "train": {"names": ["abn_8_0", "abn_8_1"]}, "val": {"names": ["abn_16_2"]},
                 "valence": {"B": 3, "N": 5}},
        "model": {"kind": "invariant", "channels": 4, "num_interactions": 1, "radial_mlp": [8], "radial_hidden": [8],
                  "block_hidden": [16], "s_channels": 4, "num_bessel": 4, "pair_num_basis": 4, "max_ell": 1, "node_l_max": 1},
        "training": {"max_steps": 2, "batch_atoms": 16, "val_every": 2, "checkpoint_every": 2, "val_eigenvalues": False,
                     "device": "cpu", "seed": 3},
    }
    checkpoint = Trainer(load_config(config), tmp_path / "run", progress=False).run().last
    model, _ = load_checkpoint(checkpoint)
    on_compact, on_full = (
        evaluate_structures(model, [load(path)[2]], eigenvalues=False).structures[0]["summary"]
        for path in (compact, full)
    )
    np.testing.assert_allclose(on_compact["h_mae_meV"], on_full["h_mae_meV"], rtol=1e-4)
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(checkpoint), str(compact), "--no-eigenvalues", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(out.read_text())["structures"]] == ["abn_8_0", "abn_8_1", "abn_16_2"]
