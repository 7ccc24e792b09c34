"""Training configuration: validated dataclasses read from YAML.

A configuration has six sections (every field has a default, see :data:`DEFAULT_CONFIG_YAML`,
which ``hforge train --print-default-config`` prints)::

    data:      source (bundled name or store path), train/val selections by size or name, valence
    model:     any field of :class:`hforge.models.ModelConfig` (kind, channels, ...); species and
               avg_num_neighbors, when left out, are taken from the training data (:data:`FROM_DATA`)
    loss:      weights of the normalised H and S block losses, shift invariance, eigenvalue loss
    optimizer: adam/adamw, learning rate, weight decay, gradient clipping
    schedule:  constant or cosine with linear warm-up
    training:  steps, batch size in atoms, EMA, validation/checkpoint periods, seed, device, precision

:func:`load_config` reads a YAML file (or a dict) and raises :class:`~hforge.errors.ConfigError`
naming the section and field of the first problem (unknown field, wrong type, bad value).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from hforge.errors import ConfigError
from hforge.models import ModelConfig

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "FROM_DATA",
    "DataConfig",
    "LossConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "Selection",
    "TrainConfig",
    "TrainingConfig",
    "load_config",
]


#: Model fields that training takes from its data where the config leaves them out, as MACE does:
#: ``species`` (those of the training and validation structures, in the store's basis order) and
#: ``avg_num_neighbors`` (the mean number of neighbours within ``r_max`` over the training
#: structures' atoms).  :class:`~hforge.models.ModelConfig`'s own defaults are aBN's.
FROM_DATA = ("species", "avg_num_neighbors")

#: The sections of a configuration file.
SECTIONS = ("data", "model", "loss", "optimizer", "schedule", "training")


def _check(section: str, name: str, ok: bool, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config: {section}.{name}={value!r}: {why}")


def _from_mapping(cls: type, section: str, data: Mapping[str, Any] | None) -> Any:
    """``cls(**data)`` refusing unknown fields, with the section in every error."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config: unknown fields {unknown} in section {section!r}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"config: section {section!r}: {exc}") from None


@dataclass(frozen=True)
class Selection:
    """Which structures of the dataset a split holds: all conditions must hold.

    Attributes:
        split: only the structures the store puts in this split (``train``, ``val`` or ``test``:
            ``hforge data convert``'s split by size, or the one a bundled store was made with;
            None: any).
        min_atoms, max_atoms: size range (inclusive; None: unbounded).
        names: only these structures (None: any).
        exclude: never these structures (e.g. cells held out of training).
    """

    split: str | None = None
    min_atoms: int | None = None
    max_atoms: int | None = None
    names: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "exclude", tuple(str(n) for n in self.exclude))
        _check("data", "split", self.split in (None, "train", "val", "test"), "train, val, test or null", self.split)
        for name in ("min_atoms", "max_atoms"):
            value = getattr(self, name)
            _check("data", name, value is None or (isinstance(value, int) and value >= 0), "a non-negative integer or null",
                   value)

    def matches(self, name: str, n_atoms: int, split: str | None = None) -> bool:
        """Whether the structure ``name`` of ``n_atoms`` atoms, in the store's ``split``, is selected."""
        return (
            (self.split is None or split == self.split)
            and (self.min_atoms is None or n_atoms >= self.min_atoms)
            and (self.max_atoms is None or n_atoms <= self.max_atoms)
            and (self.names is None or name in self.names)
            and name not in self.exclude
        )

    @classmethod
    def parse(cls, value: Any, section: str) -> "Selection":
        if isinstance(value, Selection):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: {section} must be a mapping like {{max_atoms: 32}}, got {value!r}")
        return _from_mapping(cls, section, value)


