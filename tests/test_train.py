"""hforge.train: configs and their errors, batches in atoms, kill-and-resume to the same weights,
2-process data parallelism against one process, evaluation against an independent oracle, the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from hforge.cli.demo import demo_test_cell
from hforge.cli.main import app
from hforge.datasets import load
from hforge.errors import BasisMismatchError, ConfigError, FileFormatError
from hforge.io import read_hs
from hforge.models import load_checkpoint
from hforge.train.config import DEFAULT_CONFIG_YAML, TrainConfig, load_config
from hforge.train.evaluation import evaluate_structures, predict_blocks
from hforge.train.loop import atom_batches, read_log
from hforge.train.trainer import Trainer, TrainingData, share_of_batch

REPO = Path(__file__).resolve().parents[1]

#: A tiny invariant model on the 8- and 16-atom cells (rotations, EMA and a cosine schedule on):
#: the tests check mechanics, not accuracy.
TINY = {
    "data": {"source": "abn-small", "train": {"names": ["abn_8_0", "abn_8_1", "abn_16_0"]}, "val": {"names": ["abn_24_0"]},
             "valence": {"B": 3, "N": 5}},
    "model": {"kind": "invariant", "channels": 4, "num_interactions": 1, "radial_mlp": [8], "radial_hidden": [8],
              "block_hidden": [16], "s_channels": 4, "num_bessel": 4, "pair_num_basis": 4, "max_ell": 1, "node_l_max": 1},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "training": {"max_steps": 6, "batch_atoms": 16, "val_every": 4, "checkpoint_every": 2, "val_eigenvalues": False,
                 "device": "cpu", "seed": 3},
}


def tiny(**sections):
    config = json.loads(json.dumps(TINY))
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def env():
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread():
    """Single-threaded torch, as in the subprocesses (OMP_NUM_THREADS=1): the same summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------- config
def test_default_config_yaml_is_the_default_config():
    assert TrainConfig.from_dict(yaml.safe_load(DEFAULT_CONFIG_YAML)) == TrainConfig()
    config = load_config(tiny())
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.augment and config.model.dtype == "float32"


#: mace prints a line to stdout when imported without cuEquivariance: hide cuEquivariance to provoke it.
NO_CUEQ = "import sys; sys.modules['cuequivariance'] = sys.modules['cuequivariance_torch'] = None; "


def test_print_default_config_is_pure_yaml_that_trains(tmp_path):
    provoked = subprocess.run([sys.executable, "-c", NO_CUEQ + "import mace.modules"], env=env(), capture_output=True,
                              text=True, timeout=300)
    assert "cuequivariance" in provoked.stdout  # the print that must not reach hforge's stdout
    code = NO_CUEQ + "sys.argv = ['hforge', 'train', '--print-default-config']; from hforge.cli.main import app; app()"
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == DEFAULT_CONFIG_YAML
    config = yaml.safe_load(done.stdout)
    config["training"].update(max_steps=2, val_every=2, checkpoint_every=2, val_eigenvalues=False, device="cpu")
    path = write_config(tmp_path / "d.yaml", config)
    with one_thread():
        trainer = Trainer(load_config(path), tmp_path / "run", progress=False)
        assert [trainer.data.name(k) for k in trainer.data.train] == ["abn_8_0", "abn_8_1", "abn_16_0"]
        assert [trainer.data.name(k) for k in trainer.data.val] == ["abn_24_0"]  # the bundled store's own split
        result = trainer.run()
    assert result.steps == 2 and np.isfinite(result.validation["mean"]["h_mae_meV"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"training": {"batch_atoms": 0}}, "training.batch_atoms"),
        ({"training": {"colour": 1}}, "unknown fields .*colour"),
        ({"loss": {"kind": "huber"}}, "loss.kind"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"model": {"kind": "transformer"}}, "kind"),
        ({"model": {"dtype": "float64"}}, "precision"),
        ({"data": {"train": {"max_atoms": -1}}}, "max_atoms"),
        ({"schedule": {"name": "step"}}, "schedule.name"),
    ],
)
def test_bad_configs_name_the_field(change, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny(**change))


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "sections.yaml").write_text("trainig: {max_steps: 3}\n")
    with pytest.raises(ConfigError, match="unknown sections"):
        load_config(tmp_path / "sections.yaml")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"data": {"val": {"min_atoms": 1000}}}, "data.val selects no structure"),
        ({"data": {"train": {"names": ["nothing"]}}}, "data.train selects no structure"),
        ({"data": {"val": {"names": ["abn_8_0"]}}}, "share structures"),
        ({"model": {"species": ["B"]}}, "species .*'N'"),
        ({"model": {"species": ["B", "N", "C"]}}, "C"),
        ({"data": {"source": "/nonexistent/store.h5"}}, "no such store"),
    ],
)
def test_configs_that_disagree_with_the_data(tmp_path, change, match):
    with pytest.raises((ConfigError, BasisMismatchError, FileFormatError), match=match):
        Trainer(load_config(tiny(**change)), tmp_path, progress=False)


