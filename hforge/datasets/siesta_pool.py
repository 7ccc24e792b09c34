"""SIESTA run folders run in parallel and resumably: attempts, density-matrix restarts, folder locks.

A run folder ``<folder>/<name>/`` holds ``<name>.fdf`` (written by
:func:`~hforge.datasets.siesta_runs.write_siesta_inputs`, with ``DM.UseSaveDM T``).  Each attempt
runs ``siesta < <name>.fdf`` in the folder with its log going to ``<name>.attempt<k>.log``; when
SIESTA exits the log is renamed to ``<name>.out`` (converged or unconverged: the run is finished)
or to ``<name>.failed<k>.log`` (SIESTA stopped abnormally, or a converged run without the TSHS
its fdf asks for).  Everything else follows from these files, so a campaign killed at any moment
finds its state on disk (:func:`settle`):

- ``<name>.attempt<k>.log`` left behind is an *interrupted* attempt (killed), or, if its log shows
  a finished run, one whose SIESTA ended after the campaign died: it is adopted as ``<name>.out``;
- an interrupted run starts again from the density matrix SIESTA wrote at its last SCF step
  (``<name>.DM``, checked complete by :func:`~hforge.io.density_matrix.check_dm_file`; a
  truncated one, written while SIESTA was killed, is removed first);
- a run whose ``after`` run (e.g. the quenched cell a snapshot was taken from) finished first
  starts from a copy of that run's final density matrix (``<name>.DM.parent`` names it);
- failed attempts are retried until ``max_attempts`` attempts have failed; the density matrix
  of a failed attempt is removed (it may be why it failed).

While an attempt runs, SIESTA holds an exclusive lock (``flock``) on ``.<name>.lock`` in the
folder, inherited from the campaign: a SIESTA that outlives a killed campaign keeps the folder
locked, and the next campaign waits for it instead of starting a second SIESTA there.  On Linux
SIESTA also gets SIGKILL when the campaign process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hforge.datasets.siesta_runs import run_status
from hforge.errors import FileFormatError
from hforge.files import atomic_write
from hforge.io.density_matrix import check_dm_file
from hforge.io.runs import log_failure, log_text
from hforge.io.siesta_log import read_siesta_log

__all__ = ["Job", "RunState", "SiestaPool", "settle", "free_cores"]

logger = logging.getLogger(__name__)

_ATTEMPT = re.compile(r"\.(attempt|failed)(\d+)\.log$")


def free_cores() -> int:
    """CPU cores this process may use minus the load already on the machine (1-minute load average), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, cores - int(round(load)))


@dataclass(frozen=True)
class Job:
    """One run folder to bring to an end.

    Attributes:
        folder: the run folder ``.../<name>``.
        after: a run folder whose run must finish first; its final density matrix starts this run
            (None: SIESTA's atomic start).
        weight: relative cost, for the progress bar's ETA.
    """

    folder: Path
    after: Path | None = None
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class RunState:
    """What a run folder's files say.

    Attributes:
        state: ``pending`` (to run), ``busy`` (a SIESTA of an earlier campaign still runs there),
            ``converged``, ``unconverged`` or ``failed`` (``max_attempts`` attempts failed).
        failures: attempts that failed.  interrupted: attempts killed before SIESTA ended.
        interrupted_scf_steps: SCF steps the interrupted attempts made.
        dm_parent: the run whose density matrix was copied in to start this one, if any.
    """

    state: str
    failures: int = 0
    interrupted: int = 0
    interrupted_scf_steps: int = 0
    dm_parent: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("converged", "unconverged", "failed")


def _logs(folder: Path) -> list[tuple[int, str, Path]]:
    """``(k, "attempt" | "failed", path)`` of the attempt logs of a run folder, by k."""
    found = []
    for path in folder.glob(f"{folder.name}.*.log"):
        match = _ATTEMPT.search(path.name)
        if match and path.name == f"{folder.name}.{match.group(1)}{match.group(2)}.log":
            found.append((int(match.group(2)), match.group(1), path))
    return sorted(found)


def _next_index(folder: Path) -> int:
    return max((k for k, _, _ in _logs(folder)), default=0) + 1


