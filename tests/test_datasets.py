"""The bundled aBN sample: same data as the shared SIESTA runs (float32), and loadable without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from hforge.basis import BasisSet
from hforge.datasets import bundled_path, load
from hforge.io import read_hs
from hforge.io.store import file_sha256


def test_sample_equals_the_shared_runs_to_float32_precision(shared_dir):
    dataset = load("abn-small")
    store = dataset.store
    assert store.dtype == np.float32 and store.half
    assert store.basis.hash == BasisSet.from_folder(shared_dir / "abn/basis").hash
    assert {e["split"] for e in store.manifest} == {"train", "val"}
    assert bundled_path("abn-small").stat().st_size < 4 * 2**20  # the project's limit for a tracked file
    assert store.basis.valence_charges.tolist() == [3.0, 5.0]
    for k, entry in enumerate(store.manifest):
        source = shared_dir / entry["source"]
        assert file_sha256(source) == entry["source_sha256"]
        original = read_hs(source)
        sample = dataset[k]
        for name in ("edge_index", "cell_shift", "block_ptr", "mask", "species", "positions", "cell", "nsc"):
            np.testing.assert_array_equal(getattr(sample, name), getattr(original, name), err_msg=name)
        assert sample.fermi_level == original.fermi_level
        # float32 rounding (|H| < 40 eV) plus SIESTA's own H_ij - H_ji^T asymmetry (< 1e-7 eV)
        np.testing.assert_allclose(sample.h, original.h, rtol=0, atol=4e-6)
        np.testing.assert_allclose(sample.s, original.s, rtol=0, atol=1e-7)
    assert [d.n_atoms for d in load("abn-small", split="val")] == [24]


def test_sample_loads_without_shared_data(tmp_path):
    """In a fresh process with HFORGE_SHARED pointing nowhere, and an audit hook proving that no
    file of ../shared is opened."""
    shared = sorted(
        {os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))}
        | ({os.path.realpath(os.environ["HFORGE_SHARED"])} if "HFORGE_SHARED" in os.environ else set())
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        opened = []
        sys.addaudithook(
            lambda event, args: opened.append(str(args[0])) if event == "open" and args and isinstance(args[0], str) else None
        )
        from hforge.datasets import load
        data = load("abn-small")
        sizes = [d.n_atoms for d in data]
        nnz = [int(d.mask.sum()) for d in data]
        touched = [p for p in opened if p.startswith(tuple({shared!r})) or "/nowhere" in p]
        print(json.dumps({{"sizes": sizes, "nnz": nnz, "touched": touched, "train": len(load("abn-small", split="train"))}}))
        """
    )
    env = dict(os.environ, HFORGE_SHARED=str(tmp_path / "nowhere"))
    env.pop("CI", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["sizes"] == [8, 8, 16, 24] and info["train"] == 3
    assert info["touched"] == []
    assert all(n > 100_000 for n in info["nnz"])


def test_the_shared_data_folder_is_one_rule_for_the_cli_and_the_tests(monkeypatch, tmp_path):
    """It was ../shared of the working folder in the CLI and of the repository in the tests."""
    import hforge
    from hforge.datasets import shared_data_dir

    monkeypatch.delenv("HFORGE_SHARED", raising=False)
    monkeypatch.chdir(tmp_path)
    checkout = Path(hforge.__file__).resolve().parents[1]
    assert shared_data_dir() == checkout.parent / "shared"  # a source checkout's, whatever the working folder
    monkeypatch.setenv("HFORGE_SHARED", str(tmp_path / "elsewhere"))
    assert shared_data_dir() == tmp_path / "elsewhere" and shared_data_dir(tmp_path / "given") == tmp_path / "given"