def test_a_bug_in_the_model_build_is_not_turned_into_a_config_error(tmp_path, monkeypatch):
    """trainer.py caught every exception of the baseline fit and model build as a one-line ConfigError."""
    import hforge.train.trainer as trainer_module

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a config")

    monkeypatch.setattr(trainer_module, "build_model", broken)
    with pytest.raises(KeyError, match="a bug, not a config"):
        Trainer(load_config(tiny()), tmp_path, progress=False)


def test_species_and_neighbour_count_come_from_the_data_unless_given():
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    config = load_config(tiny())
    assert config.model_from_data == ("species", "avg_num_neighbors")
    assert not {"species", "avg_num_neighbors"} & set(config.to_dict()["model"])
    resolved = TrainingData(config).config
    store = load("abn-small").store
    pairs = atoms = 0
    for name in TINY["data"]["train"]["names"]:  # ASE's own neighbour list, periodic images included
        data = store.read(name)
        structure = Atoms(numbers=np.ones(data.n_atoms), positions=data.positions, cell=data.cell, pbc=data.pbc)
        pairs += len(neighbor_list("i", structure, config.model.r_max))
        atoms += data.n_atoms
    assert resolved.model.avg_num_neighbors == pytest.approx(pairs / atoms, rel=1e-12)
    assert resolved.model.avg_num_neighbors != config.model.avg_num_neighbors  # not aBN's default 40
    assert resolved.model.species == ("B", "N") and resolved.model_from_data == ()
    assert TrainConfig.from_dict(resolved.to_dict()) == resolved  # written out, the values are explicit
    given = TrainingData(load_config(tiny(model={"avg_num_neighbors": 12.5, "species": ["N", "B"]}))).config
    assert given.model.avg_num_neighbors == 12.5 and given.model.species == ("N", "B")


# ------------------------------------------------------------------------------- batches
def test_atom_batches_cover_each_epoch_once_and_respect_the_budget():
    sizes = [8, 8, 16, 16, 24, 64]
    for epoch in range(4):
        batches = atom_batches(sizes, 32, seed=1, epoch=epoch)
        assert sorted(k for b in batches for k in b) == list(range(6))
        assert all(len(b) == 1 or sum(sizes[k] for k in b) <= 32 for b in batches)
        assert batches == atom_batches(sizes, 32, seed=1, epoch=epoch)
    assert atom_batches(sizes, 32, 1, 0) != atom_batches(sizes, 32, 1, 1)
    for world in (1, 2, 3):
        shares = [share_of_batch([0, 2, 3, 4], sizes, r, world) for r in range(world)]
        assert sorted(k for s in shares for k in s) == [0, 2, 3, 4]


