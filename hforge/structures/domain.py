"""The domain of a model's training structures, and how far a structure lies outside it.

A model predicts the structures it was trained on well; one far outside (a cell compressed to 0.7x,
a cell of one species where the training had two, atoms much closer than any training pair)
gets an extrapolation without a word.  :class:`TrainingDomain` keeps, from the training
structures, what such cases change: the fraction of each species, the closest approach of each
species pair, and the neighbours of each species within the model's interaction cut-off
``r_max``.  :meth:`TrainingDomain.departures` names each way a structure leaves it, with these
margins: a species fraction more than :data:`FRACTION_MARGIN` outside the trained range; a pair of
species closer than :data:`DISTANCE_FACTOR` times the closest trained one; neighbour counts
outside :data:`NEIGHBOUR_FACTORS` times the trained range.  The trainer stores it in the checkpoint
(``extra["domain"]``) and the predictor warns (:class:`~hforge.errors.OutOfDomainWarning`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["DISTANCE_FACTOR", "FRACTION_MARGIN", "NEIGHBOUR_FACTORS", "TrainingDomain"]

#: A species fraction this far outside the training range is out of the domain.
FRACTION_MARGIN = 0.1
#: A pair of species closer than this times their closest training approach is out of the domain.
DISTANCE_FACTOR = 0.9
#: Neighbour counts within ``r_max`` below the first or above the second factor times the training range.
NEIGHBOUR_FACTORS = (0.8, 1.2)


def _pair_name(a: str, b: str) -> str:
    return "-".join(sorted((a, b)))


def _environment(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, labels: Sequence[str], r_max: float
) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """``(fraction of each species, closest approach of each species pair within r_max, neighbour
    counts of the atoms of each species within r_max)`` of one structure (every periodic image)."""
    from vesin import NeighborList

    labels = np.asarray(labels)
    i, j, d = NeighborList(cutoff=float(r_max), full_list=True).compute(positions, cell, pbc, "ijd")
    counts = np.bincount(i, minlength=len(labels))
    species = list(dict.fromkeys(labels.tolist()))
    closest: dict[str, float] = {}
    for a in species:
        for b in species:
            if _pair_name(a, b) in closest:
                continue
            mine = (labels[i] == a) & (labels[j] == b) | (labels[i] == b) & (labels[j] == a)
            if mine.any():
                closest[_pair_name(a, b)] = float(d[mine].min())
    fractions = {s: float(np.mean(labels == s)) for s in species}
    return fractions, closest, {s: counts[labels == s] for s in species}


@dataclass(frozen=True)
class TrainingDomain:
    """What a model's training structures span (see the module docstring).

    Attributes:
        r_max: the cut-off (Å) of the distances and neighbour counts (the model's ``r_max``).
        fractions: per species label, ``[lowest, highest]`` fraction of the atoms of a structure.
        closest: per species pair (``"B-N"``, labels sorted), the closest approach within ``r_max`` (Å).
        neighbours: per species label, ``[fewest, most]`` neighbours of one of its atoms within ``r_max``.
        n_structures: training structures it was taken from.
    """

    r_max: float
    fractions: dict[str, tuple[float, float]]
    closest: dict[str, float]
    neighbours: dict[str, tuple[int, int]]
    n_structures: int

    @classmethod
    def of(
        cls, structures: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[str]]], r_max: float
    ) -> "TrainingDomain":
        """The domain of ``(positions, cell, pbc, species labels)`` structures."""
        fractions: dict[str, list[float]] = {}
        closest: dict[str, float] = {}
        neighbours: dict[str, list[int]] = {}
        n = 0
        for positions, cell, pbc, labels in structures:
            n += 1
            f, c, counts = _environment(positions, cell, pbc, labels, r_max)
            for s, value in f.items():
                fractions.setdefault(s, []).append(value)
            for pair, distance in c.items():
                closest[pair] = min(distance, closest.get(pair, np.inf))
            for s, values in counts.items():
                neighbours.setdefault(s, []).extend(values.tolist())
        return cls(
            float(r_max),
            {s: (min(v), max(v)) for s, v in fractions.items()},
            closest,
            {s: (int(min(v)), int(max(v))) for s, v in neighbours.items()},
            n,
        )

    def departures(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, labels: Sequence[str]) -> list[str]:
        """Each way the structure leaves the domain, in words (empty inside it)."""
        fractions, closest, counts = _environment(positions, cell, pbc, labels, self.r_max)
        found = []
        for s in sorted(set(self.fractions) | set(fractions)):
            value = fractions.get(s, 0.0)
            lo, hi = self.fractions.get(s, (0.0, 0.0))
            if value < lo - FRACTION_MARGIN or value > hi + FRACTION_MARGIN:
                found.append(f"{value:.0%} of the atoms are {s} (training structures: {lo:.0%}-{hi:.0%})")
        for pair, distance in sorted(closest.items()):
            trained = self.closest.get(pair)
            if trained is not None and distance < DISTANCE_FACTOR * trained:
                found.append(f"{pair} pairs {distance:.2f} Å apart (training structures: at least {trained:.2f} Å)")
        low, high = NEIGHBOUR_FACTORS
        for s, values in sorted(counts.items()):
            if s not in self.neighbours or not len(values):
                continue
            fewest, most = self.neighbours[s]
            if values.min() < low * fewest or values.max() > high * most:
                found.append(
                    f"{s} atoms with {int(values.min())}-{int(values.max())} neighbours within {self.r_max:g} Å "
                    f"(training structures: {fewest}-{most})"
                )
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "r_max": self.r_max, "fractions": {s: list(v) for s, v in self.fractions.items()}, "closest": dict(self.closest),
            "neighbours": {s: list(v) for s, v in self.neighbours.items()}, "n_structures": self.n_structures,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainingDomain":
        return cls(
            float(data["r_max"]), {s: (float(v[0]), float(v[1])) for s, v in data["fractions"].items()},
            {p: float(v) for p, v in data["closest"].items()},
            {s: (int(v[0]), int(v[1])) for s, v in data["neighbours"].items()}, int(data["n_structures"]),
        )
