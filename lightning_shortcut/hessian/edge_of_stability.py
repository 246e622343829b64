"""``edge_of_stability``: how close an optimizer's step is to the edge of stability (Cohen et al.,
ICLR 2021), outside Lightning."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn
from torch.optim import Optimizer

from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.context import select_parameters
from lightning_shortcut.hessian.optimizers import select_optimizer, step_preconditioner
from lightning_shortcut.hessian.params import ParamsSpec
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Hvp, Mode
from lightning_shortcut.hessian.spectrum import compute_spectrum
from lightning_shortcut.hessian.tracking import WarmStart

__all__ = ["EdgeOfStability", "compute_edge_of_stability", "edge_of_stability"]


@dataclass(frozen=True)
class EdgeOfStability:
    """An optimizer's distance to the edge of stability.

    Attributes:
        stability: the largest eigenvalue of the step-preconditioned Hessian
            ``D^1/2 (H + W) D^1/2`` over the optimizer's threshold (stable below 1); ``nan`` where
            unavailable (see ``reason``).
        max_stable_lr: the first group's learning rate at which ``stability`` would be 1.
        preconditioned_max_eigenvalue: the largest eigenvalue of ``D^1/2 (H + W) D^1/2``.
        threshold: the optimizer's constant (2 for SGD, ``(2 + 2 b1) / (1 - b1)`` for Adam, ...).
        lr: the first group's current learning rate.
        optimizer: the optimizer's class name.
        error: a bound on the error of ``stability`` (``nan`` given ``hessian_max_eigenvalue``).
        spectrum: the eigenvalue run's result (``None`` where no run was made).
        seconds: wall time.
        before_first_step: an adaptive optimizer has taken no step yet (``stability`` is ``nan``).
    """

    stability: float
    max_stable_lr: float
    preconditioned_max_eigenvalue: float
    threshold: float
    lr: float
    optimizer: str
    error: float = math.nan
    spectrum: HessianSpectrum | None = field(default=None, repr=False)
    seconds: float = 0.0
    before_first_step: bool = False

    @property
    def num_hvps(self) -> int:
        """Hessian-vector products used (0 where no eigenvalue run was needed)."""
        return 0 if self.spectrum is None else self.spectrum.num_hvps

    @property
    def converged(self) -> bool:
        """Whether the eigenvalue met the tolerance (``False`` before the first step)."""
        return self.spectrum.converged if self.spectrum is not None else not self.before_first_step

    @property
    def reason(self) -> str:
        """Why ``stability`` is ``nan`` or not converged (empty otherwise)."""
        if self.before_first_step:
            return (
                f"{self.optimizer} has no state yet (before its first step): its step size is "
                "undefined"
            )
        return "" if self.spectrum is None else self.spectrum.reason

    @property
    def warm_start(self) -> bool:
        """Whether the eigenvalue run's answer came from a warm run."""
        return self.spectrum is not None and self.spectrum.warm_start

    @property
    def warm_given_up(self) -> bool:
        """Whether a warm run was tried and given up for a cold one."""
        return self.spectrum is not None and self.spectrum.warm_given_up

    @property
    def tracking_vectors(self) -> WarmStart:
        """The run's vectors and values, to pass as ``start`` next time (empty without a run)."""
        return WarmStart() if self.spectrum is None else self.spectrum.tracking_vectors

    def as_dict(self) -> dict[str, float]:
        """``stability`` and ``max_stable_lr``, for logging."""
        return {"stability": self.stability, "max_stable_lr": self.max_stable_lr}


