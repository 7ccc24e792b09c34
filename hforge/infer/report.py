"""What a prediction did: :class:`PredictionReport`, the stage timer, the progress bar, and torch's
threads during a prediction (the caller's choice, never the machine's load)."""

from __future__ import annotations

import operator
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from hforge.errors import InputError

__all__ = [
    "PREDICTION_STAGES", "PredictionReport", "StageTimer", "peak_rss_bytes", "progress_bar", "thread_count", "timed_module",
    "torch_threads",
]

#: Stages timed in :attr:`PredictionReport.seconds`: the neighbour lists and model graphs; the
#: model's node pass (trunk, head inputs, onsite blocks); the learned heads (the pair pass's hopping
#: blocks; a separable operator's ``D_k``, taken out of the node pass); the exact projections of the
#: orbitals on a separable operator's projector functions (two-centre integrals like S, packed per
#: atom range); the separable operator's contraction (with the Kleinman-Bylander part of H when it
#: joins it, hforge.infer.passes.Physics); the exact overlap S; the baseline H0 (the rest of it); CSR
#: planning, filling and the hand-over to sisl; the output file
#: (:meth:`~hforge.infer.Predictor.predict_to_file`).
PREDICTION_STAGES = ("graphs", "trunk", "heads", "projections", "separable", "S", "H0", "assembly", "write")


@dataclass
class PredictionReport:
    """What the last prediction did.

    Attributes:
        n_atoms, n_orbitals, nnz: atoms and orbitals of the structure, stored entries of H (and of S).
        device: where the model ran.
        mode: ``whole``, ``streamed``, ``chunked`` (or ``distributed``).
        n_parts: atom ranges (``whole``: 1, ``streamed``) or occupied spatial chunks (``chunked``).
        grid: the chunk grid (``chunked``), else ``(1, 1, 1)``.
        csr_bytes, estimated_bytes: the output CSR; the planner's estimate of output plus working memory.
        seconds: wall time per stage (:data:`PREDICTION_STAGES`).
        cpu_seconds: the process's CPU time (all threads) in each stage, which a machine shared
            with other jobs stretches far less than the wall time.
        peak_rss_bytes: peak resident memory of the process so far, at the end.
        torch_threads: torch's intra-op threads during the prediction.
    """

    n_atoms: int = 0
    n_orbitals: int = 0
    device: str = "cpu"
    nnz: int = 0
    mode: str = "whole"
    n_parts: int = 1
    grid: tuple[int, int, int] = (1, 1, 1)
    csr_bytes: int = 0
    estimated_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PREDICTION_STAGES, 0.0))
    cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PREDICTION_STAGES, 0.0))
    peak_rss_bytes: int = 0
    torch_threads: int = 0


class StageTimer:
    """``with timer(stage):`` adds the block's wall time to ``report.seconds[stage]`` and the
    process's CPU time in it to ``report.cpu_seconds[stage]``."""

    def __init__(self, report: PredictionReport | None = None) -> None:
        self.report = report if report is not None else PredictionReport()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.report.seconds[stage] += time.perf_counter() - start
            self.report.cpu_seconds[stage] += time.process_time() - cpu_start


@contextmanager
def timed_module(timer: StageTimer, module: torch.nn.Module | None, stage: str, within: str) -> Iterator[None]:
    """Inside the block, the time spent in ``module``'s forward calls (None: no module) is moved from
    stage ``within`` (which times the whole block) to ``stage``: e.g. a separable operator's ``D_k``
    head, which runs inside the node pass, counted as a head (torch's forward hooks)."""
    if module is None:
        yield
        return
    starts: list[tuple[float, float]] = []

    def before(*_: object) -> None:
        starts.append((time.perf_counter(), time.process_time()))

    def after(*_: object) -> None:
        wall, cpu = starts.pop()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        for seconds, value in ((timer.report.seconds, wall), (timer.report.cpu_seconds, cpu)):
            seconds[stage] += value
            seconds[within] -= value

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes; Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def progress_bar(
    progress: bool | Callable[[int, int], None], total: int, unit: str
) -> Callable[[int | None], None]:
    """``update(done)``, ``update(None)`` closes: a tqdm bar counting ``unit`` s (``"atom range"``,
    ``"chunk"``) for True, the callback ``(done, total)``, or nothing."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"{unit}s", unit=unit)

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update


def thread_count(threads: int | None) -> int:
    """Torch's intra-op threads for a prediction: ``threads`` (the caller's number), or None: torch's
    setting (the caller's ``torch.set_num_threads`` / ``OMP_NUM_THREADS``, by default the cores).

    Never the machine's load: the thread count fixes how torch's parallel ops split their sums, so
    the predicted bits would otherwise depend on what else runs (tests/test_infer.py checks they do
    not).  On a machine shared with other jobs one thread can be faster (docs/measurements.md): the
    caller says so (``threads=1``, ``hforge predict --threads 1``).  Numba's kernels keep their
    threads; their results do not depend on them (one writer per output value).

    Raises:
        InputError: ``threads`` not a whole number >= 1.
    """
    if threads is None:
        return torch.get_num_threads()
    try:
        count = None if isinstance(threads, bool) else operator.index(threads)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise InputError(f"threads={threads!r}: give a whole number >= 1 of torch threads, or None (torch's setting)")
    return count


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Torch's intra-op threads set to :func:`thread_count` of ``threads`` for a prediction, yielded,
    and restored after."""
    count, before = thread_count(threads), torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