@dataclass(frozen=True)
class DataConfig:
    """Attributes:
    source: a bundled dataset name (``abn-small``) or the path of a store (``hforge data convert``;
        relative paths are relative to the config file).
    train, val: the structures of each split (:class:`Selection`); default: the store's own
        ``train`` and ``val`` splits (in ``abn-small``: the 8- and 16-atom cells, and the 24-atom cell).
    valence: Z_valence per species for bases that do not record it (needed by the eigenvalue
        metrics: occupied states), e.g. ``{B: 3, N: 5}``.
    """

    source: str = "abn-small"
    train: Selection = field(default_factory=lambda: Selection(split="train"))
    val: Selection = field(default_factory=lambda: Selection(split="val"))
    valence: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", os.fspath(self.source))
        object.__setattr__(self, "train", Selection.parse(self.train, "data.train"))
        object.__setattr__(self, "val", Selection.parse(self.val, "data.val"))
        charges = isinstance(self.valence, Mapping) and all(
            isinstance(v, (int, float)) and v > 0 for v in self.valence.values()
        )
        _check("data", "valence", charges, "a mapping species -> positive charge", self.valence)
        object.__setattr__(self, "valence", {str(k): float(v) for k, v in self.valence.items()})


@dataclass(frozen=True)
class LossConfig:
    """Attributes:
    h_weight, s_weight: weights of the H and S block losses (S errors are ~100x smaller than H's
        in eV, hence the default 100).
    kind: ``mse`` or ``mae``.
    reduction: ``entries`` (mean over entries) or ``types`` (mean within each block type, then
        over types; single-process only).
    normalize: divide each entry's error by the training store's standard deviation of its block
        type (onsite or not x species pair x shell pair); false (default): errors in physical units
        (H in eV, S dimensionless).  The per-type spread includes the spread within a block
        (diagonal vs off-diagonal onsite entries, up to 5.5 eV on aBN), so a normalised loss
        weighs onsite errors of hundreds of meV lightly.
    shift_invariant: remove each structure's best uniform shift ``c S`` from the H errors.
    onsite_weight: weight of the onsite blocks' entries (1: every entry alike).  Onsite blocks are
        ~2 % of a 32-atom aBN cell's entries, yet their per-atom mean is the potential each atom's
        states sit in: the spectra's largest error (issue 24).
    null_weight, null_directions: weight of the near-null loss (eV²; :func:`hforge.train.losses.null_loss`:
        Rayleigh quotients along the ``null_directions`` eigenvectors of S(Γ) with the smallest
        eigenvalues, which hold the top of the full-S spectrum).
    eigen_weight: weight of the Γ eigenvalue loss (eV², canonically orthogonalized with the
        reference S; states within ``eigen_window`` eV of the gap centre and the occupied ones).
    eigen_window, eigen_threshold: its window (eV) and orthogonalization threshold.
    """

    h_weight: float = 1.0
    s_weight: float = 100.0
    kind: str = "mse"
    reduction: str = "entries"
    normalize: bool = False
    shift_invariant: bool = False
    onsite_weight: float = 1.0
    null_weight: float = 0.0
    null_directions: int = 32
    eigen_weight: float = 0.0
    eigen_window: float = 2.0
    eigen_threshold: float = 1e-2

    def __post_init__(self) -> None:
        _check("loss", "onsite_weight", isinstance(self.onsite_weight, (int, float)) and self.onsite_weight > 0,
               "a positive number", self.onsite_weight)
        _check("loss", "null_directions", isinstance(self.null_directions, int) and self.null_directions >= 1,
               "a positive integer", self.null_directions)
        for name in ("h_weight", "s_weight", "eigen_weight", "null_weight"):
            value = getattr(self, name)
            _check("loss", name, isinstance(value, (int, float)) and value >= 0, "a non-negative number", value)
        _check("loss", "kind", self.kind in ("mse", "mae"), "mse or mae", self.kind)
        _check("loss", "reduction", self.reduction in ("entries", "types"), "entries or types", self.reduction)
        _check("loss", "eigen_window", self.eigen_window > 0, "positive (eV)", self.eigen_window)
        _check("loss", "eigen_threshold", self.eigen_threshold > 0, "positive", self.eigen_threshold)
        _check("loss", "h_weight", self.h_weight + self.s_weight + self.eigen_weight > 0, "all loss weights are 0", self.h_weight)


