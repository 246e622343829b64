"""Independent references for the tests: dense Hessians from ``torch.func.hessian``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian
from torch.nn.attention import SDPBackend, sdpa_kernel


def dense_hessian(
    model: nn.Module,
    loss: Callable[[nn.Module], Tensor],
    params: Sequence[Tensor] | None = None,
) -> Tensor:
    """The dense Hessian of ``loss(model)`` over ``params`` (default: all), as a square matrix."""
    named = dict(model.named_parameters())
    chosen = list(params) if params is not None else list(named.values())
    names = [next(k for k, v in named.items() if v is p) for p in chosen]
    values = tuple(p.detach() for p in chosen)

    def objective(*flat: Tensor) -> Tensor:
        class _Bound(nn.Module):
            def forward(self, *args, **kwargs):
                return functional_call(model, dict(zip(names, flat, strict=True)), args, kwargs)

        return loss(_Bound())

    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no forward AD
        blocks = hessian(objective, argnums=tuple(range(len(values))))(*values)
    sizes = [v.numel() for v in values]
    rows = [
        torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(values))], dim=1)
        for i in range(len(values))
    ]
    return torch.cat(rows, dim=0)


def dense_eigenvalues(model: nn.Module, loss, params=None) -> Tensor:
    """Ascending eigenvalues of :func:`dense_hessian`."""
    matrix = dense_hessian(model, loss, params)
    return torch.linalg.eigvalsh((matrix + matrix.T) / 2)


def finite_difference_eigenvalues(model: nn.Module, loss, eps: float = 1e-5) -> Tensor:
    """Ascending eigenvalues of the Hessian by central differences of autograd gradients (float64).

    Used where ``torch.func.hessian`` is wrong: on torch 2.14.1 it disagrees with finite
    differences by O(0.1) on models with ``nn.LayerNorm`` (a Transformer encoder layer), while
    gradients (first order, reverse mode) agree.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    origin = [p.detach().clone() for p in params]
    flat_origin = torch.cat([p.reshape(-1) for p in origin])

    def gradient(flat: Tensor) -> Tensor:
        with torch.no_grad():
            offset = 0
            for param in params:
                param.copy_(flat[offset : offset + param.numel()].view_as(param))
                offset += param.numel()
        grads = torch.autograd.grad(loss(model), params)
        return torch.cat([g.reshape(-1) for g in grads])

    size = flat_origin.numel()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for index in range(size):
        step = torch.zeros(size, dtype=flat_origin.dtype)
        step[index] = eps
        matrix[:, index] = (gradient(flat_origin + step) - gradient(flat_origin - step)) / (2 * eps)
    with torch.no_grad():
        for param, value in zip(params, origin, strict=True):
            param.copy_(value)
    return torch.linalg.eigvalsh((matrix + matrix.T) / 2)
