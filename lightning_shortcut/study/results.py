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
    """One full-batch gradient-descent run of the edge-of-stability part. ``threshold`` is
    ``2 / lr``; the stability ratio is ``lr * lambda_max / 2``, "at the edge" from 0.95 on, and
    summarized over the run's second half; ``final_loss`` is ``inf`` if the run diverged; the
    curves are per measurement (``sharpness``, ``products``) or per step (``losses``)."""

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
