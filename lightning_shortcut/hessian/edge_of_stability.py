"""``edge_of_stability``: how close an optimizer's step is to the edge of stability, for any model.

Gradient descent on a quadratic is stable only while ``lr * lambda_max < 2`` (Cohen et al., ICLR
2021); for momentum, Nesterov and Adam the constant and the step differ (see
:mod:`lightning_shortcut.hessian.optimizers`). This function reads the optimizer's current learning
rates and state and reports the ratio to the edge (1.0 is the edge) and the learning rate that would
put the run exactly there.
"""

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
from lightning_shortcut.hessian.results import WarmStart
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Hvp, Mode
from lightning_shortcut.hessian.spectrum import compute_spectrum

__all__ = ["EdgeOfStability", "compute_edge_of_stability", "edge_of_stability"]


@dataclass
class EdgeOfStability:
    """An optimizer's distance to the edge of stability.

    Attributes:
        stability: the largest eigenvalue of the step-preconditioned Hessian ``D^1/2 (H + W) D^1/2``
            divided by the optimizer's threshold constant: below 1 a step is stable on the local
            quadratic, above 1 it is not. ``nan`` where unavailable (see ``reason``).
        max_stable_lr: the first parameter group's learning rate at which ``stability`` would be 1,
            every group's learning rate scaled alike.
        preconditioned_max_eigenvalue: the largest eigenvalue of ``D^1/2 (H + W) D^1/2``.
        threshold: the optimizer's constant (2 for SGD, ``(2 + 2 b1) / (1 - b1)`` for Adam, ...).
        lr: the first group's current learning rate.
        optimizer: the optimizer's class name.
        error: a bound on the error of ``stability`` (from the eigenvalue's error bound).
        num_hvps: Hessian-vector products used (0 when ``lambda_max`` was given and the step is
            uniform).
        converged: whether the eigenvalue met the tolerance.
        reason: why ``stability`` is ``nan`` or not converged (empty otherwise).
        seconds: wall time.
        before_first_step: ``stability`` is ``nan`` because an adaptive optimizer has no state
            yet (it has taken no step): expected at the start of training.
        warm_start: whether the eigenvalue run's answer came from a warm run.
        warm_given_up: whether a warm run was tried and given up for a cold one.
        tracking_vectors: the eigenvalue run's vectors and values, to pass as ``start`` next time
            (empty when no run was needed).
    """

    stability: float
    max_stable_lr: float
    preconditioned_max_eigenvalue: float
    threshold: float
    lr: float
    optimizer: str
    error: float = 0.0
    num_hvps: int = 0
    converged: bool = True
    reason: str = ""
    seconds: float = 0.0
    before_first_step: bool = False
    warm_start: bool = False
    warm_given_up: bool = False
    tracking_vectors: WarmStart = field(default_factory=WarmStart, repr=False, compare=False)

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
    """The stability ratio of ``optimizer``'s next step on the Hessian of ``model``'s loss.

    With SGD (any momentum, Nesterov, coupled weight decay) and one learning rate for every
    parameter, the ratio is ``lr * (lambda_max + wd) / c``: pass the Hessian's ``lambda_max`` as
    ``hessian_max_eigenvalue`` (from :func:`~lightning_shortcut.hessian.hessian_eigenvalues` on the
    same data and parameters) and it costs nothing, else one eigenvalue run. Adam, AdamW, RMSprop and
    unequal groups cost one eigenvalue run on the preconditioned operator.

    The arguments not listed below are those of
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues`.

    Args:
        model: the model.
        data: the batch or batches, as for ``hessian_eigenvalues``.
        optimizer: the optimizer, or several (the one holding the Hessian's parameters is used).
        loss_fn: as for ``hessian_eigenvalues``.
        params: the parameters, as for ``hessian_eigenvalues`` (all trainable ones by default).
        hessian_max_eigenvalue: ``lambda_max`` of the Hessian, if already known.
        start: a previous report (or its ``tracking_vectors``) for a warm eigenvalue run (see
            :func:`~lightning_shortcut.hessian.hessian_eigenvalues`).

    Returns:
        An :class:`EdgeOfStability`; ``stability`` is ``nan`` with a ``reason`` while an adaptive
        optimizer has no state yet (before its first step) or the loss is not finite.

    Raises:
        UnsupportedOptimizerError: for an optimizer without a known threshold (LBFGS, a custom
            class, ``maximize=True``, ...).
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
    """:func:`edge_of_stability` with its options as one
    :class:`~lightning_shortcut.hessian.HessianSettings` (the monitor passes its own): the
    eigenvalue run asks for the top eigenvalue alone, whatever ``top_k``, ``bottom_k``,
    ``min_abs`` and ``stderr`` the settings hold.

    Raises:
        UnsupportedOptimizerError, ValueError: as :func:`edge_of_stability`.
    """
    begin = time.perf_counter()
    settings = replace(settings, top_k=1, bottom_k=0, min_abs=False, stderr=False)
    selection = select_parameters(model, settings)  # sharded or not, decided once
    optimizers = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer)
    optimizer = select_optimizer(optimizers, selection.params)
    name = type(optimizer).__name__
    lr = float(optimizer.param_groups[0]["lr"])
    preconditioner = step_preconditioner(optimizer, selection.params)
    if preconditioner is None:
        return EdgeOfStability(
            math.nan, math.nan, math.nan, math.nan, lr, name, math.nan, converged=False,
            reason=f"{name} has no state yet (before its first step): its step size is undefined",
            before_first_step=True,
        )  # fmt: skip
    solve = dict(start=start, selection=selection)
    spectrum = None
    if preconditioner.needs_preconditioned_run:
        spectrum = compute_spectrum(
            model, data, loss_fn, settings, transform=preconditioner.operator, **solve
        )
        top, top_error = spectrum.max, spectrum.top_errors[0]
    else:  # the step is lr times the gradient: the preconditioned operator is lr (H + wd I)
        if hessian_max_eigenvalue is None:
            spectrum = compute_spectrum(model, data, loss_fn, settings, **solve)
            hessian_max_eigenvalue = spectrum.max
        step = preconditioner.uniform_step
        top = (
            preconditioner.stability_from_hessian(hessian_max_eigenvalue) * preconditioner.threshold
        )
        top_error = step * spectrum.top_errors[0] if spectrum is not None else 0.0
    stability = preconditioner.stability(top)
    return EdgeOfStability(
        stability=stability,
        max_stable_lr=preconditioner.max_stable_lr(top) if math.isfinite(top) else math.nan,
        preconditioned_max_eigenvalue=top,
        threshold=preconditioner.threshold,
        lr=lr,
        optimizer=name,
        error=top_error / preconditioner.threshold,
        num_hvps=spectrum.num_hvps if spectrum is not None else 0,
        converged=spectrum.converged if spectrum is not None else True,
        reason=spectrum.reason if spectrum is not None else "",
        seconds=time.perf_counter() - begin,
        warm_start=spectrum.warm_start if spectrum is not None else False,
        warm_given_up=spectrum.warm_given_up if spectrum is not None else False,
        tracking_vectors=spectrum.tracking_vectors if spectrum is not None else WarmStart(),
    )
