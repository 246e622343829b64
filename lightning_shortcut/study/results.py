"""The study's result types: what each part's runs found, read by its tables and its figures."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["EdgeResult", "RunResult", "SweepResult", "columns", "row"]


# the metadata of a field holding a curve: in the figures, not in the tables
_CURVE = {"curve": True}


def _table_fields(result: Any) -> list[str]:
    return [f.name for f in fields(result) if not f.metadata.get("curve")]


def row(result: Any) -> dict[str, Any]:
    """A result's fields but its curves: its row of the part's CSV."""
    return {name: getattr(result, name) for name in _table_fields(result)}


def columns(result_type: type) -> tuple[str, ...]:
    """A result's columns in ``summary.md``: its row's but ``diverged`` and ``seconds``."""
    return tuple(n for n in _table_fields(result_type) if n not in ("diverged", "seconds"))


@dataclass
class RunResult:
    """One training run: the Hessian at the start and end, the final loss and accuracy, the curves."""

    shortcut_depth: int
    init: str
    num_units: int
    kappa_init: float
    kappa_init_converged: bool
    max_eigenvalue_start: float
    min_eigenvalue_start: float
    max_eigenvalue_end: float
    min_eigenvalue_end: float
    final_loss: float
    accuracy: float
    diverged: bool
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list, repr=False, metadata=_CURVE)
    spectra: list[dict[str, Any]] = field(default_factory=list, repr=False, metadata=_CURVE)


@dataclass
class SweepResult:
    """One run of the learning-rate sweep (the CSV's columns)."""

    shortcut_depth: int
    init: str
    num_units: int
    lr: float
    final_loss: float
    diverged: bool
    peak_loss: float
    max_eigenvalue_init: float
    stability_init: float


@dataclass
class EdgeResult:
    """One full-batch gradient-descent run of the edge-of-stability part.

    Attributes:
        lr: the learning rate.
        threshold: ``2 / lr``, where gradient descent on a quadratic stops being stable.
        max_eigenvalue_start: ``lambda_max`` at the initial weights.
        max_eigenvalue_end: ``lambda_max`` at the last measurement.
        first_step_at_edge: the first measured step where ``lr * lambda_max / 2 >= 0.95``, or None.
        median_stability_second_half: the median ``lr * lambda_max / 2`` of the run's second half.
        min_stability_second_half: the smallest of them.
        max_stability_second_half: the largest of them.
        final_loss: the full-batch loss at the last step (``inf`` if the run diverged).
        diverged: whether the loss left the finite range (the run stopped there).
        measurements: the number of ``lambda_max`` measurements.
        products_per_measurement: their mean number of Hessian-vector products.
        converged: whether every measurement met its tolerance.
        seconds: wall time of the run, measurements included.
        sharpness: ``(step, lambda_max)`` of every measurement.
        losses: ``(step, full-batch loss)`` of every step.
        products: the Hessian-vector products of every measurement.
    """

    lr: float
    threshold: float
    max_eigenvalue_start: float
    max_eigenvalue_end: float
    first_step_at_edge: int | None
    median_stability_second_half: float
    min_stability_second_half: float
    max_stability_second_half: float
    final_loss: float
    diverged: bool
    measurements: int
    products_per_measurement: float
    converged: bool
    seconds: float
    sharpness: list[tuple[int, float]] = field(default_factory=list, repr=False, metadata=_CURVE)
    losses: list[tuple[int, float]] = field(default_factory=list, repr=False, metadata=_CURVE)
    products: list[int] = field(default_factory=list, repr=False, metadata=_CURVE)
