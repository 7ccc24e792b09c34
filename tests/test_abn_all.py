"""Every aBN run of ../shared/abn converts, and its Γ spectrum survives (slow: 149 MB of TSHS)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sisl

from hforge.io import HSStore, convert


@pytest.mark.slow
def test_every_abn_cell_converts_with_its_gamma_spectrum(abn_dir, tmp_path):
    runs = sorted((abn_dir / "runs").iterdir())
    summary = {json.loads(line)["name"]: json.loads(line) for line in (abn_dir / "summary.jsonl").read_text().splitlines()}
    report = convert([abn_dir / "runs"], tmp_path / "abn.h5", progress=False)
    assert report.skipped == [] and len(report.converted) == len(runs) == 22
    store = HSStore(tmp_path / "abn.h5")
    assert {e["split"] for e in store.manifest} == {"train", "val"} and store.split("val") == [len(store) - 1]
    for entry in store.manifest:
        data = store.read(entry["name"])
        reference = summary[entry["name"]]
        assert (entry["n_atoms"], entry["nnz"], entry["nsc"]) == (reference["natoms"], reference["nnz"], reference["nsc"])
        H = sisl.get_sile(str(abn_dir / "runs" / entry["name"] / f"{entry['name']}.TSHS")).read_hamiltonian()
        np.testing.assert_allclose(data.to_sisl().eigh(), H.eigh(), rtol=0, atol=1e-8)
