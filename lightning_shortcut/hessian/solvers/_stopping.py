"""When a Lanczos run stops: :class:`StoppingRule` answers continue, stop or give up at each check.

A run stops once every wanted bound is within ``tol * max|lambda|`` *and* it has evidence that no
eigenvalue lies beyond: a cold run's ends settled past its floor, a warm run's inherited
:class:`WarmEvidence`. Why each constant is what it is, with the measurements: the docs' engine
page, "The safeguards" and "Warm starts along training".
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator
from lightning_shortcut.hessian.solvers._vectors import projection_norm, single_thread

#: No cold run stops before this many products (or ``max_iter``, or the whole space): ARPACK's
#: default basis; at 10, 2 of 10 calls on a trained MLP returned a neighbour of the top.
MIN_PRODUCTS = 20
#: The floor of a run for the top alone where the top is separated (hessian-eigenthings' 10).
SEPARATED_MIN_PRODUCTS = 10
#: Separated: the top Ritz value this many ``1e-3 * max|lambda|`` above the next, a share fixed
#: for every ``tol`` (a looser ``tol`` never pays the full floor where a tighter one does not).
SEPARATION = 10.0
#: A warm run may stop from this many products on.
WARM_MIN_PRODUCTS = 4
#: At ``tol = 1e-2`` a warm run not stopped by this many products is given up (:func:`warm_limit`).
WARM_MAX_PRODUCTS = 12
#: A warm run stops only if each returned Ritz vector's projection on the inherited directions has
#: at least this norm.
WARM_MIN_OVERLAP = 0.5
_SEPARATION_TOL = 1e-3
#: A residual this small relative to ``max|lambda|`` means an invariant subspace: the Ritz values are
#: eigenvalues (every Lanczos process of the engine reads this one threshold).
INVARIANT = 1e-12


class Decision(enum.Enum):
    """What a run does after a check: another product; stop, converged; stop at ``max_iter``, not
    converged; or give a warm run up, to run it again cold."""

    CONTINUE = "continue"
    STOP = "stop"
    OUT_OF_PRODUCTS = "out of products"
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Ends:
    """What a run must converge: the largest value, the smallest, the smallest magnitude."""

    top: bool = False
    bottom: bool = False
    min_abs: bool = False


def check_due(size: int) -> bool:
    """Whether a run checks at this size (an ``eigh``): every step up to 40, then every 5%."""
    return size <= 40 or size % max(1, size // 20) == 0


def warm_limit(tol: float, max_iter: int) -> int:
    """The products at which a warm run that has not stopped is given up: :data:`WARM_MAX_PRODUCTS`
    at ``tol = 1e-2``, in proportion to ``log(1 / tol)`` (a Krylov method's error falls
    geometrically with its products), within ``max_iter``."""
    scaled = math.ceil(WARM_MAX_PRODUCTS * math.log(1 / tol) / math.log(100))
    return min(max(scaled, WARM_MIN_PRODUCTS + 2), max_iter)


@dataclass(frozen=True)
class WarmEvidence:
    """What a warm run may stop on: the directions its start inherited (orthonormal rows) and the
    frontiers of the top and the bottom end (:class:`~lightning_shortcut.hessian.tracking.RunStart`)."""

    inherited: Tensor
    frontiers: tuple[float | None, float | None]

    def covers(self, ends: Ends, check: Check, threshold: float, space: LinearOperator) -> bool:
        """Whether a converged warm run's extremes are what the evidence is about: no wanted
        extreme retreated past its frontier by over ``threshold / 2``, and each wanted end's Ritz
        vector has a projection of norm :data:`WARM_MIN_OVERLAP` or more on the inherited ones."""
        top, bottom = self.frontiers
        largest, smallest = float(check.values[-1]), float(check.values[0])
        if (ends.top and (top is None or largest < top - threshold / 2)) or (
            ends.bottom and (bottom is None or smallest > bottom + threshold / 2)
        ):
            return False
        wanted = [end for end in ("top", "bottom") if getattr(ends, end)]
        return all(
            projection_norm(space, self.inherited, check.ritz_vector(end)) >= WARM_MIN_OVERLAP
            for end in wanted
        )


@dataclass(frozen=True)
class Check:
    """What a Lanczos run shows at a check: the Ritz data of ``A V = V T + r e^T``."""

    products: int  # taken so far
    values: Tensor  # the Ritz values, ascending
    residuals: Tensor  # their residual norms
    beta: float = 1.0  # ||r||
    whole_space: bool = False  # the basis spans the whole space left to the run
    projected: Tensor | None = None  # T, read for min_abs
    #: ``end -> `` the unit Ritz vector of ``"top"`` or ``"bottom"`` (formed where the warm rule asks)
    ritz_vector: Callable[[str], Tensor] | None = None


@dataclass(frozen=True)
class Assessment:
    """The rule's answer at a check: the decision, and the bounds it was taken on."""

    decision: Decision
    scale: float  # max|lambda| of the Ritz values, the tolerance's scale
    top_error: float  # bounds on the errors of the largest and the smallest Ritz value
    bottom_error: float
    #: a ``min_abs`` run's estimate of the smallest ``|eigenvalue|`` (an upper bound; ``inf`` while
    #: the basis is too small) and a bound on its error
    min_abs: float | None = None
    min_abs_error: float | None = None

    @property
    def converged(self) -> bool:
        return self.decision is Decision.STOP


