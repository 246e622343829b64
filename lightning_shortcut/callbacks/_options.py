"""The checks of ``HessianEigenvalueMonitor``'s options, where they enter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lightning_shortcut.hessian._validation import (
    check_non_negative_float,
    check_non_negative_int,
    check_positive_int,
)
from lightning_shortcut.hessian.blocks import check_block_settings
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.solvers.lanczos_values import VALUES_ONLY


def monitor_settings(
    *, params: Any, max_iter: Any, stderr: Any, mode: Any, vectors: bool, **options: Any
) -> HessianSettings:
    """The monitor's :class:`~lightning_shortcut.hessian.HessianSettings`, which check every
    solver and operator option where it enters; first the monitor's own rules: ``params`` is no
    list of tensors (the model's parameters are found at fit start), every run is bounded, the
    standard errors come with cold measurements in eval mode, and the eigenvectors are kept only
    where a part of the monitor reads them (``vectors``: values alone otherwise)."""
    if not (params is None or params in ("all", "residual") or callable(params)):
        raise ValueError(f"`params` must be None, 'all', 'residual' or a callable, got {params!r}.")
    check_positive_int("max_iter", max_iter)  # a monitor's runs are always bounded
    if not isinstance(stderr, int):
        raise TypeError(f"`stderr` must be a bool or an int n >= 1, got {stderr!r}.")
    if not isinstance(stderr, bool) and stderr < 1:
        raise ValueError(
            "`stderr` must be True (with one fit measurement in 10), False or an int n >= 1 (with "
            f"one in every n), got {stderr!r}."
        )
    return HessianSettings(
        params=params,
        max_iter=max_iter,
        stderr="cold" if stderr and mode == "eval" else False,
        mode=mode,
        vectors=None if vectors else False,
        **options,
    )


def block_settings(settings: HessianSettings) -> HessianSettings:
    """The settings of the monitor's block measurements: each block's extremes, one value at each
    end the measurements ask for."""
    return replace(
        settings,
        top_k=min(settings.top_k, 1),
        bottom_k=min(settings.bottom_k, 1),
        min_abs=False,
        stderr=False,
    )


def validate_monitor_options(self: Any) -> None:
    """Raise, where the bad value enters, on a ``HessianEigenvalueMonitor`` option that is not a
    setting of its measurements (those are :attr:`settings`'s)."""
    check_positive_int("num_samples", self.num_samples)
    if self.chunk_size is not None:
        check_positive_int("chunk_size", self.chunk_size)
    if not isinstance(self.warm_start, bool) and not (
        isinstance(self.warm_start, int) and self.warm_start >= 2
    ):
        raise ValueError(
            "`warm_start` must be False, True (a cold audit every 10 measurements) or an int >= 2 "
            f"(a cold audit every that many), got {self.warm_start!r}."
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
    blocks, settings = monitor.blocks, monitor.settings
    if not (blocks is None or blocks in ("residual", "modules") or callable(blocks)) and not (
        isinstance(blocks, Mapping)
    ):
        raise ValueError(
            "`blocks` must be None (off), 'residual' (the residual units), 'modules' (the "
            f"top-level modules), a mapping name -> parameters or a callable, got {blocks!r}."
        )
    if blocks is not None:
        if settings.top_k == 0 and settings.bottom_k == 0:
            raise ValueError("`blocks` needs top_k >= 1 or bottom_k >= 1 (the ends it measures).")
        try:
            check_block_settings(block_settings(settings))
        except ValueError as error:
            raise ValueError(f"`blocks` cannot be measured so: {error}") from error
    if not isinstance(monitor.gradient_overlap, bool):
        raise TypeError(
            f"`gradient_overlap` must be a bool, got {type(monitor.gradient_overlap).__name__}."
        )
    if monitor.gradient_overlap and settings.top_k < 1:
        raise ValueError(
            "`gradient_overlap=True` needs top eigenvectors (top_k >= 1), got top_k="
            f"{settings.top_k}."
        )
    if monitor.gradient_overlap and settings.solver.touches_grads:
        raise ValueError(
            f"`gradient_overlap=True` needs the top eigenvectors, which method={settings.method!r} "
            "(a solver on the model's gradients) does not return: pass another method or "
            "gradient_overlap=False."
        )
    wanting = {
        "warm_start": monitor.warm_start,
        "gradient_overlap": monitor.gradient_overlap,
        "blocks": blocks,
    }
    for option, value in wanting.items():
        if settings.method == VALUES_ONLY and value not in (None, False):
            raise ValueError(
                f"`{option}={value!r}` needs the eigenvectors, which method={VALUES_ONLY!r} does "
                f"not keep: pass method='lanczos' (the default) or {option}="
                f"{None if option == 'blocks' else False}."
            )
    check_non_negative_int("density_snapshots", monitor.density_snapshots)
