"""Power laws of an error against the amount of data: ``err = a N^-b``, plus a floor ``c`` where the
data support one, fitted in log space, and the data a goal would need, with its uncertainty.

The learning curve of the study (:func:`hforge.train.study.learning_curve`) fits the held-out errors
(meV) against the training atoms ``N``.  The fit minimises the squared residuals of ``ln err`` (each
point, e.g. each seed, counts once): errors spanning decades weigh alike, and a multiplicative noise
is what seeds and subsets give.  Uncertainties are the least-squares covariance scaled by the
residual variance (``RSS / (points - parameters)``); the goal's interval is its one-sigma interval
in ``ln N`` (delta method).  A fit says when it is not determined instead of extrapolating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hforge.errors import InputError

__all__ = ["EXTRAPOLATION_LIMIT", "FLOOR_MIN_SIZES", "MIN_SIZES", "GoalEstimate", "PowerLawFit", "fit_power_law"]

#: Distinct data sizes a fit needs before it claims an exponent (two sizes fit any power law exactly).
MIN_SIZES = 3
#: Distinct data sizes before a floor is tried (three parameters and at least one size to test them).
FLOOR_MIN_SIZES = 4
#: A floor is kept when the F-test of the two fits rejects "no floor" at this level and the floor
#: exceeds twice its standard error.
FLOOR_P_VALUE = 0.05
#: Squared ``ln err`` residual per point below which two fits are the same (float64 rounding of exact data).
_RSS_ROUNDING = 1e-20
#: Beyond this many times the largest size fitted, a goal's size is reported as far outside the data.
EXTRAPOLATION_LIMIT = 100.0
#: ``ln N`` above which a size is not a number worth reporting (float64 overflows at ~709).
_LN_N_MAX = math.log(1e100)


@dataclass(frozen=True)
class GoalEstimate:
    """The data at which a fitted error reaches a goal.

    Attributes:
        goal: the error aimed at (units of the fitted errors).
        n: the size ``N`` at which the fit reaches it; None where the fit is not determined or
            never reaches it (a floor at or above the goal).
        low, high: the one-sigma interval of ``n`` (None where ``n`` is, or where the residuals
            give no variance: as many points as parameters).
        note: why there is no number, or how far the number lies beyond the data.
    """

    goal: float
    n: float | None
    low: float | None
    high: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "n": self.n, "low": self.low, "high": self.high, "note": self.note}


@dataclass(frozen=True)
class PowerLawFit:
    """``err(N) = a N^-b + floor`` fitted to points ``(N, err)``.

    Attributes:
        a, b: prefactor and exponent.
        floor: the error more data does not remove (0 without a floor).
        has_floor: whether the floor model was kept.
        covariance: of ``(ln a, b)``, or ``(ln a, b, floor)`` with a floor; NaN where the residuals
            give no variance.
        n_points, n_sizes: points fitted, and their distinct sizes ``N``.
        n_max: the largest ``N`` fitted.
        rms_log_residual: root-mean-square residual of ``ln err``.
        determined: whether the fit says how the error falls: at least :data:`MIN_SIZES` sizes,
            more points than parameters, and an exponent above twice its standard error.
        note: why it is not determined, and what became of a floor tried.
    """

    a: float
    b: float
    floor: float
    has_floor: bool
    covariance: np.ndarray
    n_points: int
    n_sizes: int
    n_max: float
    rms_log_residual: float
    determined: bool
    note: str

    @property
    def sigma_b(self) -> float:
        return math.sqrt(self.covariance[1, 1]) if np.isfinite(self.covariance[1, 1]) else math.nan

    @property
    def sigma_floor(self) -> float:
        if not self.has_floor or not np.isfinite(self.covariance[2, 2]):
            return math.nan
        return math.sqrt(self.covariance[2, 2])

    def n_for(self, goal: float) -> GoalEstimate:
        """The size ``N`` at which the fit reaches ``goal`` (:class:`GoalEstimate`).

        Raises:
            InputError: a goal that is not a positive number.
        """
        if not goal > 0:
            raise InputError(f"power law: the goal must be positive, got {goal}")
        if not self.determined:
            return GoalEstimate(goal, None, None, None, f"not determined: {self.note}")
        if self.floor >= goal:
            return GoalEstimate(goal, None, None, None, f"the fitted floor {self.floor:.3g} ± {self.sigma_floor:.2g} is at "
                                f"or above the goal: more data of this kind does not reach it")
        reach = goal - self.floor
        ln_n = (math.log(self.a) - math.log(reach)) / self.b
        gradient = [1.0 / self.b, -ln_n / self.b] + ([1.0 / (self.b * reach)] if self.has_floor else [])
        variance = float(np.asarray(gradient) @ self.covariance @ np.asarray(gradient))
        if ln_n > _LN_N_MAX:
            return GoalEstimate(goal, None, None, None, f"beyond 1e100 (b = {self.b:.3g}): the error barely falls with N")
        n = math.exp(ln_n)
        low = high = None
        if np.isfinite(variance):
            spread = math.sqrt(variance)
            low, high = math.exp(ln_n - spread), math.exp(min(ln_n + spread, _LN_N_MAX))
        factor = n / self.n_max
        if factor <= 1:
            note = "reached within the data fitted"
        elif factor <= EXTRAPOLATION_LIMIT:
            note = f"{factor:.3g}x the largest size fitted: an extrapolation of the fitted law"
        else:
            note = (f"{factor:.3g}x the largest size fitted: far beyond the data (more than {EXTRAPOLATION_LIMIT:g}x), "
                    "where the law is untested")
        return GoalEstimate(goal, n, low, high, note)

    def to_dict(self) -> dict[str, Any]:
        sigma = np.sqrt(np.where(np.diag(self.covariance) >= 0, np.diag(self.covariance), np.nan))
        return {
            "a": self.a, "b": self.b, "floor": self.floor, "has_floor": self.has_floor,
            "sigma_ln_a": float(sigma[0]), "sigma_b": float(sigma[1]), "sigma_floor": self.sigma_floor,
            "covariance": self.covariance.tolist(), "n_points": self.n_points, "n_sizes": self.n_sizes,
            "n_max": self.n_max, "rms_log_residual": self.rms_log_residual, "determined": self.determined,
            "note": self.note,
        }


def _covariance(jacobian: np.ndarray, rss: float, dof: int) -> np.ndarray:
    """``RSS / dof (J^T J)^-1`` (NaN without degrees of freedom or with a singular ``J^T J``)."""
    p = jacobian.shape[1]
    if dof < 1:
        return np.full((p, p), np.nan)
    try:
        return rss / dof * np.linalg.inv(jacobian.T @ jacobian)
    except np.linalg.LinAlgError:
        return np.full((p, p), np.nan)


def _pure(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(ln a, b)``, the residual sum of squares and the covariance of ``y = ln a - b x``."""
    jacobian = np.stack([np.ones_like(x), -x], axis=1)
    theta, *_ = np.linalg.lstsq(jacobian, y, rcond=None)
    rss = float(np.sum((jacobian @ theta - y) ** 2))
    return theta, rss, _covariance(jacobian, rss, len(x) - 2)


