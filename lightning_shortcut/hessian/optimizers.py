"""The optimizer side of the edge-of-stability ratio: how one step scales the gradient.

``hessian/stability`` is ``lambda_max(D^1/2 (H + W) D^1/2) / c``: ``D`` the per-parameter step size,
``W`` the coupled weight decay, ``c`` the optimizer's threshold constant (1.0 is the edge of
stability). This module reads ``D``, ``W`` and ``c`` from a live ``torch.optim`` optimizer; the
thresholds and their derivation are on the docs' stability page."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_shortcut.hessian.linear_operator import LinearOperator, ScaledOperator

__all__ = [
    "StepPreconditioner",
    "UnsupportedOptimizerError",
    "select_optimizer",
    "step_preconditioner",
]


class UnsupportedOptimizerError(Exception):
    """The optimizer or its settings have no known threshold: log the eigenvalues, skip the ratio."""


@dataclass(frozen=True)
class StepPreconditioner:
    """How one optimizer step scales the gradient, linearized on a quadratic.

    Per-parameter fields follow the order of the ``params`` given to :func:`step_preconditioner`
    (under ``fully_shard``, ``step_sizes`` hold this rank's rows).

    Attributes:
        optimizer: the optimizer's class name, e.g. ``"AdamW"``.
        step_sizes: per parameter, the step size ``D`` (detached, float32 or wider): the group's
            ``lr`` for SGD, ``lr / ((1 - b1^t) (sqrt(v / (1 - b2^t)) + eps))`` for Adam and AdamW,
            ``lr / (sqrt(v) + eps)`` for RMSprop; zero for a parameter never stepped.
        thresholds: per parameter, the constant ``c`` of its group.
        curvature_shifts: per parameter, the coupled weight decay added to the Hessian (0 if none).
        decay_rates: per parameter, ``lr * wd / 2`` of a decoupled decay (0 if none).
        lr: the current ``lr`` of the optimizer's first param group.
        uniform_step: the one step size when ``D`` is the same number for every parameter and the
            constants agree (SGD with equal ``lr``), else ``None``.
    """

    optimizer: str
    step_sizes: tuple[Tensor, ...]
    thresholds: tuple[float, ...]
    curvature_shifts: tuple[float, ...]
    decay_rates: tuple[float, ...]
    lr: float
    uniform_step: float | None

    @property
    def threshold(self) -> float:
        """The constant ``c``: stable iff ``lambda_max`` of the preconditioned operator is below it."""
        return self.thresholds[0]

    @property
    def needs_preconditioned_run(self) -> bool:
        """Whether the ratio needs an eigenvalue of the preconditioned operator (else see
        :meth:`stability_from_hessian`)."""
        return self.uniform_step is None or len(set(self.curvature_shifts)) > 1

    def flat_scales(self, like: Tensor) -> Tensor:
        """``sqrt(D * c / c_g)`` flattened, in the dtype and on the device of ``like``."""
        pieces = [
            (step * (self.threshold / group)).reshape(-1)
            for step, group in zip(self.step_sizes, self.thresholds, strict=True)
        ]
        return torch.cat(pieces).to(like).sqrt()

    def flat_shifts(self, like: Tensor) -> Tensor:
        """The coupled weight decay of each parameter entry, flattened like :meth:`flat_scales`."""
        sizes = [step.numel() for step in self.step_sizes]
        shifts = like.new_tensor(self.curvature_shifts)
        return torch.repeat_interleave(shifts, torch.tensor(sizes, device=like.device))

    def operator(self, hessian: LinearOperator) -> ScaledOperator:
        """The step-preconditioned operator ``S^1/2 (H + W) S^1/2``, ``S = D c / c_g``, over
        ``hessian``; its largest eigenvalue goes to :meth:`stability`."""
        return ScaledOperator(
            hessian, self.flat_scales(hessian.like), self.flat_shifts(hessian.like)
        )

    def stability(self, preconditioned_max_eigenvalue: float) -> float:
        """``lambda_max / c`` of :meth:`operator`: 1.0 is the edge of stability."""
        return preconditioned_max_eigenvalue / self.threshold

    def stability_from_hessian(self, hessian_max_eigenvalue: float) -> float:
        """The ratio from ``lambda_max(H)`` alone: ``uniform_step * (lambda_max + wd) / c``.

        Raises:
            ValueError: if :attr:`needs_preconditioned_run` (``D`` or the decay is not uniform).
        """
        if self.needs_preconditioned_run or self.uniform_step is None:
            raise ValueError(
                f"{self.optimizer}'s step is not one number times the Hessian (a preconditioner, "
                "unequal groups or weight decays); run the eigensolver on `operator(hessian)`."
            )
        shifted = hessian_max_eigenvalue + self.curvature_shifts[0]
        return self.uniform_step * shifted / self.threshold

    def max_stable_lr_from_hessian(self, hessian_max_eigenvalue: float) -> float:
        """SGD's ``lr`` at which the ratio is 1, ``c / (lambda_max + wd)`` (``inf`` where that is
        not positive); raises as :meth:`stability_from_hessian`."""
        self.stability_from_hessian(hessian_max_eigenvalue)  # refuses a step that is not uniform
        shifted = hessian_max_eigenvalue + self.curvature_shifts[0]
        return self.threshold / shifted if shifted > 0 else math.inf

    def max_stable_lr(self, preconditioned_max_eigenvalue: float) -> float:
        """The first group's ``lr`` at which the ratio is 1, every group's ``lr`` scaled alike
        (the docs' stability page); ``inf`` when the eigenvalue is not positive."""
        ratio = self.stability(preconditioned_max_eigenvalue)
        if not ratio > 0:
            return math.inf
        bounds = {1 / (ratio * (1 - k) + k) for k in (min(self.decay_rates), max(self.decay_rates))}
        return self.lr * min(bounds)


def select_optimizer(optimizers: Sequence[Optimizer], params: Sequence[Tensor]) -> Optimizer:
    """The one optimizer that steps every parameter the Hessian is over.

    Raises:
        ValueError: if ``optimizers`` is empty, a parameter is held by none of them, or the
            parameters are stepped by more than one.
    """
    optimizers = list(optimizers)
    if not optimizers:
        raise ValueError("`optimizers` is empty; pass the optimizers of the model being trained.")
    held = [{id(p) for group in o.param_groups for p in group["params"]} for o in optimizers]
    owners: set[int] = set()
    for index, param in enumerate(params):
        holders = {number for number, ids in enumerate(held) if id(param) in ids}
        if not holders:
            raise ValueError(f"{_describe(index, param)} is held by none of the optimizers.")
        owners |= holders
    if len(owners) != 1:
        names = ", ".join(f"{i} ({type(optimizers[i]).__name__})" for i in sorted(owners))
        raise ValueError(
            f"The Hessian's parameters are stepped by several optimizers ({names}); the ratio is "
            "defined for one. Pass the parameters of one optimizer as `params`."
        )
    return optimizers[owners.pop()]


def step_preconditioner(
    optimizer: Optimizer, params: Sequence[Tensor]
) -> StepPreconditioner | None:
    """The current step preconditioner of an exact ``torch.optim.SGD``, ``Adam``, ``AdamW`` or
    ``RMSprop`` over ``params`` (any subset of its parameters, in any order), or ``None`` while
    ``D`` is undefined (an adaptive optimizer before its first step on them).

    Raises:
        UnsupportedOptimizerError: an unknown optimizer class, ``maximize=True``, ``momentum >= 1``,
            ``dampening >= 1`` or a decoupled ``lr * weight_decay >= 2``.
        ValueError: if ``params`` is empty or holds a parameter the optimizer does not.
    """
    reader = _READERS.get(type(optimizer))
    if reader is None:
        known = ", ".join(sorted(kind.__name__ for kind in _READERS))
        raise UnsupportedOptimizerError(
            f"{type(optimizer).__name__} has no known stability threshold (known: {known}); "
            "hessian/stability and hessian/max_stable_lr are not computed for it."
        )
    params = list(params)
    if not params:
        raise ValueError("`params` is empty; pass the parameters the Hessian is over.")
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    rows = []
    for index, param in enumerate(params):
        if id(param) not in group_of:
            raise ValueError(
                f"{_describe(index, param)} is not held by {type(optimizer).__name__}."
            )
        group = group_of[id(param)]
        if group.get("maximize", False):
            raise UnsupportedOptimizerError(
                f"{type(optimizer).__name__} with maximize=True ascends the loss; its stability "
                "concerns -H, not the Hessian whose eigenvalues are measured."
            )
        state = {key: _local(value) for key, value in optimizer.state.get(param, {}).items()}
        rows.append(reader(group, state, _local(param)))
    if all(row[3] is None for row in rows):
        return None
    thresholds, shifts, decays, steps = zip(*rows, strict=True)
    steps = tuple(
        torch.zeros_like(_local(p), dtype=_dtype(p)) if s is None else s
        for p, s in zip(params, steps, strict=True)
    )
    lrs = {float(group_of[id(p)]["lr"]) for p in params}
    uniform = reader is _sgd and len(lrs) == 1 and len(set(thresholds)) == 1
    return StepPreconditioner(
        optimizer=type(optimizer).__name__,
        step_sizes=steps,
        thresholds=thresholds,
        curvature_shifts=shifts,
        decay_rates=decays,
        lr=float(optimizer.param_groups[0]["lr"]),
        uniform_step=lrs.pop() if uniform else None,
    )


_Row = tuple[float, float, float, Tensor | None]  # threshold, coupled decay, decay rate, D


def _sgd(group: dict[str, Any], state: dict[str, Any], param: Tensor) -> _Row:
    momentum, dampening = _momentum(group, "momentum"), float(group["dampening"])
    if momentum == 0:
        threshold = 2.0
    elif group["nesterov"]:
        threshold = (2 + 2 * momentum) / (1 + 2 * momentum)
    elif dampening >= 1:
        raise UnsupportedOptimizerError(
            f"SGD with dampening={dampening} (accepted: below 1) moves without the gradient."
        )
    else:
        threshold = (2 + 2 * momentum) / (1 - dampening)
    step = torch.tensor(float(group["lr"]), dtype=_dtype(param), device=param.device)
    return threshold, float(group["weight_decay"]), 0.0, step.expand_as(param)


def _adam(
    group: dict[str, Any], state: dict[str, Any], param: Tensor, decoupled: bool = False
) -> _Row:
    lr, weight_decay, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
    beta1, beta2 = (float(beta) for beta in group["betas"])
    decoupled = group.get("decoupled_weight_decay", decoupled)
    decay_rate = lr * weight_decay / 2 if decoupled else 0.0
    if decay_rate >= 1:
        raise UnsupportedOptimizerError(
            f"lr * weight_decay = {2 * decay_rate} (accepted: below 2): the decay alone diverges."
        )
    threshold = (2 + 2 * beta1) / (1 - beta1) * (1 - decay_rate)
    shift = 0.0 if decoupled else weight_decay
    steps = float(state.get("step", 0))
    if "exp_avg_sq" not in state or steps < 1:
        return threshold, shift, decay_rate, None
    second = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
    denom = second.detach().to(_dtype(param)).sqrt() / math.sqrt(1 - beta2**steps) + eps
    return threshold, shift, decay_rate, lr / (1 - beta1**steps) / denom


def _rmsprop(group: dict[str, Any], state: dict[str, Any], param: Tensor) -> _Row:
    threshold = 2 + 2 * _momentum(group, "momentum")
    if "square_avg" not in state:
        return threshold, float(group["weight_decay"]), 0.0, None
    second = state["square_avg"].detach().to(_dtype(param))
    if group["centered"]:
        second = second - state["grad_avg"].detach().to(second).square()
    step = float(group["lr"]) / (second.sqrt() + float(group["eps"]))
    return threshold, float(group["weight_decay"]), 0.0, step


_READERS: dict[type[Optimizer], Callable[[dict[str, Any], dict[str, Any], Tensor], _Row]] = {
    torch.optim.SGD: _sgd,
    torch.optim.Adam: _adam,
    torch.optim.AdamW: functools.partial(_adam, decoupled=True),
    torch.optim.RMSprop: _rmsprop,
}


def _momentum(group: dict[str, Any], key: str) -> float:
    momentum = float(group[key])
    if not 0 <= momentum < 1:
        raise UnsupportedOptimizerError(
            f"{key}={momentum} (accepted: 0 <= {key} < 1); the step diverges at any learning rate."
        )
    return momentum


def _local(tensor: Any) -> Any:
    """This rank's rows of a tensor sharded by ``fully_shard`` (a DTensor); other values as they are."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _dtype(param: Tensor) -> torch.dtype:
    return torch.promote_types(param.dtype, torch.float32)


def _describe(index: int, param: Tensor) -> str:
    return f"`params[{index}]` (shape {tuple(getattr(param, 'shape', ()))})"