@dataclass(frozen=True)
class OptimizerConfig:
    """Attributes: name (``adam``/``adamw``), lr, weight_decay, grad_clip (max gradient norm; 0 off)."""

    name: str = "adamw"
    lr: float = 1e-2
    weight_decay: float = 0.0
    grad_clip: float = 10.0

    def __post_init__(self) -> None:
        _check("optimizer", "name", self.name in ("adam", "adamw"), "adam or adamw", self.name)
        _check("optimizer", "lr", isinstance(self.lr, (int, float)) and self.lr > 0, "positive", self.lr)
        _check("optimizer", "weight_decay", self.weight_decay >= 0, "non-negative", self.weight_decay)
        _check("optimizer", "grad_clip", self.grad_clip >= 0, "non-negative (0: no clipping)", self.grad_clip)


@dataclass(frozen=True)
class ScheduleConfig:
    """Attributes: name (``constant``/``cosine``), warmup_steps (linear warm-up from 0), min_lr_ratio
    (cosine: final lr / lr)."""

    name: str = "cosine"
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05

    def __post_init__(self) -> None:
        _check("schedule", "name", self.name in ("constant", "cosine"), "constant or cosine", self.name)
        warmup = isinstance(self.warmup_steps, int) and self.warmup_steps >= 0
        _check("schedule", "warmup_steps", warmup, "a non-negative integer", self.warmup_steps)
        _check("schedule", "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]", self.min_lr_ratio)


@dataclass(frozen=True)
class TrainingConfig:
    """Attributes:
    max_steps: optimizer steps (the budget; a step = one global batch).
    max_minutes: optional wall-clock budget (stops early; a resumed run counts its own time).
    batch_atoms: atoms per global batch (structures are packed up to it; a larger structure
        makes a batch alone).
    ema_decay: exponential moving average of the weights used for validation and saved as the
        checkpoint's model (0: off).
    augment_rotations: random rotations of every training structure (``auto``: for the invariant
        model only; an equivariant model does not need them).
    val_every, checkpoint_every, log_every: periods in steps.
    val_eigenvalues: Γ eigenvalue metrics in the validation (dense; small cells only).
    seed: seeds the weights, the batch order and the rotations.
    device: ``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1``.
    precision: ``float32`` or ``float64`` (the model's dtype).
    init_from: a checkpoint whose weights (EMA included; baseline coefficients and normalisation
        statistics too) start this run: a second stage (e.g. the Γ eigenvalue loss after the
        element-wise one) with its own loss, optimizer and schedule.  Its model config must equal
        this config's ``model``.  A path relative to the config file's folder.
    """

    max_steps: int = 300
    max_minutes: float | None = None
    batch_atoms: int = 32
    ema_decay: float = 0.99
    augment_rotations: str | bool = "auto"
    val_every: int = 50
    checkpoint_every: int = 25
    log_every: int = 1
    val_eigenvalues: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "float32"
    init_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_atoms", "val_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            positive = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            _check("training", name, positive, "a positive integer", value)
        _check("training", "max_minutes", self.max_minutes is None or self.max_minutes > 0, "positive or null", self.max_minutes)
        _check("training", "ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)", self.ema_decay)
        _check("training", "augment_rotations", self.augment_rotations in ("auto", True, False), "auto, true or false",
               self.augment_rotations)
        _check("training", "seed", isinstance(self.seed, int) and self.seed >= 0, "a non-negative integer", self.seed)
        _check("training", "precision", self.precision in ("float32", "float64"), "float32 or float64", self.precision)
        device = isinstance(self.device, str) and (self.device in ("auto", "cpu") or self.device.startswith("cuda"))
        _check("training", "device", device, "auto, cpu or cuda[:k]", self.device)