def _with_floor(x: np.ndarray, y: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, float, np.ndarray] | None:
    """``(ln a, b, c)``, RSS and covariance of ``y = ln(a e^{-b x} + c)``, c >= 0; None when no start converges."""
    from scipy.optimize import least_squares

    def residual(theta: np.ndarray) -> np.ndarray:
        return np.log(np.exp(theta[0] - theta[1] * x) + theta[2]) - y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        power = np.exp(theta[0] - theta[1] * x)
        total = power + theta[2]
        return np.stack([power / total, -x * power / total, 1.0 / total], axis=1)

    smallest = float(np.exp(y.min()))
    best = None
    for share in (0.1, 0.5, 0.9):  # the floor as a share of the smallest error
        result = least_squares(residual, np.array([start[0], start[1], share * smallest]), jac=jacobian,
                               bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, np.inf]), x_scale="jac")
        if result.success and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return None
    rss = float(np.sum(best.fun ** 2))
    return best.x, rss, _covariance(jacobian(best.x), rss, len(x) - 3)


def fit_power_law(n: Sequence[float], err: Sequence[float], *, floor: bool | None = None) -> PowerLawFit:
    """Fit ``err = a N^-b (+ floor)`` to points in log space (module docstring).

    Args:
        n: ``(m,)`` sizes (training atoms), positive.
        err: ``(m,)`` errors, positive.
        floor: None: keep a floor only where the data support it (at least :data:`FLOOR_MIN_SIZES`
            sizes, more points than three, the F-test against the plain law at :data:`FLOOR_P_VALUE`
            and a floor above twice its standard error); True: always fit one (where there are
            enough sizes); False: the plain law.

    Raises:
        InputError: sizes or errors that are not finite and positive, arrays of different
            lengths, or fewer than two distinct sizes.
    """
    n = np.asarray(n, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    if n.shape != err.shape or n.ndim != 1:
        raise InputError(f"power law: sizes {n.shape} and errors {err.shape} must be two vectors of one length")
    if not (np.all(np.isfinite(n)) and np.all(n > 0) and np.all(np.isfinite(err)) and np.all(err > 0)):
        raise InputError("power law: sizes and errors must be finite and positive")
    n_sizes = len(np.unique(n))
    if n_sizes < 2:
        raise InputError(f"power law: {n_sizes} distinct size(s); a fit needs at least two")
    x, y = np.log(n), np.log(err)
    theta, rss, covariance = _pure(x, y)
    a, b, c, has_floor = math.exp(theta[0]), float(theta[1]), 0.0, False
    notes = []
    if floor is not False:
        if n_sizes < FLOOR_MIN_SIZES or len(n) <= 3:
            notes.append(f"no floor tried: {n_sizes} sizes, {len(n)} points (a floor needs {FLOOR_MIN_SIZES} sizes "
                         "and more than 3 points)")
        else:
            fitted = _with_floor(x, y, theta)
            if fitted is None:
                notes.append("the fit with a floor did not converge")
            else:
                theta_c, rss_c, covariance_c = fitted
                from scipy.stats import f as f_distribution

                dof = len(n) - 3
                p_value = 1.0  # an improvement at rounding level (data on a plain power law) supports nothing
                if rss - rss_c > _RSS_ROUNDING * len(n):
                    p_value = float(f_distribution.sf((rss - rss_c) / max(rss_c / dof, 1e-300), 1, dof))
                sigma_c = math.sqrt(covariance_c[2, 2]) if np.isfinite(covariance_c[2, 2]) else math.nan
                supported = theta_c[2] > 2 * sigma_c and p_value < FLOOR_P_VALUE
                if floor or supported:
                    a, b, c, has_floor = math.exp(theta_c[0]), float(theta_c[1]), float(theta_c[2]), True
                    theta, rss, covariance = theta_c, rss_c, covariance_c
                    if not supported:
                        notes.append(f"a floor fitted as asked although the data do not support it (F-test p = "
                                     f"{p_value:.2g}, floor {theta_c[2]:.3g} ± {sigma_c:.2g})")
                else:
                    notes.append(f"no floor: the data do not support one (F-test p = {p_value:.2g}, floor "
                                 f"{theta_c[2]:.3g} ± {sigma_c:.2g})")
    parameters = 3 if has_floor else 2
    sigma_b = math.sqrt(covariance[1, 1]) if np.isfinite(covariance[1, 1]) else math.nan
    reasons = []
    if n_sizes < MIN_SIZES:
        reasons.append(f"{n_sizes} sizes (at least {MIN_SIZES} are needed to test a power law)")
    if len(n) <= parameters:
        reasons.append(f"{len(n)} points for {parameters} parameters: no uncertainty")
    if not b > 0:
        reasons.append(f"the error does not fall with N (b = {b:.3g})")
    elif np.isfinite(sigma_b) and not b > 2 * sigma_b:
        reasons.append(f"the exponent b = {b:.3g} ± {sigma_b:.2g} is within two standard errors of 0")
    return PowerLawFit(
        a=a, b=b, floor=c, has_floor=has_floor, covariance=covariance, n_points=len(n), n_sizes=n_sizes,
        n_max=float(n.max()), rms_log_residual=math.sqrt(rss / len(n)), determined=not reasons,
        note="; ".join(reasons + notes),
    )
