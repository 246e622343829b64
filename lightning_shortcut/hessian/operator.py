"""Hessian-vector products of a model's mean loss over one or several batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian.batches import (
    LossFn,
    batch_size,
    cross_entropy_loss,
    detach_inference,
)
from lightning_shortcut.hessian.linear_operator import LinearOperator
from lightning_shortcut.hessian.params import resolve_params
from lightning_shortcut.hessian.settings import HessianSettings

# re-exported for the callbacks
__all__ = [
    "HessianOperator",
    "HessianView",
    "LossFn",
    "batch_size",
    "cross_entropy_loss",
    "resolve_params",
]


class HessianOperator(LinearOperator):
    """Products ``H v`` with the Hessian of the size-weighted mean loss over ``batches``,
    ``H = sum_b n_b H_b / sum_b n_b``: double backwards (or, with ``hvp="finite_difference"``,
    central differences of gradients), a single batch's first-order graph built once and kept until
    :meth:`free_graph`. It needs gradients enabled and, for attention, the math SDPA backend
    (``hessian_eigenvalues`` arranges both).

    Args:
        model: the model.
        batches: the batches (see :func:`~lightning_shortcut.hessian.batches.normalize_batches`).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of the batch.
        params: the parameters the Hessian is taken over (resolved: tensors of ``model``).
        settings: the :class:`~lightning_shortcut.hessian.HessianSettings` whose ``hvp``,
            ``all_reduce`` and, in train mode, ``seed`` (``seed + b`` before batch ``b``'s forward:
            the same dropout masks in every product) the products follow.
        keep_graphs: keep every batch's first-order graph (for views measured in turn).

    Attributes:
        hvp_error: with ``hvp="finite_difference"``, the estimated relative error of a product
            (``None`` before the first product and with ``hvp="autograd"``).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Any],
        loss_fn: LossFn,
        params: Sequence[Tensor],
        settings: HessianSettings | None = None,
        *,
        keep_graphs: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else HessianSettings()
        self.model = model
        self.hvp_error: float | None = None
        self.batches = [detach_inference(batch) for batch in batches]
        self.sizes = [batch_size(batch) for batch in self.batches]
        self.loss_fn = loss_fn
        self.params = list(params)
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        first = self.params[0]
        # the solvers' vectors of half-precision parameters stay in float32 (orthogonality)
        dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32
        super().__init__(sum(self.numels), torch.zeros(0, dtype=dtype, device=first.device))
        self.nonfinite = False
        self.keep_graphs = keep_graphs or len(self.batches) == 1
        self._graphs: dict[int, list[Tensor | None]] = {}
        self._weights: list[Tensor] | None = None  # finite differences: the values to restore

    @property
    def fixed_seed(self) -> int | None:
        """``settings.fixed_seed``: the seed of batch 0's forward in train mode, else ``None``."""
        return self.settings.fixed_seed

    def on_batches(self, batches: Sequence[Any]) -> HessianOperator:
        """The same Hessian over other batches of this process alone (no sum across processes)."""
        local = replace(self.settings, all_reduce=None)
        return HessianOperator(self.model, batches, self.loss_fn, self.params, local)

    def view(self, params: Sequence[Tensor]) -> HessianView:
        """The diagonal block ``H_SS`` over ``params`` (some of :attr:`params`), its products
        taken through this operator.

        Raises:
            ValueError: on a parameter not of this operator, or products that are not double
                backwards on whole vectors.
        """
        if self.sharded or self.settings.hvp != "autograd":
            raise ValueError(
                "A view takes its products by double backward on whole vectors; got "
                f"hvp={self.settings.hvp!r}, sharded={self.sharded}."
            )
        index = {id(param): i for i, param in enumerate(self.params)}
        missing = [i for i, param in enumerate(params) if id(param) not in index]
        if missing:
            raise ValueError(f"`params[{missing[0]}]` is not a parameter of the operator.")
        return HessianView(self, sorted(index[id(param)] for param in params))

    def _gradients(self, index: int, create_graph: bool = True) -> list[Tensor | None]:
        if self.fixed_seed is not None:
            torch.manual_seed(self.fixed_seed + index)
        loss = self.loss_fn(self.model, self.batches[index])
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"`loss_fn` must return a scalar tensor, got {shape}.")
        loss = loss.reshape(())
        if not torch.isfinite(loss.detach()):
            self.nonfinite = True
        if not loss.requires_grad:
            return [None] * len(self.params)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        if not create_graph:
            return list(grads)
        return [g if g is not None and g.requires_grad else None for g in grads]

    def _gradient_sum(self) -> Tensor:
        """``sum_b n_b g_b`` over this process's batches, flat (first derivatives only)."""
        total = self.like.new_zeros(self.dim)
        for index, size in enumerate(self.sizes):
            grads = self._gradients(index, create_graph=False)
            for piece, grad in zip(torch.split(total, self.numels), grads, strict=True):
                if grad is not None:
                    piece.add_(grad.reshape(-1).to(piece), alpha=size)
        return total

    def gradient(self) -> Tensor:
        """The flat gradient of the mean loss over every process's samples (NaN if not finite)."""
        return self._mean(self._gradient_sum())

    @torch.no_grad()
    def _set_weights(self, vector: Tensor, step: float) -> None:
        """``w + step * vector`` from the kept ``w`` (``step=0``: ``w`` bit for bit)."""
        chunks = torch.split(vector, self.numels)
        for param, saved, chunk in zip(self.params, self._weights, chunks, strict=True):
            param.copy_(saved + step * chunk.view(param.shape).to(saved) if step else saved)

    def _difference(self, vector: Tensor, scale: float) -> Tensor:
        if self._weights is None:
            self._weights = [param.detach().clone() for param in self.params]
        weights = math.sqrt(sum(float(w.double().square().sum()) for w in self._weights))
        norm = float(vector.double().norm())
        eps = torch.finfo(self.params[0].dtype).eps
        step = scale * (eps ** (1 / 3) * (1 + weights) / max(norm, 1e-300))
        try:
            self._set_weights(vector, step)
            plus = self._gradient_sum()
            self._set_weights(vector, -step)
            minus = self._gradient_sum()
        finally:
            self._set_weights(vector, 0.0)
        return plus.sub_(minus).div_(2 * step)

    def _product(
        self,
        grads: list[Tensor | None],
        vector: Tensor,
        indices: list[int],
        into: Tensor | None,
        size: float,
    ) -> Tensor:
        """``into`` (or zeros) plus ``size`` times one batch's ``H_SS v``, added piece by piece."""
        chunks = torch.split(vector, [self.numels[i] for i in indices])
        used = [
            (i, chunk) for i, chunk in zip(indices, chunks, strict=True) if grads[i] is not None
        ]
        result = torch.zeros_like(vector) if into is None else into
        if not used:
            return result
        products = torch.autograd.grad(
            [grads[i] for i, _ in used],
            [self.params[i] for i in indices],
            grad_outputs=[chunk.view(self.shapes[i]).to(grads[i]) for i, chunk in used],
            retain_graph=self.keep_graphs,
            allow_unused=True,
        )
        pieces = list(products)
        del products  # each piece is freed once added
        for position, piece in enumerate(torch.split(result, [self.numels[i] for i in indices])):
            if pieces[position] is not None:
                piece.add_(pieces[position].reshape(-1).to(piece), alpha=size)
                pieces[position] = None
        return result

    def _local_sum(
        self, vector: Tensor, indices: list[int], scale: float = 1.0, into: Tensor | None = None
    ) -> Tensor:
        """``into`` (or a new vector) plus ``sum_b n_b H_b vector`` over this process's batches."""
        if self.settings.hvp == "finite_difference":
            return self._difference(vector, scale)
        total = into
        for index, size in enumerate(self.sizes):
            grads = self._graphs.get(index) or self._gradients(index)
            if self.keep_graphs:  # every batch's graph kept: built once
                self._graphs[index] = grads
            total = self._product(grads, vector, indices, total, size)
        return total

    def _sum_over_processes(
        self, total: Tensor, count: float, nonfinite: bool
    ) -> tuple[Tensor, float, bool]:
        all_reduce = self.settings.all_reduce
        if all_reduce is None:
            return total, count, nonfinite
        packed = all_reduce(torch.cat([total, total.new_tensor([count, float(nonfinite)])]))
        return packed[:-2], float(packed[-2]), bool(packed[-1] > 0)

    def _mean(self, total: Tensor) -> Tensor:
        """The mean over every process's samples of ``sum_b n_b x_b`` (NaN if not finite)."""
        total, count, self.nonfinite = self._sum_over_processes(
            total, float(sum(self.sizes)), self.nonfinite
        )
        return torch.full_like(total, math.nan) if self.nonfinite else total.div_(count)

    def _gather(self, vector: Tensor) -> Tensor:
        return vector

    def product(self, vector: Tensor, indices: list[int]) -> Tensor:
        """``H_SS vector`` for the parameters ``indices`` (``S``; all of them: ``H vector``)."""
        whole = self._gather(vector)
        product = self._mean(self._local_sum(whole, indices))
        if self.settings.hvp == "finite_difference" and self.hvp_error is None:
            wider = self._mean(self._local_sum(whole, indices, scale=2.0))  # the step 2e
            norm = float(self.norm(product))
            self.hvp_error = float(self.norm(wider - product)) / norm if norm > 0 else 0.0
        return product

    def _matvec(self, vector: Tensor) -> Tensor:
        return self.product(vector, list(range(len(self.params))))

    def add_product(self, vector: Tensor, out: Tensor) -> Tensor:
        """``out + H vector`` formed in ``out``'s memory, the products added as they come: no
        vector more than ``out`` where no all-reduce or finite difference needs the product whole."""
        needed_whole = self.settings.all_reduce is not None or self.settings.hvp != "autograd"
        if type(self) is not HessianOperator or needed_whole:
            return super().add_product(vector, out)
        self.num_products += 1
        out.mul_(float(sum(self.sizes)))  # the mean divides it again
        return self._mean(self._local_sum(vector, list(range(len(self.params))), into=out))

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped like :attr:`params`."""
        return [
            c.view(s) for c, s in zip(torch.split(vector, self.numels), self.shapes, strict=True)
        ]

    def free_graph(self) -> None:
        """Drop the kept first-order graphs and finite-difference weights (rebuilt if needed)."""
        self._graphs = {}
        self._weights = None


class HessianView(LinearOperator):
    """The diagonal block ``H_SS`` of a :class:`HessianOperator` (:meth:`HessianOperator.view`).

    Attributes:
        operator: the operator it is a view of.
        indices: the positions of its parameters among the operator's.
    """

    def __init__(self, operator: HessianOperator, indices: list[int]) -> None:
        super().__init__(sum(operator.numels[i] for i in indices), operator.like)
        self.operator = operator
        self.indices = indices

    def _matvec(self, vector: Tensor) -> Tensor:
        return self.operator.product(vector, self.indices)