def edge_of_stability(
    model: nn.Module,
    data: Any,
    optimizer: Optimizer | Sequence[Optimizer],
    loss_fn: LossFn | None = None,
    *,
    params: ParamsSpec = None,
    hessian_max_eigenvalue: float | None = None,
    method: str = "lanczos",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    mode: Mode = "eval",
    all_reduce: AllReduce | None = None,
    start: EdgeOfStability | WarmStart | None = None,
    solver_options: Mapping[str, Any] | None = None,
    hvp: Hvp = "autograd",
) -> EdgeOfStability:
    """The stability ratio of ``optimizer``'s next step on the Hessian of ``model``'s loss: one
    eigenvalue run, or none for SGD with one learning rate given ``hessian_max_eigenvalue``. The
    arguments not listed below are those of :func:`~lightning_shortcut.hessian.hessian_eigenvalues`.

    Args:
        optimizer: the optimizer, or several (the one holding the Hessian's parameters is used).
        hessian_max_eigenvalue: ``lambda_max`` of the Hessian on the same data and parameters, if
            known (``error`` is then ``nan``).
        start: a previous report (or its ``tracking_vectors``) for a warm eigenvalue run.

    Returns:
        An :class:`EdgeOfStability`; ``stability`` is ``nan`` with a ``reason`` before an adaptive
        optimizer's first step or where the loss is not finite.

    Raises:
        UnsupportedOptimizerError: for an optimizer without a known threshold (LBFGS, ...).
        ValueError: as ``hessian_eigenvalues``, or if the parameters are spread over several
            optimizers or not held by ``optimizer``.

    Example:
        ```python
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        report = edge_of_stability(model, (x, y), optimizer)
        report.stability, report.max_stable_lr
        ```
    """
    settings = HessianSettings(
        params=params, mode=mode, hvp=hvp, seed=seed, all_reduce=all_reduce, method=method,
        top_k=1, bottom_k=0, tol=tol, max_iter=max_iter, solver_options=solver_options,
    )  # fmt: skip
    return compute_edge_of_stability(
        model, data, optimizer, loss_fn, settings,
        hessian_max_eigenvalue=hessian_max_eigenvalue, start=start,
    )  # fmt: skip


def compute_edge_of_stability(
    model: nn.Module,
    data: Any,
    optimizer: Optimizer | Sequence[Optimizer],
    loss_fn: LossFn | None,
    settings: HessianSettings,
    *,
    hessian_max_eigenvalue: float | None = None,
    start: EdgeOfStability | WarmStart | None = None,
) -> EdgeOfStability:
    """:func:`edge_of_stability` with its options as one ``HessianSettings``; raises as it does."""
    begin = time.perf_counter()
    settings = replace(settings, top_k=1, bottom_k=0, min_abs=False, stderr=False)
    selection = select_parameters(model, settings)  # sharded or not, decided once
    optimizers = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer)
    optimizer = select_optimizer(optimizers, selection.params)
    name = type(optimizer).__name__
    lr = float(optimizer.param_groups[0]["lr"])
    preconditioner = step_preconditioner(optimizer, selection.params)
    if preconditioner is None:
        nan = math.nan
        return EdgeOfStability(nan, nan, nan, nan, lr, name, before_first_step=True)
    solve = dict(start=start, selection=selection)
    spectrum = None
    if preconditioner.needs_preconditioned_run:
        spectrum = compute_spectrum(
            model, data, loss_fn, settings, transform=preconditioner.operator, **solve
        )
        top, step = spectrum.max, 1.0
        max_stable_lr = preconditioner.max_stable_lr(top)
    else:  # the step is lr times the gradient: the preconditioned operator is lr (H + wd I)
        if hessian_max_eigenvalue is None:
            spectrum = compute_spectrum(model, data, loss_fn, settings, **solve)
            hessian_max_eigenvalue = spectrum.max
        ratio = preconditioner.stability_from_hessian(hessian_max_eigenvalue)
        top, step = ratio * preconditioner.threshold, preconditioner.uniform_step
        # from the Hessian, not the ratio: finite at lr 0
        max_stable_lr = preconditioner.max_stable_lr_from_hessian(hessian_max_eigenvalue)
    error = math.nan  # the run's bound, times the step where the run was on the Hessian
    if spectrum is not None:
        error = step * spectrum.top_errors[0] / preconditioner.threshold
    return EdgeOfStability(
        stability=preconditioner.stability(top),
        max_stable_lr=max_stable_lr if math.isfinite(top) else math.nan,
        preconditioned_max_eigenvalue=top,
        threshold=preconditioner.threshold,
        lr=lr,
        optimizer=name,
        error=error,
        spectrum=spectrum,
        seconds=time.perf_counter() - begin,
    )
