"""Warm starts: the rule, the start vectors it reads, and the tracker that makes them along training.

Everything of the warm rule lives here: its constants, the start vectors as a structured type
(:class:`WarmStart`), which of them each locking run of the Lanczos solver starts from and with
which frontiers (:func:`run_start`), the neighbours a measurement carries forward
(:func:`carried_forward`), the evidence a warm run may stop on (:class:`WarmEvidence`), its product
budget (:func:`warm_limit`), and the tracker's policy of audits and back-off
(:class:`SpectrumTracker`). The stopping rule of a run reads :class:`WarmEvidence` and the budget
(:class:`~lightning_shortcut.hessian.solvers._stopping.StoppingRule`); the solver only does the
vector algebra.

**Why a warm run does not owe the cold floor.** A warm run starts from the eigenvectors of the
previous measurement (plus a random part, :data:`WARM_START_NOISE`). That measurement was itself
certified (by a cold run, or by a chain of warm runs that goes back to one), so the start holds a
large share of the direction that was extreme a few optimizer steps ago. Lanczos' error in the
extreme Ritz value decays with the start's component ``c`` along the extreme eigenvector as
``tan^2(angle) = (1 - c^2) / c^2`` times a Chebyshev factor that falls with every product; the cold
floor exists to pay for ``c ~ 1 / sqrt(dim)``, and a warm start with ``c`` of order one does not owe
it. A warm run may therefore stop from :data:`WARM_MIN_PRODUCTS` products on, once its ends have
converged (moved by at most ``tol * max|lambda|`` over the last two products: the evidence that
nothing lies beyond is inherited), under two conditions that keep the argument honest
(:meth:`WarmEvidence.covers`). The returned Ritz vector must lie mostly in the directions the start
inherited (its projection on them has norm at least :data:`WARM_MIN_OVERLAP`): if the run converged
to something else, the previous certification says nothing about it. And each extreme must not have
retreated past its *frontier* by more than half of ``tol * max|lambda|``: the lowest top-side value
(the highest bottom-side one) among the vectors the start inherited, as the previous measurement
found them. That measurement certified that nothing lay beyond its extreme; eigenvalues it did not
carry forward lay below the frontier (within its own Krylov space's resolution). If the tracked
eigenvalues fell below it, those others can be on top now without any crossing (members of a tight
cluster, such as the paper's values repeated over units, that stayed while the tracked ones fell),
and the inherited evidence no longer covers the top.

**Given up, run again cold.** A warm run that fails either condition once it has converged, or has
not stopped by :func:`warm_limit` products (:data:`WARM_MAX_PRODUCTS` at ``tol = 1e-2``), is given
up and run again cold, from a random start. (Going on under the cold rule from the warm start is not
the same: a start that holds mostly the inherited directions amplifies the others slowly, and on the
digits recipe such a run settled 2.2% below the top at ``tol = 1e-2``.) A warm run therefore never
returns a value that neither the warm evidence nor a cold run vouches for. A ``min_abs`` run is
always cold (an interior problem gains little from a start near the ends).

**Neighbours come along.** The start inherits more than the extreme eigenvectors: the Ritz vectors
next to each extreme (:data:`WARM_NEIGHBOURS` of them, at weight :data:`WARM_NEIGHBOUR_WEIGHT`) come
along, so that eigenvalues of a cluster at an end that trade places between measurements (a crossing
among the top few, common along training) are all in the start, and the Krylov space resolves which
is now the largest within a few products.

**Crossings are audited, give-ups backed off.** What no single warm run can see is an eigenvalue
crossing: an eigenvector nearly orthogonal to the previous extreme one rising above it between two
measurements. The start holds little of it (only the random part), so a short warm run follows the
old branch. :class:`SpectrumTracker` therefore makes every ``audit_every``-th measurement cold, so a
crossing is caught within ``audit_every`` measurements; a changed parameter set, a failed
measurement or a resumed run also start cold. Where the warm rule keeps giving warm runs up (a tight
cluster whose members trade places, common with SGD and momentum, or a spectrum that moves far
between measurements), a warm attempt costs its products on top of the cold run that replaces it:
after a given-up attempt the tracker measures cold for 1, then 2, 4, ... measurements (at most
``audit_every``) before it tries again; a warm run that stops warm ends the back-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from lightning_shortcut.hessian._validation import check_positive_int

if TYPE_CHECKING:
    from lightning_shortcut.hessian.solvers._stopping import Ends

__all__ = [
    "DEFAULT_AUDIT_EVERY",
    "WARM_MAX_PRODUCTS",
    "WARM_MIN_OVERLAP",
    "WARM_MIN_PRODUCTS",
    "WARM_NEIGHBOURS",
    "WARM_NEIGHBOUR_WEIGHT",
    "WARM_START_NOISE",
    "RunStart",
    "SpectrumTracker",
    "WarmEvidence",
    "WarmStart",
    "answered_cold",
    "carried_forward",
    "run_start",
    "warm_limit",
]

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
#: Ritz vectors next to each extreme kept for the next warm start (beside the extreme's own).
WARM_NEIGHBOURS = 2
#: Their weight in the start, against 1 for the extremes' own vectors: enough that a neighbour
#: rising above the extreme is amplified within a few products (at 0.3 one was missed in a test of
#: a drifting top cluster), small enough that the start stays mostly the extreme's direction (at 1,
#: warm runs on a tanh MLP at the edge of stability took a product more).
WARM_NEIGHBOUR_WEIGHT = 0.5
#: Weight of the random part of a warm start: enough that no eigenvector is missing from the start
#: (a start inside an invariant subspace would hide the rest of the spectrum), small enough to keep
#: most of the head start.
WARM_START_NOISE = 0.3
#: Every this many measurements one is cold. Warm measurements cost 4-6 products where the spectrum
#: moves little between measurements and a cold one about 20, so at 10 the audits add about 1.5
#: products per measurement while a crossing goes unseen for at most 9 measurements. The default of
#: ``audit_every`` in ``SpectrumTracker`` and ``HessianEigenvalueMonitor``, where it is written as
#: its value so that the docs show the number (``tests/test_docs.py`` keeps them equal).
DEFAULT_AUDIT_EVERY = 10


def warm_limit(tol: float, max_iter: int) -> int:
    """The products at which a warm run that has not stopped is given up: :data:`WARM_MAX_PRODUCTS`
    at ``tol = 1e-2``, in proportion to ``log(1 / tol)`` (a Krylov method's error falls
    geometrically with its products), within ``max_iter``."""
    scaled = math.ceil(WARM_MAX_PRODUCTS * math.log(1 / tol) / math.log(100))
    return min(max(scaled, WARM_MIN_PRODUCTS + 2), max_iter)


@dataclass(frozen=True)
class RunStart:
    """What one warm Lanczos run starts from (:func:`run_start`).

    Attributes:
        vectors: the inherited vectors: the wanted ends' own, then any neighbours.
        weights: each vector's weight in the start (1 for the ends' own,
            :data:`WARM_NEIGHBOUR_WEIGHT` for neighbours).
        frontiers: the top end's and the bottom end's frontier (``None`` for an end not wanted).
        noise: the weight of the random part (:data:`WARM_START_NOISE`).
    """

    vectors: tuple[Tensor, ...]
    weights: tuple[float, ...]
    frontiers: tuple[float | None, float | None]
    noise: float = WARM_START_NOISE


@dataclass(frozen=True)
class WarmStart:
    """What a measurement leaves for the next one to start from: its eigenvectors and the Ritz
    vectors next to its extremes, with the values it certified (a result's ``tracking_vectors``).

    The [warm rule][warm-rule] (the docs' engine page) reads the values: a warm run may stop early
    only while its extremes have not retreated past the frontiers. Bare vectors carry no values:
    ``hessian_eigenvalues`` refuses them.

    Attributes:
        top_vectors: unit eigenvectors of ``top``, in its order (flat over the parameters).
        bottom_vectors: the same for ``bottom``.
        neighbours: the Ritz vectors next to the extremes of the measurement's first run.
        top: the eigenvalues of ``top_vectors``, descending.
        bottom: the eigenvalues of ``bottom_vectors``, ascending.
        top_frontier: the lowest Ritz value among the top vector and its neighbours (``None``:
            ``top[0]``).
        bottom_frontier: the highest Ritz value among the bottom vector and its neighbours
            (``None``: ``bottom[0]``).

    Raises:
        ValueError: where an end has vectors but not one value for each.
    """

    top_vectors: Sequence[Tensor] = ()
    bottom_vectors: Sequence[Tensor] = ()
    neighbours: Sequence[Tensor] = ()
    top: Sequence[float] = ()
    bottom: Sequence[float] = ()
    top_frontier: float | None = None
    bottom_frontier: float | None = None

    def __post_init__(self) -> None:
        for name in ("top_vectors", "bottom_vectors", "neighbours", "top", "bottom"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for end in ("top", "bottom"):
            vectors, values = getattr(self, f"{end}_vectors"), getattr(self, end)
            if vectors and len(vectors) != len(values):
                raise ValueError(
                    f"A WarmStart needs one value per vector: {len(vectors)} {end}_vectors, "
                    f"{len(values)} {end} values."
                )

    @property
    def vectors(self) -> tuple[Tensor, ...]:
        """Every vector: the top ones, the bottom ones, then the neighbours."""
        return (*self.top_vectors, *self.bottom_vectors, *self.neighbours)

    def map(self, change: Callable[[Tensor], Tensor]) -> WarmStart:
        """The same start with ``change`` applied to every vector (to detach or flatten them)."""
        return replace(
            self,
            top_vectors=[change(vector) for vector in self.top_vectors],
            bottom_vectors=[change(vector) for vector in self.bottom_vectors],
            neighbours=[change(vector) for vector in self.neighbours],
        )


def run_start(start: WarmStart, ends: Ends, found_top: int, found_bottom: int) -> RunStart | None:
    """The start, from ``start``, of the locking run that comes after ``found_top`` top and
    ``found_bottom`` bottom eigenvalues were found, or ``None`` for a cold run (a ``min_abs`` run,
    or a wanted end this start has no vector and value for).

    Run ``i`` starts from the ``i``-th top and bottom vectors; the first also from the
    neighbours, and its frontiers are theirs; a later run's frontier is its own vector's value.
    """
    if ends.min_abs:
        return None
    first = found_top == 0 and found_bottom == 0
    own: list[Tensor] = []
    frontiers: list[float | None] = [None, None]
    for side, (wanted, vectors, values, found, frontier) in enumerate(
        (
            (ends.top, start.top_vectors, start.top, found_top, start.top_frontier),
            (ends.bottom, start.bottom_vectors, start.bottom, found_bottom, start.bottom_frontier),
        )
    ):
        if not wanted:
            continue
        if found >= len(vectors):
            return None
        own.append(vectors[found])
        frontiers[side] = frontier if first and frontier is not None else values[found]
    extras = list(start.neighbours) if first else []
    weights = [1.0] * len(own) + [WARM_NEIGHBOUR_WEIGHT] * len(extras)
    return RunStart(tuple(own + extras), tuple(weights), (frontiers[0], frontiers[1]))


def carried_forward(
    values: Tensor, ends: Ends
) -> tuple[list[int], tuple[float | None, float | None]]:
    """What a first run carries forward beside its extremes: the columns of the Ritz vectors next to
    the wanted extremes (in ``values``' ascending order) and the frontiers, the lowest top-side and
    the highest bottom-side value among the extremes and those neighbours."""
    size, last = values.shape[0], values.shape[0] - 1
    columns = []
    for offset in range(1, WARM_NEIGHBOURS + 1):
        if ends.top:
            columns.append(last - offset)
        if ends.bottom:
            columns.append(offset)
    columns = sorted({c for c in columns if 0 <= c < size and c not in (0, last)})
    frontiers = (
        float(values[max(last - WARM_NEIGHBOURS, 0)]) if ends.top else None,
        float(values[min(WARM_NEIGHBOURS, last)]) if ends.bottom else None,
    )
    return columns, frontiers


@dataclass(frozen=True)
class WarmEvidence:
    """What a warm run may stop on (see the module docstring).

    Attributes:
        inherited: orthonormal rows spanning the directions the start inherited.
        frontiers: the top end's and the bottom end's frontier (:class:`RunStart`).
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


class Measurement(Protocol):
    """What the tracker reads of a measurement."""

    tracking_vectors: WarmStart
    warm_start: bool
    warm_given_up: bool
    converged: bool


def answered_cold(result: Measurement) -> bool:
    """Whether a measurement's answer came from a cold run, in part at least (a warm run given up
    for a cold one included): what ``stderr="cold"`` computes standard errors for, since a warm run
    is cheaper than its error bar."""
    return not result.warm_start or result.warm_given_up


class SpectrumTracker:
    """The start vectors of the next measurement of one operator, and whether it must be cold.

    Every ``audit_every``-th measurement is cold, so that an eigenvalue crossing is caught; after a
    warm run given up, measurements are cold for 1, 2, 4, ... (at most ``audit_every``) before the
    next warm attempt (the [warm rule][warm-rule] in the docs' engine page).

    Memory: between measurements it holds the previous measurement's ``tracking_vectors``: its
    ``top_k + bottom_k`` eigenvectors and up to two Ritz vectors next to each extreme, at most
    ``top_k + bottom_k + 4`` vectors of the parameters' size (6 for the default ``top_k = bottom_k =
    1``; float32 for most models).

    Args:
        audit_every: every this many measurements one is cold (``1``: every measurement is cold,
            no vectors are kept).

    Example:
        ```python
        tracker = SpectrumTracker()
        params = list(model.parameters())
        for step in range(steps):
            ...  # an optimizer step
            start = tracker.start(params)  # vectors=True: the next measurement starts from them
            spectrum = hessian_eigenvalues(model, batch, start=start, vectors=True)
            tracker.update(spectrum, params)
        ```
    """

    def __init__(self, audit_every: int = 10) -> None:
        check_positive_int("audit_every", audit_every)
        self.audit_every = audit_every
        self.warm_in_a_row = 0
        self.cold_for = 0  # measurements to make cold before the next warm attempt
        self.backoff = 0  # the last back-off (0: the last warm attempt stopped warm)
        self._start: WarmStart | None = None
        self._signature: tuple[Any, ...] | None = None

    @staticmethod
    def _signature_of(params: Sequence[Tensor]) -> tuple[Any, ...]:
        return tuple((id(param), tuple(param.shape)) for param in params)

    @property
    def cold_next(self) -> bool:
        """Whether the next measurement is cold (an audit is due or no vectors are kept), given the
        same parameters."""
        return (
            self.warm_in_a_row >= self.audit_every - 1 or self.cold_for > 0 or self._start is None
        )

    def start(self, params: Sequence[Tensor]) -> WarmStart | None:
        """The start vectors for a measurement over ``params``, or ``None`` for a cold one."""
        if self.cold_next or self._signature != self._signature_of(params):
            return None
        return self._start

    def update(self, result: Measurement, params: Sequence[Tensor]) -> None:
        """Keep a finished measurement's eigenvectors; a measurement that did not converge leaves
        none, so the next one is cold.

        Args:
            result: the measurement (a :class:`~lightning_shortcut.hessian.HessianSpectrum` or an
                :class:`~lightning_shortcut.hessian.EdgeOfStability`).
            params: the parameters it was taken over.
        """
        self.warm_in_a_row = self.warm_in_a_row + 1 if result.warm_start else 0
        if result.warm_given_up:  # back off: cold for 1, 2, 4, ... measurements
            self.backoff = min(max(2 * self.backoff, 1), self.audit_every)
            self.cold_for = self.backoff
        elif result.warm_start:
            self.backoff = 0
        elif self.cold_for > 0:
            self.cold_for -= 1
        start = result.tracking_vectors
        keep = (
            result.converged
            and bool(start.vectors)
            and self.audit_every > 1
            and all(bool(torch.isfinite(vector).all()) for vector in start.vectors)
        )
        self._start = start.map(Tensor.detach) if keep else None
        self._signature = self._signature_of(params) if keep else None

    def reset(self) -> None:
        """Forget the vectors: the next measurement is cold."""
        self._start, self._signature = None, None

    def state_dict(self) -> dict[str, int]:
        """The audit counter and the back-off (the vectors are not saved: a resumed run starts
        cold)."""
        return {
            "warm_in_a_row": self.warm_in_a_row,
            "cold_for": self.cold_for,
            "backoff": self.backoff,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.warm_in_a_row = int(state.get("warm_in_a_row", 0))
        self.cold_for = int(state.get("cold_for", 0))
        self.backoff = int(state.get("backoff", 0))
        self.reset()
