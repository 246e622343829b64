"""Warm starts, the start side: what a measurement leaves, what each locking run starts from and
the tracker's audits; the stop side is the solvers' stopping rule (the docs' engine page, "Warm
starts along training")."""

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
#: Their weight in the start, against 1 for the extremes' own vectors.
WARM_NEIGHBOUR_WEIGHT = 0.5
#: Weight of the random part of a warm start.
WARM_START_NOISE = 0.3
#: Every this many measurements one is cold: the default of ``audit_every``, written as its value
#: in ``SpectrumTracker`` and ``HessianEigenvalueMonitor`` so the docs show it (a test checks).
DEFAULT_AUDIT_EVERY = 10
# what a tracker's state_dict holds
_COUNTERS = ("warm_in_a_row", "cold_for", "backoff")


@dataclass(frozen=True)
class RunStart:
    """What one warm Lanczos run starts from: the wanted ends' own vectors then any neighbours,
    their weights, the top and bottom frontiers (``None``: an end not wanted) and the noise."""

    vectors: tuple[Tensor, ...]
    weights: tuple[float, ...]
    frontiers: tuple[float | None, float | None]
    noise: float = WARM_START_NOISE


@dataclass(frozen=True)
class WarmStart:
    """What a measurement leaves for the next one to start from (a result's ``tracking_vectors``):
    its eigenvectors and the Ritz vectors next to its extremes, with the values the
    [warm rule][warm-rule] reads.

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
        lists = ("top_vectors", "bottom_vectors", "neighbours")
        return replace(self, **{name: [change(v) for v in getattr(self, name)] for name in lists})


def run_start(
    start: WarmStart, found_top: int, found_bottom: int, *, top: bool, bottom: bool
) -> RunStart | None:
    """The start of the locking run after ``found_top`` and ``found_bottom`` values were found, or
    ``None`` for a cold run: the next vector of each wanted end, and for the first run the
    neighbours and their frontiers."""
    first = found_top == 0 and found_bottom == 0
    own: list[Tensor] = []
    frontiers: list[float | None] = [None, None]
    ends = (
        (top, start.top_vectors, start.top, found_top, start.top_frontier),
        (bottom, start.bottom_vectors, start.bottom, found_bottom, start.bottom_frontier),
    )
    for side, (wanted, vectors, values, found, frontier) in enumerate(ends):
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
    """The columns (of ascending ``values``) of the Ritz vectors next to the wanted extremes, and
    the frontiers: the lowest top-side and highest bottom-side value among them and the extremes."""
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
    """Whether an answer came (in part) from a cold run: what ``stderr="cold"`` is computed for."""
    return not result.warm_start or result.warm_given_up


class SpectrumTracker:
    """The start vectors of the next measurement of one operator, and whether it must be cold.

    Every ``audit_every``-th measurement is cold, so that an eigenvalue crossing is caught; after a
    warm run given up, measurements are cold for 1, 2, 4, ... (at most ``audit_every``) before the
    next warm attempt (the [warm rule][warm-rule]). Between measurements it holds at most
    ``top_k + bottom_k + 4`` parameter-sized vectors.

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
        """Keep the eigenvectors of ``result`` (a ``HessianSpectrum`` or ``EdgeOfStability``) over
        ``params``; a measurement that did not converge leaves none: the next one is cold."""
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
        """The audit counter and the back-off (not the vectors: a resumed run starts cold)."""
        return {name: getattr(self, name) for name in _COUNTERS}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in _COUNTERS:
            setattr(self, name, int(state.get(name, 0)))
        self.reset()
