"""When a Lanczos run may stop: error bounds, the cold safeguards and the warm rule.

A run stops once every wanted value's error bound is within ``tol * max|lambda|`` *and* the run has
evidence that no eigenvalue lies beyond the extreme Ritz values (a small residual says an eigenvalue
is near a Ritz value, not that it is the extreme one). The evidence differs by how the run started.

**Cold runs** (a random start vector) pay a floor of :data:`MIN_PRODUCTS` products and stop only
once the wanted extremes have moved by at most ``tol * max|lambda|`` since the run had half its
products (:func:`settled`): a Krylov space that has doubled without finding anything beyond. A
random start holds about ``1 / sqrt(dim)`` of every eigenvector; a Krylov space of a few vectors has
not yet amplified the far end of a spectrum dominated by one outlier, although its Ritz value there
may already have a small residual. A run that wants the top alone may stop from
:data:`SEPARATED_MIN_PRODUCTS` on where the top Ritz value stands :data:`SEPARATION` tolerances above
the next one (:meth:`StoppingRule.floor`): what the floor guards against at the top is a cluster
whose hidden member lies just above the returned one, and a cluster shows as Ritz values close
together. The bottom end keeps the full floor: at a trained network's far end, the edge of a dense
bulk near zero, the Ritz values of the unresolved bulk stand apart as if separated (with the
separated floor at both ends, 4 of 10 calls on a trained MLP returned the bulk's edge for its
smallest eigenvalue at ``tol = 1e-3``, none with the full floor).

**Warm runs** start from the eigenvectors of the previous measurement (plus a random part, see
:data:`~lightning_shortcut.hessian.solvers._vectors.WARM_START_NOISE`). That previous measurement
was itself certified (by a cold run, or by a chain of warm runs that goes back to one), so the start
holds a large share of the direction that was extreme a few optimizer steps ago. Lanczos' error in
the extreme Ritz value decays with the start's component ``c`` along the extreme eigenvector as
``tan^2(angle) = (1 - c^2) / c^2`` times a Chebyshev factor that falls with every product; the cold
floor exists to pay for ``c ~ 1 / sqrt(dim)``, and a warm start with ``c`` of order one does not owe
it. The warm rule therefore replaces the floor by :data:`WARM_MIN_PRODUCTS`, and the doubling test
by convergence (the ends moved by at most ``tol * max|lambda|`` over the last two products: the
evidence that nothing lies beyond is inherited), and adds two conditions that keep the argument
honest. The returned Ritz vector must lie mostly in the directions the start inherited (its
projection on them has norm at least :data:`WARM_MIN_OVERLAP`): if the run converged to something
else, the previous certification says nothing about it. And each extreme must not have retreated
past its *frontier* by more than half of ``tol * max|lambda|``: the lowest top-side value (the
highest bottom-side one) among the vectors the start inherited, as the previous measurement found
them (:class:`~lightning_shortcut.hessian.results.WarmStart`). That measurement certified that
nothing lay beyond its extreme; eigenvalues it did not carry forward lay below the frontier (within
its own Krylov space's resolution). If the tracked eigenvalues fell below it, those others can be on
top now without any crossing (members of a tight cluster, such as the paper's values repeated over
units, that stayed while the tracked ones fell), and the inherited evidence no longer covers the
top.

A warm run that fails either condition once it has converged, or has not stopped by
:attr:`StoppingRule.warm_limit` products (:data:`WARM_MAX_PRODUCTS` at ``tol = 1e-2``), is *given
up* (:attr:`StoppingRule.abandoned`) and run again cold, from a random start. (Going on under the
cold rule from the warm start is not the same: a start that holds mostly the inherited directions
amplifies the others slowly, and on the digits recipe such a run settled 2.2% below the top at
``tol = 1e-2``.) A warm run therefore never returns a value that neither the warm evidence nor a cold run
vouches for.

The start inherits more than the extreme eigenvectors: the Ritz vectors next to each extreme
(:data:`WARM_NEIGHBOURS` of them) come along, so that eigenvalues of a cluster at an end that trade
places between measurements (a crossing among the top few, common along training) are all in the
start, and the Krylov space resolves which is now the largest within a few products.

What no single warm run can see is an **eigenvalue crossing**: an eigenvector nearly orthogonal to
the previous extreme one rising above it between two measurements. The start holds little of it
(only the random part), so a short warm run follows the old branch. Callers that track a spectrum
along training therefore audit it with a cold run every ``audit_every`` measurements
(:class:`~lightning_shortcut.hessian.tracking.SpectrumTracker`), which bounds how long a crossing
can go unseen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator
from lightning_shortcut.hessian.solvers._vectors import projection_norm, single_thread

__all__ = [
    "MIN_PRODUCTS",
    "SEPARATED_MIN_PRODUCTS",
    "SEPARATION",
    "WARM_MAX_PRODUCTS",
    "WARM_MIN_OVERLAP",
    "WARM_MIN_PRODUCTS",
    "WARM_NEIGHBOURS",
    "WARM_NEIGHBOUR_WEIGHT",
    "Ends",
    "StoppingRule",
    "end_errors",
    "error_bound",
    "min_abs_estimate",
    "neighbour_columns",
    "settled",
    "split_start",
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
#: The top is separated where its Ritz value stands this many ``tol * max|lambda|`` above the next
#: Ritz value. With a floor of 10 and no such test, 1 of 20 cold runs on a top cluster 0.2% apart
#: returned a member 2 tolerances below the top at ``tol = 1e-3``; with it, none.
SEPARATION = 10.0
#: A warm run may stop from this many products on: a Krylov space of 4 holds the start's extreme
#: directions and has refined them.
WARM_MIN_PRODUCTS = 4
#: At ``tol = 1e-2`` a warm run not stopped by this many products is given up (more at tighter
#: tolerances, :attr:`StoppingRule.warm_limit`): a start that holds the extremes' directions
#: converges within a few products (5-9 on a tanh MLP at the edge of stability), and one that has
#: not by then is paying toward the cold run that will replace it (on the digits recipe given-up
#: runs reached the cold floor of 20 first).
WARM_MAX_PRODUCTS = 12
#: A warm run stops early only if each returned Ritz vector's projection on the inherited directions
#: has at least this norm: the inherited evidence is about those directions.
WARM_MIN_OVERLAP = 0.5
#: Ritz vectors next to each extreme kept for the next warm start (beside the extreme's own).
WARM_NEIGHBOURS = 2
#: Their weight in the start, against 1 for the extremes' own vectors: enough that a neighbour
#: rising above the extreme is amplified within a few products (at 0.3 one was missed in a test of
#: a drifting top cluster), small enough that the start stays mostly the extreme's direction (at 1,
#: warm runs on a tanh MLP at the edge of stability took a product more).
WARM_NEIGHBOUR_WEIGHT = 0.5


@dataclass(frozen=True)
class Ends:
    """What a run must converge: the largest value, the smallest, the smallest magnitude."""

    top: bool = False
    bottom: bool = False
    min_abs: bool = False


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
    """Kato-Temple where the gap is reliable (larger than the residual), else the residual."""
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
    """The stopping decision of one Lanczos run (see the module docstring).

    Args:
        ends: the wanted ends.
        tol: the error allowed, relative to ``max|lambda|``.
        max_iter: the products the run may use.
        space: the operator whose space the vectors are in (sharded vectors: inner products
            reduced over processes, so that every rank takes the same decision).
        inherited: orthonormal rows spanning the start's inherited directions (a previous
            measurement's extreme eigenvectors and their neighbours), or ``None`` for a cold run. A
            ``min_abs`` run is always judged cold (an interior problem gains little from a start
            near the ends).
        frontiers: for a warm run, the lowest top-side and the highest bottom-side value the
            inherited vectors carried (:class:`~lightning_shortcut.hessian.results.WarmStart`).
    """

    ends: Ends
    tol: float
    max_iter: int
    space: LinearOperator
    inherited: Tensor | None = None
    frontiers: tuple[float | None, float | None] = (None, None)
    history: list[tuple[int, float, float]] = field(default_factory=list)
    #: the top Ritz value's distance to the next one at the last check
    top_gap: float = 0.0
    #: whether the run stopped under the warm rule (before the cold floor)
    stopped_warm: bool = False
    #: whether the warm rule gave the run up: it must be run again from a random start
    abandoned: bool = False

    def __post_init__(self) -> None:
        if self.ends.min_abs or (self.inherited is not None and self.inherited.shape[0] == 0):
            self.inherited = None

    def floor(self, threshold: float) -> int:
        """The products before which the cold rule does not stop: :data:`MIN_PRODUCTS`, or
        :data:`SEPARATED_MIN_PRODUCTS` for a run that wants the top alone where the top Ritz value
        stands :data:`SEPARATION` times ``threshold`` above the next (within ``max_iter``)."""
        top_alone = self.ends.top and not (self.ends.bottom or self.ends.min_abs)
        if top_alone and self.top_gap >= SEPARATION * threshold:
            return min(SEPARATED_MIN_PRODUCTS, self.max_iter)
        return min(MIN_PRODUCTS, self.max_iter)

    @property
    def warm_limit(self) -> int:
        """The products at which a warm run that has not stopped is given up:
        :data:`WARM_MAX_PRODUCTS` at ``tol = 1e-2``, in proportion to ``log(1 / tol)`` (a Krylov
        method's error falls geometrically with its products), within ``max_iter``."""
        scaled = math.ceil(WARM_MAX_PRODUCTS * math.log(1 / self.tol) / math.log(100))
        return min(max(scaled, WARM_MIN_PRODUCTS + 2), self.max_iter)

    def bounds_met(self, top_error: float, bottom_error: float, threshold: float) -> bool:
        return (not self.ends.top or top_error <= threshold) and (
            not self.ends.bottom or bottom_error <= threshold
        )

    def record(self, products: int, largest: float, smallest: float, top_gap: float = 0.0) -> None:
        """Note the extreme Ritz values at a check, and the top one's distance to the next."""
        self.history.append((products, largest, smallest))
        self.top_gap = top_gap

    def may_stop(self, products: int, threshold: float, ritz_vector) -> bool:
        """Whether the run has the evidence to stop at ``products`` (its bounds being met).

        Args:
            products: products so far.
            threshold: ``tol * max|lambda|``.
            ritz_vector: ``ritz_vector(end) -> Tensor``, the current unit Ritz vector of ``"top"``
                or ``"bottom"`` (only formed when the warm rule needs it).
        """
        if self.inherited is None:
            # cold: a Krylov space that has doubled without finding anything beyond
            return products >= self.floor(threshold) and settled(
                self.history, self.ends, threshold, products // 2
            )
        if self.out_of_warm_products(products) or products < WARM_MIN_PRODUCTS:
            return False
        # warm: the evidence that nothing lies beyond is inherited; the run need only have
        # converged (its ends no longer move over two products: over one, a neighbour of a tight
        # top cluster that rose above the tracked eigenvalue was missed in 3 of 12 seeds of a test)
        if not settled(self.history, self.ends, threshold, products - 2):
            return False
        wanted = [end for end in ("top", "bottom") if getattr(self.ends, end)]
        if not self.retreated(threshold) and all(
            self.overlap(ritz_vector(end)) >= WARM_MIN_OVERLAP for end in wanted
        ):
            self.stopped_warm = True
            return True
        # converged onto what the inherited evidence does not cover: run it again cold
        self.abandoned = True
        return False

    def out_of_warm_products(self, products: int) -> bool:
        """Give a warm run up once it has used :attr:`warm_limit` products without a warm stop (it
        is then run again cold); ``False`` for a cold run."""
        if self.inherited is not None and products >= self.warm_limit:
            self.abandoned = True
        return self.abandoned

    def retreated(self, threshold: float) -> bool:
        """Whether an extreme has retreated past its frontier by more than half the tolerance."""
        _, largest, smallest = self.history[-1]
        top, bottom = self.frontiers
        return (self.ends.top and (top is None or largest < top - threshold / 2)) or (
            self.ends.bottom and (bottom is None or smallest > bottom + threshold / 2)
        )

    def overlap(self, vector: Tensor) -> float:
        """The norm of a unit vector's projection on the inherited directions."""
        return projection_norm(self.space, self.inherited, vector)


def min_abs_estimate(projected: Tensor, beta: float) -> tuple[float, float] | None:
    """``(sigma, error)``: the Rayleigh-Ritz estimate of ``min|lambda|`` through ``A^2`` and a bound.

    ``sigma`` is an upper bound on ``min|lambda|``; ``sigma - error`` a lower bound (see the module
    docstring).
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


def neighbour_columns(ends: Ends, size: int) -> list[int]:
    """The columns of the Ritz vectors next to the wanted extremes (ascending Ritz values)."""
    columns = []
    for offset in range(1, WARM_NEIGHBOURS + 1):
        if ends.top:
            columns.append(size - 1 - offset)
        if ends.bottom:
            columns.append(offset)
    extremes = {0, size - 1}
    return sorted({c for c in columns if 0 <= c < size and c not in extremes})


def split_start(
    start: Sequence[Tensor] | None, top_k: int, bottom_k: int
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Split start vectors into those of the top runs, the bottom runs and the first run's extras.

    ``start`` laid out as a previous result's (``top_k`` top vectors, ``bottom_k`` bottom ones, then
    any neighbours: :attr:`HessianSpectrum.tracking_vectors`) gives each locking run its own pair
    and the first run the rest; a shorter list seeds the first run with all of its vectors.
    """
    start = list(start or [])
    if len(start) < top_k + bottom_k:
        return [], [], start
    return start[:top_k], start[top_k : top_k + bottom_k], start[top_k + bottom_k :]
