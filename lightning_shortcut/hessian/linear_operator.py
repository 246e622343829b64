"""Symmetric linear operators the eigensolvers work on, seen only through products ``A v``.

The solvers in :mod:`lightning_shortcut.hessian.solvers` never see a model: they take a
:class:`LinearOperator` (the Hessian of a loss is :class:`~lightning_shortcut.hessian.HessianOperator`),
so they are tested on plain matrices (:class:`MatrixOperator`) as well as on networks, and wrappers
such as :class:`ScaledOperator` (the step-preconditioned Hessian ``D^1/2 (H + s I) D^1/2``) reuse the
same solvers instead of a second engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "LambdaOperator",
    "LinearOperator",
    "MatrixOperator",
    "NonFiniteProductError",
    "ScaledOperator",
]


class NonFiniteProductError(ArithmeticError):
    """A product ``A v`` held NaN or inf (for a Hessian: a non-finite loss or gradient)."""


class LinearOperator:
    """A symmetric ``dim x dim`` operator, applied to flat vectors like :attr:`like`.

    Subclasses implement :meth:`_matvec`; calling the operator counts the product in
    :attr:`num_products`.

    Attributes:
        dim: the operator's size.
        like: an empty tensor of the dtype and device the solvers should use for their vectors.
        num_products: products computed so far.
    """

    def __init__(self, dim: int, like: Tensor) -> None:
        self.dim = dim
        self.like = like
        self.num_products = 0

    def _matvec(self, vector: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, vector: Tensor) -> Tensor:
        """``A @ vector`` for a flat vector of length :attr:`dim`."""
        self.num_products += 1
        return self._matvec(vector)


class MatrixOperator(LinearOperator):
    """A dense symmetric matrix (for tests and small problems)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"`matrix` must be square, got shape {tuple(matrix.shape)}.")
        super().__init__(matrix.shape[0], matrix.new_zeros(0))
        self.matrix = matrix

    def _matvec(self, vector: Tensor) -> Tensor:
        return self.matrix @ vector


class LambdaOperator(LinearOperator):
    """An operator given by a function ``v -> A v``."""

    def __init__(self, matvec: Callable[[Tensor], Tensor], dim: int, like: Tensor) -> None:
        super().__init__(dim, like)
        self.matvec = matvec

    def _matvec(self, vector: Tensor) -> Tensor:
        return self.matvec(vector)


class ScaledOperator(LinearOperator):
    """``S (A + shift I) S`` for a diagonal ``S = diag(scale)``: a symmetric preconditioning of ``A``.

    With ``scale = sqrt(d)`` its eigenvalues are those of ``diag(d) (A + shift I)``: the curvature as
    seen by an optimizer step of per-coordinate size ``d``. ``shift`` may be a float or a vector (a
    per-coordinate L2 term).
    """

    def __init__(self, base: LinearOperator, scale: Tensor, shift: Tensor | float = 0.0) -> None:
        if scale.shape != (base.dim,):
            raise ValueError(f"`scale` must have shape ({base.dim},), got {tuple(scale.shape)}.")
        super().__init__(base.dim, base.like)
        self.base = base
        self.scale = scale.to(base.like)
        self.shift = shift.to(base.like) if isinstance(shift, Tensor) else float(shift)

    def _matvec(self, vector: Tensor) -> Tensor:
        scaled = self.scale * vector
        return self.scale * (self.base(scaled) + self.shift * scaled)

    @property
    def num_hvps(self) -> int:
        """Products of the wrapped operator (for a Hessian: Hessian-vector products)."""
        return getattr(self.base, "num_hvps", self.base.num_products)


def check_finite(product: Tensor) -> Tensor:
    """Return ``product``, or raise :class:`NonFiniteProductError` if it holds NaN or inf."""
    if not bool(torch.isfinite(product).all()):
        raise NonFiniteProductError("a product held NaN or inf")
    return product
