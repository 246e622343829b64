"""The checks of ``HessianEigenvalueMonitor``'s options, where they enter."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_shortcut.hessian._validation import (
    check_choice,
    check_non_negative_float,
    check_positive_int,
)
from lightning_shortcut.hessian.operator import HVPS
from lightning_shortcut.hessian.solvers import SOLVERS
from lightning_shortcut.hessian.spectrum import validate_solver_args


def validate_monitor_options(self: Any) -> None:
    """Raise, where the bad value enters, on a ``HessianEigenvalueMonitor`` option."""
    check_positive_int("num_samples", self.num_samples)
    if self.chunk_size is not None:
        check_positive_int("chunk_size", self.chunk_size)
    check_positive_int("max_iter", self.max_iter)  # a monitor's runs are always bounded
    validate_solver_args(
        self.method, self.top_k, self.bottom_k, self.min_abs, self.tol, self.max_iter
    )
    SOLVERS[self.method].check_options(self.solver_options)
    if not (self.params is None or self.params in ("all", "residual") or callable(self.params)):
        raise ValueError(
            f"`params` must be None, 'all', 'residual' or a callable, got {self.params!r}."
        )
    check_choice("mode", self.mode, ("eval", "train"))
    if not isinstance(self.warm_start, bool) and not (
        isinstance(self.warm_start, int) and self.warm_start >= 2
    ):
        raise ValueError(
            "`warm_start` must be False, True (a cold audit every 10 measurements) or an int >= 2 "
            f"(a cold audit every that many), got {self.warm_start!r}."
        )
    check_choice("hvp", self.hvp, HVPS)
    if self.hvp != "autograd" and SOLVERS[self.method].touches_grads:
        raise ValueError(
            f"hvp={self.hvp!r} needs a solver of the operator; method={self.method!r} runs on "
            "the model's gradients."
        )
    if self.warn_above is not None:
        check_non_negative_float("warn_above", self.warn_above)
    if self.data is not None and not isinstance(self.data, DataLoader | pl.LightningDataModule):
        raise TypeError(
            f"`data` must be a DataLoader or a LightningDataModule, got {type(self.data).__name__}."
        )