def settled(
    history: Sequence[tuple[int, float, float]], ends: Ends, threshold: float, since: int
) -> bool:
    """Whether the wanted extreme Ritz values moved by at most ``threshold`` since the run had
    ``since`` products (the last check at or before it)."""
    _, largest, smallest = history[-1]
    _, then_largest, then_smallest = next(
        (h for h in reversed(history) if h[0] <= since), history[0]
    )
    return (not ends.top or abs(largest - then_largest) <= threshold) and (
        not ends.bottom or abs(smallest - then_smallest) <= threshold
    )


def error_bound(residual: float, gap: float) -> float:
    """A bound on a Ritz value's error: its residual ``rho`` (an eigenvalue lies within ``rho``),
    tightened by Kato-Temple to ``rho^2 / gap`` where the gap to the next Ritz value (less that
    one's residual) is reliable, larger than ``rho`` (Parlett, The Symmetric Eigenvalue Problem,
    ch. 10-11)."""
    return min(residual, residual**2 / gap) if gap > residual else residual


def end_errors(values: Tensor, residuals: Tensor) -> tuple[float, float]:
    """Error bounds of the largest and the smallest Ritz value."""
    top_residual, bottom_residual = float(residuals[-1]), float(residuals[0])
    if values.numel() < 2:
        return top_residual, bottom_residual
    top_gap = float(values[-1] - values[-2] - residuals[-2])
    bottom_gap = float(values[1] - residuals[1] - values[0])
    return error_bound(top_residual, top_gap), error_bound(bottom_residual, bottom_gap)