# ------------------------------------------------------------------------------- resume
#: ``hforge train ARGS...`` (``python -c KILLED_TRAIN N ARGS...``) that SIGKILLs itself right after
#: optimizer step N, before the run logs or checkpoints anything of that step.
KILLED_TRAIN = """
import os, signal, sys
from hforge.cli.main import app
from hforge.train.trainer import Trainer

kill_after, train_step = int(sys.argv.pop(1)), Trainer._train_step

def train_step_then_die(self, batch):
    record = train_step(self, batch)
    if self.step + 1 == kill_after:  # the loop counts the step after this call returns
        os.kill(os.getpid(), signal.SIGKILL)
    return record

Trainer._train_step = train_step_then_die
app(prog_name="hforge")
"""


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    # epochs of 2, 2 and 3 batches (seed 3): checkpoint at step 5 (epoch 2, batch 1), killed after step 6.
    # Every run is a fresh `hforge train` process with one torch thread (a run inside this process, after
    # other test modules built and trained models here, inherited their thread settings and did not repeat
    # a fresh one bit for bit); the uninterrupted one with numba's default threads, the others with one:
    # results do not depend on numba's thread count.
    config = tiny(training={"max_steps": 7, "checkpoint_every": 5, "val_every": 100})
    path = write_config(tmp_path / "tiny.yaml", config)

    def train(out, *options, kill_after=None, **variables):
        """``hforge train`` into ``out`` (SIGKILLed after step ``kill_after``: KILLED_TRAIN), environment ``variables`` added."""
        program = ["-m", "hforge.cli.main"] if kill_after is None else ["-c", KILLED_TRAIN, str(kill_after)]
        command = [sys.executable, *program, "train", str(path), "--out", str(out), "--no-progress", *options]
        return subprocess.run(command, env={**env(), **variables}, capture_output=True, text=True, timeout=300)

    whole = tmp_path / "whole"
    done = train(whole)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    run = train(killed, kill_after=6, NUMBA_NUM_THREADS="1")
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    _, payload = load_checkpoint(killed / "last.pt")
    state = payload["extra"]["training"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (5, 2, 1)
    assert not list(killed.glob(".*tmp*"))

    resumed = train(killed, "--resume", NUMBA_NUM_THREADS="1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, pa = load_checkpoint(whole / "last.pt")
    b, pb = load_checkpoint(killed / "last.pt")
    assert states_equal(a.state_dict(), b.state_dict())  # EMA weights
    assert states_equal(pa["extra"]["training"]["model_state"], pb["extra"]["training"]["model_state"])  # raw weights
    steps = [r["step"] for r in read_log(killed / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 8))  # the killed run's step 6 was dropped from the log and redone
    losses = {r["step"]: r["loss"] for r in read_log(whole / "metrics.jsonl") if "loss" in r}
    assert all(losses[r["step"]] == r["loss"] for r in read_log(killed / "metrics.jsonl") if "loss" in r)
    assert (killed / "learning_curve.png").stat().st_size > 0

    with pytest.raises(ConfigError, match="differs .*optimizer.lr"):
        Trainer(load_config(tiny(training={"max_steps": 7, "checkpoint_every": 5, "val_every": 100}, optimizer={"lr": 1e-3})),
                killed, resume=True, progress=False)
    with pytest.raises(ConfigError, match="no checkpoint"):
        Trainer(load_config(config), tmp_path / "empty", resume=True, progress=False)


# ------------------------------------------------------------------------------- data parallel
DDP_SCRIPT = """
import sys, torch
import hforge
from hforge.train.config import load_config
from hforge.train.trainer import Trainer
trainer = Trainer(load_config(sys.argv[1]), sys.argv[2], progress=False)
trainer.run()
torch.save(trainer.model.state_dict(), f"{sys.argv[2]}/rank{trainer.dist.rank}.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_on_the_same_global_batch(tmp_path):
    # a global batch of 32 atoms = the 8-, 8- and 16-atom cells: rank 0 takes the 16, rank 1 both 8s
    config = tiny(training={"max_steps": 3, "batch_atoms": 32, "val_every": 3, "checkpoint_every": 3},
                  model={"kind": "equivariant"})
    config["schedule"] = {"name": "constant", "warmup_steps": 0}
    path = write_config(tmp_path / "ddp.yaml", config)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               str(script), str(path), str(out)]
    run = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert states_equal(rank0, rank1)

    with one_thread():
        single = Trainer(load_config(config), tmp_path / "single", progress=False)
        single.run()
    two = [r for r in read_log(out / "metrics.jsonl") if "loss" in r]
    one = [r for r in read_log(tmp_path / "single" / "metrics.jsonl") if "loss" in r]
    assert [r["structures"] for r in two] == [r["structures"] for r in one] == [3, 3, 3]
    np.testing.assert_allclose(two[0]["loss"], one[0]["loss"], rtol=1e-6)  # same weights, same global batch
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-4)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    config = tiny(training={"max_steps": 2, "val_every": 2, "checkpoint_every": 2})
    return Trainer(load_config(config), out, progress=False).run().last


def test_checkpoints_hold_the_values_taken_from_the_data(checkpoint):
    model, payload = load_checkpoint(checkpoint)
    expected = TrainingData(load_config(tiny())).config.model
    assert model.config.avg_num_neighbors == expected.avg_num_neighbors and model.config.species == ("B", "N")
    assert payload["extra"]["training"]["config"]["model"]["avg_num_neighbors"] == expected.avg_num_neighbors


def test_a_trained_checkpoint_warns_about_structures_outside_its_training_cells(checkpoint):
    """The trainer stores its training cells' domain in the checkpoint; the predictor warns (OutOfDomainWarning) on a
    cell compressed to 0.7x, and says nothing on the held-out 24-atom cell."""
    import warnings

    import hforge
    from hforge.errors import OutOfDomainWarning
    from hforge.structures import TrainingDomain

    _, payload = load_checkpoint(checkpoint)
    domain = TrainingDomain.from_dict(payload["extra"]["domain"])
    assert domain.n_structures == 3 and domain.r_max == TrainingData(load_config(tiny())).config.model.r_max
    predictor = hforge.load(checkpoint, device="cpu")
    val = load("abn-small")[3]
    assert val.n_atoms == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDomainWarning)
        predictor.predict(val)
    compressed = dataclasses.replace(val, positions=0.7 * val.positions, cell=0.7 * val.cell)
    departures = r"outside the model's training structures \(B-B pairs .* B-N pairs .* neighbours within"
    with pytest.warns(OutOfDomainWarning, match=departures):
        predictor.predict(compressed)


def test_a_run_folder_is_not_overwritten_without_resume_or_overwrite(checkpoint, tmp_path):
    folder = checkpoint.parent  # the module's trained run: last.pt, best.pt, metrics.jsonl
    before = {name: (folder / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.jsonl")}
    config = tiny(training={"max_steps": 2, "val_every": 2, "checkpoint_every": 2})
    with pytest.raises(ConfigError, match=f"^{folder}: holds a training run .*--resume.*another --out.*--overwrite"):
        Trainer(load_config(config), folder, progress=False)
    path = write_config(tmp_path / "tiny.yaml", config)
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(folder), "--no-progress"])
    assert result.exit_code == 1 and "--resume" in result.output, result.output
    with pytest.raises(ConfigError, match="choose one"):
        Trainer(load_config(config), folder, resume=True, overwrite=True, progress=False)
    assert {name: (folder / name).read_bytes() for name in before} == before

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in before:
        (copy / name).write_bytes(before[name])
    (copy / "metrics.jsonl").write_text('{"step": 1, "loss": 1e9}\n' * 5)  # an old log that must not be extended
    with one_thread():
        Trainer(load_config(tiny(training={"max_steps": 1, "val_every": 5, "checkpoint_every": 5})), copy,
                overwrite=True, progress=False).run(final_validation=False)
    log = read_log(copy / "metrics.jsonl")
    assert [r["step"] for r in log] == [1] and log[0]["loss"] < 1e9
    assert not (copy / "best.pt").exists()  # the old run's best.pt went with it (no validation in the new one)


def test_evaluation_matches_an_independent_oracle(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    data = load("abn-small")
    references = [data[k] for k in (0, 1, 2)]  # 8, 8, 16 atoms
    result = evaluate_structures(model, references, valence={"B": 3, "N": 5})
    assert [e["name"] for e in result.structures] == ["abn_8_0", "abn_8_1", "abn_16_0"]
    assert sorted(result.groups) == ["16", "8"] and result.groups["8"]["n_structures"] == 2
    errors = []
    for entry, reference in zip(result.structures, references):
        graph = model.graph_builder()(reference)  # targets aligned by the graph layer (another code path)
        with torch.no_grad():
            out = model(graph)
        error = (out.h.double() - graph.h).abs()
        errors.append(error)
        np.testing.assert_allclose(entry["summary"]["h_mae_meV"], 1e3 * float(error.mean()), rtol=1e-9)
        np.testing.assert_allclose(entry["summary"]["s_mae"], float((out.s.double() - graph.s).abs().mean()), rtol=1e-9)
        eig = entry["eigenvalues"]["thresholds"]["0.01"]["orthogonalized"]
        assert eig["n_window"] > 0 and np.isfinite(entry["summary"]["eig_window_ortho_1e-2_meV"])
        for threshold in ("1e-2", "1e-3"):
            assert np.isfinite(entry["summary"][f"eig_window_refS_{threshold}_meV"])
    pooled = 1e3 * float(torch.cat(errors[:2]).mean())
    np.testing.assert_allclose(result.groups["8"]["summary"]["h_mae_meV"], pooled, rtol=1e-9)
    # the headline: the metrics' own functions on the prediction; group values are means over structures
    from hforge.metrics import compare_full_spectra, onsite_energy_errors

    for entry, reference in zip(result.structures, references):
        prediction = predict_blocks(model, reference)
        full = compare_full_spectra(prediction, reference).errors
        summary = entry["summary"]
        assert (summary["ghosts_low"], summary["ghosts_high"]) == (full.ghosts_low, full.ghosts_high)
        assert summary["eig_window_fullS_meV"] == pytest.approx(full.window_mae_meV, rel=1e-9)
        assert summary["gap_error_fullS_meV"] == pytest.approx(abs(full.gap_error_meV), rel=1e-9)
        assert (summary["window_states_pred"], summary["window_states_ref"]) == (full.n_window_pred, full.n_window_ref)
        assert summary["onsite_atom_rmse_meV"] == pytest.approx(onsite_energy_errors(prediction, reference).rmse_meV)
        assert entry["full_spectrum"]["kpoints"] == [[0.0, 0.0, 0.0]]
    for key in ("eig_window_fullS_meV", "onsite_atom_rmse_meV", "ghosts_high"):
        expected = np.mean([e["summary"][key] for e in result.structures[:2]])
        assert result.groups["8"]["summary"][key] == pytest.approx(expected, rel=1e-9)
    # shift removal: adding c*S to the prediction leaves the shift-removed error unchanged
    prediction = predict_blocks(model, references[0])
    from hforge.metrics import compare_blocks

    shifted = predict_blocks(model, references[0])
    from hforge.metrics import align_reference

    s_ref = align_reference(references[0], prediction.edge_index, prediction.cell_shift).s
    shifted.h = prediction.h + 0.7 * s_ref
    a, b = compare_blocks(prediction, references[0]).to_dict(), compare_blocks(shifted, references[0]).to_dict()
    np.testing.assert_allclose(a["h_mae_shifted_meV"]["all"], b["h_mae_shifted_meV"]["all"], rtol=1e-6)


def test_evaluate_cli_on_a_store_and_on_siesta_files(checkpoint, abn_dir, shared_dir, tmp_path):
    out = tmp_path / "eval.json"
    compressed = shared_dir / "abn-extra" / "runs" / "abn_32_10"  # holds abn_32_10.TSHS.xz
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), "abn-small", str(abn_dir / "runs" / "abn_8_0"),
                                      str(compressed), "--split", "val", "--json", str(out), "--no-eigenvalues"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    names = [e["name"] for e in report["structures"]]
    assert names == ["abn_24_0", "abn_8_0", "abn_32_10"] and sorted(report["groups"]) == ["24", "32", "8"]
    assert "per size" in result.output
    # the SIESTA file (float64) and the bundled store's copy (float32) of abn_8_0 give the same errors
    model, _ = load_checkpoint(checkpoint)
    store_copy = evaluate_structures(model, [load("abn-small")[0]], eigenvalues=False).structures[0]["summary"]
    np.testing.assert_allclose(report["structures"][1]["summary"]["h_mae_meV"], store_copy["h_mae_meV"], rtol=1e-4)


def test_evaluate_cli_reports_the_full_s_headline_at_k_points(checkpoint, abn_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(abn_dir / "runs" / "abn_8_0"),
                                      "--kpoint", "0.5,0,0", "--threshold", "1e-2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "ghosts" in result.output and "full S" in result.output and "ref S 1e-2" in result.output
    report = json.loads(out.read_text())
    assert report["settings"]["kpoints"] == [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
    entry = report["structures"][0]
    assert entry["full_spectrum"]["n_kpoints"] == 2 and list(entry["eigenvalues"]["thresholds"]) == ["0.01"]
    assert entry["full_spectrum"]["n_window_ref"] == entry["summary"]["window_states_ref"]
    bad = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(abn_dir / "runs" / "abn_8_0"), "--kpoint", "0.5,0"])
    assert bad.exit_code == 2 and "three reduced coordinates" in bad.output


def test_evaluate_refuses_a_basis_the_model_does_not_know(checkpoint, siesta_fixtures):
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), str(siesta_fixtures / "Si_pdos_k" / "Si_pdos.TSHS")])
    assert result.exit_code == 1
    assert "species" in result.output and "Si" in result.output


# ------------------------------------------------------------------------------- demo
def test_demo_tests_on_the_shared_64_atom_cell_or_the_bundled_24_atom_one(shared_dir, tmp_path):
    shared_cell = demo_test_cell(shared_dir)
    siesta = read_hs(shared_dir / "abn/runs/abn_64_0/abn_64_0.TSHS")
    assert shared_cell.n_atoms == 64 and shared_cell.basis.hash == load("abn-small").basis.hash
    np.testing.assert_array_equal(shared_cell.h, siesta.h)
    fallback = demo_test_cell(tmp_path / "nowhere")
    assert Path(fallback.source).stem == "abn_24_0" and fallback.n_atoms == 24


def test_demo_with_a_tiny_budget(shared_dir, tmp_path):
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path), "--steps", "1", "--shared", str(shared_dir), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert str(tmp_path.resolve()) in result.output.replace("\n", "")
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["table"]) == {"equivariant", "invariant"}
    assert results["validation_structure"] == "abn_64_0" and results["n_atoms"] == 64
    assert "abn_64_0" not in results["train_structures"]
    for kind in ("equivariant", "invariant"):
        model, payload = load_checkpoint(results["checkpoints"][kind])
        assert model.config.kind == kind and payload["extra"]["training"]["step"] == 1
        for path in results["figures"][kind].values():
            assert Path(path).stat().st_size > 0
        metrics = json.loads(Path(results["figures"][kind]["metrics"]).read_text())
        np.testing.assert_allclose(results["table"][kind]["h_mae_meV"], metrics["blocks"]["h_mae_meV"]["all"])
        assert results["budget"][kind]["steps"] == 1
    assert Path(results["figures"]["learning_curves"]).stat().st_size > 0


def test_a_second_stage_starts_from_the_first_stage_weights(tmp_path):
    """training.init_from: the eigenvalue stage starts from the element-wise stage's saved model
    (weights, EMA, baseline, normalisation statistics), with its own loss and schedule."""
    first = Trainer(load_config(tiny(training={"max_steps": 2, "val_every": 10})), tmp_path / "first", progress=False).run()
    saved, _ = load_checkpoint(first.last)
    stage = tiny(training={"max_steps": 1, "val_every": 10, "augment_rotations": False,
                           "init_from": str(first.last)}, loss={"eigen_weight": 1.0})
    second = Trainer(load_config(stage), tmp_path / "second", progress=False)
    for name, value in saved.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name
        assert torch.equal(second.ema.state_dict()[name], value), name
    assert second.run().steps == 1
    other = tiny(model={"channels": 8}, training={"init_from": str(first.last)})
    with pytest.raises(ConfigError, match="model config differs in \\['channels'\\]"):
        Trainer(load_config(other), tmp_path / "third", progress=False)
