"""Power-law fits of error against data (hforge/train/power_law.py): known laws recovered exactly from
exact data, the stated uncertainty covering the truth on noisy data, and fits that say they are not
determined instead of extrapolating."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hforge.errors import InputError
from hforge.train.power_law import fit_power_law

SIZES = np.array([120.0, 240.0, 480.0, 960.0])  # training atoms of fractions 1/8 .. 1 of a 960-atom set


@given(a=st.floats(0.5, 500.0), b=st.floats(0.1, 2.0), seeds=st.integers(1, 3))
def test_exact_data_give_the_law_and_the_goal(a, b, seeds):
    n = np.repeat(SIZES, seeds)
    fit = fit_power_law(n, a * n**-b)
    assert not fit.has_floor and fit.floor == 0
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9)
    assert fit.determined, fit.note
    goal = fit.n_for(1.0)
    assert goal.n == pytest.approx(a ** (1 / b), rel=1e-9)
    assert goal.low == pytest.approx(goal.n, rel=1e-6) and goal.high == pytest.approx(goal.n, rel=1e-6)


@given(a=st.floats(5.0, 200.0), b=st.floats(0.3, 1.5), floor=st.floats(0.05, 0.8))
def test_exact_data_with_a_floor_give_the_floor(a, b, floor):
    n = np.geomspace(50, 5000, 6)
    err = a * n**-b + floor
    fit = fit_power_law(n, err)
    assert fit.has_floor, fit.note
    assert fit.floor == pytest.approx(floor, rel=1e-4)
    assert fit.b == pytest.approx(b, rel=1e-4)
    goal = 0.5 * floor + 0.5 * err.min() if err.min() > floor else None
    if goal is not None and goal > floor:
        assert fit.n_for(goal).n == pytest.approx((a / (goal - floor)) ** (1 / b), rel=1e-3)
    below = fit.n_for(0.99 * floor)
    assert below.n is None and "floor" in below.note


def test_noisy_data_the_stated_uncertainty_covers_the_exponent():
    """Multiplicative noise of 10 % on 4 sizes x 2 seeds, 200 draws: |b - b_true| < 2 sigma_b about 95 % of the time
    (a t-distribution with 6 degrees of freedom puts ~91 % within 2 sigma)."""
    rng = np.random.default_rng(0)
    n = np.repeat(SIZES, 2)
    inside, goals = 0, 0
    for _ in range(200):
        err = 40.0 * n**-0.7 * np.exp(rng.normal(0, 0.1, len(n)))
        fit = fit_power_law(n, err, floor=False)
        inside += abs(fit.b - 0.7) < 2 * fit.sigma_b
        goal = fit.n_for(1.0)
        goals += goal.low <= 40.0 ** (1 / 0.7) <= goal.high
    assert 0.85 <= inside / 200 <= 0.99
    assert 0.5 <= goals / 200 <= 0.85  # a one-sigma interval: ~64 % with 6 degrees of freedom


def test_fits_say_when_they_are_not_determined():
    two = fit_power_law([100, 200, 100, 200], [3.0, 2.0, 3.1, 1.9])
    assert not two.determined and "2 sizes" in two.note
    assert two.n_for(1.0).n is None and two.n_for(1.0).note.startswith("not determined")
    flat = fit_power_law(np.repeat(SIZES, 2), np.exp(np.random.default_rng(1).normal(0, 0.2, 8)) * 5)
    assert not flat.determined
    assert "does not fall" in flat.note or "within two standard errors" in flat.note
    exact = fit_power_law(SIZES[:3], 10 * SIZES[:3] ** -0.5)  # 3 points, 2 parameters: one degree of freedom
    assert exact.determined and math.isfinite(exact.sigma_b)
    bare = fit_power_law(SIZES[:2], [2.0, 1.0])
    assert not bare.determined and "no uncertainty" in bare.note
    far = fit_power_law(SIZES, 100 * SIZES**-0.2).n_for(1.0)
    assert far.n > 1e9 and "far beyond the data" in far.note
    barely = fit_power_law(SIZES, 5 * SIZES**-1e-3).n_for(1.0)
    assert barely.n is None and "barely falls" in barely.note
    with pytest.raises(InputError, match="finite and positive"):
        fit_power_law([100, 200, 400], [1.0, 0.0, 0.5])
    with pytest.raises(InputError, match="at least two"):
        fit_power_law([100, 100], [1.0, 2.0])
    with pytest.raises(InputError, match="goal must be positive"):
        exact.n_for(0.0)
