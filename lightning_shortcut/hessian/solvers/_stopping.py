"""When a Lanczos run stops: one rule that answers continue, stop or give up at every check.

:class:`StoppingRule` owns the whole decision: the error bounds of the extreme Ritz values, the
evidence that they are the spectrum's extremes, the resolution of ``min_abs`` and both limits
(``max_iter``, and a warm run's product budget). The solver hands it what each check shows
(:class:`Check`) and follows the :class:`Decision` of its :class:`Assessment`.

A run stops once every wanted value's error bound (:func:`error_bound`) is within
``tol * max|lambda|`` *and* the run has evidence that no eigenvalue lies beyond the extreme Ritz
values (a small residual says an eigenvalue is near a Ritz value, not that it is the extreme one);
the why and the measurements behind each constant: the docs' engine page, "The safeguards" and
"Warm starts along training". **Cold runs** pay a floor of :data:`MIN_PRODUCTS` products (a run for
a separated top alone :data:`SEPARATED_MIN_PRODUCTS`, :meth:`StoppingRule.floor`) and stop once the
wanted extremes have moved by at most ``tol * max|lambda|`` since the run had half its products
(:func:`settled`): a Krylov space that has doubled without finding anything beyond. **Warm runs**
(started from a previous measurement's certified eigenvectors,
:class:`~lightning_shortcut.hessian.tracking.RunStart`) inherit that evidence: from
:data:`WARM_MIN_PRODUCTS` on they stop once their ends have settled over two products, if the
returned vectors lie mostly in the inherited directions and no extreme has retreated past its
frontier (:meth:`WarmEvidence.covers`); one that converges onto anything else, or has not stopped by
:func:`warm_limit` products, is *given up* and run again cold, so a warm run never returns a value
that neither the warm evidence nor a cold run vouches for. A ``min_abs`` run is always cold.
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

__all__ = [
    "INVARIANT",
    "MIN_PRODUCTS",
    "SEPARATED_MIN_PRODUCTS",
    "SEPARATION",
    "WARM_MAX_PRODUCTS",
    "WARM_MIN_OVERLAP",
    "WARM_MIN_PRODUCTS",
    "Assessment",
    "Check",
    "Decision",
    "Ends",
    "StoppingRule",
    "WarmEvidence",
    "end_errors",
    "error_bound",
    "min_abs_estimate",
    "settled",
    "warm_limit",
]

#: No cold run stops before this many products (or ``max_iter``, or the whole space): a Krylov
#: space of a few vectors has not yet met an eigenvalue at the far end of a spectrum dominated by one
#: outlier, although its Ritz value there has a small residual (ARPACK's first check comes after its
#: default ``ncv = 20`` products). At 10, 2 of 10 calls at tol 1e-2 on an MLP after 600 SGD steps
#: returned a neighbour 4% of max|lambda| away; at 20, none.
MIN_PRODUCTS = 20
#: A run that wants the top alone may stop from this many products on where the top is separated
#: (hessian-eigenthings certifies ``lambda_max`` after 10 products).
SEPARATED_MIN_PRODUCTS = 10
#: The top is separated where its Ritz value stands this many ``1e-3 * max|lambda|`` (tolerances at
#: the default ``tol``) above the next Ritz value: a share fixed for every ``tol``, so that a looser
#: ``tol`` never pays the full floor where a tighter one does not. With a floor of 10 and no such
#: test, 1 of 20 cold runs on a top cluster 0.2% apart returned a member 2 tolerances below the top
#: at ``tol = 1e-3``; with it, none.
SEPARATION = 10.0
#: A warm run may stop from this many products on: a Krylov space of 4 holds the start's extreme
#: directions and has refined them.
WARM_MIN_PRODUCTS = 4
#: At ``tol = 1e-2`` a warm run not stopped by this many products is given up (more at tighter
#: tolerances, :func:`warm_limit`): a start that holds the extremes' directions converges within a
#: few products (5-9 on a tanh MLP at the edge of stability), and one that has not by then is paying
#: toward the cold run that will replace it (on the digits recipe given-up runs reached the cold
#: floor of 20 first).
WARM_MAX_PRODUCTS = 12
#: A warm run stops early only if each returned Ritz vector's projection on the inherited directions
#: has at least this norm: the inherited evidence is about those directions.
WARM_MIN_OVERLAP = 0.5
_SEPARATION_TOL = 1e-3
#: A residual this small relative to ``max|lambda|`` means an invariant subspace: the Ritz values are
#: eigenvalues (every Lanczos process of the engine reads this one threshold).
INVARIANT = 1e-12


class Decision(enum.Enum):
    """What a run does after a check."""

    #: take another product
    CONTINUE = "continue"
    #: stop: every wanted value is within ``tol``, with the evidence that the ends are the spectrum's
    STOP = "stop"
    #: stop at ``max_iter`` without that: the answer is returned as not converged
    OUT_OF_PRODUCTS = "out of products"
    #: a warm run the warm rule gives up: the solver runs it again cold
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Ends:
    """What a run must converge: the largest value, the smallest, the smallest magnitude."""

    top: bool = False
    bottom: bool = False
    min_abs: bool = False


def warm_limit(tol: float, max_iter: int) -> int:
    """The products at which a warm run that has not stopped is given up: :data:`WARM_MAX_PRODUCTS`
    at ``tol = 1e-2``, in proportion to ``log(1 / tol)`` (a Krylov method's error falls
    geometrically with its products), within ``max_iter``."""
    scaled = math.ceil(WARM_MAX_PRODUCTS * math.log(1 / tol) / math.log(100))
    return min(max(scaled, WARM_MIN_PRODUCTS + 2), max_iter)


@dataclass(frozen=True)
class WarmEvidence:
    """What a warm run may stop on (see the module docstring).

    Attributes:
        inherited: orthonormal rows spanning the directions the start inherited.
        frontiers: the top end's and the bottom end's frontier
            (:class:`~lightning_shortcut.hessian.tracking.RunStart`).
    """

    inherited: Tensor
    frontiers: tuple[float | None, float | None]

    def retreated(self, ends: Ends, largest: float, smallest: float, threshold: float) -> bool:
        """Whether a wanted extreme has retreated past its frontier by more than half of
        ``threshold`` (``tol * max|lambda|``)."""
        top, bottom = self.frontiers
        return (ends.top and (top is None or largest < top - threshold / 2)) or (
            ends.bottom and (bottom is None or smallest > bottom + threshold / 2)
        )

    def covers(
        self,
        ends: Ends,
        largest: float,
        smallest: float,
        threshold: float,
        overlap: Callable[[str], float],
    ) -> bool:
        """Whether a converged warm run's extremes are what the inherited evidence is about: not
        retreated past the frontiers, and each wanted end's Ritz vector with a projection of norm
        at least :data:`WARM_MIN_OVERLAP` on the inherited directions (``overlap(end)``, ``end``
        ``"top"`` or ``"bottom"``, only asked where the frontiers hold)."""
        wanted = [end for end in ("top", "bottom") if getattr(ends, end)]
        return not self.retreated(ends, largest, smallest, threshold) and all(
            overlap(end) >= WARM_MIN_OVERLAP for end in wanted
        )


@dataclass(frozen=True)
class Check:
    """What a Lanczos run shows at a check: the Ritz data of ``A V = V T + r e^T``.

    Attributes:
        products: products taken so far.
        values: the Ritz values, ascending.
        residuals: their residual norms.
        beta: ``||r||``.
        whole_space: whether the basis spans the whole space left to the run.
        projected: ``T`` (read for ``min_abs``).
        ritz_vector: ``ritz_vector(end)``, the unit Ritz vector of ``"top"`` or ``"bottom"`` (read by
            the warm rule, formed only where it asks).
    """

    products: int
    values: Tensor
    residuals: Tensor
    beta: float = 1.0
    whole_space: bool = False
    projected: Tensor | None = None
    ritz_vector: Callable[[str], Tensor] | None = None


@dataclass(frozen=True)
class Assessment:
    """The rule's answer at a check: the decision, and the bounds it was taken on.

    Attributes:
        decision: what the run does.
        scale: ``max|lambda|`` of the Ritz values, the scale of the tolerance.
        top_error: a bound on the error of the largest Ritz value.
        bottom_error: the same for the smallest.
        min_abs: for a ``min_abs`` run, the estimate of the smallest ``|eigenvalue|`` (an upper
            bound on it; ``inf`` while the basis is too small), else ``None``.
        min_abs_error: a bound on its error.
    """

    decision: Decision
    scale: float
    top_error: float
    bottom_error: float
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
    """The stopping decision of one Lanczos run (see the module docstring): :meth:`assess` at each
    check answers continue, stop, out of products or give up.

    Args:
        ends: the wanted ends.
        tol: the error allowed, relative to ``max|lambda|``.
        max_iter: the products the run may use.
        space: the operator whose space the vectors are in (sharded vectors: inner products
            reduced over processes, so that every rank takes the same decision).
        warm: for a warm run, what its start inherited
            (:class:`WarmEvidence`); ``None`` for a cold run.
    """

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
    def rounding(self) -> float:
        """No bound is tighter than the products' rounding, relative to ``max|lambda|`` (float32
        models: about 5e-7)."""
        return 4 * torch.finfo(self.space.like.dtype).eps

    @property
    def warm_limit(self) -> int | None:
        """The products at which a warm run that has not stopped is given up (``None``: cold)."""
        return None if self.warm is None else warm_limit(self.tol, self.max_iter)

    def floor(self, threshold: float) -> int:
        """The products before which the cold rule does not stop: :data:`MIN_PRODUCTS`, or
        :data:`SEPARATED_MIN_PRODUCTS` for a run that wants the top alone where the top Ritz value
        stands :data:`SEPARATION` times ``1e-3 * max|lambda|`` above the next (within
        ``max_iter``; ``threshold`` is ``tol * max|lambda|``)."""
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
        top_error, bottom_error = (
            max(error, self.rounding * scale) for error in end_errors(values, residuals)
        )
        self.history.append((check.products, float(values[-1]), float(values[0])))
        self.top_gap = float(values[-1] - values[-2]) if len(values) > 1 else 0.0
        threshold = self.tol * scale
        min_abs = min_abs_error = None
        resolved = True
        if self.ends.min_abs:
            if exact:
                min_abs, min_abs_error = float(values.abs().min()), 0.0
            else:
                estimate = (
                    None
                    if check.projected is None
                    else min_abs_estimate(check.projected, check.beta)
                )
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
        """With every bound met: whether the run has the evidence that its extremes are the
        spectrum's (stop), not yet (continue), or converged onto what a warm start's evidence does
        not cover (give up)."""
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
        _, largest, smallest = self.history[-1]
        if self.warm.covers(self.ends, largest, smallest, threshold, self._overlap(check)):
            return Decision.STOP
        return Decision.GIVE_UP  # converged onto what the inherited evidence does not cover

    def _overlap(self, check: Check) -> Callable[[str], float]:
        """``end -> `` the norm of that end's Ritz vector's projection on the inherited directions."""
        return lambda end: projection_norm(self.space, self.warm.inherited, check.ritz_vector(end))


def min_abs_estimate(projected: Tensor, beta: float) -> tuple[float, float] | None:
    """``(sigma, error)``: the Rayleigh-Ritz estimate of ``min|lambda|`` through ``A^2`` and a bound.

    With ``A V_{m-1} = V_m G`` (``G``: ``T``'s first ``m - 1`` columns and the residual norm), the
    smallest singular value ``sigma`` of ``G`` is the Rayleigh-Ritz value of ``A^2``, an upper bound
    on ``min|lambda|``; ``G`` gives ``A^2 y`` exactly, hence its residual and :func:`error_bound`,
    and ``sigma - error`` is a lower bound.
    """
    size = projected.shape[0]
    if size < 2:
        return None
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
