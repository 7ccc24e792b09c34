"""The pieces of a training loop, shared by HForge's :class:`~hforge.train.trainer.Trainer` and
graph2mat's baseline (:func:`hforge.train.graph2mat.train_graph2mat`), so that both seed, schedule,
average, log, check a resume and write their files alike:

- :func:`seed_everything`, :func:`rng_state` / :func:`set_rng_state`: torch, numpy and python RNGs;
- :func:`atom_batches`: the batches of an epoch, drawn from ``(seed, epoch)``;
- :func:`lr_lambda`: linear warm-up, then constant or cosine;
- :func:`ema_decay`, :func:`update_ema`: the exponential moving average of the weights;
- :func:`validation_record`: an :class:`~hforge.train.evaluation.Evaluation` as a log record;
- :class:`MetricsLog`: ``metrics.jsonl``, strict JSON one record a line, trimmed on resume;
- :func:`config_differences`: what a resumed run changed;
- :func:`save_checkpoint`: ``torch.save`` through :func:`hforge.files.atomic_write`.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hforge.files import atomic_write, to_json

__all__ = [
    "MetricsLog",
    "atom_batches",
    "config_differences",
    "ema_decay",
    "lr_lambda",
    "read_log",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "update_ema",
    "validation_record",
]


def seed_everything(seed: int) -> None:
    """Seed torch's, numpy's and python's global generators with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The torch, numpy and python random states (JSON- and ``weights_only``-safe)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def atom_batches(sizes: list[int], batch_atoms: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of an epoch: positions into ``sizes`` (atoms per structure) in a permutation
    drawn from ``(seed, epoch)``, packed greedily up to ``batch_atoms`` atoms (at least one each)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(sizes))
    batches: list[list[int]] = []
    current: list[int] = []
    atoms = 0
    for k in order.tolist():
        if current and atoms + sizes[k] > batch_atoms:
            batches.append(current)
            current, atoms = [], 0
        current.append(k)
        atoms += sizes[k]
    if current:
        batches.append(current)
    return batches


def lr_lambda(schedule: Any, max_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of a step (a :class:`~hforge.train.config.ScheduleConfig`): linear
    warm-up, then constant or cosine to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if schedule.warmup_steps and step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        if schedule.name == "constant":
            return 1.0
        progress = min(1.0, (step - schedule.warmup_steps) / max(1, max_steps - schedule.warmup_steps))
        return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def ema_decay(step: int, max_decay: float) -> float:
    """The EMA's decay at optimizer step ``step`` (0 for the first): ``min(max_decay, (1 + step) / (10 + step))``,
    so that the average follows the weights closely while they move fast."""
    return min(max_decay, (1 + step) / (10 + step))


def update_ema(
    averaged: Iterable[tuple[torch.Tensor, torch.Tensor]], copied: Iterable[tuple[torch.Tensor, torch.Tensor]], decay: float
) -> None:
    """One EMA step: every ``(ema, value)`` of ``averaged`` (the parameters) moves to
    ``decay * ema + (1 - decay) * value``; every one of ``copied`` (buffers, integer tensors) takes the value."""
    with torch.no_grad():
        for ema, value in averaged:
            ema.lerp_(value, 1 - decay)
        for ema, value in copied:
            ema.copy_(value)


def validation_record(evaluation: Any) -> dict[str, Any]:
    """An :class:`~hforge.train.evaluation.Evaluation` as a validation log record: ``mean`` (over the
    structures, NaN-aware), ``structures`` (per structure) and ``groups`` (per size) summaries."""
    from hforge.train.evaluation import nan_mean

    rows = {entry["name"]: entry["summary"] for entry in evaluation.structures}
    keys = sorted({k for row in rows.values() for k in row})
    mean = {k: nan_mean([row.get(k, np.nan) for row in rows.values()]) for k in keys}
    return {"mean": mean, "structures": rows, "groups": {n: g["summary"] for n, g in evaluation.groups.items()}}


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """A run's ``metrics.jsonl``: one strict-JSON record a line (NaN/inf as null), appended as the
    run goes (the one file not written atomically, docs/design.md), every record with its ``step``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(to_json(record, indent=None) + "\n")

    def trim(self, step: int) -> None:
        """Drop the records of steps after ``step`` (a resumed run repeats them), atomically."""
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        with atomic_write(self.path) as f:
            f.writelines(line + "\n" for line in lines)

    def records(self) -> list[dict[str, Any]]:
        return read_log(self.path)


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys (``"training.lr"``) whose values differ between two nested configs, sorted,
    apart from those in ``ignore``."""

    def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in config.items():
            name = f"{prefix}{key}"
            out.update(flat(value, name + ".") if isinstance(value, Mapping) else {name: value})
        return out

    a, b, skip = flat(saved), flat(now), set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save(payload)`` written atomically (:func:`hforge.files.atomic_write`: a failed or
    interrupted write leaves the old file; ``OutputError`` naming ``path``)."""
    with atomic_write(path, "wb") as f:
        torch.save(dict(payload), f)
    return Path(path)
