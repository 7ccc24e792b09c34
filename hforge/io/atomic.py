"""Atomic file writes: a temporary file beside the target, renamed over it, nothing left on failure.

The temporary file of ``dir/name.ext`` is ``dir/.name.<pid>.tmp.ext`` (the extension kept, so that
writers which pick the format by extension, like sisl's, still do).  :func:`atomic_output`
removes it on any error, on ``KeyboardInterrupt`` and, through the CLI's SIGTERM handler, on
SIGTERM; only SIGKILL (or a crash of the machine) can leave one, and the next write of the same
target removes the temporary files of processes that no longer run (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hforge.errors import HForgeError, OutputError

__all__ = ["atomic_output", "remove_stale_temps", "temp_path"]


def _split(path: Path) -> tuple[str, str]:
    return path.stem, path.suffix


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """``dir/.name.<pid>.tmp.ext``: where process ``pid`` (default: this one) writes ``dir/name.ext``."""
    path = Path(path)
    stem, suffix = _split(path)
    return path.with_name(f".{stem}.{os.getpid() if pid is None else pid}.tmp{suffix}")


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its file
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` (:func:`temp_path`) whose process no longer runs.

    A process killed by SIGKILL cannot remove its temporary file; this removes it at the next
    write of the same target.  Files of running processes (this one included) are kept.  On a file
    system shared by several machines a process id names a process of this machine only: only
    write one target from one machine at a time.

    Returns:
        The files removed.
    """
    path = Path(path)
    stem, suffix = _split(path)
    pattern = re.compile(rf"\.{re.escape(stem)}\.(\d+)\.tmp{re.escape(suffix)}")
    removed = []
    try:
        candidates = list(path.parent.glob(f".{_glob_escape(stem)}.*.tmp{_glob_escape(suffix)}"))
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters (``*?[``) matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to; rename it to ``path`` when the block
    ends normally, remove it when it raises (anything, ``KeyboardInterrupt`` included).

    Stale temporary files of ``path`` left by dead processes are removed first, and the temporary
    file is created before the block runs: a folder where it cannot be created fails here, before
    any writer sees it (sisl's Fortran TSHS writer, when its ``open`` fails, writes the whole file
    to ``fort.1000`` in the working folder instead).

    Raises:
        OutputError: the block failed with an ``OSError`` (a read-only or special folder, a full
            disk; sisl's ``SileError`` is one) or a ``RuntimeError`` (netCDF's "HDF error"), naming
            ``path`` and the cause; the original is chained.  Other errors pass unchanged.
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb"):
            pass
        yield tmp
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


def _reason(exc: Exception) -> str:
    """The cause in words: the OS's text for an errno, also for the ``ierr`` of sisl's Fortran writers."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    ierr = re.search(r"ierr=(\d+)", str(exc))
    if ierr is not None and 0 < int(ierr.group(1)) < 256:
        return f"{os.strerror(int(ierr.group(1)))} (SIESTA file writer, ierr={ierr.group(1)})"
    return f"{type(exc).__name__}: {exc}"
