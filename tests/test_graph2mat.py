"""The graph2mat baseline (hforge.train.graph2mat): data conversion, SIESTA convention,
training, checkpoints, resume and predictions in HForge's layout.

Runs on abn-small (bundled real SIESTA cells); skipped where graph2mat is not installed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("graph2mat")
pytest.importorskip("mace.modules")
pytest.importorskip("torch_geometric")

import torch

from hforge.datasets import load
from hforge.errors import BackendUnavailableError, ConfigError, OutputError
from hforge.train import graph2mat as gm

#: small enough for a few seconds a step on a loaded 2-core machine
TINY = gm.Graph2MatSettings(
    hidden_irreps="4x0e+4x1o+4x2e", edge_hidden_irreps="2x0e+2x1o+2x2e", num_interactions=1, correlation=1,
    val_eigenvalues=False, val_every=1000, checkpoint_every=1000, warmup_steps=2,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine two threads spin against each other (measured:
    a training step 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store():
    return load("abn-small").store


@pytest.fixture(scope="module")
def processor(store):
    return gm._processor(store.basis)


def _names(store, n_atoms):
    return [e["name"] for e in store.manifest if e["n_atoms"] == n_atoms]


def _pair_cutoffs(data):
    return data.basis.pair_cutoffs()[data.species[data.edge_index[0]], data.species[data.edge_index[1]]]


def test_roundtrip_is_exact_on_a_real_cell(store, processor):
    """HSData -> graph2mat labels (via sisl) -> HSData gives the SIESTA blocks bit for bit, on
    exactly the pairs with |r_ij| < r_i + r_j; graph2mat's own sisl output agrees too."""
    data = store.read(store.manifest.index(next(e for e in store.manifest if e["n_atoms"] == 24)))
    g = gm.to_graph2mat(data, processor, as_torch=False)
    back = gm.from_graph2mat(g, g["point_labels"], g["edge_labels"], processor, data)
    reference, found = gm._gather_on(back, data, data.h_unshifted[0])
    assert found.all()
    np.testing.assert_array_equal(back.h[0], reference)
    # the canonical half of exactly data's pairs inside the orbital reach
    full = back.expand_half()
    inside = data.pair_distances() < _pair_cutoffs(data) - 1e-4
    present = full.find_pairs(data.edge_index[0], data.edge_index[1], data.cell_shift) >= 0
    np.testing.assert_array_equal(present, inside)
    assert full.n_pairs == int(inside.sum())
    assert set(map(tuple, back.edge_index.T[np.flatnonzero(back.onsite)])) == {(i, i) for i in range(data.n_atoms)}
    # graph2mat's own conversion of its labels to a sisl Hamiltonian
    ours = gm._as_sisl(data, None).tocsr(0)
    theirs = processor.matrix_from_data(g).tocsr(0)
    assert theirs.shape == ours.shape
    rows, cols = theirs.nonzero()
    np.testing.assert_array_equal(np.asarray(theirs[rows, cols]).ravel(), np.asarray(ours[rows, cols]).ravel())
    assert theirs.nnz > 0.5 * ours.nnz


def test_labels_follow_the_data_values(store, processor):
    """Labels can be any symmetric flat values on the data's pairs (the residual target): block
    (j, i, -n) the transpose of (i, j, n), as in every SIESTA H; graph2mat stores one of the two."""
    data = store.read(0)
    half = data.canonical_half()
    half = replace(half, h=np.random.default_rng(0).normal(size=(1, half.n_values)))
    symmetric = half.expand_half()
    np.testing.assert_array_equal(symmetric.edge_index, data.edge_index)
    np.testing.assert_array_equal(symmetric.cell_shift, data.cell_shift)
    values = symmetric.h[0]
    g = gm.to_graph2mat(data, processor, values, as_torch=False)
    back = gm.from_graph2mat(g, g["point_labels"], g["edge_labels"], processor, data)
    reference, found = gm._gather_on(back, data, values)
    assert found.all()
    np.testing.assert_array_equal(back.h[0], reference)


def _rotation(seed: int) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=seed).as_matrix()


