"""Benchmark-wide settings: e3nn imported in the context its import needs (hforge/_compat.py) before any
suite imports it (as ``tests/conftest.py`` does for the tests)."""

from hforge._compat import import_e3nn

import_e3nn()