@dataclass(frozen=True)
class TrainConfig:
    """A whole training configuration (see the module docstring).

    Attributes:
        model_from_data: the fields of :data:`FROM_DATA` that the model section left out: the
            trainer replaces ``model``'s defaults of those by values of the training data
            (:meth:`hforge.train.TrainingData.with_data_defaults`), after which it is empty.  Not a
            section: :meth:`to_dict` writes the resolved values into ``model`` instead.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    model_from_data: tuple[str, ...] = FROM_DATA

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_from_data", tuple(self.model_from_data))
        unknown = sorted(set(self.model_from_data) - set(FROM_DATA))
        if unknown:
            raise ConfigError(f"config: model fields {unknown} cannot come from the data; only {list(FROM_DATA)}")

    @property
    def augment(self) -> bool:
        """Rotate the training structures (resolves ``auto``)."""
        value = self.training.augment_rotations
        return self.model.kind == "invariant" if value == "auto" else bool(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict (tuples as lists); :meth:`from_dict` inverts it.  The model fields
        still to come from the data (:attr:`model_from_data`) are left out, as in the YAML."""
        out = {name: asdict(getattr(self, name)) for name in ("data", "loss", "optimizer", "schedule", "training")}
        out["model"] = {k: v for k, v in self.model.to_dict().items() if k not in self.model_from_data}
        for key in ("train", "val"):
            out["data"][key] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["data"][key].items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, base: str | os.PathLike | None = None) -> "TrainConfig":
        """Validated config from a dict (a parsed YAML file).

        Args:
            base: folder that relative store paths are relative to (the config file's).

        Raises:
            ConfigError: unknown sections or fields, bad values.
        """
        data = dict(data or {})
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"config: unknown sections {unknown}; known: {sorted(SECTIONS)}")
        for name, value in data.items():
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"config: section {name!r} must be a mapping, got {value!r}")
        training = _from_mapping(TrainingConfig, "training", data.get("training"))
        if base is not None and training.init_from is not None and not Path(training.init_from).is_absolute():
            training = replace(training, init_from=str(Path(base) / training.init_from))
        model = dict(data.get("model") or {})
        model.setdefault("dtype", training.precision)
        if model["dtype"] != training.precision:
            raise ConfigError(
                f"config: model.dtype={model['dtype']!r} differs from training.precision={training.precision!r}: set one"
            )
        data_section = dict(data.get("data") or {})
        source = data_section.get("source")
        if base is not None and source is not None and not _is_bundled(str(source)) and not Path(source).is_absolute():
            data_section["source"] = str(Path(base) / source)
        return cls(
            data=_from_mapping(DataConfig, "data", data_section),
            model=ModelConfig.from_dict(model),
            loss=_from_mapping(LossConfig, "loss", data.get("loss")),
            optimizer=_from_mapping(OptimizerConfig, "optimizer", data.get("optimizer")),
            schedule=_from_mapping(ScheduleConfig, "schedule", data.get("schedule")),
            training=training,
            model_from_data=tuple(name for name in FROM_DATA if name not in model),
        )


def _is_bundled(name: str) -> bool:
    from hforge.datasets import BUNDLED

    return name in BUNDLED


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file or a dict.

    Raises:
        ConfigError: a missing or unparsable file, or an invalid config (naming the file).
    """
    if isinstance(source, Mapping):
        return TrainConfig.from_dict(source)
    import yaml

    path = Path(source)
    if not path.is_file():
        raise ConfigError("no such config file", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError("a config file must hold a mapping of sections", path=path)
    try:
        return TrainConfig.from_dict(data, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path) from None


#: The commented default configuration (``hforge train --print-default-config``).
DEFAULT_CONFIG_YAML = """\
# HForge training configuration. Units: eV, Å. Every field is optional (defaults shown).
data:
  source: abn-small        # bundled dataset name, or a store path from `hforge data convert`
  train: {split: train}    # training structures: the store's split (train/val/test), min_atoms / max_atoms / names / exclude
  val: {split: val}        # validation structures (e.g. {min_atoms: 64}: judge transfer to large cells)
  valence: {}              # Z_valence for bases that lack it, e.g. {B: 3, N: 5} (eigenvalue metrics)
