"""The training loop: data, batches in atoms, losses, EMA, validation, atomic checkpoints, resume, data parallelism.

``Trainer(config, out_dir).run()`` trains a model as :class:`~hforge.train.config.TrainConfig`
says and writes into ``out_dir``:

* ``last.pt`` (every ``checkpoint_every`` steps and at the end) and ``best.pt`` (the lowest mean
  validation H MAE), written atomically by :func:`hforge.models.save_model`: the checkpoint's
  model is the EMA of the weights (the raw weights when EMA is off), readable by
  :func:`hforge.models.load_checkpoint`; ``extra["training"]`` holds what a resumed run needs: the
  config, the raw weights, optimizer, scheduler, RNG states, step, epoch and batch position;
  ``extra["domain"]`` the training structures' :class:`~hforge.structures.TrainingDomain`, with
  which the predictor warns about structures outside it;
* ``metrics.jsonl``: one JSON object per logged step (``loss``, its H/S/eigenvalue terms, ``lr``)
  and per validation (``val``: per-structure and mean metrics);
* ``learning_curve.png`` at the end, ``config.yaml`` (the resolved config), ``summary.json``.

A folder that already holds a run (``last.pt``, ``best.pt`` or ``metrics.jsonl``) is refused
unless the new run continues it (``resume=True``) or replaces it (``overwrite=True``).

Reproducibility: the weights are seeded by ``training.seed``; the batches of epoch ``e`` are a
permutation drawn from ``(seed, e)``; the rotations of step ``k`` from ``(seed, k)``.  A run
resumed from ``last.pt`` (``resume=True``) therefore repeats the steps after its last checkpoint
exactly and reaches the same weights as an uninterrupted run.

Data parallelism (``torchrun --nproc-per-node P hforge train ...``): every process builds the
same global batches and takes a share of each (balanced in atoms); each process's loss is
weighted by its share of the global batch's entries, the gradients are summed over processes
with ``torch.distributed.all_reduce`` (gloo on CPU, nccl on GPU), so every process takes the
same step as one process on the whole global batch.  A process left without a structure (a
batch of fewer structures than processes) runs one with weight 0.  Rank 0 validates and writes.

Batch normalisation: the statistics of the model's batch-norm layers (the trunk's e3nn
``BatchNorm``) are computed once on the whole training set before the first step
(:func:`calibrate_norms`) and then frozen (the layers stay in evaluation mode, their affine
weights still learn).  With batch statistics a structure's prediction would depend on the other
structures of its batch, training and inference would compute different functions (by how much:
docs/measurements.md), and P processes would not equal one.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hforge.errors import BasisMismatchError, ConfigError, UnknownSpeciesError
from hforge.files import atomic_write, write_json
from hforge.graph import collate, neighbour_list
from hforge.graph.augment import rotate_graph
from hforge.io import HSData, value_block_types
from hforge.io.block_statistics import StatisticsAccumulator, StoreStatistics
from hforge.metrics import GammaLayout
from hforge.models import build_model, load_checkpoint, save_model
from hforge.models.baseline import baseline_of, fit_baseline, fit_operator_baseline
from hforge.ops.two_centre import operator_coefficients
from hforge.structures.domain import TrainingDomain
from hforge.train.config import TrainConfig
from hforge.train.evaluation import check_data_basis, evaluate_structures, with_valence
from hforge.train.loop import (
    MetricsLog,
    atom_batches,
    config_differences,
    ema_decay,
    lr_lambda,
    rng_state,
    seed_everything,
    set_rng_state,
    update_ema,
    validation_record,
)
from hforge.train.losses import BlockLoss, eigenvalue_loss, eigenvalue_target, null_loss, null_target

__all__ = [
    "TrainResult", "Trainer", "TrainingData", "calibrate_norms", "distributed_context", "norm_layers", "share_of_batch",
]

logger = logging.getLogger(__name__)

#: Files that make a folder a training run's: a new run there would overwrite or extend them.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")

#: Everything a run writes (removed by ``overwrite=True``).
_OUTPUTS = (*RUN_FILES, "config.yaml", "summary.json", "learning_curve.png")


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
@dataclass
class _Item:
    """One training structure, prepared once: its graph with targets and the block type of every value."""

    name: str
    n_atoms: int
    graph: Any
    types: torch.Tensor
    eigen: Any = None
    null: Any = None


class TrainingData:
    """The structures of a config's dataset, split by its selections, checked against the model.

    Attributes:
        config: the config with the model fields it left out taken from this data
            (:meth:`with_data_defaults`).
        store: the :class:`~hforge.io.HSStore`.
        basis: the store's basis with the config's valence charges filled in.
        train, val: indices of the store's structures in each split.

    Raises:
        ConfigError: an empty split, or species of the data that the model does not list.
    """

    def __init__(self, config: TrainConfig) -> None:
        from hforge.datasets import load

        self.store = load(config.data.source).store
        self.basis = with_valence(self.store.basis, config.data.valence)
        manifest = self.store.manifest
        self.train = [k for k, e in enumerate(manifest) if config.data.train.matches(e["name"], e["n_atoms"], e.get("split"))]
        self.val = [k for k, e in enumerate(manifest) if config.data.val.matches(e["name"], e["n_atoms"], e.get("split"))]
        for split in ("train", "val"):
            if not getattr(self, split):
                sizes = sorted({e["n_atoms"] for e in manifest})
                raise ConfigError(
                    f"config: data.{split} selects no structure of {config.data.source} "
                    f"({len(manifest)} structures of {sizes} atoms): {getattr(config.data, split)}"
                )
        overlap = sorted(set(self.train) & set(self.val))
        if overlap:
            raise ConfigError(f"config: data.train and data.val share structures {[manifest[k]['name'] for k in overlap]}")
        self.config = config = self.with_data_defaults(config)
        used = self.species()
        missing = sorted(set(used) - set(config.model.species))
        if missing:
            raise ConfigError(
                f"config: the data holds species {missing} that model.species={list(config.model.species)} lacks; "
                f"set model.species (the data's basis has {self.store.basis.symbols})"
            )
        unknown = sorted(set(config.model.species) - set(self.store.basis.symbols))
        if unknown:
            raise ConfigError(f"config: model.species {unknown} are not in the data's basis {self.store.basis.symbols}")

    def species(self) -> tuple[str, ...]:
        """The species of the training and validation structures, in the store's basis order."""
        used = {s for k in self.train + self.val for s in self.store.manifest[k]["species"]}
        return tuple(s for s in self.store.basis.symbols if s in used)

    def avg_num_neighbors(self, r_max: float) -> float:
        """Mean number of neighbours within ``r_max`` (the model's interaction graph: every periodic
        image, both directions) over all atoms of the training structures, as MACE computes it."""
        pairs = atoms = 0
        for k in self.train:
            data = self.store.read(k)
            pairs += neighbour_list(data.positions, data.cell, data.pbc, r_max).n_pairs
            atoms += data.n_atoms
        return pairs / atoms

    def with_data_defaults(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the model fields of ``config.model_from_data`` (those its model section
        left out) set from this data (:data:`~hforge.train.config.FROM_DATA`); explicit values stay."""
        derived: dict[str, Any] = {}
        if "species" in config.model_from_data:
            derived["species"] = self.species()
        if "avg_num_neighbors" in config.model_from_data:
            derived["avg_num_neighbors"] = self.avg_num_neighbors(config.model.r_max)
        return replace(config, model=replace(config.model, **derived), model_from_data=())

    def name(self, index: int) -> str:
        return self.store.manifest[index]["name"]

    def n_atoms(self, index: int) -> int:
        return int(self.store.manifest[index]["n_atoms"])

    def read(self, index: int) -> HSData:
        data = self.store.read(index)
        data.basis = self.basis
        return data


def share_of_batch(batch: list[int], sizes: list[int], rank: int, world: int) -> list[int]:
    """The structures of a global batch that process ``rank`` of ``world`` takes (largest first,
    each to the process with the fewest atoms so far; ties to the lowest rank)."""
    load = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for k in sorted(batch, key=lambda k: (-sizes[k], k)):
        r = min(range(world), key=lambda p: (load[p], p))
        shares[r].append(k)
        load[r] += sizes[k]
    return sorted(shares[rank])


def norm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The batch-norm layers of a model (e3nn's and torch's)."""
    from e3nn.nn import BatchNorm

    return [m for m in model.modules() if isinstance(m, (BatchNorm, torch.nn.modules.batchnorm._BatchNorm))]


def calibrate_norms(model: torch.nn.Module, graphs: list[Any], batch_atoms: int = 512) -> None:
    """Set the running statistics of ``model``'s batch-norm layers to their averages over ``graphs``
    (forward passes without gradients, batches of up to ``batch_atoms`` atoms), then leave the
    layers in evaluation mode."""
    layers = norm_layers(model)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    batches = atom_batches([g.n_atoms for g in graphs], batch_atoms, 0, 0)
    model.eval()
    with torch.no_grad():
        for k, batch in enumerate(batches):
            for m in layers:
                m.train()
                m.momentum = 1.0 / (k + 1)  # running value = mean over the batches so far
            model(collate([graphs[i] for i in sorted(batch)]))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
        m.eval()


# ---------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def distributed_context(device: torch.device) -> DistributedContext:
    """The process group of a ``torchrun`` launch (initialised here: gloo on CPU, nccl on CUDA), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(
        torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


# ---------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :meth:`Trainer.run` did: paths, the last validation, throughput and memory."""

    out_dir: Path
    last: Path
    best: Path | None
    steps: int
    validation: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "last": str(self.last), "best": None if self.best is None else str(self.best),
            "steps": self.steps, "validation": self.validation, "throughput": self.throughput,
        }


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: training.device={name!r} but torch sees no CUDA device")
    return torch.device(name)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Trainer:
    """Train a model (see the module docstring).

    Args:
        config: the training configuration.
        out_dir: output folder (created).
        resume: continue from ``out_dir/last.pt`` (refused when the config differs, apart from
            ``training.max_steps`` / ``max_minutes``).
        progress: show a progress bar (rank 0).
        overwrite: replace the run already in ``out_dir`` (its checkpoints, log and figures are
            removed once the new run is set up); without it a folder holding a run is refused.

    Raises:
        ConfigError: an invalid config for the data, a folder holding a run (without ``resume``
            or ``overwrite``), a resume without checkpoint or with another config.
    """

    def __init__(
        self, config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
        overwrite: bool = False,
    ) -> None:
        out_dir = Path(out_dir)
        if resume and overwrite:
            raise ConfigError("--resume continues the run in the folder, --overwrite replaces it: choose one", path=out_dir)
        existing = [name for name in RUN_FILES if (out_dir / name).exists()] if not resume else []
        if existing and not overwrite:
            raise ConfigError(
                f"holds a training run ({', '.join(existing)}): continue it with --resume, write to another --out, "
                "or replace it with --overwrite",
                path=out_dir,
            )
        if (config.loss.eigen_weight > 0 or config.loss.null_weight > 0) and config.augment:
            raise ConfigError(
                "config: loss.eigen_weight or loss.null_weight > 0 needs training.augment_rotations: false (their targets "
                "are unrotated)"
            )
        self.out_dir = Path(out_dir)
        self.progress = progress
        training = config.training
        self.device = _resolve_device(training.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = distributed_context(self.device)
        if config.loss.reduction == "types" and self.dist.world > 1:
            raise ConfigError("config: loss.reduction=types does not split over processes; use entries")
        self.data = TrainingData(config)
        self.config = config = self.data.config  # species / avg_num_neighbors from the data where not given
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.log_path = self.out_dir / "metrics.jsonl"
        self.log = MetricsLog(self.log_path)
        seed_everything(training.seed)
        try:
            coefficients, statistics, mean_operator = self._fit_baseline()
            self.model = build_model(config.model, self.data.basis, statistics).to(self.device)
        except (UnknownSpeciesError, BasisMismatchError) as exc:  # the data and the model config disagree
            raise ConfigError(f"config: cannot build the model for {config.data.source}: {exc}") from exc
        if coefficients is not None:
            self.model.baseline_coef.copy_(torch.from_numpy(coefficients))
        if mean_operator is not None:
            with torch.no_grad():
                self.model.separable.mean.copy_(torch.from_numpy(mean_operator))
        self.ema = None
        if training.ema_decay > 0:
            self.ema = build_model(config.model, self.data.basis, statistics).to(self.device)
            self.ema.load_state_dict(self.model.state_dict())
            self.ema.eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = config.optimizer
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        self.optimizer = cls(params, lr=opt.lr, weight_decay=opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config.schedule, training.max_steps))
        self.loss_fn = BlockLoss(
            self.data.store.statistics, kind=config.loss.kind, reduction=config.loss.reduction,
            h_weight=config.loss.h_weight, s_weight=config.loss.s_weight, shift_invariant=config.loss.shift_invariant,
            normalize=config.loss.normalize, onsite_weight=config.loss.onsite_weight,
        ).to(self.device)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: float = math.inf
        self.elapsed_s = 0.0
        self.train_time_s, self.structures_seen, self.atoms_seen = 0.0, 0, 0
        self.last_validation: dict[str, Any] = {}
        if resume:
            self._resume()
        elif training.init_from is not None:
            self._init_from(Path(training.init_from))
        self.items = self._prepare(self.data.train)
        self.sizes = [item.n_atoms for item in self.items]
        self.domain = TrainingDomain.of(
            ((d.positions, d.cell, d.pbc, [d.basis.symbols[s] for s in d.species]) for d in map(self.data.read, self.data.train)),
            config.model.r_max,
        )
        self.norms = norm_layers(self.model)
        if not resume and training.init_from is None:
            calibrate_norms(self.model, [item.graph for item in self.items])
            if self.ema is not None:
                self.ema.load_state_dict(self.model.state_dict())
        if existing and self.dist.is_main:  # overwrite: the old run's files go only now that the new one is set up
            for name in _OUTPUTS:
                (self.out_dir / name).unlink(missing_ok=True)

    # ---- setup --------------------------------------------------------------------------------
    def _fit_baseline(self) -> tuple[np.ndarray | None, StoreStatistics, np.ndarray | None]:
        """``(baseline coefficients, statistics for the output scaling, mean separable operator)``:
        without a baseline ``(None, the store's statistics, None)``; with one, its least-squares fit
        to the training structures (:mod:`hforge.models.baseline`: per block type for ``h0``; the
        energy zero and, with ``separable``, the species-mean ``D`` for ``operator``) and the
        statistics of ``H - H0`` (what the free blocks then predict)."""
        statistics = self.data.store.statistics
        model = self.config.model
        if model.baseline == "none":
            return None, statistics, None
        basis = model.check_basis(self.data.basis)
        structures = (self.data.read(k) for k in self.data.train)
        mean_operator = None
        if model.baseline == "h0":
            coefficients = fit_baseline(basis, structures)
        else:
            c0, mean_operator = fit_operator_baseline(basis, structures, model.projectors if model.separable else None)
            coefficients = operator_coefficients(basis, c0)
        accumulator = StatisticsAccumulator(statistics.basis)
        for k in self.data.train:
            data = self.data.read(k)
            accumulator.add(replace(data, h=data.h - baseline_of(basis, data, coefficients)[None, :]))
        return coefficients, accumulator.result(), mean_operator

    def _prepare(self, indices: list[int]) -> list[_Item]:
        builder = self.model.graph_builder()
        items = []
        for k in indices:
            data = self.data.read(k)
            graph = self.model.with_physics(builder(data))
            edge, shift, ptr = graph.structure_pairs(0)
            types = torch.from_numpy(value_block_types(self.model.basis, graph.species.numpy(), edge, shift, ptr))
            eigen = None
            if self.config.loss.eigen_weight > 0:
                layout = GammaLayout.of(edge, shift, ptr, data.orbital_offsets)
                eigen = eigenvalue_target(
                    data, layout=layout, window=self.config.loss.eigen_window, threshold=self.config.loss.eigen_threshold
                )
            null = None
            if self.config.loss.null_weight > 0:
                layout = GammaLayout.of(edge, shift, ptr, data.orbital_offsets)
                null = null_target(data, self.config.loss.null_directions, layout=layout)
            items.append(_Item(self.data.name(k), data.n_atoms, graph, types, eigen, null))
        return items

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {
            "domain": self.domain.to_dict(),
            "training": {
                "config": self.config.to_dict(),
                "model_state": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "best": self.best,
                "elapsed_s": self.elapsed_s,
                "train_time_s": self.train_time_s,
                "structures_seen": self.structures_seen,
                "atoms_seen": self.atoms_seen,
                "data": {
                    "source": self.config.data.source,
                    "train": [self.data.name(k) for k in self.data.train],
                    "val": [self.data.name(k) for k in self.data.val],
                },
            }
        }

    def _save(self, path: Path) -> None:
        save_model(self.ema if self.ema is not None else self.model, path, extra=self._checkpoint_extra())

    def _init_from(self, path: Path) -> None:
        """Start from the weights of another run's checkpoint (``training.init_from``)."""
        model, _ = load_checkpoint(path, map_location=self.device)
        check_data_basis(model.basis, self.data.basis, source=self.config.data.source)
        if model.config.to_dict() != self.config.model.to_dict():
            theirs, ours = model.config.to_dict(), self.config.model.to_dict()
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ConfigError(f"training.init_from: the checkpoint's model config differs in {differ}", path=path)
        self.model.load_state_dict(model.state_dict())
        if self.ema is not None:
            self.ema.load_state_dict(model.state_dict())

    def _resume(self) -> None:
        if not self.last_path.is_file():
            raise ConfigError(f"--resume: no checkpoint {self.last_path} to resume from")
        model, payload = load_checkpoint(self.last_path, map_location=self.device)
        state = payload.get("extra", {}).get("training")
        if state is None:
            raise ConfigError("--resume: the checkpoint holds no training state", path=self.last_path)
        check_data_basis(model.basis, self.data.basis, source=self.config.data.source)
        differ = config_differences(state["config"], self.config.to_dict(), ignore=("training.max_steps", "training.max_minutes"))
        if differ:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {differ}", path=self.last_path)
        self.model.load_state_dict(state["model_state"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        for key in ("step", "epoch", "batch_in_epoch", "best", "elapsed_s", "train_time_s", "structures_seen", "atoms_seen"):
            setattr(self, key, state[key])
        if self.dist.is_main:
            self.log.trim(self.step)

    # ---- one step -----------------------------------------------------------------------------
    def _batch(self, share: list[int]) -> tuple[Any, torch.Tensor, torch.Tensor, list[_Item]]:
        items = [self.items[k] for k in share]
        graph = collate([item.graph for item in items])
        if self.config.augment:
            from scipy.spatial.transform import Rotation

            rng = np.random.default_rng([self.config.training.seed, self.step, 7])
            rotations = Rotation.random(len(self.items), random_state=rng).as_matrix()
            graph = rotate_graph(graph, rotations[share], self.model.basis)
        types = torch.cat([item.types for item in items])
        counts = torch.tensor([item.graph.n_values for item in items])
        value_batch = torch.repeat_interleave(torch.arange(len(items)), counts)
        return graph, types, value_batch, items

    def _train_step(self, batch: list[int]) -> dict[str, float]:
        world, rank = self.dist.world, self.dist.rank
        share = share_of_batch(batch, self.sizes, rank, world)
        weight_scale = 1.0
        if not share:  # fewer structures than processes: run one with weight 0
            share, weight_scale = [batch[0]], 0.0
        graph, types, value_batch, items = self._batch(share)
        totals = self.dist.all_sum(
            torch.tensor([float(graph.n_values) * weight_scale, float(len(items)) * weight_scale], dtype=torch.float64)
        )
        fraction = weight_scale * graph.n_values / float(totals[0])
        dtype, device = self.model.dtype, self.device
        self.model.train()
        for layer in self.norms:
            layer.eval()
        out = self.model(graph)
        s_pred = out.s if self.model.learns_overlap else None  # an exact S has nothing to learn
        terms = self.loss_fn(
            out.h, graph.h.to(device, dtype), types.to(device), s_pred, graph.s.to(device, dtype), batch=value_batch.to(device)
        )
        loss = terms["loss"] * fraction
        logged = {name: float(value.detach()) * fraction for name, value in terms.items() if name != "loss"}
        if self.config.loss.null_weight > 0:
            h_pieces, ref_pieces, s_pieces = (graph.split_values(v) for v in (out.h, graph.h.to(device, dtype), graph.s))
            shifts = [float(((h - r).detach().double() * s.double()).sum() / (s.double() ** 2).sum())
                      for h, r, s in zip(h_pieces, ref_pieces, s_pieces)]
            null = sum(null_loss(h, item.null, c) for h, item, c in zip(h_pieces, items, shifts))
            null = null * (weight_scale / float(totals[1]))
            loss = loss + self.config.loss.null_weight * null.to(loss.dtype)
            logged["null"] = float(null.detach())
        if self.config.loss.eigen_weight > 0:
            pieces = graph.split_values(out.h)
            eig = sum(eigenvalue_loss(h, item.eigen) for h, item in zip(pieces, items)) * (weight_scale / float(totals[1]))
            loss = loss + self.config.loss.eigen_weight * eig.to(loss.dtype)
            logged["eig"] = float(eig.detach())
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        if world > 1:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.all_sum(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        grad_norm = float("nan")
        if self.config.optimizer.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimizer.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            update_ema(
                zip(self.ema.parameters(), self.model.parameters()), zip(self.ema.buffers(), self.model.buffers()),
                ema_decay(self.step, self.config.training.ema_decay),
            )
        names = sorted(logged)
        summed = self.dist.all_sum(torch.tensor([float(loss.detach())] + [logged[n] for n in names], dtype=torch.float64))
        record = {"loss": float(summed[0]), **{f"loss_{n}": float(v) for n, v in zip(names, summed[1:])}}
        record.update(lr=lr, grad_norm=grad_norm, structures=len(batch), atoms=sum(self.sizes[k] for k in batch))
        return record

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Metrics of the EMA (or raw) model on the validation structures: per structure and means."""
        model = self.ema if self.ema is not None else self.model
        evaluation = evaluate_structures(
            model, (self.data.read(k) for k in self.data.val), eigenvalues=self.config.training.val_eigenvalues,
        )
        model.train(model is self.model)
        record = validation_record(evaluation)
        shifts = [entry["blocks"].get("shift_eV") for entry in evaluation.structures]
        record["energy_zero_shift_eV"] = float(np.mean(shifts)) if shifts and None not in shifts else None
        return record

    def _calibrate_energy_zero(self, shift: float | None) -> None:
        """With a shift-invariant loss nothing pins the model's energy zero to SIESTA's: move the
        baseline's ``c S`` by the validation structures' mean best shift (the prediction minus it is
        closest to DFT), in the raw model (the EMA copies its buffers every step) and the EMA."""
        if shift is None or not self.config.loss.shift_invariant or getattr(self.model, "baseline_coef", None) is None:
            return
        with torch.no_grad():
            for model in (self.model, self.ema):
                if model is not None:
                    model.baseline_coef[3] -= shift  # the overlap part's coefficients (eV), every block type

    # ---- loop ---------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.log.append(record)

    def _validate_and_keep_best(self) -> None:
        if self.dist.is_main:
            self.last_validation = self.validate()
            self._log({"step": self.step, "epoch": self.epoch, "val": self.last_validation})
            self._calibrate_energy_zero(self.last_validation.get("energy_zero_shift_eV"))
            # a shift-invariant loss leaves each structure's energy zero free: select on the error without it
            key = "h_mae_shifted_meV" if self.config.loss.shift_invariant else "h_mae_meV"
            score = self.last_validation["mean"][key]
            logger.info("step %d: validation H MAE %.3f meV (best so far %.3f)", self.step, score, min(score, self.best))
            if score < self.best:
                self.best = score
                self._save(self.best_path)
        self.dist.barrier()

    def run(self, *, final_validation: bool = True) -> TrainResult:
        """Train to ``training.max_steps`` (or ``max_minutes``); returns paths, validation and throughput.

        Args:
            final_validation: validate after the last step (unless that step just did).
        """
        training = self.config.training
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            with atomic_write(self.out_dir / "config.yaml") as f:
                yaml.safe_dump(self.config.to_dict(), f, sort_keys=False)
        start = time.perf_counter()
        elapsed_before = self.elapsed_s
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=training.max_steps, initial=self.step, desc=f"train {self.config.model.kind}", unit="step",
                       dynamic_ncols=True)
        validated_at = -1
        while self.step < training.max_steps:
            batches = atom_batches(self.sizes, training.batch_atoms, training.seed, self.epoch)
            t0 = time.perf_counter()
            record = self._train_step(batches[self.batch_in_epoch])
            self.train_time_s += time.perf_counter() - t0
            self.structures_seen += record["structures"]
            self.atoms_seen += record["atoms"]
            self.step += 1
            self.batch_in_epoch += 1
            if self.batch_in_epoch == len(batches):
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.elapsed_s = elapsed_before + time.perf_counter() - start
            if self.step % training.log_every == 0:
                self._log({"step": self.step, "epoch": self.epoch, **record})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3g}", lr=f"{record['lr']:.2g}")
            if self.step % training.val_every == 0:
                self._validate_and_keep_best()
                validated_at = self.step
            if self.step % training.checkpoint_every == 0 and self.dist.is_main:
                self._save(self.last_path)
            if training.max_minutes is not None and (time.perf_counter() - start) / 60 >= training.max_minutes:
                break
        if bar is not None:
            bar.close()
        if final_validation and validated_at != self.step:
            self._validate_and_keep_best()
        if self.dist.is_main:
            self._save(self.last_path)
        return self._finish()

    def _finish(self) -> TrainResult:
        throughput = {
            "processes": self.dist.world,
            "train_time_s": self.train_time_s,
            "structures_per_s": self.structures_seen / self.train_time_s if self.train_time_s else float("nan"),
            "atoms_per_s": self.atoms_seen / self.train_time_s if self.train_time_s else float("nan"),
            "peak_rss_mb": _peak_rss_mb(),
        }
        if self.device.type == "cuda":
            throughput["peak_gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        result = TrainResult(self.out_dir, self.last_path, self.best_path if self.best_path.is_file() else None, self.step,
                             self.last_validation, throughput)
        if self.dist.is_main:
            from hforge.train.curves import plot_learning_curves

            plot_learning_curves(self.log.records(), self.out_dir / "learning_curve.png", title=self.config.model.kind)
            write_json(self.out_dir / "summary.json", result.to_dict())
        return result
