"""The checks of ``HessianEigenvalueMonitor``'s options, where they enter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_shortcut.hessian._validation import (
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
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
    check_curvature_options(self)


def check_curvature_options(monitor: Any) -> None:
    """Raise, where the bad value enters, on ``blocks``, ``gradient_overlap`` or
    ``density_snapshots`` of a ``HessianEigenvalueMonitor``."""
    blocks = monitor.blocks
    if not (blocks is None or blocks in ("residual", "modules") or callable(blocks)) and not (
        isinstance(blocks, Mapping)
    ):
        raise ValueError(
            "`blocks` must be None (off), 'residual' (the residual units), 'modules' (the "
            f"top-level modules), a mapping name -> parameters or a callable, got {blocks!r}."
        )
    if blocks is not None and monitor.hvp != "autograd":
        raise ValueError(
            f"`blocks` needs hvp='autograd' (block products are double backwards), got "
            f"hvp={monitor.hvp!r}."
        )
    if blocks is not None and SOLVERS[monitor.method].touches_grads:
        raise ValueError(
            f"`blocks` needs a solver of the operator; method={monitor.method!r} runs on the "
            "model's gradients."
        )
    if not isinstance(monitor.gradient_overlap, bool):
        raise TypeError(
            f"`gradient_overlap` must be a bool, got {type(monitor.gradient_overlap).__name__}."
        )
    if monitor.gradient_overlap and monitor.top_k < 1:
        raise ValueError(
            "`gradient_overlap=True` needs top eigenvectors (top_k >= 1), got top_k="
            f"{monitor.top_k}."
        )
    check_non_negative_int("density_snapshots", monitor.density_snapshots)