def test_model_is_equivariant_in_siesta_convention(store, processor):
    """A random graph2mat model rotates its H blocks as SIESTA orbitals do (HForge's Wigner matrices):
    graph2mat's "siesta_spherical" convention matches SIESTA's d orbitals too."""
    from hforge.basis.conventions import species_rotation

    torch.manual_seed(0)
    settings = replace(TINY, num_interactions=2, correlation=2)
    model = gm._build_model(settings, processor, 2.0 * float(processor.basis_table.maxR()), 100.0)
    predictor = gm.Graph2MatPredictor(model, processor, store.basis, settings)
    data = store.read(0)
    rotation = _rotation(1)
    rotated = replace(data, positions=data.positions @ rotation.T, cell=data.cell @ rotation.T)
    a, b = predictor.predict(data), predictor.predict(rotated)
    np.testing.assert_array_equal(a.edge_index, b.edge_index)
    np.testing.assert_array_equal(a.cell_shift, b.cell_shift)
    scale = np.abs(a.h).max()
    assert scale > 0
    wigner = [species_rotation(sp, rotation) for sp in data.basis]  # D_s(R), SIESTA convention
    worst = 0.0
    for e in range(a.n_pairs):
        i, j = a.edge_index[:, e]
        expected = wigner[data.species[i]] @ a.block(e) @ wigner[data.species[j]].T
        worst = max(worst, float(np.abs(b.block(e) - expected).max()))
    assert worst < 1e-4 * scale, worst / scale


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """20 steps on abn-small's two 8-atom cells (one cell a step), validated on its 16-atom cell."""
    out = tmp_path_factory.mktemp("g2m")
    path = gm.train_graph2mat(
        store, _names(store, 8), _names(store, 16), out, max_steps=20, batch_atoms=8, lr=3e-2, seed=0,
        settings=TINY, progress=False,
    )
    return out, path


def test_training_lowers_the_loss_and_logs_like_hforge(trained):
    out, path = trained
    assert path == out / "last.pt" and path.is_file() and (out / "best.pt").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert {"step", "epoch", "loss", "loss_h", "lr", "grad_norm", "structures", "atoms"} <= set(steps[0])
    assert all(r["atoms"] == 8 for r in steps)
    losses = np.array([r["loss"] for r in steps])
    assert np.isfinite(losses).all()
    assert losses[-4:].mean() < 0.85 * losses[:4].mean(), losses
    vals = [r for r in records if "val" in r]
    assert len(vals) == 1 and vals[0]["step"] == 20
    structure = vals[0]["val"]["structures"]["abn_16_0"]
    assert np.isfinite(structure["h_mae_meV"]) and structure["h_mae_meV"] > 0
    assert vals[0]["val"]["mean"]["h_mae_meV"] == structure["h_mae_meV"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["throughput"]["s_per_step"] > 0


def test_prediction_layout_and_reload(store, trained):
    """Predictions: HForge's pair layout (onsite + canonical half), the reference S, finite H; a
    reloaded checkpoint gives the same metrics as the in-training validation."""
    from hforge.metrics import compare_blocks

    out, path = trained
    data = store.read(next(k for k, e in enumerate(store.manifest) if e["name"] == "abn_16_0"))
    predictor = gm.load_graph2mat(path)
    assert predictor.point_matrices is not None and predictor.target == "h"
    prediction = predictor.predict(data)
    assert prediction.n_atoms == data.n_atoms and np.isfinite(prediction.h).all()
    assert prediction.fermi_level == 0.0
    canonical = prediction.canonical_pairs()
    np.testing.assert_array_equal(canonical, np.arange(prediction.n_pairs))  # a canonical half already
    inside = data.canonical_half()
    inside_pairs = inside.pair_distances() < _pair_cutoffs(inside) - 1e-4
    assert prediction.n_pairs == int(inside_pairs.sum())
    s_ref, found = gm._gather_on(prediction, data, data.s)
    assert found.all()
    np.testing.assert_array_equal(prediction.s, s_ref)
    # the reloaded weights are the validated ones; loaded again, they predict the same
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val" in line][-1]
    h_mae = compare_blocks(prediction, data).to_dict()["h_mae_meV"]["all"]
    assert h_mae == pytest.approx(logged["val"]["structures"]["abn_16_0"]["h_mae_meV"], rel=1e-12)
    evaluation = gm.evaluate_graph2mat(predictor, [data])
    summary = evaluation.structures[0]["summary"]
    assert summary["h_mae_meV"] == pytest.approx(h_mae, rel=1e-12)
    assert np.isfinite(summary["eig_window_ortho_1e-2_meV"]) and summary["s_mae"] == 0.0
    assert evaluation.groups["16"]["n_structures"] == 1
    json.dumps(evaluation.to_dict())
    np.testing.assert_array_equal(gm.predict_graph2mat(path, data).h, prediction.h)
    # every pair of the data, zero H beyond graph2mat's graph
    full = gm.predict_graph2mat(path, data, pairs="data")
    np.testing.assert_array_equal(full.edge_index, data.edge_index)
    np.testing.assert_array_equal(full.s, data.s)
    outside = np.repeat(data.pair_distances() >= _pair_cutoffs(data) - 1e-4, np.diff(data.block_ptr))
    assert outside.any() and (full.h[0][outside] == 0).all()
    assert np.abs(full.h[0][~outside]).max() > 0


def test_resume_repeats_the_uninterrupted_run(store, tmp_path):
    kwargs = dict(batch_atoms=8, lr=1e-2, seed=3, settings=replace(TINY, checkpoint_every=2), progress=False)
    train, val = _names(store, 8), _names(store, 16)
    straight = gm.train_graph2mat(store, train, val, tmp_path / "a", max_steps=4, **kwargs)
    gm.train_graph2mat(store, train, val, tmp_path / "b", max_steps=2, **kwargs)
    resumed = gm.train_graph2mat(store, train, val, tmp_path / "b", max_steps=4, resume=True, **kwargs)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
            for d in ("a", "b")]
    assert logs[0] == logs[1] and len(logs[0]) == 4
    with pytest.raises(ConfigError, match="differs"):
        gm.train_graph2mat(store, train, val, tmp_path / "b", max_steps=6, resume=True, **{**kwargs, "lr": 5e-3})


