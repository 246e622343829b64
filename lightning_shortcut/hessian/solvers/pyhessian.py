"""``method="pyhessian"``: pyhessian 0.1's power iteration, wrapped so it has no side effects.

pyhessian calls ``.backward``, ``model.eval()`` and the global RNG: it runs guarded, gradients
cloned, on a stand-in module whose output is our loss. The algebraic ends come from shifted losses
``L +- s/2 ||theta - theta_0||^2`` (``s = 1.1 max|lambda|``); the values are the Rayleigh quotients
of its vectors, and ``converged`` is judged by their residuals (one product each)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian.linear_operator import LinearOperator, check_finite
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.solvers.base import register_solver
from lightning_shortcut.hessian.tracking import WarmStart


class _ModelHessian(Protocol):
    """What the wrapper reads of a ``HessianOperator`` (not imported: it would be a cycle)."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], Tensor]
    batches: list[Any]
    sizes: list[int]
    params: list[Tensor]
    fixed_seed: int | None
    like: Tensor
    num_products: int


class _BatchRef:
    """What pyhessian takes for ``inputs``/``targets``: an index into the operator's batches."""

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self._size = size

    def size(self, dim: int = 0) -> int:
        return self._size

    def to(self, *args: object, **kwargs: object) -> _BatchRef:
        return self

    def cuda(self) -> _BatchRef:
        return self


class _LossModule(nn.Module):
    """A stand-in "model" out of reach of pyhessian's ``eval()``: its output is the (shifted) loss."""

    def __init__(self, operator: _ModelHessian, shift: float) -> None:
        super().__init__()
        self._holder = (operator,)
        self.shift = shift
        self._anchors = [p.detach().clone() for p in operator.params]
        self.forward_calls = 0

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return iter(self._holder[0].params)

    def forward(self, ref: _BatchRef) -> Tensor:
        operator = self._holder[0]
        self.forward_calls += 1
        if operator.fixed_seed is not None:
            torch.manual_seed(operator.fixed_seed + ref.index)
        loss = operator.loss_fn(operator.model, operator.batches[ref.index]).reshape(())
        if self.shift:
            penalty = sum(
                ((p - a) ** 2).sum() for p, a in zip(operator.params, self._anchors, strict=True)
            )
            loss = loss + 0.5 * self.shift * penalty
        return loss


@contextlib.contextmanager
def _counting_products(counter: list[int]) -> Iterator[None]:
    # `pyhessian/__init__` rebinds the name `pyhessian.hessian` to the class
    module = importlib.import_module("pyhessian.hessian")

    original = module.hessian_vector_product

    def counted(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        yield
    finally:
        module.hessian_vector_product = original


def _run_pyhessian(
    operator: _ModelHessian, shift: float, top_n: int, tol: float, max_iter: int
) -> tuple[list[float], list[list[Tensor]], int]:
    from pyhessian import hessian as PyHessian

    stand_in = _LossModule(operator, shift)
    refs = [(_BatchRef(i, n), _BatchRef(i, n)) for i, n in enumerate(operator.sizes)]
    cuda = operator.like.is_cuda
    for param in operator.params:
        param.grad = None  # pyhessian reads .grad after its backward; start clean
    counter = [0]
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(operator.like.dtype)  # pyhessian's start vectors take it
    try:
        with _counting_products(counter):
            source = {"data": refs[0]} if len(refs) == 1 else {"dataloader": refs}
            solver = PyHessian(stand_in, lambda out, _: out, cuda=cuda, **source)
            eigenvalues, eigenvectors = solver.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
    finally:
        torch.set_default_dtype(default_dtype)
        for param in operator.params:
            param.grad = None
    # one batch: pyhessian's product function, counted; several: one pass per product
    products = counter[0] if len(refs) == 1 else stand_in.forward_calls // len(refs)
    return [float(v) for v in eigenvalues], eigenvectors, products


@register_solver("pyhessian", touches_grads=True)
def pyhessian_power_iteration(
    operator: LinearOperator,
    *,
    generator: torch.Generator,
    top_k: int,
    bottom_k: int,
    min_abs: bool = False,
    tol: float,
    max_iter: int,
    start: WarmStart | None = None,
) -> HessianSpectrum:
    """pyhessian's solver on ``H +- s I`` (the module docstring); ``generator``, ``start`` unused."""
    if not all(hasattr(operator, name) for name in ("model", "loss_fn", "batches", "params")):
        raise TypeError(
            "method='pyhessian' needs a model's Hessian (a HessianOperator), got "
            f"{type(operator).__name__}; use method='lanczos' or 'power' for other operators."
        )
    dominant, _, total_products = _run_pyhessian(operator, 0.0, 1, tol, max_iter)
    rho = abs(dominant[0])
    check_finite(torch.tensor(rho))
    if rho == 0.0:
        operator.num_products += total_products
        return HessianSpectrum.zeros(top_k, bottom_k, min_abs=False)
    result = HessianSpectrum(scale=rho)
    for count, sign, values, errors in (
        (top_k, 1.0, result.top, result.top_errors),
        (bottom_k, -1.0, result.bottom, result.bottom_errors),
    ):
        if count == 0:
            continue
        _, vectors, products = _run_pyhessian(operator, sign * 1.1 * rho, count, tol, max_iter)
        total_products += products
        for vector in vectors:
            flat = torch.cat([v.reshape(-1) for v in vector]).to(operator.like).detach()
            flat = flat / flat.norm()
            product = check_finite(operator(flat))
            theta = float(flat @ product)
            residual = float((product - theta * flat).norm())
            values.append(theta)
            errors.append(residual)
            if residual > tol * rho:
                result.fail(f"pyhessian's vectors have residuals above tol={tol}")
    operator.num_products += total_products
    return result
