"""``hessian_eigenvalues``: the extreme eigenvalues of a model's loss Hessian, without side effects."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian._state import autograd_enabled, preserved_state
from lightning_shortcut.hessian.operator import (
    AllReduce,
    HessianOperator,
    LossFn,
    cross_entropy_loss,
    normalize_batches,
    resolve_params,
)
from lightning_shortcut.hessian.solvers import Extremes, lanczos_extremes, power_extremes
from lightning_shortcut.theory import magnitude_ratio

__all__ = ["METHODS", "HessianSpectrum", "hessian_eigenvalues"]

METHODS = ("lanczos", "power", "pyhessian")
Method = Literal["lanczos", "power", "pyhessian"]
Mode = Literal["eval", "train"]


@dataclass
class HessianSpectrum:
    """The extreme eigenvalues of a loss Hessian.

    Attributes:
        top: the ``top_k`` largest eigenvalues, descending.
        bottom: the ``bottom_k`` smallest eigenvalues, ascending.
        max: the largest algebraic eigenvalue (``None`` when ``top_k = 0``).
        min: the smallest algebraic eigenvalue (``None`` when ``bottom_k = 0``).
        min_abs: the smallest ``|eigenvalue|`` (``None`` unless ``min_abs=True``).
        condition_number: ``max|lambda| / min_abs`` (``inf`` for a singular Hessian, ``nan`` for a
            zero one; ``None`` unless ``min_abs=True``).
        num_hvps: Hessian-vector products used.
        converged: whether every requested value met the residual tolerance.
        seconds: wall time of the call.
        method: the solver used.
    """

    top: list[float] = field(default_factory=list)
    bottom: list[float] = field(default_factory=list)
    max: float | None = None
    min: float | None = None
    min_abs: float | None = None
    condition_number: float | None = None
    num_hvps: int = 0
    converged: bool = True
    seconds: float = 0.0
    method: str = "lanczos"

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` view for logging (``top_<i>``/``bottom_<i>`` when ``k > 1``)."""
        values: dict[str, float | None] = {
            "max_eigenvalue": self.max,
            "min_eigenvalue": self.min,
            "min_abs_eigenvalue": self.min_abs,
            "condition_number": self.condition_number,
        }
        if len(self.top) > 1:
            values.update({f"top_{i}": v for i, v in enumerate(self.top, start=1)})
        if len(self.bottom) > 1:
            values.update({f"bottom_{i}": v for i, v in enumerate(self.bottom, start=1)})
        values["num_hvps"] = float(self.num_hvps)
        values["seconds"] = self.seconds
        values["converged"] = float(self.converged)
        return {key: float(value) for key, value in values.items() if value is not None}


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
    return value


