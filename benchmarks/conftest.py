"""Benchmark-wide settings: ``import hforge`` first, so that its e3nn/torch import fix applies before any
suite imports e3nn (as ``tests/conftest.py`` does for the tests)."""

import hforge  # noqa: F401
