"""SIESTA run folders: find them, and refuse runs that did not finish or did not converge."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Iterable

from hforge.errors import ConvergenceError, FileFormatError
from hforge.io.siesta import find_hs_file, hs_label, is_hs_file_name

__all__ = ["find_runs", "run_output", "check_log", "find_log", "log_failure", "log_text", "natural_key", "run_state"]

_NOT_CONVERGED = ("SCF_NOT_CONV", "SCF did not converge")
_ABNORMAL = "ABNORMAL_TERMINATION"
_FINISHED = ("Job completed", ">> End of run")


def natural_key(path: Path) -> list:
    """Sort key that puts ``abn_8_0`` before ``abn_16_0``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _is_hs_file(path: Path) -> bool:
    return path.is_file() and is_hs_file_name(path.name)


def _is_run_folder(folder: Path) -> bool:
    return any(_is_hs_file(p) or p.suffix == ".fdf" for p in folder.iterdir())


def find_runs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into SIESTA runs, in natural order.

    A file (``.TSHS``, ``.HSX``, ``.nc``, each maybe compressed: ``.TSHS.xz``; ``.fdf``) is a run;
    a folder holding such files is a run folder; any other folder is searched recursively.

    Raises:
        FileFormatError: an input that does not exist.
    """
    runs: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileFormatError("no such file or folder", path=path)
        if path.is_file() or _is_run_folder(path):
            runs.append(path)
            continue
        found = sorted((p.parent for p in path.rglob("*") if _is_hs_file(p) or p.suffix == ".fdf"), key=natural_key)
        runs.extend(dict.fromkeys(found))
    return runs


def log_failure(text: str) -> tuple[str, str] | None:
    """Why the text of a SIESTA log shows a failed run, or None for a finished, converged one.

    Returns ``(kind, message)``: ``"unconverged"`` (``SCF_NOT_CONV`` / "SCF did not converge"),
    ``"abnormal"`` (``ABNORMAL_TERMINATION``) or ``"unfinished"`` (no "Job completed" /
    ">> End of run" line: killed or still running).
    """
    if any(marker in text for marker in _NOT_CONVERGED):
        return "unconverged", "the SCF did not converge (SCF_NOT_CONV in the SIESTA log)"
    if _ABNORMAL in text:
        return "abnormal", "SIESTA stopped abnormally (ABNORMAL_TERMINATION)"
    if not any(marker in text for marker in _FINISHED):
        return "unfinished", "SIESTA did not finish: no 'Job completed' in its log (killed?)"
    return None


def log_text(log: Path) -> str:
    """The text of a SIESTA log (``.out`` or ``.out.gz``).

    Raises:
        FileFormatError: an unreadable log.
    """
    opener = gzip.open if log.name.endswith(".gz") else open
    try:
        with opener(log, "rt", errors="replace") as f:
            return f.read()
    except (OSError, EOFError) as exc:
        raise FileFormatError(f"cannot read the SIESTA log: {exc}", path=log) from exc


def check_log(log: Path) -> None:
    """Raise :class:`ConvergenceError` if a SIESTA log (``.out`` or ``.out.gz``) shows a failed run
    (:func:`log_failure`)."""
    failure = log_failure(log_text(log))
    if failure is not None:
        raise ConvergenceError(failure[1], path=log)


def find_log(folder: Path, label: str | None = None) -> Path | None:
    """The SIESTA log (``.out``, ``.out.gz``) in a run folder: ``<label>.out[.gz]`` when there is
    one, else the first log there; None without any."""
    logs = sorted(folder.glob("*.out")) + sorted(folder.glob("*.out.gz"))
    if label is not None:
        logs = [p for p in logs if p.name.split(".out")[0] == label] or logs
    return logs[0] if logs else None


def run_state(path: str | os.PathLike) -> tuple[Path, str, str] | None:
    """``(log, state, message)`` of the run an H/S file comes from, read from the SIESTA log beside
    it (:func:`find_log`): state ``"converged"`` or :func:`log_failure`'s kind; None without a log.

    Raises:
        FileFormatError: an unreadable log.
    """
    path = Path(path)
    log = find_log(path.parent, hs_label(path))
    if log is None:
        return None
    failure = log_failure(log_text(log))
    return (log, "converged", "SIESTA finished and converged") if failure is None else (log, *failure)


def run_output(run: str | os.PathLike) -> Path:
    """The H/S file of a run (a file or a run folder), after checking its SIESTA log if any.

    In a folder: the file named by the fdf's ``SystemLabel`` (``.nc``, ``.TSHS``, ``.HSX``, each
    maybe compressed: ``.TSHS.xz``), else the only H/S file there.

    Raises:
        ConvergenceError: no H/S output, or a log that shows a failed or unconverged SCF.
        FileFormatError: several candidate files and no fdf to choose.
    """
    run = Path(run)
    folder = run.parent if run.is_file() else run
    log = find_log(folder, hs_label(run) if run.is_file() else None)
    if log is not None:
        check_log(log)
    if run.is_file():
        return find_hs_file(run) if run.suffix == ".fdf" else run
    fdfs = sorted(folder.glob("*.fdf"))
    hs_files = sorted(p for p in folder.iterdir() if _is_hs_file(p))
    for fdf in fdfs:
        try:
            return find_hs_file(fdf)
        except FileFormatError:
            continue
    if len(hs_files) == 1:
        return hs_files[0]
    if not hs_files:
        raise ConvergenceError(
            "no H/S output (.TSHS/.HSX/.nc, maybe compressed): the run did not finish or did not save H", path=folder
        )
    raise FileFormatError(f"several H/S files and no fdf to choose: {[p.name for p in hs_files]}", path=folder)
