"""``SpectrumTracker``: warm starts along training, with cold audits that catch eigenvalue crossings.

A measurement along training starts from the previous measurement's eigenvectors and stops after a
few products (the warm rule of :mod:`~lightning_shortcut.hessian.solvers._stopping`). What a warm
run cannot see is a crossing: a direction nearly orthogonal to the tracked eigenvector that rises
above it between two measurements. Every ``audit_every``-th measurement is therefore cold (a random
start and the cold floor), so a crossing is caught within ``audit_every`` measurements; a changed
parameter set, a failed measurement or a resumed run also start cold.

Where the warm rule keeps giving warm runs up (the extremes are a tight cluster whose members
trade places, common with SGD and momentum, or the spectrum moves far between measurements), a
warm attempt costs its products on top of the cold run that replaces it. After a given-up attempt
the tracker therefore measures cold for 1, then 2, 4, ... measurements (at most ``audit_every``)
before it tries again; a warm run that stops warm ends the back-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_shortcut.hessian._validation import check_positive_int
from lightning_shortcut.hessian.results import WarmStart

__all__ = ["DEFAULT_AUDIT_EVERY", "SpectrumTracker"]

#: Every this many measurements one is cold. Warm measurements cost 4-6 products where the spectrum
#: moves little between measurements and a cold one about 20, so at 10 the audits add about 1.5
#: products per measurement while a crossing goes unseen for at most 9 measurements. The default of
#: ``audit_every`` in ``SpectrumTracker`` and ``HessianEigenvalueMonitor``, where it is written as
#: its value so that the docs show the number (``tests/test_docs.py`` keeps them equal).
DEFAULT_AUDIT_EVERY = 10


class Measurement(Protocol):
    """What the tracker reads of a measurement."""

    tracking_vectors: WarmStart
    warm_start: bool
    warm_given_up: bool
    converged: bool


class SpectrumTracker:
    """The start vectors of the next measurement of one operator, and whether it must be cold.

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
            spectrum = hessian_eigenvalues(model, batch, start=tracker.start(params))
            tracker.update(spectrum, params)
        ```
    """

    def __init__(self, audit_every: int = 10) -> None:
        check_positive_int("audit_every", audit_every)
        self.audit_every = audit_every
        self.warm_in_a_row = 0
        self.cold_for = 0  # measurements to make cold before the next warm attempt
        self.backoff = 0  # the last back-off (0: the last warm attempt stopped warm)
        self._vectors: WarmStart | None = None
        self._signature: tuple[Any, ...] | None = None

    @staticmethod
    def _signature_of(params: Sequence[Tensor]) -> tuple[Any, ...]:
        return tuple((id(param), tuple(param.shape)) for param in params)

    @property
    def cold_next(self) -> bool:
        """Whether the next measurement is cold (an audit is due or no vectors are kept), given the
        same parameters."""
        return (
            self.warm_in_a_row >= self.audit_every - 1 or self.cold_for > 0 or self._vectors is None
        )

    def start(self, params: Sequence[Tensor]) -> WarmStart | None:
        """The start vectors for a measurement over ``params``, or ``None`` for a cold one."""
        if self.cold_next or self._signature != self._signature_of(params):
            return None
        return self._vectors

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
        vectors = result.tracking_vectors
        keep = (
            result.converged
            and bool(vectors)
            and self.audit_every > 1
            and all(bool(torch.isfinite(vector).all()) for vector in vectors)
        )
        self._vectors = vectors.detach() if keep else None
        self._signature = self._signature_of(params) if keep else None

    def reset(self) -> None:
        """Forget the vectors: the next measurement is cold."""
        self._vectors, self._signature = None, None

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
