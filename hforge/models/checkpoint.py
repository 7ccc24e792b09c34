"""Self-describing checkpoints: config, basis, code version and weights in one file, written atomically.

A checkpoint is a ``torch.save`` dict readable with ``weights_only=True``::

    format "hforge-model", version 1, hforge_version, git_commit (or None),
    config (ModelConfig.to_dict()), basis (BasisSet.to_dict()), state_dict, extra (dict)

``extra`` is free for the caller (training adds optimizer, scheduler, EMA, RNG states, step).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from hforge.basis import BasisSet
from hforge.errors import ConfigError, FileFormatError
from hforge.files import atomic_write
from hforge.io.block_statistics import StoreStatistics
from hforge.models.base import HSModel
from hforge.models.config import ModelConfig
from hforge.models.layers import quiet_codegen

__all__ = ["FORMAT", "VERSION", "build_model", "load_checkpoint", "load_model", "save_model"]

FORMAT = "hforge-model"
VERSION = 1


def build_model(config: ModelConfig, basis: BasisSet, statistics: StoreStatistics | None = None) -> HSModel:
    """A fresh model of ``config.kind`` for ``basis`` (restricted to ``config.species``).

    Raises:
        UnknownSpeciesError: a species of the config that the basis lacks.
        BasisMismatchError: a basis without orbital radii.
    """
    from hforge.models.equivariant import EquivariantHSModel
    from hforge.models.invariant import InvariantHSModel

    cls = EquivariantHSModel if config.kind == "equivariant" else InvariantHSModel
    with quiet_codegen():
        return cls(config, basis, statistics)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_model(
    model: HSModel, path: str | os.PathLike, *, extra: dict[str, Any] | None = None, parameter_dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` (config, basis, code version, weights, ``extra``) to ``path`` atomically.

    Written by :func:`hforge.files.atomic_write`, so a killed or failed write never leaves a
    partial checkpoint.  Returns the path.

    Args:
        parameter_dtype: store the trainable parameters in this dtype (``torch.float16`` halves a
            shipped file; :func:`load_checkpoint` casts them back to the model's dtype); buffers
            (baseline coefficients, normalisation statistics) keep theirs.
    """
    import hforge

    path = Path(path)
    state = model.state_dict()
    if parameter_dtype is not None:
        names = {name for name, _ in model.named_parameters()}
        state = {k: v.to(parameter_dtype) if k in names and v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "hforge_version": hforge.__version__,
        "git_commit": _git_commit(),
        "config": model.config.to_dict(),
        "basis": model.basis.to_dict(),
        "state_dict": state,
        "extra": extra or {},
    }
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> tuple[HSModel, dict[str, Any]]:
    """The model of a checkpoint and the checkpoint dict (``extra``, versions, ...).

    Raises:
        FileFormatError: a missing or unreadable file, or one that is not an HForge model checkpoint.
        ConfigError: a checkpoint whose config is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError("no such checkpoint file", path=path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike
        raise FileFormatError(f"not an HForge model checkpoint: {_load_failure(exc)}", path=path) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FileFormatError(f"not an HForge model checkpoint (format {FORMAT!r} expected)", path=path)
    if payload.get("version") != VERSION:
        raise FileFormatError(f"checkpoint version {payload.get('version')!r}; this HForge reads version {VERSION}", path=path)
    missing = [k for k in ("config", "basis", "state_dict") if k not in payload]
    if missing:
        raise FileFormatError(f"checkpoint lacks {missing}", path=path)
    stored = dict(payload["config"])
    if "invariant_direction" not in stored:  # written before the field existed: the weights tell
        gated = any(key.endswith("pair.gate.weight") for key in payload["state_dict"])
        stored["invariant_direction"] = "monomials" if gated else "vector"
    stored.setdefault("overlap", "learned")  # written before exact overlaps: the S head's weights are there
    stored.setdefault("baseline", "none")
    try:
        config = ModelConfig.from_dict(stored)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path) from None
    model = build_model(config, BasisSet.from_dict(payload["basis"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise FileFormatError(f"weights do not fit the stored config: {exc}", path=path) from exc
    return model.to(map_location), payload


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a line; never torch's advice to load with
    ``weights_only=False`` (which runs arbitrary code from the file: HForge checkpoints never need it)."""
    import re

    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found is not None:
        return f"torch refuses to load it safely: it holds Python objects ({found.group(1)}) that no HForge checkpoint holds"
    if "weights_only" in text or "Unpickler" in text:
        return "torch cannot read it (not a torch zip file nor a safe pickle)"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"torch cannot read it ({type(exc).__name__}{': ' + first if first else ''})"


def load_model(path: str | os.PathLike, *, map_location: Any = "cpu") -> HSModel:
    """The model of a checkpoint written by :func:`save_model` (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, map_location=map_location)[0]
