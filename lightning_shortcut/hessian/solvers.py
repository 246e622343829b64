"""Symmetric eigensolvers on a matrix-free operator: Lanczos and shifted power iteration.

They see the Hessian only through ``matvec(v) -> H v`` on flat vectors, so they are tested on plain
matrices as well as on networks. Convergence is always judged by a residual ``||H y - theta y||``
relative to the operator's scale, never by the change between iterations alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


@dataclass
class Extremes:
    """What a solver found: algebraic ends of the spectrum and, optionally, the smallest magnitude."""

    top: list[float] = field(default_factory=list)
    bottom: list[float] = field(default_factory=list)
    min_abs: float | None = None
    scale: float = 0.0  # largest |eigenvalue| seen, the scale of the tolerance
    converged: bool = True
    top_vectors: list[Tensor] = field(default_factory=list)
    bottom_vectors: list[Tensor] = field(default_factory=list)


def random_unit_vector(
    dim: int, like: Tensor, generator: torch.Generator, against: list[Tensor] | None = None
) -> Tensor:
    """A Gaussian unit vector drawn on the CPU (device-independent), orthogonal to ``against``."""
    vector = torch.randn(dim, generator=generator, dtype=torch.float64).to(like)
    vector = _orthogonalize(vector, _stack(against or [], like))
    return vector / vector.norm()


def _orthogonalize(vector: Tensor, *bases: Tensor) -> Tensor:
    # Classical Gram-Schmidt done twice ("twice is enough") against bases with orthonormal rows.
    bases = tuple(basis for basis in bases if basis.shape[0] > 0)
    for _ in range(2):
        for basis in bases:
            vector = vector - basis.T @ (basis @ vector)
    return vector


def _stack(vectors: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(vectors) if vectors else like.new_zeros(0, like.numel())


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    size = len(alphas)
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if size > 1:
        off = torch.tensor(betas[: size - 1], dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


def _min_abs_estimate(alphas: list[float], betas: list[float]) -> tuple[float, float] | None:
    """Smallest |eigenvalue| from the Krylov basis and its H^2 residual.

    With ``H Q_m = Q_{m+1} Tbar_m`` (``Tbar_m`` is ``(m+1) x m``), the smallest singular value of
    ``Tbar_{m-1}`` minimizes ``||H y||`` over the first ``m - 1`` basis vectors: it is the
    Rayleigh-Ritz value of ``H^2`` there. ``Tbar_m`` then gives ``H^2 y`` exactly, hence the residual
    ``||H^2 y - sigma^2 y||``, which bounds the error of ``sigma^2`` as an eigenvalue of ``H^2``.
    """
    steps = len(alphas)
    if steps < 2:
        return None
    full = torch.zeros(steps + 1, steps, dtype=torch.float64)
    full[:steps, :steps] = _tridiagonal(alphas, betas)
    full[steps, steps - 1] = betas[steps - 1]
    previous = full[:steps, : steps - 1]
    _, singular_values, right = torch.linalg.svd(previous, full_matrices=False)
    sigma = float(singular_values[-1])
    coords = right[-1]
    image = previous @ coords  # H y in the basis Q_m
    residual = full @ image
    residual[: steps - 1] -= sigma**2 * coords
    return sigma, float(residual.norm())


class LanczosProcess:
    """The Lanczos three-term recurrence with full reorthogonalization, one product per step.

    After :meth:`step`, ``alphas``/``betas`` hold the tridiagonal ``T`` (and ``betas[-1]`` the norm of
    the next residual); :meth:`advance` moves to the next basis vector.
    """

    def __init__(
        self, matvec: MatVec, start: Tensor, locked: list[Tensor] | None, max_steps: int
    ) -> None:
        self.matvec = matvec
        self.locked = _stack(locked or [], start)
        dim = start.numel()
        self.room = dim - self.locked.shape[0]
        self.budget = max(1, min(max_steps, self.room))
        # grown by doubling: a budget-sized buffer would cost budget x dim up front on every call
        self._buffer = start.new_empty(min(self.budget, 16), dim)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.steps = 0
        self._vector = start
        self._previous: Tensor | None = None
        self._residual = start

    @property
    def basis(self) -> Tensor:
        """The orthonormal Lanczos vectors so far, one per row."""
        return self._buffer[: self.steps]

    def step(self) -> bool:
        """One product; returns ``False`` if it was not finite."""
        vector = self._vector
        if self.steps == self._buffer.shape[0]:
            grown = self._buffer.new_empty(min(2 * self.steps, self.budget), self._buffer.shape[1])
            grown[: self.steps] = self._buffer
            self._buffer = grown
        self._buffer[self.steps] = vector
        self.steps += 1
        product = self.matvec(vector)
        if not bool(torch.isfinite(product).all()):
            return False
        alpha = float(vector @ product)
        product = product - alpha * vector
        if self._previous is not None:
            product = product - self.betas[-1] * self._previous
        product = _orthogonalize(product, self.basis, self.locked)
        self.alphas.append(alpha)
        self.betas.append(float(product.norm()))
        self._residual = product
        return True

    def advance(self) -> None:
        self._previous, self._vector = self._vector, self._residual / self.betas[-1]


def _check_now(steps: int) -> bool:
    # Convergence checks cost O(steps^3) (a dense eigh and, for min_abs, an SVD); check every step
    # early on, then about every 5% of the steps so far: long runs stay O(steps) products-bound.
    return steps <= 30 or steps % max(1, steps // 20) == 0


def lanczos(
    matvec: MatVec,
    dim: int,
    like: Tensor,
    generator: torch.Generator,
    *,
    want_top: bool,
    want_bottom: bool,
    want_min_abs: bool = False,
    locked: list[Tensor] | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
) -> tuple[float, Tensor, float, Tensor, float | None, float, bool, int]:
    """One Lanczos run with full reorthogonalization, on the complement of ``locked``.

    Stops when the wanted extreme Ritz pairs have residual ``<= tol * scale`` (``scale``: the largest
    |Ritz value|), when the Krylov space is invariant, or after ``max_iter`` products.

    Returns:
        ``(largest, its vector, smallest, its vector, min_abs or None, scale, converged, steps)``.
    """
    process = LanczosProcess(
        matvec, random_unit_vector(dim, like, generator, locked), locked, max_iter
    )
    converged = False
    ritz_values = torch.zeros(1, dtype=torch.float64)
    ritz_vectors = torch.ones(1, 1, dtype=torch.float64)
    min_abs: float | None = None
    scale = 0.0
    while process.steps < process.budget:
        if not process.step():
            nan = math.nan
            vector = process.basis[0]
            return (
                nan,
                vector,
                nan,
                vector,
                (nan if want_min_abs else None),
                nan,
                False,
                process.steps,
            )
        alphas, betas, beta = process.alphas, process.betas, process.betas[-1]
        exhausted = process.steps == process.room  # Krylov space = whole space: Ritz values exact
        if not (
            _check_now(process.steps) or exhausted or beta == 0.0 or process.steps == process.budget
        ):
            process.advance()
            continue
        ritz_values, ritz_vectors = torch.linalg.eigh(_tridiagonal(alphas, betas))
        scale = float(ritz_values.abs().max())
        threshold = tol * scale
        residuals = beta * ritz_vectors[-1].abs()
        invariant = beta <= 1e-12 * max(scale, 1e-300) or scale == 0.0
        done = (not want_top or float(residuals[-1]) <= threshold) and (
            not want_bottom or float(residuals[0]) <= threshold
        )
        if want_min_abs:
            if invariant:
                min_abs = float(ritz_values.abs().min())
            else:
                estimate = _min_abs_estimate(alphas, betas)
                if estimate is None:
                    done = False
                else:
                    min_abs, h2_residual = estimate
                    done = done and (
                        min_abs <= threshold or h2_residual <= 2.0 * min_abs * threshold
                    )
        if invariant or done or exhausted:
            converged = True
            break
        process.advance()
    steps = process.steps
    if want_min_abs and min_abs is None:
        min_abs = float(ritz_values.abs().min())
    basis = process.basis
    top_vector = ritz_vectors[:, -1].to(basis) @ basis
    bottom_vector = ritz_vectors[:, 0].to(basis) @ basis
    return (
        float(ritz_values[-1]),
        top_vector / top_vector.norm(),
        float(ritz_values[0]),
        bottom_vector / bottom_vector.norm(),
        min_abs,
        scale,
        converged,
        steps,
    )


def lanczos_extremes(
    matvec: MatVec,
    dim: int,
    like: Tensor,
    generator: torch.Generator,
    *,
    top_k: int,
    bottom_k: int,
    min_abs: bool = False,
    tol: float = 1e-3,
    max_iter: int = 100,
) -> Extremes:
    """Top-k and bottom-k eigenvalues by Lanczos runs with locking.

    Each run converges only the current extremes and locks their Ritz vectors; the next run starts
    from a fresh random vector orthogonal to everything locked. A single Krylov space holds one copy
    of a repeated eigenvalue, so locking one pair per run is what finds multiplicities (at the
    paper's zero point every eigenvalue is repeated ``num_units * width`` times).
    """
    result = Extremes()
    locked: list[Tensor] = []
    first = True
    while len(result.top) < top_k or len(result.bottom) < bottom_k or first:
        want_top = len(result.top) < top_k
        want_bottom = len(result.bottom) < bottom_k
        if dim - len(locked) <= 0:
            break
        largest, top_vec, smallest, bottom_vec, found_min_abs, scale, converged, steps = lanczos(
            matvec,
            dim,
            like,
            generator,
            want_top=want_top or (first and min_abs),
            want_bottom=want_bottom or (first and min_abs),
            want_min_abs=first and min_abs,
            locked=locked,
            tol=tol,
            max_iter=max_iter,
        )
        result.converged &= converged
        if first:
            result.scale = scale
            result.min_abs = found_min_abs
        first = False
        if math.isnan(largest):
            result.converged = False
            result.top += [math.nan] * (top_k - len(result.top))
            result.bottom += [math.nan] * (bottom_k - len(result.bottom))
            break
        if want_top:
            result.top.append(largest)
            result.top_vectors.append(top_vec)
            locked.append(top_vec)
        if want_bottom:
            result.bottom.append(smallest)
            result.bottom_vectors.append(bottom_vec)
            if not (want_top and steps == 1):  # a one-dimensional run has a single Ritz vector
                locked.append(bottom_vec)
    result.scale = max(
        [result.scale] + [abs(v) for v in result.top + result.bottom if math.isfinite(v)]
    )
    return result


def _normalized(vector: Tensor) -> Tensor:
    norm = vector.norm()
    return vector / norm if float(norm) > 0 else vector


def _power_iteration(
    matvec: MatVec,
    start: Tensor,
    shift: float,
    locked: list[Tensor],
    scale: float,
    tol: float,
    max_iter: int,
) -> tuple[float, Tensor, bool, int]:
    """Power iteration on ``H + shift * I`` restricted to the complement of ``locked``.

    Returns the Rayleigh quotient of ``H`` at the final vector, the vector, whether its residual
    ``||H v - theta v||`` reached ``tol * scale``, and the number of products.
    """
    locked_basis = _stack(locked, start)
    vector = _normalized(_orthogonalize(start, locked_basis))
    theta = math.nan
    for step in range(max_iter):
        product = matvec(vector)
        if not bool(torch.isfinite(product).all()):
            return math.nan, vector, False, step + 1
        theta = float(vector @ product)
        residual = float((product - theta * vector).norm())
        if residual <= tol * scale:
            return theta, vector, True, step + 1
        vector = _normalized(_orthogonalize(product + shift * vector, locked_basis))
    return theta, vector, False, max_iter


def power_extremes(
    matvec: MatVec,
    dim: int,
    like: Tensor,
    generator: torch.Generator,
    *,
    top_k: int,
    bottom_k: int,
    tol: float = 1e-3,
    max_iter: int = 100,
) -> Extremes:
    """Top-k and bottom-k eigenvalues by power iteration on shifted operators, with deflation.

    A first power iteration estimates ``rho = max|lambda|`` (from ``||H v||``, which converges even
    for a symmetric ``+-sigma`` spectrum where the Rayleigh quotient does not). Then the largest
    eigenvalue is the dominant one of ``H + s I`` and the smallest that of ``H - s I``, ``s = 1.1 rho``.
    Each further eigenvalue is found on the complement of the ones already found.
    """
    result = Extremes()
    vector = random_unit_vector(dim, like, generator)
    rho = 0.0
    norm_tol = max(tol, 1e-3)
    for _ in range(max_iter):
        product = matvec(vector)
        if not bool(torch.isfinite(product).all()):
            result.converged = False
            result.top = [math.nan] * top_k
            result.bottom = [math.nan] * bottom_k
            return result
        estimate = float(product.norm())
        if estimate == 0.0:
            break
        vector = product / estimate
        if abs(estimate - rho) <= norm_tol * estimate:
            rho = estimate
            break
        rho = estimate
    result.scale = rho
    if rho == 0.0:  # H v = 0 for a random v: the operator is (numerically) zero
        result.top = [0.0] * top_k
        result.bottom = [0.0] * bottom_k
        return result
    shift = 1.1 * rho
    for count, sign, values, vectors in (
        (top_k, 1.0, result.top, result.top_vectors),
        (bottom_k, -1.0, result.bottom, result.bottom_vectors),
    ):
        for _ in range(count):
            start = random_unit_vector(dim, like, generator, vectors)
            theta, found, converged, _ = _power_iteration(
                matvec, start, sign * shift, vectors, rho, tol, max_iter
            )
            result.converged &= converged
            values.append(theta)
            vectors.append(found)
    return result