def _lock(folder: Path) -> IO[bytes] | None:
    """The folder's lock file, locked; None when another process (a SIESTA of a killed campaign) holds it."""
    handle = open(folder / f".{folder.name}.lock", "ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _replace(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` after flushing it to disk."""
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    os.replace(source, target)


def _file_attempt(folder: Path, log: Path, *, exited: bool) -> None:
    """File the log ``<name>.attempt<k>.log`` of an attempt: ``<name>.out`` when SIESTA finished (converged
    or not), ``<name>.failed<k>.log`` when it stopped abnormally, or when ``exited`` (its process ended)
    without finishing; the density matrix a failed attempt leaves is removed.  A log of an attempt
    that may have been killed (not ``exited``, not finished) stays: an interrupted attempt."""
    name = folder.name
    match = _ATTEMPT.search(log.name)
    failed = folder / f"{name}.failed{match.group(2) if match else _next_index(folder)}.log"
    failure = log_failure(log_text(log))
    if failure is None or failure[0] == "unconverged":
        _replace(log, folder / f"{name}.out")
        if run_status(folder).state != "failed":
            return
        log = folder / f"{name}.out"  # finished, but without the TSHS the fdf asks for
    elif failure[0] != "abnormal" and not exited:
        return
    os.replace(log, failed)
    (folder / f"{name}.DM").unlink(missing_ok=True)


def _file_leftovers(folder: Path) -> None:
    """File what an earlier campaign left (the folder's lock held): attempt logs of SIESTA processes that
    finished after the campaign died, and an ``<name>.out`` of a failed run."""
    name = folder.name
    for _, kind, path in _logs(folder):
        if kind == "attempt" and not (folder / f"{name}.out").exists():
            _file_attempt(folder, path, exited=False)
    if (folder / f"{name}.out").exists() and run_status(folder).state == "failed":
        _file_attempt(folder, folder / f"{name}.out", exited=True)


def _state(folder: Path, max_attempts: int) -> RunState:
    """Where a run folder stands (its leftovers filed)."""
    name = folder.name
    logs = _logs(folder)
    interrupted = [path for _, kind, path in logs if kind == "attempt"]
    failures = sum(kind == "failed" for _, kind, _ in logs)
    marker = folder / f"{name}.DM.parent"
    common = {
        "failures": failures,
        "interrupted": len(interrupted),
        "interrupted_scf_steps": sum(read_siesta_log(log_text(p)).scf_steps for p in interrupted),
        "dm_parent": marker.read_text().strip() if marker.is_file() else None,
    }
    status = run_status(folder)
    if status.finished:
        return RunState(status.state, **common)
    return RunState("failed" if failures >= max_attempts else "pending", **common)


def settle(folder: str | os.PathLike, max_attempts: int) -> RunState:
    """Bring a run folder to a consistent state after whatever happened before, and say where it stands.

    An attempt log whose SIESTA finished (the campaign died before filing it) is filed as its
    attempt's result; an ``<name>.out`` of a failed run becomes ``<name>.failed<k>.log``.  Nothing
    is changed while another process holds the folder's lock (state ``busy``).
    """
    folder = Path(folder)
    lock = _lock(folder)
    if lock is None:
        return RunState("busy")
    try:
        _file_leftovers(folder)
        return _state(folder, max_attempts)
    finally:
        lock.close()


def _complete_dm(path: Path) -> bool:
    """Whether ``path`` is a complete SIESTA density matrix (:func:`~hforge.io.density_matrix.check_dm_file`)."""
    if not path.is_file():
        return False
    try:
        check_dm_file(path)
    except FileFormatError as error:
        logger.warning("%s; not used", error)
        return False
    return True


def _prepare_dm(job: Job) -> None:
    """Leave in the folder the density matrix this attempt starts from: its own (an incomplete one is
    removed), else a copy of ``job.after``'s."""
    own = job.folder / f"{job.name}.DM"
    if _complete_dm(own):
        return
    own.unlink(missing_ok=True)
    parent = None if job.after is None else job.after / f"{job.after.name}.DM"
    if parent is not None and _complete_dm(parent):
        staging = job.folder / f".{job.name}.DM.copy"
        shutil.copyfile(parent, staging)
        with atomic_write(job.folder / f"{job.name}.DM.parent", "w") as marker:
            marker.write(job.after.name + "\n")
        _replace(staging, own)


_PRCTL: Any = None
if sys.platform.startswith("linux"):
    import ctypes

    try:
        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # a libc without prctl: SIESTA then outlives a killed campaign (the lock still guards)
        _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the campaign process dies (PR_SET_PDEATHSIG = 1)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


@dataclass
class _Attempt:
    job: Job
    process: subprocess.Popen
    log: Path
    handles: list[IO[bytes]] = field(default_factory=list)

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


class SiestaPool:
    """Runs SIESTA in run folders, ``workers`` at a time, each attempt as the module docstring says.

    Args:
        command: the SIESTA command (:func:`~hforge.datasets.siesta_runs.find_siesta`).
        workers: SIESTA processes at once.
        threads: OpenMP/BLAS threads of each (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``).
        max_attempts: failed attempts after which a run is given up (``failed``).
        poll: seconds between looks at the running processes.
    """

    def __init__(self, command: Sequence[str], *, workers: int = 1, threads: int = 1, max_attempts: int = 3,
                 poll: float = 0.5) -> None:
        self.command = list(command)
        self.workers = max(1, int(workers))
        self.threads = int(threads)
        self.max_attempts = int(max_attempts)
        self.poll = poll

    def _start(self, job: Job) -> _Attempt | RunState | None:
        """Start an attempt; the run's state instead when it turns out finished, None when the folder is busy."""
        lock = _lock(job.folder)
        if lock is None:
            return None
        try:
            _file_leftovers(job.folder)
            state = _state(job.folder, self.max_attempts)
            if state.state != "pending":
                lock.close()
                return state
            _prepare_dm(job)
            log = job.folder / f"{job.name}.attempt{_next_index(job.folder)}.log"
            stdin = open(job.folder / f"{job.name}.fdf", "rb")
            stdout = open(log, "wb")
            threads = str(self.threads)
            env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            process = subprocess.Popen(
                self.command, stdin=stdin, stdout=stdout, stderr=subprocess.STDOUT, cwd=job.folder, env=env,
                pass_fds=(lock.fileno(),), preexec_fn=_die_with_parent,
            )
        except BaseException:
            lock.close()
            raise
        logger.info("started SIESTA in %s (log %s)", job.folder, log.name)
        return _Attempt(job, process, log, [stdin, stdout, lock])

    def _finish(self, attempt: _Attempt) -> RunState:
        handles, lock = attempt.handles[:-1], attempt.handles[-1]
        for handle in handles:
            handle.close()
        try:
            _file_attempt(attempt.job.folder, attempt.log, exited=True)
            return _state(attempt.job.folder, self.max_attempts)
        finally:
            lock.close()

    def run(
        self,
        jobs: Sequence[Job],
        *,
        on_finish: Callable[[Job, RunState], None] | None = None,
        progress: bool = True,
    ) -> dict[str, RunState]:
        """Bring every job to an end (converged, unconverged, or failed ``max_attempts`` times).

        Jobs start in the given order as workers free up, a job with ``after`` once that run has
        finished.  ``on_finish(job, state)`` is called (in this thread) as each job ends, also for
        jobs that had ended before this call.  On an exception (Ctrl-C, SIGTERM through the CLI)
        the running SIESTA processes are terminated; their folders resume at the next call.

        Returns:
            The final state of every job by name.
        """
        from tqdm.auto import tqdm

        states = {job.name: settle(job.folder, self.max_attempts) for job in jobs}
        todo = [job for job in jobs if not states[job.name].finished]
        for job in jobs:
            if states[job.name].finished and on_finish is not None:
                on_finish(job, states[job.name])
        running: dict[str, _Attempt] = {}
        total = len(todo)
        bar = tqdm(total=sum(job.weight for job in todo), desc="SIESTA", disable=not progress or not todo,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        shown, shown_at = "", 0.0
        try:
            while todo or running:
                unfinished = {job.folder for job in todo} | {a.job.folder for a in running.values()}
                ended: list[tuple[Job, RunState]] = []
                for job in list(todo):
                    if len(running) >= self.workers:
                        break
                    if job.after in unfinished:
                        continue
                    started = self._start(job)
                    if started is not None:
                        todo.remove(job)
                    if isinstance(started, RunState):
                        ended.append((job, started))
                    elif started is not None:
                        running[job.name] = started
                for name, attempt in list(running.items()):
                    if attempt.process.poll() is None:
                        continue
                    del running[name]
                    state = self._finish(attempt)
                    if state.finished:
                        ended.append((attempt.job, state))
                    else:
                        todo.insert(0, attempt.job)
                        logger.warning("%s: attempt failed (%d of %d); retrying", name, state.failures, self.max_attempts)
                for job, state in ended:
                    states[job.name] = state
                    if on_finish is not None:
                        on_finish(job, state)
                    bar.update(job.weight)
                done = total - len(todo) - len(running)
                status = f"{done}/{total} runs" + (f", running {', '.join(running)}" if running else "")
                if status != shown or time.monotonic() - shown_at > 10:  # the clock and ETA every 10 s
                    bar.set_postfix_str(status)
                    shown, shown_at = status, time.monotonic()
                if running or todo:
                    time.sleep(self.poll)
        except BaseException:
            for attempt in running.values():
                attempt.process.terminate()
            for attempt in running.values():
                try:
                    attempt.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    attempt.process.kill()
                    attempt.process.wait()
                attempt.close()
            raise
        finally:
            bar.close()
        return states
