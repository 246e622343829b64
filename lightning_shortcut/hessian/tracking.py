"""Warm starts, the start side: the vectors a measurement leaves, what each run starts from, and
the tracker that makes them along training.

A warm run starts from the previous measurement's eigenvectors at nearby weights, plus the Ritz
vectors next to each extreme (:data:`WARM_NEIGHBOURS` at weight :data:`WARM_NEIGHBOUR_WEIGHT`, so
that members of a cluster that trade places are all in the start) and a random part
(:data:`WARM_START_NOISE`). When it may stop, and when it is given up and run again cold, is the
stop side of the [warm rule][warm-rule], decided with every other stop by the solvers' stopping
rule. Here: the start vectors as a type (:class:`WarmStart`), which of them each locking run of the
Lanczos solver starts from and with which frontiers (:func:`run_start`), the neighbours a
measurement carries forward (:func:`carried_forward`), and the tracker's policy
(:class:`SpectrumTracker`): every ``audit_every``-th measurement is cold, so an eigenvalue crossing
that no warm run can see (an eigenvector nearly orthogonal to the tracked one rising above it) is
caught; after a warm run given up, measurements are cold for 1, 2, 4, ... (at most
``audit_every``) before the next warm attempt. Why and what it costs: the docs' engine page, "Warm
starts along training".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_shortcut.hessian._validation import check_positive_int

__all__ = [
    "DEFAULT_AUDIT_EVERY",
    "WARM_NEIGHBOURS",
    "WARM_NEIGHBOUR_WEIGHT",
    "WARM_START_NOISE",
    "RunStart",
    "SpectrumTracker",
    "WarmStart",
    "answered_cold",
    "carried_forward",
    "run_start",
]

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


def run_start(
    start: WarmStart, found_top: int, found_bottom: int, *, top: bool, bottom: bool
) -> RunStart | None:
    """The start, from ``start``, of the locking run that comes after ``found_top`` top and
    ``found_bottom`` bottom eigenvalues were found and wants the ends ``top`` and ``bottom``, or
    ``None`` for a cold run (a wanted end this start has no vector and value for).

    Run ``i`` starts from the ``i``-th top and bottom vectors; the first also from the
    neighbours, and its frontiers are theirs; a later run's frontier is its own vector's value.
    """
    first = found_top == 0 and found_bottom == 0
    own: list[Tensor] = []
    frontiers: list[float | None] = [None, None]
    for side, (wanted, vectors, values, found, frontier) in enumerate(
        (
            (top, start.top_vectors, start.top, found_top, start.top_frontier),
            (bottom, start.bottom_vectors, start.bottom, found_bottom, start.bottom_frontier),
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
    values: Tensor, *, top: bool, bottom: bool
) -> tuple[list[int], tuple[float | None, float | None]]:
    """What a first run carries forward beside its extremes: the columns of the Ritz vectors next to
    the wanted extremes (in ``values``' ascending order) and the frontiers, the lowest top-side and
    the highest bottom-side value among the extremes and those neighbours."""
    size, last = values.shape[0], values.shape[0] - 1
    columns = []
    for offset in range(1, WARM_NEIGHBOURS + 1):
        if top:
            columns.append(last - offset)
        if bottom:
            columns.append(offset)
    columns = sorted({c for c in columns if 0 <= c < size and c not in (0, last)})
    frontiers = (
        float(values[max(last - WARM_NEIGHBOURS, 0)]) if top else None,
        float(values[min(WARM_NEIGHBOURS, last)]) if bottom else None,
    )
    return columns, frontiers


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
