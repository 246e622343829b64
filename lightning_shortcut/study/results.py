"""The study's result types: what each part's runs found, read by its tables and its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunResult", "SweepResult"]


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
    losses: list[tuple[int, float]] = field(default_factory=list, repr=False)
    spectra: list[dict[str, Any]] = field(default_factory=list, repr=False)


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
