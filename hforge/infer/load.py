"""``hforge.load(path_or_name)``: a checkpoint file, or a model bundled in ``hforge/infer/pretrained/``."""

from __future__ import annotations

import os
from pathlib import Path

from hforge.errors import FileFormatError
from hforge.infer.predictor import Predictor, resolve_device
from hforge.structures.domain import TrainingDomain

__all__ = ["PRETRAINED_DIR", "load", "pretrained_names"]

#: Folder of the bundled models, ``<name>.pt`` (see the README there).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def pretrained_names() -> list[str]:
    """Names of the bundled models present in this installation."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def load(path_or_name: str | os.PathLike, *, device: str | None = None) -> Predictor:
    """A :class:`Predictor` for a checkpoint file or a bundled model name (e.g. ``"abn-dzp"``).

    A bare name without a path separator or suffix that is not an existing file is looked up in
    :data:`PRETRAINED_DIR`.  ``device``: ``"cuda"``, ``"cuda:N"``, ``"cpu"``, or None for CUDA when
    usable (:func:`~hforge.infer.predictor.resolve_device`); the weights are read onto the CPU,
    then moved.  A checkpoint that records its training domain (``extra["domain"]``, written by
    :class:`~hforge.train.Trainer`) makes the predictor warn about structures outside it.

    Raises:
        FileFormatError: no such file or bundled model (the message lists the bundled ones), or a
            file that is not an HForge checkpoint.
        ConfigError: a checkpoint whose config is invalid.
        BackendUnavailableError: ``device="cuda"`` where torch sees no GPU.
    """
    from hforge.models import load_checkpoint

    device = resolve_device(device)  # before reading: a bad device fails fast

    path = Path(path_or_name)
    if not path.exists() and path.name == str(path_or_name) and not path.suffix:
        bundled = PRETRAINED_DIR / f"{path.name}.pt"
        if not bundled.is_file():
            names = ", ".join(pretrained_names()) or "none in this installation"
            raise FileFormatError(
                f"no checkpoint file {str(path_or_name)!r} and no bundled model of that name "
                f"(bundled models: {names}; expected {bundled})"
            )
        path = bundled
    model, payload = load_checkpoint(path, map_location="cpu")
    domain = payload.get("extra", {}).get("domain")
    return Predictor(
        model, source=str(path_or_name), device=device, domain=None if domain is None else TrainingDomain.from_dict(domain)
    )