@dataclass
class StoppingRule:
    """The stopping decision of one Lanczos run: :meth:`assess` at each check. ``tol`` is relative
    to ``max|lambda|``; ``space`` the operator whose space the vectors are in (sharded: inner
    products reduced, so that every rank decides alike); ``warm`` a warm run's evidence."""

    ends: Ends
    tol: float
    max_iter: int
    space: LinearOperator
    warm: WarmEvidence | None = None
    #: ``(products, largest, smallest)`` Ritz values at each check so far
    history: list[tuple[int, float, float]] = field(default_factory=list)
    #: the top Ritz value's distance to the next one at the last check
    top_gap: float = 0.0

    @property
    def warm_limit(self) -> int | None:
        """The products at which a warm run that has not stopped is given up (``None``: cold)."""
        return None if self.warm is None else warm_limit(self.tol, self.max_iter)

    def floor(self, threshold: float) -> int:
        """The products before which a cold run does not stop: :data:`SEPARATED_MIN_PRODUCTS` for
        the top alone where it is separated, else :data:`MIN_PRODUCTS` (within ``max_iter``)."""
        top_alone = self.ends.top and not (self.ends.bottom or self.ends.min_abs)
        if top_alone and self.top_gap >= SEPARATION * _SEPARATION_TOL * threshold / self.tol:
            return min(SEPARATED_MIN_PRODUCTS, self.max_iter)
        return min(MIN_PRODUCTS, self.max_iter)

    def assess(self, check: Check) -> Assessment:
        """Note what ``check`` shows and decide what the run does next."""
        values, residuals = check.values, check.residuals
        scale = float(values.abs().max())
        exact = check.whole_space or check.beta <= INVARIANT * max(scale, 1e-300)
        if exact:  # an invariant subspace: the Ritz values are eigenvalues
            residuals = torch.zeros_like(residuals)
        rounding = 4 * torch.finfo(self.space.like.dtype).eps * scale  # no bound is tighter
        top_error, bottom_error = (max(error, rounding) for error in end_errors(values, residuals))
        self.history.append((check.products, float(values[-1]), float(values[0])))
        self.top_gap = float(values[-1] - values[-2]) if len(values) > 1 else 0.0
        threshold = self.tol * scale
        min_abs = min_abs_error = None
        resolved = True
        if self.ends.min_abs:
            if exact:
                min_abs, min_abs_error = float(values.abs().min()), 0.0
            else:
                estimate = min_abs_estimate(check.projected, check.beta)
                min_abs, min_abs_error = estimate or (math.inf, math.inf)
            # below resolution (singular to within tol), or known to relative accuracy tol
            resolved = min_abs <= threshold or min_abs_error <= self.tol * min_abs
        if exact:
            decision = Decision.STOP
        elif self.warm is not None and check.products >= self.warm_limit:
            decision = Decision.GIVE_UP  # paying toward the cold run that will replace it
        else:
            decision = Decision.CONTINUE
            met = (not self.ends.top or top_error <= threshold) and (
                not self.ends.bottom or bottom_error <= threshold
            )
            if met and resolved:
                decision = self._evidence(check, threshold)
            if decision is Decision.CONTINUE and check.products >= self.max_iter:
                decision = Decision.OUT_OF_PRODUCTS
        return Assessment(decision, scale, top_error, bottom_error, min_abs, min_abs_error)

    def _evidence(self, check: Check, threshold: float) -> Decision:
        """With every bound met: stop where the extremes are known to be the spectrum's."""
        products = check.products
        if self.warm is None:
            # cold: a Krylov space that has doubled without finding anything beyond
            stop = products >= self.floor(threshold) and settled(
                self.history, self.ends, threshold, products // 2
            )
            return Decision.STOP if stop else Decision.CONTINUE
        # warm: the evidence that nothing lies beyond is inherited; the run need only have
        # converged (its ends no longer move over two products: over one, a neighbour of a tight
        # top cluster that rose above the tracked eigenvalue was missed in 3 of 12 seeds of a test)
        if products < WARM_MIN_PRODUCTS or not settled(
            self.history, self.ends, threshold, products - 2
        ):
            return Decision.CONTINUE
        if self.warm.covers(self.ends, check, threshold, self.space):
            return Decision.STOP
        return Decision.GIVE_UP  # converged onto what the inherited evidence does not cover


def min_abs_estimate(projected: Tensor | None, beta: float) -> tuple[float, float] | None:
    """``(sigma, error)``: the Rayleigh-Ritz estimate of ``min|lambda|`` through ``A^2`` and a bound.

    With ``A V_{m-1} = V_m G`` (``G``: ``T``'s first ``m - 1`` columns and the residual norm), the
    smallest singular value ``sigma`` of ``G`` is the Rayleigh-Ritz value of ``A^2``, an upper bound
    on ``min|lambda|``; ``G`` gives ``A^2 y`` exactly, hence its residual and :func:`error_bound`,
    and ``sigma - error`` is a lower bound.
    """
    if projected is None or projected.shape[0] < 2:
        return None
    size = projected.shape[0]
    full = torch.zeros(size + 1, size, dtype=torch.float64)
    full[:size] = projected
    full[size, size - 1] = beta
    previous = full[:size, : size - 1]  # A V_{m-1} = V_m previous
    with single_thread():
        _, singular_values, right = torch.linalg.svd(previous, full_matrices=False)

    def pair(index: int) -> tuple[float, float]:
        sigma, coordinates = float(singular_values[index]), right[index]
        squared = full @ (previous @ coordinates)  # A^2 y in the basis V_{m+1}
        squared[: size - 1] -= sigma**2 * coordinates
        return sigma, float(squared.norm())

    sigma, residual = pair(-1)
    gap = math.inf
    if singular_values.numel() >= 2:
        neighbour, neighbour_residual = pair(-2)
        gap = neighbour**2 - neighbour_residual - sigma**2
    squared_error = error_bound(residual, gap) if math.isfinite(gap) else residual
    lower = math.sqrt(max(sigma**2 - squared_error, 0.0))
    return sigma, sigma - lower
