r"""Closed forms for the Hessian at the zero initial point (Li et al., arXiv 1611.01186).

The model is a :class:`~lightning_shortcut.ResidualStack` of ``K = num_units`` linear units of width
``d`` without biases, ``f(x) = (I + B_K) ... (I + B_1) x`` with ``B_k = W_{k,n} s(... s(W_{k,1} x))``
where ``s`` is the optional activation between the branch's layers, on the loss

.. math:: L = \frac{1}{2N} \sum_i \lVert f(x_i) - y_i \rVert^2 .

At the zero point (every branch weight zero) ``f(x) = x``; write ``r = x - y`` for the residual and
``C = E[x r^T]`` (``d x d``), ``\Sigma = E[x x^T]``. Expand ``L`` to second order in a perturbation
``\delta`` of the branch weights: ``\delta^T H \delta / 2`` collects every second-order term.

* ``n >= 3``: each branch output is a product of at least three perturbed layers (the activation
  keeps ``s(0) = 0``), so ``f`` moves only at third order: gradient and Hessian are exactly zero.
* ``n = 2``: ``f`` moves at second order only, by ``s'(0) \sum_k dW_{k,2} dW_{k,1} x``, so the
  Gauss-Newton term vanishes and ``\delta^T H \delta = 2 s'(0) \sum_k tr(dW_{k,2} dW_{k,1} C)``.
  Each unit is a block ``[[0, M], [M^T, 0]]`` with no coupling between units; the bilinear form
  ``tr(A B C)`` has singular values ``\sigma_i(C)``, each ``d`` times. So the eigenvalues are
  ``\pm s'(0) \sigma_i(C)``, each ``K d`` times, and the condition number
  ``\sigma_{max}(C) / \sigma_{min}(C)`` does not depend on the depth ``K``.
* ``n = 1``: ``f`` moves at first order by ``\sum_k dW_k x`` and at second order by
  ``\sum_{j<k} dW_k dW_j x`` (unit ``j`` acts before unit ``k``), so
  ``\delta^T H \delta = E\lVert\sum_k dW_k x\rVert^2 + 2 \sum_{j<k} E[r^T dW_k dW_j x]``. With
  row-major ``vec(W)``, block ``(j, k)`` of ``H`` is ``I_d \otimes \Sigma`` plus, for ``k > j``,
  ``R[(a, b), (b', c)] = \delta_{b b'} C_{c a}`` (and ``R^T`` for ``k < j``). The matrix is built
  explicitly (``K d^2`` square); its smallest singular value shrinks as ``K`` grows.

Activations: the formulas hold for a smooth activation with ``s(0) = 0`` (``tanh``: ``s'(0) = 1``).
ReLU is not differentiable at 0; PyTorch takes its derivative there to be 0, so at the *exact* zero
point a ReLU branch with ``n = 2`` has a zero Hessian in PyTorch (what this function returns, since it
uses the slope PyTorch computes). The practical form of the paper's initialization for ReLU networks
is small weights, ``ZeroInit(scale > 0)``.
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
    """The theory's loss ``0.5 * mean_i ||f(x_i) - y_i||^2`` (sum over features, mean over samples).

    Unlike ``nn.MSELoss`` it does not average over features.
    """
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

    See the module docstring for the derivation. The model is a bias-free linear
    :class:`~lightning_shortcut.ResidualStack` of width ``inputs.shape[1]`` (optionally with a smooth
    activation between branch layers) on :func:`half_mse_loss`.

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
    """Products with the ``n = 1`` zero-point Hessian without building it (``O(K d^3)`` each).

    With ``V_k`` the ``d x d`` blocks of ``v`` (row-major, as ``nn.Linear`` weights), block ``k`` of
    ``H v`` is ``(sum_j V_j) Sigma + C^T (sum_{j<k} V_j)^T + (sum_{j>k} V_j)^T C^T``: the same
    matrix as :func:`zero_point_hessian` builds, for depths where that is too large to build (its
    extreme eigenvalues then come cheaply from Lanczos; the smallest |eigenvalue| does not, which is
    the ill-conditioning the paper describes).
    """
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