def test_residual_target_adds_the_baseline_back(store, tmp_path):
    from hforge.models.baseline import baseline_of

    path = gm.train_graph2mat(store, _names(store, 8)[:1], _names(store, 16), tmp_path, max_steps=2, batch_atoms=8,
                              lr=1e-3, seed=0, settings=TINY, target="residual", progress=False)
    predictor = gm.load_graph2mat(path)
    assert predictor.target == "residual" and predictor.coefficients is not None
    data = store.read(next(k for k, e in enumerate(store.manifest) if e["name"] == "abn_16_0"))
    full = predictor.predict(data, pairs="data")
    h0 = baseline_of(store.basis, data, predictor.coefficients)
    outside = np.repeat(data.pair_distances() >= _pair_cutoffs(data) - 1e-4, np.diff(data.block_ptr))
    np.testing.assert_allclose(full.h[0][outside], h0[outside])
    # two steps from a small init: the prediction is H0 plus a small residual, far closer to H than 0 is
    inside = ~outside
    error = np.abs(full.h[0][inside] - data.h_unshifted[0][inside]).mean()
    assert error < 0.5 * np.abs(data.h_unshifted[0][inside]).mean()


def test_bad_arguments(store, tmp_path):
    names8, names16 = _names(store, 8), _names(store, 16)
    with pytest.raises(ConfigError, match="not in the store"):
        gm.train_graph2mat(store, ["nope"], names16, tmp_path, max_steps=1, batch_atoms=8, lr=1e-3, seed=0, progress=False)
    with pytest.raises(ConfigError, match="share"):
        gm.train_graph2mat(store, names8, names8, tmp_path, max_steps=1, batch_atoms=8, lr=1e-3, seed=0, progress=False)
    with pytest.raises(ConfigError, match="target"):
        gm.train_graph2mat(store, names8, names16, tmp_path, max_steps=1, batch_atoms=8, lr=1e-3, seed=0, target="s")
    with pytest.raises(ConfigError, match="loss"):
        gm.Graph2MatSettings(loss="mae")
    with pytest.raises(ConfigError):
        gm.Graph2MatSettings(hidden_irreps="16xnonsense")


def test_missing_graph2mat_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "graph2mat", None)
    with pytest.raises(BackendUnavailableError, match=r"hforge\[bench\]"):
        gm.require_graph2mat()
    with pytest.raises(BackendUnavailableError):
        gm.load_graph2mat("missing.pt")


def test_files_are_written_as_hforges_trainer_writes_them(store, tmp_path, monkeypatch):
    """graph2mat's loop had its own atomic writers (no fsync, no OutputError, temporary names the stale-temp clean-up
    did not know) and wrote summary.json and metrics.jsonl with NaN, not strict JSON; now it uses the trainer's pieces."""
    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in a strict JSON file"))

    args = (store, _names(store, 8)[:1], _names(store, 16))
    options = dict(batch_atoms=8, lr=1e-3, seed=0, settings=replace(TINY, grad_clip=0.0), progress=False)  # no clip: NaN norm
    gm.train_graph2mat(*args, tmp_path / "run", max_steps=2, **options)
    records = [strict(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in records if "loss" in r] == [None, None]  # NaN written as null
    assert strict((tmp_path / "run" / "summary.json").read_text())["steps"] == 2

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    failing = tmp_path / "failing"
    with pytest.raises(OutputError, match=rf"^{failing / 'best.pt'}: cannot write it: No space left on device"):
        gm.train_graph2mat(*args, failing, max_steps=1, **options)
    assert sorted(p.name for p in failing.iterdir()) == ["metrics.jsonl"]  # no checkpoint, no temporary file