def validate_solver_args(
    method: str, top_k: int, bottom_k: int, min_abs: bool, tol: float, max_iter: int | None
) -> None:
    """Raise a ``ValueError`` naming the first bad solver argument."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {list(METHODS)}.")
    _check_count("top_k", top_k)
    _check_count("bottom_k", bottom_k)
    if top_k == 0 and bottom_k == 0 and not min_abs:
        raise ValueError("Nothing to compute: `top_k` and `bottom_k` are 0 and `min_abs` is False.")
    if min_abs and method != "lanczos":
        raise ValueError(f"`min_abs=True` needs method='lanczos', got method={method!r}.")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise ValueError(f"`tol` must be a float in (0, 1), got {tol!r}.")
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1
    ):
        raise ValueError(f"`max_iter` must be a positive int or None, got {max_iter!r}.")


@contextmanager
def hessian_context(model: nn.Module, mode: Mode, *, clone_grads: bool = False):
    """Guard state, enable double backward and put the model in ``mode`` for a computation."""
    if mode not in ("eval", "train"):
        raise ValueError(f"Unknown mode {mode!r}; expected 'eval' or 'train'.")
    with preserved_state(model, clone_grads=clone_grads), autograd_enabled():
        model.train(mode == "train")
        yield


def build_operator(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    params: Iterable[Tensor] | None,
    all_reduce: AllReduce | None,
    mode: Mode,
    seed: int,
) -> HessianOperator:
    """Validate the inputs and build the :class:`HessianOperator` (inside :func:`hessian_context`).

    In train mode the global RNG is reseeded before each forward so that dropout masks are the same
    in every product; :func:`hessian_context` restores the global RNG state afterwards.
    """
    chosen = resolve_params(model, params)
    batches = normalize_batches(data)
    fixed_seed = seed if mode == "train" else None
    return HessianOperator(
        model, batches, loss_fn or cross_entropy_loss, chosen, all_reduce, fixed_seed
    )


def _default_max_iter(dim: int, min_abs: bool) -> int:
    return min(dim, 1000 if min_abs else 300)


def hessian_eigenvalues(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    method: Method = "lanczos",
    top_k: int = 1,
    bottom_k: int = 1,
    min_abs: bool = False,
    params: Iterable[Tensor] | None = None,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    mode: Mode = "eval",
    all_reduce: AllReduce | None = None,
) -> HessianSpectrum:
    """Top and bottom eigenvalues of the Hessian of ``model``'s mean loss on ``data``.

    Nothing about the model or the run changes: every ``.grad``, every buffer, the train/eval mode
    of every submodule and the global RNG states are as they were, and no tensor keeps a graph.
    Random start vectors come from a private generator seeded with ``seed``.

    Args:
        model: the model.
        data: one batch ``(inputs, targets)`` or an iterable of batches; the Hessian is that of the
            mean loss over all samples (batches weighted by size).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch; default: cross-entropy of
            ``model(inputs)`` against ``targets``.
        method: ``"lanczos"`` (full reorthogonalization; the default and the fastest),
            ``"power"`` (power iteration on ``H +- s I``) or ``"pyhessian"`` (pyhessian's power
            iteration on shifted losses; see :mod:`lightning_shortcut.hessian.pyhessian_backend`).
        top_k: number of largest eigenvalues.
        bottom_k: number of smallest eigenvalues.
        min_abs: also compute the smallest ``|eigenvalue|`` and the condition number (Lanczos only).
        params: the parameters to take the Hessian over (for instance
            :func:`~lightning_shortcut.residual_parameters`); default: all that require grad.
        tol: residual tolerance relative to the largest ``|eigenvalue|``: a value is converged when
            ``||H y - theta y|| <= tol * max|lambda|``, which bounds its error by the same amount.
        max_iter: products per eigenvalue run (default ``min(dim, 300)``, ``1000`` with ``min_abs``).
        seed: seed of the private generator for start vectors.
        mode: ``"eval"`` (default; dropout off, BatchNorm on running statistics) or ``"train"``
            (buffers are restored afterwards, dropout masks are fixed for the call).
        all_reduce: sum across processes for distributed data (see :class:`HessianOperator`).

    Returns:
        A :class:`HessianSpectrum`. A non-finite loss gives NaN values with ``converged=False``.

    Raises:
        ValueError: on an unknown method, negative or all-zero counts, empty data, a batch the
            default loss cannot read, parameters not in the model, a non-scalar loss or a model with
            no trainable parameters.

    Example::

        spectrum = hessian_eigenvalues(model, (x, y), top_k=2, params=residual_parameters(model))
        spectrum.max, spectrum.min
    """
    validate_solver_args(method, top_k, bottom_k, min_abs, tol, max_iter)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    with hessian_context(model, mode, clone_grads=method == "pyhessian"):
        operator = build_operator(model, data, loss_fn, params, all_reduce, mode, seed)
        iterations = max_iter or _default_max_iter(operator.dim, min_abs)
        try:
            if method == "pyhessian":
                from lightning_shortcut.hessian.pyhessian_backend import pyhessian_extremes

                extremes = pyhessian_extremes(operator, top_k, bottom_k, tol, iterations)
            elif method == "power":
                extremes = power_extremes(
                    operator, operator.dim, operator.like, generator,
                    top_k=top_k, bottom_k=bottom_k, tol=tol, max_iter=iterations,
                )  # fmt: skip
            else:
                extremes = lanczos_extremes(
                    operator, operator.dim, operator.like, generator,
                    top_k=top_k, bottom_k=bottom_k, min_abs=min_abs, tol=tol, max_iter=iterations,
                )  # fmt: skip
        finally:
            operator.release()
        num_hvps = operator.num_hvps
        nonfinite = operator.nonfinite
    return _assemble(extremes, method, min_abs, num_hvps, nonfinite, time.perf_counter() - start)


def _assemble(
    extremes: Extremes, method: str, min_abs: bool, num_hvps: int, nonfinite: bool, seconds: float
) -> HessianSpectrum:
    nan = math.nan
    top = sorted(extremes.top, reverse=True) if not nonfinite else [nan] * len(extremes.top)
    bottom = sorted(extremes.bottom) if not nonfinite else [nan] * len(extremes.bottom)
    smallest = extremes.min_abs if min_abs else None
    condition = None
    if min_abs:
        largest = extremes.scale
        if nonfinite or smallest is None or math.isnan(smallest) or math.isnan(largest):
            smallest, condition = nan, nan
        else:
            condition = magnitude_ratio(largest, smallest)
    return HessianSpectrum(
        top=top,
        bottom=bottom,
        max=top[0] if top else None,
        min=bottom[0] if bottom else None,
        min_abs=smallest,
        condition_number=condition,
        num_hvps=num_hvps,
        converged=extremes.converged and not nonfinite,
        seconds=seconds,
        method=method,
    )
