"""Writing files: the one atomic writer and the one JSON encoding of HForge.

Every file HForge writes (checkpoints, stores, SIESTA matrices, figures, JSON, logs published at
the end) goes through :func:`atomic_write`: the content is written to a temporary file in the
target's folder (``.<name>.<pid>.<random>.tmp<suffix>``: hidden, unique per process and call, with
the target's suffix for writers that pick the format from it), flushed to disk (``fsync``) and
renamed over the target, so readers see the old file or the new one, never a partial one; on any
failure (an exception, ``KeyboardInterrupt``) the temporary file is removed and the target is
left as it was.  A process killed mid-write leaves its temporary file behind:
:func:`stale_temporaries` finds them.

JSON (:func:`json_ready`, :func:`to_json`, :func:`write_json`) is strict: numpy scalars and
arrays become numbers and lists, NaN and infinities ``null``, paths strings, keys strings.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePath
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

import numpy as np

__all__ = ["atomic_write", "json_ready", "stale_temporaries", "to_json", "write_json"]


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that :func:`atomic_write` calls for ``path`` left behind (killed processes)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp{path.suffix}"))


@overload
def atomic_write(path: str | os.PathLike, mode: Literal["w"] = ..., *, encoding: str = ...) -> AbstractContextManager[TextIO]: ...
@overload
def atomic_write(path: str | os.PathLike, mode: Literal["wb"], *, encoding: str = ...) -> AbstractContextManager[BinaryIO]: ...
@overload
def atomic_write(path: str | os.PathLike, mode: None, *, encoding: str = ...) -> AbstractContextManager[Path]: ...


def atomic_write(
    path: str | os.PathLike, mode: Literal["w", "wb"] | None = "w", *, encoding: str = "utf-8"
) -> AbstractContextManager[IO[Any] | Path]:
    """Write ``path`` atomically (module docstring): ``with atomic_write(path) as f: f.write(...)``.

    Args:
        path: the file to (re)place; its folder must exist.
        mode: ``"w"`` yields a text file (``encoding``), ``"wb"`` a binary file; ``None`` yields the
            temporary *path* instead, for writers that open files themselves (h5py, sisl, numpy,
            matplotlib, ASE): they must create it, with the format of its suffix (the target's).

    Raises:
        FileNotFoundError: with ``mode=None``, the body did not create the temporary file.
    """
    if mode not in ("w", "wb", None):
        raise ValueError(f"atomic_write: mode must be 'w', 'wb' or None, got {mode!r}")
    return _atomic_write(Path(path), mode, encoding)


@contextmanager
def _atomic_write(path: Path, mode: str | None, encoding: str) -> Iterator[IO[Any] | Path]:
    tmp = _temporary_name(path)
    try:
        if mode is None:
            yield tmp
            _fsync_file(tmp)
        else:
            with open(tmp, "x" + mode[1:], encoding=None if "b" in mode else encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_file(path.parent)


def _fsync_file(path: Path) -> None:
    """``fsync`` a file or a folder (a folder's rename entries); folders that refuse are left alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def json_ready(value: Any) -> Any:
    """``value`` with only JSON types: numpy scalars and arrays as Python numbers and lists,
    non-finite floats as None, paths as strings, mapping keys as strings (recursively)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def to_json(value: Any, *, indent: int | None = 1) -> str:
    """Strict JSON text of ``value`` (:func:`json_ready`)."""
    return json.dumps(json_ready(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> Path:
    """Write :func:`to_json` of ``value`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write(to_json(value, indent=indent))
    return path
