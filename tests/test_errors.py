import pytest

import hforge
from hforge.errors import (
    BackendUnavailableError,
    FileFormatError,
    GeometryError,
    HForgeError,
    InputError,
)


def test_file_errors_name_the_file_first():
    err = FileFormatError("truncated after 12 bytes", path="/data/run/aiida.TSHS")
    assert str(err) == "/data/run/aiida.TSHS: truncated after 12 bytes"
    assert err.path == "/data/run/aiida.TSHS"
    assert err.message == "truncated after 12 bytes"


def test_hierarchy_lets_users_catch_broadly_or_narrowly():
    with pytest.raises(HForgeError):
        raise GeometryError("atoms 3 and 7 are 0.2 Å apart")
    with pytest.raises(ValueError):  # bad input is also a ValueError
        raise InputError("bad")
    with pytest.raises(RuntimeError):  # a missing backend is also a RuntimeError
        raise BackendUnavailableError("no GPU")
    assert hforge.FileFormatError is FileFormatError
