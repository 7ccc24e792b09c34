"""Training step throughput, group ``train_step``: one optimizer step (forward, backward, AdamW,
EMA) of :class:`hforge.train.Trainer` on a 32-atom batch of the bundled abn-small training cells (8 + 8
+ 16 atoms), for both model kinds, against the model's forward pass alone on the same batch (the floor
of a step: a step costs roughly forward + backward ≈ 3 forwards).

Run: ``.venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-only``; structures/s and
atoms/s of a step are ``3 / mean`` and ``32 / mean``.  Multi-process throughput: ``hforge train``
writes ``summary.json["throughput"]`` (launch it with ``torchrun --nproc-per-node P``).
"""

from __future__ import annotations

import pytest
import torch

from hforge.graph import collate
from hforge.train.config import load_config
from hforge.train.trainer import Trainer

BATCH = ["abn_8_0", "abn_8_1", "abn_16_0"]


@pytest.fixture(scope="module", params=["equivariant", "invariant"])
def trainer(request, tmp_path_factory):
    config = load_config({
        "data": {"source": "abn-small", "train": {"names": BATCH}, "val": {"names": ["abn_24_0"]}},
        "model": {"kind": request.param},
        "training": {"max_steps": 10**6, "batch_atoms": 32, "device": "cpu"},
    })
    return Trainer(config, tmp_path_factory.mktemp(request.param), progress=False)


def test_train_step(benchmark, trainer):
    benchmark.group = f"train_step {trainer.config.model.kind}"
    batch = list(range(len(trainer.items)))
    trainer._train_step(batch)  # warm-up (numba compilation)
    benchmark(trainer._train_step, batch)


def test_forward_only(benchmark, trainer):
    benchmark.group = f"train_step {trainer.config.model.kind}"
    graph = collate([item.graph for item in trainer.items])
    trainer.model.eval()

    def forward():
        with torch.no_grad():
            return trainer.model(graph)

    forward()
    benchmark(forward)
