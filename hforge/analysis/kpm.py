"""Kernel polynomial method (KPM): the DOS of ``H c = E S c`` without diagonalisation.

The DOS is expanded in Chebyshev polynomials of the rescaled operator ``Ã = (A - b) / a`` whose
eigenvalues are the generalized eigenvalues mapped into ``[-1, 1]``:
``ρ(E) = n / (π a sqrt(1 - x²)) [g_0 μ_0 + 2 Σ_k g_k μ_k T_k(x)]``, ``x = (E - b) / a``, with the
moments ``μ_k = Tr T_k(Ã) / n`` estimated stochastically, ``μ_k ≈ Σ_r r^T T_k(Ã) r / (n R)`` over
R Rademacher vectors (or exactly over the n unit vectors), and the Jackson kernel ``g_k`` damping
Gibbs oscillations (resolution about ``π a / N`` for N moments; Weiße et al., Rev. Mod. Phys. 78,
275 (2006)).  One moment costs one application of ``A`` to R vectors; memory is the sparse
matrices plus four ``(n, R)`` blocks.

The operator ``A`` (``solver``):

* ``"cg"`` (sparse, any size): ``A = S^-1 H``, similar to the symmetric ``L^-1 H L^-T``, so its
  trace is that of the generalized problem.  ``S^-1`` is applied by conjugate gradients on all R
  vectors at once to a relative residual ``tol``, preconditioned by additive Schwarz over atom
  patches (:class:`SchwarzPreconditioner`: each atom with its 4 most overlapping neighbours).
  In dense aBN the DZP overlap has condition numbers ~1e5: a solve takes a few hundred
  iterations, each one sparse S product, and this, not H, is the cost of a moment.  Only the raw
  problem is available here (see below).
* ``"dense"`` (small cells, up to ``dense_max_orbitals``): the symmetric matrix
  ``L^-1 H L^-T`` (Cholesky of S), or with a ``threshold`` the canonically orthogonalized
  ``X^T H X`` of :func:`hforge.metrics.canonical_orthogonalization` (states dropped).

Canonical orthogonalization needs the eigenvectors of S below the threshold (~10 % of them in
aBN): a dense eigendecomposition, so ``threshold`` is offered up to ``dense_max_orbitals`` only.
(A Chebyshev filter of S that would drop them instead needs degree ~2000-3000 at S's 1e-3
threshold: more S products per moment than the CG solve.)

Spectral bounds: ``n_lanczos`` Lanczos steps on ``A`` (in the S inner product, where ``A`` is
self-adjoint) from one random vector give Ritz values whose extremes converge first; the bounds
are the extreme Ritz values widened by their residual norms ``|β_m y_m|`` and by
``bound_margin`` (default 2 %) of the width.  Moments that grow beyond the trace bound reveal
wrong bounds and raise an error (pass ``bounds=`` then).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import scipy.sparse as sp

from hforge.analysis.spectrum import DOS, _check_hamiltonian, _finish_dos, _progress, default_energies, matrices_at_k
from hforge.errors import ConvergenceError, InputError, InvalidMatrixError, UnsupportedSystemError
from hforge.metrics import canonical_orthogonalization

__all__ = [
    "SchwarzPreconditioner",
    "OverlapSolver",
    "KPMOperator",
    "spectral_bounds",
    "kpm_moments",
    "jackson_kernel",
    "lorentz_kernel",
    "kpm_density",
    "dos_kpm",
    "DENSE_MAX_ORBITALS",
]

#: The ``"dense"`` operator and ``threshold`` are offered up to this many orbitals.
DENSE_MAX_ORBITALS = 6000

#: A moment beyond this reveals spectral bounds that do not enclose the spectrum.
MOMENT_LIMIT = 1e4


# ---------------------------------------------------------------------------------------
# S^-1 by preconditioned conjugate gradients
# ---------------------------------------------------------------------------------------
def _atom_overlap_weights(s: sp.csr_matrix, atom_of: np.ndarray, n_atoms: int, chunk: int = 1 << 23) -> sp.csr_matrix:
    """``(N, N)`` squared Frobenius norms of S's atom blocks, streamed over row chunks."""
    total = sp.csr_matrix((n_atoms, n_atoms))
    rows_per_chunk = max(1, int(chunk // max(s.nnz / max(s.shape[0], 1), 1)))
    for r0 in range(0, s.shape[0], rows_per_chunk):
        sub = s[r0 : r0 + rows_per_chunk]
        row_atom = np.repeat(atom_of[r0 : r0 + sub.shape[0]], np.diff(sub.indptr))
        weights = np.abs(sub.data) ** 2
        total = total + sp.csr_matrix((weights, (row_atom, atom_of[sub.indices])), shape=(n_atoms, n_atoms))
    return total


@dataclass(frozen=True, eq=False)
class SchwarzPreconditioner:
    """Additive Schwarz preconditioner of S over atom patches: ``M = Σ_p R_p^T (R_p S R_p^T)^-1 R_p``.

    The patch of an atom holds the atom and its ``neighbours`` atoms of largest overlap (Frobenius
    norm of the S block: its bonded neighbours first); ``neighbours=0`` is block Jacobi (the
    inverses of the onsite blocks).  ``M`` is symmetric positive definite and kept as one sparse
    matrix.  On the 64-atom aBN cell (S(Γ) condition number 8.5e4) CG to 1e-8 takes 994
    iterations with block Jacobi, 366 with 3 neighbours, 329 with 4 (M has 24 % of S's nonzeros).

    Attributes:
        matrix: sparse ``M``.
        neighbours: atoms added to each patch.
    """

    matrix: sp.csr_matrix
    neighbours: int

    @classmethod
    def of(cls, s: sp.spmatrix, orbital_offsets: Sequence[int] | None = None, *, neighbours: int = 4) -> "SchwarzPreconditioner":
        """From a sparse S and the first orbital of every atom (``(N + 1,)``; None: one orbital per "atom")."""
        s = sp.csr_matrix(s)
        n = s.shape[0]
        offsets = np.arange(n + 1) if orbital_offsets is None else np.asarray(orbital_offsets, dtype=np.int64)
        if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) <= 0):
            raise InputError(f"orbital_offsets must rise from 0 to {n}")
        n_atoms = len(offsets) - 1
        atom_of = np.repeat(np.arange(n_atoms), np.diff(offsets))
        weights = _atom_overlap_weights(s, atom_of, n_atoms) if neighbours > 0 else None
        rows, cols, values = [], [], []
        for a in range(n_atoms):
            patch = [a]
            if weights is not None:
                lo, hi = weights.indptr[a], weights.indptr[a + 1]
                others = weights.indices[lo:hi][weights.indices[lo:hi] != a]
                norms = weights.data[lo:hi][weights.indices[lo:hi] != a]
                patch += others[np.argsort(-norms, kind="stable")[:neighbours]].tolist()
            idx = np.concatenate([np.arange(offsets[b], offsets[b + 1]) for b in patch])
            block = s[idx][:, idx].toarray()
            try:
                inverse = np.linalg.inv(block)
            except np.linalg.LinAlgError:
                raise InvalidMatrixError(f"S restricted to atoms {patch} is singular: S is not positive definite") from None
            rows.append(np.repeat(idx, len(idx)))
            cols.append(np.tile(idx, len(idx)))
            values.append(inverse.ravel())
        matrix = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        return cls(matrix, neighbours)

    def apply(self, r: np.ndarray) -> np.ndarray:
        """``M r`` for ``r`` of shape ``(n, R)``."""
        return self.matrix @ r


