"""Closed forms for the Hessian at the zero initial point (Li et al., arXiv 1611.01186).

The derivation, and what ReLU's slope at 0 does to it, is in docs/study.md ("The derivation").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_shortcut.hessian._validation import check_positive_int
from lightning_shortcut.hessian.results import magnitude_ratio
from lightning_shortcut.residual import ActivationSpec, make_activation

__all__ = [
    "ZeroPointSpectrum",
    "activation_slope_at_zero",
    "depth_one_matvec",
    "half_mse_loss",
    "zero_point_hessian",
]


def half_mse_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """The theory's loss ``0.5 * mean_i ||f(x_i) - y_i||^2``: unlike ``nn.MSELoss``, a sum over
    features and a mean over samples."""
    diff = (outputs - targets).flatten(1) if outputs.ndim > 1 else (outputs - targets)[:, None]
    return 0.5 * diff.pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class ZeroPointSpectrum:
    """The predicted Hessian spectrum at the zero point.

    Attributes:
        eigenvalues: all eigenvalues with multiplicity, ascending (float64).
        condition_number: ``max|lambda| / min|lambda|``; ``inf`` where ``min|lambda| = 0`` and
            ``nan`` where the Hessian is zero.
        singular_values: ``sigma_i(C)`` of ``C = E[x (x - y)^T]``, descending.
    """

    eigenvalues: Tensor
    condition_number: float
    singular_values: Tensor

    @property
    def max_eigenvalue(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def min_eigenvalue(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def min_abs_eigenvalue(self) -> float:
        return float(self.eigenvalues.abs().min())


def activation_slope_at_zero(activation: ActivationSpec) -> float:
    """``s'(0)`` as PyTorch differentiates it (1.0 for no activation).

    Raises:
        ValueError: if ``s(0) != 0``: the zero point is then not a fixed point and the closed forms
            do not apply.
    """
    module = make_activation(activation)
    if module is None:
        return 1.0
    x = torch.zeros((), dtype=torch.float64, requires_grad=True)
    y = module(x)
    if abs(float(y.detach())) > 1e-12:
        raise ValueError(
            f"The closed forms need an activation with s(0) = 0; {activation!r} gives {float(y.detach())}."
        )
    (slope,) = torch.autograd.grad(y, x)
    return float(slope)


def _moments(inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` in float64 on the CPU, ``Sigma = E[x x^T]`` and ``C = E[x r^T]`` with ``r = x - y``."""
    x = inputs.detach().to(torch.float64).cpu()
    residual = x - targets.detach().to(torch.float64).cpu()
    return x, x.T @ x / len(x), x.T @ residual / len(x)


def zero_point_hessian(
    inputs: Tensor,
    targets: Tensor,
    *,
    shortcut_depth: int,
    num_units: int,
    activation: ActivationSpec = None,
) -> ZeroPointSpectrum:
    """Predicted spectrum of the Hessian over the residual weights at the zero point.

    The model is a bias-free linear :class:`~lightning_shortcut.ResidualStack` of width
    ``inputs.shape[1]`` (optionally a smooth activation between branch layers) on
    :func:`half_mse_loss`; the derivation is in docs/study.md.

    Args:
        inputs: ``(N, d)`` inputs.
        targets: ``(N, d)`` targets.
        shortcut_depth: the branch depth ``n``.
        num_units: the number of units ``K``.
        activation: the activation between branch layers (``None``, a name or a module).

    Returns:
        A :class:`ZeroPointSpectrum` with all ``K * n * d^2`` eigenvalues.

    Raises:
        ValueError: on inputs and targets of different or non-2D shapes, or bad ints.

    Example:
        ```python
        spectrum = zero_point_hessian(x, y, shortcut_depth=2, num_units=8)
        spectrum.condition_number  # sigma_max(C) / sigma_min(C), the same for every num_units
        ```
    """
    check_positive_int("shortcut_depth", shortcut_depth)
    check_positive_int("num_units", num_units)
    if inputs.ndim != 2 or inputs.shape != targets.shape or inputs.shape[0] == 0:
        raise ValueError(
            "`inputs` and `targets` must be non-empty (N, d) tensors of the same shape, got "
            f"{tuple(inputs.shape)} and {tuple(targets.shape)}."
        )
    x, _, cross = _moments(inputs, targets)
    width = x.shape[1]
    singular_values = torch.linalg.svdvals(cross)
    num_params = num_units * shortcut_depth * width * width
    if shortcut_depth >= 3:
        eigenvalues = torch.zeros(num_params, dtype=torch.float64)
    elif shortcut_depth == 2:
        slope = activation_slope_at_zero(activation)
        magnitudes = (abs(slope) * singular_values).repeat_interleave(num_units * width)
        eigenvalues = torch.sort(torch.cat([magnitudes, -magnitudes])).values
    else:
        matvec = depth_one_matvec(x, targets, num_units)  # its columns, exactly: v is one-hot
        hessian = torch.stack([matvec(column) for column in torch.eye(num_params).double()])
        eigenvalues = torch.linalg.eigvalsh(hessian)
    # nan for a zero spectrum, inf for a singular one: |lambda| within 1e-12 of the largest is 0
    top, bottom = float(eigenvalues.abs().max()), float(eigenvalues.abs().min())
    kappa = magnitude_ratio(top, bottom, atol=1e-12 * max(top, 1e-300))
    return ZeroPointSpectrum(eigenvalues, kappa, singular_values)


def depth_one_matvec(inputs: Tensor, targets: Tensor, num_units: int) -> Callable[[Tensor], Tensor]:
    """Products with the ``n = 1`` zero-point Hessian of :func:`zero_point_hessian` without
    building it (``O(K d^3)`` each; the formula is in docs/study.md)."""
    check_positive_int("num_units", num_units)
    x, second_moment, cross = _moments(inputs, targets)
    width = x.shape[1]

    def matvec(vector: Tensor) -> Tensor:
        blocks = vector.view(num_units, width, width)
        total = blocks.sum(dim=0)
        before = torch.cumsum(blocks, dim=0) - blocks  # sum over j < k
        after = total - before - blocks  # sum over j > k
        before_t, after_t = before.transpose(1, 2), after.transpose(1, 2)
        return (total @ second_moment + cross.T @ before_t + after_t @ cross.T).reshape(-1)

    return matvec
