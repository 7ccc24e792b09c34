"""Training step throughput, group ``train_step``: one optimizer step (forward, backward, AdamW,
EMA) of :class:`hforge.train.Trainer` on a 32-atom batch of the bundled abn-small training cells (8 + 8
+ 16 atoms), for both model kinds, against the model's forward pass alone on the same batch (the floor
of a step: a step costs roughly forward + backward ≈ 3 forwards).

Checked before timing: the batched forward equals the forwards of its structures one by one (to
1e-5 relative), and a step gives a finite loss and gradient norm and changes the weights.  Then at
least 5 rounds after a warm-up; the step's rounds are interleaved with forward rounds
(``extra_info["ratio_median"]``, ``ratio_min``, ``ratio_max``: step / forward).

Run: ``.venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-only``; structures/s and
atoms/s of a step are ``3 / mean`` and ``32 / mean``.  Multi-process throughput: ``hforge train``
writes ``summary.json["throughput"]`` (launch it with ``torchrun --nproc-per-node P``).  Small
cells only: ``HFORGE_BENCH_SIZE`` changes nothing here.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks._bench import interleaved, timed
from hforge.graph import collate
from hforge.train.config import load_config
from hforge.train.trainer import Trainer

BATCH = ["abn_8_0", "abn_8_1", "abn_16_0"]
ROUNDS = 5


@pytest.fixture(scope="module", params=["equivariant", "invariant"])
def trainer(request, tmp_path_factory):
    config = load_config({
        "data": {"source": "abn-small", "train": {"names": BATCH}, "val": {"names": ["abn_24_0"]}},
        "model": {"kind": request.param},
        "training": {"max_steps": 10**6, "batch_atoms": 32, "device": "cpu"},
    })
    return Trainer(config, tmp_path_factory.mktemp(request.param), progress=False)


def forward(trainer):
    """The model's forward pass on the whole batch (evaluation mode, no gradients)."""
    graph = collate([item.graph for item in trainer.items])

    def run():
        trainer.model.eval()
        with torch.no_grad():
            return trainer.model(graph)

    return graph, run


def test_forward_only(benchmark, trainer):
    benchmark.group = f"train_step {trainer.config.model.kind}"
    graph, run = forward(trainer)
    batched = graph.split_values(run().h)
    with torch.no_grad():
        for item, values in zip(trainer.items, batched):
            alone = trainer.model(item.graph).h
            error = float((values - alone).abs().max() / alone.abs().max())
            assert error < 1e-5, f"{item.name}: batched forward differs from its own by {error:.2e}"
    timed(benchmark, run, rounds=ROUNDS)


def test_train_step(benchmark, trainer):
    benchmark.group = f"train_step {trainer.config.model.kind}"
    batch = list(range(len(trainer.items)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    record = trainer._train_step(batch)  # also the warm-up (numba compilation)
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())), "the step changed no weight"
    interleaved(benchmark, lambda: trainer._train_step(batch), forward(trainer)[1], rounds=ROUNDS)