@dataclass
class OverlapSolver:
    """``S^-1 B`` for blocks of vectors by preconditioned conjugate gradients (every column).

    Attributes:
        s: sparse symmetric (Hermitian) positive definite S.
        preconditioner: its :class:`SchwarzPreconditioner`.
        tol: relative residual ``|S x - b| / |b|`` reached by every column.
        max_iterations: iterations before :class:`ConvergenceError`.
        iterations: iterations of every solve so far (statistics).
    """

    s: Any
    preconditioner: SchwarzPreconditioner
    tol: float = 1e-5
    max_iterations: int = 20000
    iterations: list[int] | None = None

    def __post_init__(self) -> None:
        self.iterations = []

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``X`` with ``S X = b`` (``b`` of shape ``(n, R)``)."""
        x = self.preconditioner.apply(b)
        r = b - self.s @ x
        target = self.tol * np.linalg.norm(b, axis=0)
        z = self.preconditioner.apply(r)
        p = z.copy()
        rz = np.real(np.sum(np.conj(r) * z, axis=0))
        for it in range(self.max_iterations + 1):
            if np.all(np.linalg.norm(r, axis=0) <= target):
                self.iterations.append(it)
                return x
            q = self.s @ p
            pq = np.real(np.sum(np.conj(p) * q, axis=0))
            alpha = np.divide(rz, pq, out=np.zeros_like(rz), where=pq > 0)
            x += alpha * p
            r -= alpha * q
            z = self.preconditioner.apply(r)
            rz_new = np.real(np.sum(np.conj(r) * z, axis=0))
            beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
            p = z + beta * p
            rz = rz_new
        raise ConvergenceError(
            f"conjugate gradients on S did not reach {self.tol:g} in {self.max_iterations} iterations "
            "(S not positive definite?)"
        )


# ---------------------------------------------------------------------------------------
# the operator A of the generalized problem
# ---------------------------------------------------------------------------------------
@dataclass
class KPMOperator:
    """``A`` with the spectrum of the generalized problem, applied to ``(n, R)`` blocks.

    Build with :meth:`sparse` (``S^-1 H`` by CG) or :meth:`dense` (a symmetric matrix).

    Attributes:
        n: dimension (states).
        apply: ``X -> A X``.
        inner: column-wise inner product in which ``A`` is self-adjoint (S's for ``S^-1 H``).
        kind: ``"cg"`` or ``"dense"``.
        solver: the :class:`OverlapSolver` of a ``"cg"`` operator.
    """

    n: int
    apply: Callable[[np.ndarray], np.ndarray]
    inner: Callable[[np.ndarray, np.ndarray], np.ndarray]
    kind: str
    solver: OverlapSolver | None = None

    @classmethod
    def sparse(
        cls,
        h: Any,
        s: Any,
        orbital_offsets: Sequence[int] | None = None,
        *,
        tol: float = 1e-5,
        neighbours: int = 4,
        max_iterations: int = 20000,
    ) -> "KPMOperator":
        """``A = S^-1 H`` with Schwarz-preconditioned CG (``h``, ``s``: sparse, same shape)."""
        h, s = sp.csr_matrix(h), sp.csr_matrix(s)
        if h.shape != s.shape or h.shape[0] != h.shape[1]:
            raise InputError(f"H {h.shape} and S {s.shape} must be square and of one shape")
        preconditioner = SchwarzPreconditioner.of(s, orbital_offsets, neighbours=neighbours)
        solver = OverlapSolver(s, preconditioner, tol=tol, max_iterations=max_iterations)

        def inner(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return np.real(np.sum(np.conj(x) * (s @ y), axis=0))

        return cls(h.shape[0], lambda x: solver.solve(h @ x), inner, "cg", solver)

    @classmethod
    def dense(cls, h: Any, s: Any, *, threshold: float | None = None) -> "KPMOperator":
        """The symmetric ``L^-1 H L^-T`` (``threshold=None``) or ``X^T H X`` (canonical orthogonalization)."""
        import torch

        h_t, s_t = (torch.as_tensor(m.toarray() if sp.issparse(m) else np.asarray(m)) for m in (h, s))
        dtype = torch.complex128 if (h_t.is_complex() or s_t.is_complex()) else torch.float64
        h_t, s_t = h_t.to(dtype), s_t.to(dtype)
        if threshold is not None:
            x = canonical_orthogonalization(s_t, threshold)
            b = x.mH @ h_t @ x
        else:
            chol, info = torch.linalg.cholesky_ex(s_t)
            if int(info):
                raise InvalidMatrixError("S is not positive definite: give a threshold")
            b = torch.linalg.solve_triangular(chol, h_t, upper=False)
            b = torch.linalg.solve_triangular(chol, b.mH, upper=False)
        matrix = (0.5 * (b + b.mH)).numpy()

        def inner(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return np.real(np.sum(np.conj(x) * y, axis=0))

        return cls(matrix.shape[0], lambda v: matrix @ v, inner, "dense")


def spectral_bounds(
    op: KPMOperator, *, n_lanczos: int = 30, margin: float = 0.02, seed: int = 0
) -> tuple[float, float]:
    """``(E_min, E_max)`` enclosing the spectrum of ``op`` (module docstring: Lanczos + margins)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((op.n, 1))
    v /= np.sqrt(op.inner(v, v))
    v_prev = np.zeros_like(v)
    alphas, betas = [], []
    beta = 0.0
    for _ in range(min(n_lanczos, op.n)):
        w = op.apply(v)
        alpha = float(op.inner(v, w)[0])
        w = w - alpha * v - beta * v_prev
        beta = float(np.sqrt(max(op.inner(w, w)[0], 0.0)))
        alphas.append(alpha)
        betas.append(beta)
        if beta < 1e-12 * max(abs(alpha), 1.0):
            break
        v_prev, v = v, w / beta
    t = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    theta, y = np.linalg.eigh(t)
    residual = np.abs(betas[-1] * y[-1])
    lo, hi = theta[0] - residual[0], theta[-1] + residual[-1]
    pad = margin * (hi - lo)
    return float(lo - pad), float(hi + pad)


def kpm_moments(
    op: KPMOperator,
    n_moments: int,
    bounds: tuple[float, float],
    *,
    n_vectors: int | None = 16,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """``(n_moments,)`` Chebyshev moments ``Tr T_k(Ã) / n`` (``μ_0 = 1``).

    Args:
        op: the operator.
        n_moments: moments N.
        bounds: ``(E_min, E_max)`` enclosing the spectrum.
        n_vectors: random Rademacher vectors R; None for the exact trace over the n unit vectors.
        seed: random seed.
        progress: progress bar over moments.

    Raises:
        ConvergenceError: moments beyond the trace bound (the spectrum leaves ``bounds``).
    """
    lo, hi = bounds
    if not hi > lo:
        raise InputError(f"invalid spectral bounds {bounds}")
    a, b = 0.5 * (hi - lo), 0.5 * (hi + lo)
    if n_vectors is None:
        r = np.eye(op.n)
    else:
        r = np.random.default_rng(seed).choice([-1.0, 1.0], size=(op.n, n_vectors))
    scale = 1.0 / np.sum(r * r)  # Tr / n: every column has |r|^2 = n (Rademacher) or 1 (unit vectors, n of them)

    def rescaled(v: np.ndarray) -> np.ndarray:
        return (op.apply(v) - b * v) / a

    mu = np.empty(n_moments)
    mu[0] = 1.0
    v_prev, v = r, rescaled(r) if n_moments > 1 else r
    for k in _progress(range(1, n_moments), progress, "KPM moments"):
        if k > 1:
            v_prev, v = v, 2.0 * rescaled(v) - v_prev
        mu[k] = np.real(np.sum(np.conj(r) * v)) * scale
        # inside the bounds |mu_k| <= cond(S)^(1/2) (< 1e3 for SIESTA bases); outside it grows exponentially
        if not abs(mu[k]) < MOMENT_LIMIT:
            raise ConvergenceError(
                f"KPM moment {k} is {mu[k]:.3g}: the spectrum leaves the bounds {bounds}; pass wider bounds="
            )
    return mu


def jackson_kernel(n_moments: int) -> np.ndarray:
    """Jackson damping factors ``g_k`` (k = 0..N-1)."""
    k = np.arange(n_moments)
    q = np.pi / (n_moments + 1)
    return ((n_moments - k + 1) * np.cos(q * k) + np.sin(q * k) / np.tan(q)) / (n_moments + 1)


def lorentz_kernel(n_moments: int, lam: float = 4.0) -> np.ndarray:
    """Lorentz damping factors ``sinh(λ (1 - k/N)) / sinh(λ)`` (Lorentzian lines, for Green's functions)."""
    k = np.arange(n_moments)
    return np.sinh(lam * (1 - k / n_moments)) / np.sinh(lam)


def kpm_density(
    moments: np.ndarray, energies: np.ndarray, bounds: tuple[float, float], n_states: float, *, kernel: np.ndarray
) -> np.ndarray:
    """DOS (states/eV) on ``energies`` from normalised moments (0 outside the bounds)."""
    lo, hi = bounds
    a, b = 0.5 * (hi - lo), 0.5 * (hi + lo)
    x = (np.asarray(energies, dtype=np.float64) - b) / a
    inside = np.abs(x) < 1
    xi = x[inside]
    coeff = kernel * moments
    coeff[1:] *= 2.0
    # Σ_k c_k T_k(x) by Clenshaw's recurrence
    b1 = np.zeros_like(xi)
    b2 = np.zeros_like(xi)
    for c in coeff[:0:-1]:
        b1, b2 = 2.0 * xi * b1 - b2 + c, b1
    series = xi * b1 - b2 + coeff[0]
    out = np.zeros_like(x)
    out[inside] = n_states * series / (np.pi * a * np.sqrt(1.0 - xi * xi))
    return out


def dos_kpm(
    H: Any,
    energies: np.ndarray | None = None,
    *,
    n_moments: int = 1000,
    n_vectors: int | None = 16,
    kernel: Literal["jackson", "lorentz"] = "jackson",
    threshold: float | None = None,
    solver: Literal["auto", "cg", "dense"] = "auto",
    k: Sequence[float] = (0.0, 0.0, 0.0),
    spin: int = 0,
    orbital_offsets: Sequence[int] | None = None,
    bounds: tuple[float, float] | None = None,
    tol: float = 1e-5,
    neighbours: int = 4,
    n_lanczos: int = 30,
    dense_max_orbitals: int = DENSE_MAX_ORBITALS,
    seed: int = 0,
    plot: bool = True,
    save: str | os.PathLike | None = None,
    progress: bool = False,
) -> DOS:
    """KPM DOS of a non-orthogonal Hamiltonian at one k-point (module docstring).

    Args:
        H: a non-orthogonal :class:`sisl.Hamiltonian`, or ``(H, S)`` scipy sparse matrices.
        energies: eV; default :func:`~hforge.analysis.spectrum.default_energies` from the lower bound.
        n_moments: Chebyshev moments N (resolution ~ π (E_max - E_min) / (2 N)).
        n_vectors: random vectors R of the stochastic trace; None for the exact trace (n vectors).
        kernel: ``"jackson"`` (Gaussian-like lines) or ``"lorentz"``.
        threshold: canonical-orthogonalization threshold (dense operator only); None: raw problem.
        solver: ``"cg"`` sparse ``S^-1 H``; ``"dense"`` explicit matrix; ``"auto"``: dense up to
            ``dense_max_orbitals`` orbitals (or with a threshold), cg above.
        k: reduced k-point (a sisl Hamiltonian only).
        spin: spin channel of a polarized H.
        orbital_offsets: ``(N + 1,)`` first orbital of every atom for the block-Jacobi
            preconditioner of ``(H, S)`` matrices (a sisl Hamiltonian gives its own).
        bounds: ``(E_min, E_max)`` enclosing the spectrum; default Lanczos estimate.
        tol: relative residual of the CG solves with S.  The moment errors it leaves are about
            ``10 tol`` (abn_16_0: 1e-3 at 1e-4, 5e-6 at 1e-6), concentrated at high energy: the
            integrated DOS in the gap is exact to 1e-3 states already at ``tol=1e-3``.
        neighbours: atoms per patch of the Schwarz preconditioner besides the patch's own.
        n_lanczos: Lanczos steps of the bound estimate.
        dense_max_orbitals: largest dense problem.
        seed: random seed of the vectors.
        plot, save: figure, and where to write it.
        progress: progress bar over moments.

    Returns:
        A :class:`~hforge.analysis.spectrum.DOS`; ``details`` holds the moments, bounds,
        seconds per moment, and for ``cg`` the mean CG iterations per solve.

    Raises:
        UnsupportedSystemError: a threshold or the dense solver above ``dense_max_orbitals``.
    """
    if isinstance(H, tuple):
        h, s = H
        offsets = orbital_offsets
    else:
        _check_hamiltonian(H)
        h, s = matrices_at_k(H, k, spin=spin, format="csr")
        offsets = np.asarray(H.geometry.firsto) if orbital_offsets is None else orbital_offsets
    n = h.shape[0]
    if solver == "auto":
        solver = "dense" if (threshold is not None or n <= dense_max_orbitals) else "cg"
    if solver == "dense" or threshold is not None:
        if n > dense_max_orbitals:
            raise UnsupportedSystemError(
                f"{n} orbitals: the dense KPM operator and canonical orthogonalization (threshold) are offered up to "
                f"{dense_max_orbitals} orbitals; use solver='cg' with threshold=None for larger cells"
            )
        op = KPMOperator.dense(h, s, threshold=threshold)
    elif solver == "cg":
        op = KPMOperator.sparse(h, s, offsets, tol=tol, neighbours=neighbours)
    else:
        raise InputError(f"unknown KPM solver {solver!r}: auto, cg or dense")
    began = time.perf_counter()
    if bounds is None:
        bounds = spectral_bounds(op, n_lanczos=n_lanczos, seed=seed)
    bounds_seconds = time.perf_counter() - began
    began = time.perf_counter()
    mu = kpm_moments(op, n_moments, bounds, n_vectors=n_vectors, seed=seed, progress=progress)
    seconds = time.perf_counter() - began
    g = jackson_kernel(n_moments) if kernel == "jackson" else lorentz_kernel(n_moments)
    if energies is None:
        energies = default_energies(bounds[0])
    energies = np.asarray(energies, dtype=np.float64)
    details: dict[str, Any] = {
        "solver": op.kind,
        "n_moments": n_moments,
        "n_vectors": op.n if n_vectors is None else n_vectors,
        "kernel": kernel,
        "bounds_eV": bounds,
        "resolution_eV": float(np.pi * 0.5 * (bounds[1] - bounds[0]) / n_moments),
        "seconds_bounds": bounds_seconds,
        "seconds_per_moment": seconds / max(n_moments - 1, 1),
        "moments": mu,
    }
    if op.solver is not None:
        details["cg_tol"] = tol
        details["cg_iterations_mean"] = float(np.mean(op.solver.iterations))
    result = DOS(energies, kpm_density(mu, energies, bounds, op.n, kernel=g), "kpm", threshold, float(op.n), details)
    _finish_dos(result, plot, save)
    return result