model:                     # any field of hforge.models.ModelConfig
  kind: equivariant        # equivariant (CG blocks on MACE features) or invariant (baseline)
  # species: [B, N]        # left out: the species of the data's train and val structures (basis order)
  # avg_num_neighbors: 40  # left out: mean neighbours within r_max of the training atoms (as MACE)
  r_max: 4.5               # interaction cut-off of the MACE trunk (Å)
  num_interactions: 2
  channels: 16
  max_ell: 2
  node_l_max: 2
  correlation: 2
  pair_l_max: 4            # spherical harmonics of the pair direction (4 couples d with d)
  radial_hidden: [32]
  block_hidden: [64, 64]   # MLPs that output block entries (invariant blocks, two_centre, slot_gains)
  pair_orientation: false  # bond-orientation invariants in the H pair MLPs (both kinds)
  two_centre: false        # equivariant: a Slater-Koster-like term, one radial function per slot
  slot_gains: 0            # equivariant H: K CG mixing-weight sets with pair-dependent slot gains
  overlap: exact           # S: exact two-centre integrals of the basis (positive definite), or learned
  baseline: h0             # h0: learn H - H0 (fitted exact two-centre parts), or none
  backend: auto            # CG kernels: auto, torch, numba, triton
loss:
  h_weight: 1.0            # H block loss (eV^2 for mse)
  s_weight: 100.0          # S block loss (S errors are ~100x smaller than H's in eV)
  kind: mse                # mse or mae
  reduction: entries       # entries, or types (each block type weighs the same; single process)
  normalize: false         # true: errors / std of their block type; false: H in eV, S unitless
  onsite_weight: 1.0       # weight of the onsite blocks' entries (their per-atom mean: each atom's potential)
  null_weight: 0.0         # Rayleigh quotients along S(Γ)'s near-null directions (eV², the top of the spectrum)
  null_directions: 32      # how many of those directions per structure
  shift_invariant: false   # ignore a uniform shift c*S of H (SIESTA's energy zero is arbitrary)
  eigen_weight: 0.0        # Γ eigenvalue loss (eV^2), canonically orthogonalized with the reference S
  eigen_window: 2.0        # eV around the gap centre (plus the occupied states)
  eigen_threshold: 1.0e-2  # S eigenvalues dropped below this (the evaluation's headline threshold)
optimizer:
  name: adamw              # adam or adamw
  lr: 1.0e-2
  weight_decay: 0.0
  grad_clip: 10.0          # max gradient norm (0: off)
schedule:
  name: cosine             # constant or cosine (to min_lr_ratio * lr at max_steps)
  warmup_steps: 10
  min_lr_ratio: 0.05
training:
  max_steps: 300           # optimizer steps
  max_minutes: null        # optional wall-clock budget
  batch_atoms: 32          # atoms per global batch (split over processes under torchrun)
  ema_decay: 0.99          # EMA of the weights, used for validation and saved as the model (0: off)
  augment_rotations: auto  # random rotations (auto: invariant model only)
  val_every: 50
  checkpoint_every: 25     # last.pt every this many steps (atomic); best.pt at each validation
  log_every: 1
  val_eigenvalues: true    # Γ eigenvalue MAE (raw and canonically orthogonalized) in validation
  seed: 0
  device: auto             # auto, cpu, cuda, cuda:1
  precision: float32       # float32 or float64
  init_from: null          # a checkpoint to start from (a second stage), same model config
"""
