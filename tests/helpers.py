"""Independent references for the tests: dense Hessians from ``torch.func.hessian``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian


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
