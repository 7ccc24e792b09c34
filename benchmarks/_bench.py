"""What every benchmark suite shares: the sizes it runs, and how it times.

* Sizes: ``HFORGE_BENCH_SIZE=small`` (default; minutes on 2 cores, to try a change) or ``full``
  (the sizes behind benchmarks/results/ and the README's figures): :func:`sizes`.
* Every benchmark first checks its result against the reference (the suite's own ``check``),
  then times with :func:`timed`: at least :data:`ROUNDS` rounds after :data:`WARMUP` warm-up.
* A comparison with a peer (:func:`interleaved`) times the peer with pytest-benchmark and runs
  HForge's call, timed by hand, before each of the peer's rounds, so both see the same machine
  load; each round gives a ratio (peer / HForge), and ``extra_info`` holds their median and
  range (``ratio_median``, ``ratio_min``, ``ratio_max``, ``hforge_s``).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

__all__ = ["ROUNDS", "SIZE", "WARMUP", "Ratio", "interleaved", "sizes", "timed"]

T = TypeVar("T")

#: ``small`` or ``full`` (``HFORGE_BENCH_SIZE``).
SIZE = os.environ.get("HFORGE_BENCH_SIZE", "small")
if SIZE not in ("small", "full"):
    raise ValueError(f"HFORGE_BENCH_SIZE={SIZE!r}: choose small or full")
#: Fewest timed rounds, and warm-up rounds, of every benchmark.
ROUNDS, WARMUP = 3, 1


def sizes(small: Sequence[T], full: Sequence[T]) -> list[T]:
    """The problem sizes of a suite for :data:`SIZE`."""
    return list(small if SIZE == "small" else full)


def timed(benchmark: Any, run: Callable[[], Any], *, rounds: int = ROUNDS, warmup: int = WARMUP, **pedantic: Any) -> Any:
    """``benchmark.pedantic(run)``, one call per round, ``warmup`` untimed rounds first; its last result."""
    return benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1, **pedantic)


@dataclass(frozen=True)
class Ratio:
    """Peer time / HForge time over interleaved rounds."""

    median: float
    low: float
    high: float
    hforge_seconds: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"


def interleaved(
    benchmark: Any, peer: Callable[[], Any], hforge: Callable[[], Any], *, rounds: int = ROUNDS, warmup: int = WARMUP,
) -> Ratio | None:
    """Time ``peer`` (pytest-benchmark) with ``hforge`` run and timed just before each of its rounds.

    Returns:
        The per-round ratios' median and range (also in ``benchmark.extra_info``); None when
        pytest-benchmark is disabled (``--benchmark-disable``: one call each, no timing).
    """
    mine: list[float] = []

    def run_hforge() -> None:
        start = time.perf_counter()
        result = hforge()
        mine.append(time.perf_counter() - start)
        del result

    timed(benchmark, peer, rounds=rounds, warmup=warmup, setup=run_hforge)
    if benchmark.stats is None:
        return None
    theirs = benchmark.stats.stats.data
    mine = mine[len(mine) - len(theirs):]  # drop the warm-up rounds
    ratios = [t / m for t, m in zip(theirs, mine)]
    ratio = Ratio(statistics.median(ratios), min(ratios), max(ratios), tuple(mine))
    benchmark.extra_info.update(
        ratio_median=ratio.median, ratio_min=ratio.low, ratio_max=ratio.high, hforge_s=list(ratio.hforge_seconds)
    )
    return ratio
