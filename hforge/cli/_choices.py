"""The fixed choices of CLI options as Enums, so that typer checks them and ``--help`` lists them.

The values repeat names defined in the layers below (``hforge.infer.plan.MODES``,
``hforge.ops.assemble``'s backends, the store's splits), which this module does not import:
they pull in the model stack, and ``hforge --help`` must stay fast.  tests/test_cli.py checks
that each Enum equals its source.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["AssemblyBackend", "Dtype", "Mode", "Preset", "Protocol", "Split", "StudyModel", "choices"]


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A ``str`` Enum whose members are ``values`` (member name = value), as typer wants for choices."""
    return Enum(name, [(value, value) for value in values], type=str)


#: ``hforge predict --mode``: ``auto`` or one of the predictor's modes.
Mode = choices("Mode", ("auto", "whole", "streamed", "chunked"))
#: Output precision of ``hforge predict``.
Dtype = choices("Dtype", ("float64", "float32"))
#: CSR assembly backends (``torch`` is that op's reference: scipy's COO -> CSR, see hforge.ops.backends).
AssemblyBackend = choices("AssemblyBackend", ("auto", "numba", "torch", "cupy"))
#: Splits of a store (``hforge evaluate --split``).
Split = choices("Split", ("train", "val", "test"))
#: Melt-quench protocols of ``hforge structure abn`` (:data:`hforge.structures.PROTOCOLS`).
Protocol = choices("Protocol", ("full", "fast"))
#: Presets of ``hforge study`` (:func:`hforge.train.study.quick_plan` / :func:`~hforge.train.study.full_plan`).
Preset = choices("Preset", ("quick", "full"))
#: Models of ``hforge study --model`` (:data:`hforge.train.study.MODELS`).
StudyModel = choices("StudyModel", ("equivariant", "invariant", "graph2mat"))
