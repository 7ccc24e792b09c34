"""Writing files: the one atomic writer and the one JSON encoding of HForge.

Every file HForge writes (checkpoints, stores, SIESTA matrices, figures, JSON, logs published at
the end) goes through :func:`atomic_write`: the content is written to a temporary file beside the
target, ``dir/.name.<pid>.tmp.ext`` for ``dir/name.ext`` (:func:`temp_path`: hidden, one per
process, with the target's extension for writers that pick the format from it), flushed to disk
(``fsync``) and renamed over the target, so readers see the old file or the new one, never a
partial one.  On any failure (an exception, ``KeyboardInterrupt``, SIGTERM through the CLI's
handler) the temporary file is removed and the target is left as it was.  Only SIGKILL (or a
crash of the machine) can leave one behind; the next write of the same target removes the
temporary files of processes that no longer run (:func:`remove_stale_temps`).

JSON (:func:`json_ready`, :func:`to_json`, :func:`write_json`) is strict: numpy scalars and
arrays become numbers and lists, NaN and infinities ``null``, paths strings, keys strings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePath
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

import numpy as np

from hforge.errors import HForgeError, OutputError

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "json_ready", "remove_stale_temps", "temp_path", "to_json", "write_json"]


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """``dir/.name.<pid>.tmp.ext``: where process ``pid`` (default: this one) writes ``dir/name.ext``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid() if pid is None else pid}.tmp{path.suffix}")


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process, or cannot tell: keep its file
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` (:func:`temp_path`) whose process no longer runs.

    Files of running processes (this one included) are kept.  On a file system shared by several
    machines a process id names a process of this machine only: write one target from one machine
    at a time.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(\d+)\.tmp{re.escape(path.suffix)}")
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return removed
    for candidate in candidates:
        if _alive(int(pattern.fullmatch(candidate.name).group(1))):
            continue
        try:
            candidate.unlink()
        except OSError as exc:  # another process removed it, or the folder is read-only: the next write tries again
            logger.info("could not remove the stale temporary file %s: %s", candidate, exc)
            continue
        logger.info("removed %s, left by a process that no longer runs", candidate)
        removed.append(candidate)
    return removed


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

    Stale temporary files of ``path`` left by dead processes are removed first.

    Args:
        path: the file to (re)place; its folder must exist.
        mode: ``"w"`` yields a text file (``encoding``), ``"wb"`` a binary file; ``None`` yields the
            temporary *path* instead, for writers that open files themselves (h5py, sisl, numpy,
            matplotlib, ASE): they must create it, in the format of its extension (the target's).

    Raises:
        OutputError: the block failed with an ``OSError`` (a missing, read-only or special folder,
            a full disk; sisl's ``SileError`` is one) or a ``RuntimeError`` (netCDF's "HDF error",
            torch's stream writer), or wrote nothing with ``mode=None``, naming ``path`` and the
            cause; the original is chained.  Other errors pass unchanged.
    """
    if mode not in ("w", "wb", None):
        raise ValueError(f"atomic_write: mode must be 'w', 'wb' or None, got {mode!r}")
    return _atomic_write(Path(path), mode, encoding)


@contextmanager
def _atomic_write(path: Path, mode: str | None, encoding: str) -> Iterator[IO[Any] | Path]:
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        if mode is None:
            yield tmp
            _fsync(tmp)
        else:
            with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except HForgeError:
        raise
    except (OSError, RuntimeError) as exc:
        raise OutputError(f"cannot write it: {_reason(exc)}", path=path) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    """``fsync`` a file, or a folder (its renames); a folder that refuses is left alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _reason(exc: Exception) -> str:
    """The cause in words: the OS's text for an errno, also for the ``ierr`` of sisl's Fortran writers."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    ierr = re.search(r"ierr=(\d+)", str(exc))
    if ierr is not None and 0 < int(ierr.group(1)) < 256:
        return f"{os.strerror(int(ierr.group(1)))} (SIESTA file writer, ierr={ierr.group(1)})"
    return f"{type(exc).__name__}: {exc}"


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
