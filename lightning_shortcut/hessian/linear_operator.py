"""Symmetric linear operators the eigensolvers work on, seen only through products ``A v``: the
solvers never see a model, so they run alike on matrices, Hessians and wrappers of them."""

from __future__ import annotations

import math
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

    Subclasses implement :meth:`_matvec`; calling the operator counts the product. Inner products
    and norms go through :meth:`reduce` and :meth:`norm`, which sum over processes when sharded.

    Attributes:
        dim: the operator's size.
        like: an empty tensor of the dtype and device the solvers should use for their vectors.
        local_dim: the length of the vectors this process holds (``dim`` unless sharded).
        num_products: products computed so far.
    """

    def __init__(self, dim: int, like: Tensor, local_dim: int | None = None) -> None:
        self.dim = dim
        self.like = like
        self.local_dim = dim if local_dim is None else local_dim
        self.num_products = 0

    @property
    def sharded(self) -> bool:
        """Whether the vectors are sharded over processes."""
        return False

    def _matvec(self, vector: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, vector: Tensor) -> Tensor:
        """``A @ vector`` for a flat vector of length :attr:`local_dim`."""
        self.num_products += 1
        return self._matvec(vector)

    def add_product(self, vector: Tensor, out: Tensor) -> Tensor:
        """``out + A @ vector``, written into ``out`` (an operator that forms its product there
        holds one vector less)."""
        return out.add_(self(vector))

    def free_graph(self) -> None:
        """Free what products keep between calls (a Hessian's first-order graph); nothing here."""

    def reduce(self, partial: Tensor) -> Tensor:
        """Partial inner products summed over the processes (the identity for whole vectors)."""
        return partial

    def norm(self, vector: Tensor) -> Tensor:
        """The Euclidean norm of a vector of the operator's space (a 0-dim tensor)."""
        return vector.norm()

    def random_vector(self, generator: torch.Generator) -> Tensor:
        """A standard Gaussian vector drawn on the CPU in float64, as :attr:`like` (when sharded,
        this process's part)."""
        return torch.randn(self.dim, generator=generator, dtype=torch.float64).to(self.like)

    def empty(self, rows: int) -> Tensor:
        """Uninitialized storage for ``rows`` vectors of the operator's space (rows of a matrix)."""
        return self.like.new_empty(rows, self.local_dim)


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
    """``S (A + shift I) S`` for ``S = diag(scale)`` (``shift`` a float or a vector): with
    ``scale = sqrt(d)``, the eigenvalues of ``diag(d) (A + shift I)``."""

    def __init__(self, base: LinearOperator, scale: Tensor, shift: Tensor | float = 0.0) -> None:
        if scale.shape != (base.local_dim,):
            raise ValueError(
                f"`scale` must have shape ({base.local_dim},), got {tuple(scale.shape)}."
            )
        super().__init__(base.dim, base.like, base.local_dim)
        self.base = base
        self.scale = scale.to(base.like)
        self.shift = shift.to(base.like) if isinstance(shift, Tensor) else float(shift)

    @property
    def sharded(self) -> bool:
        return self.base.sharded

    def _matvec(self, vector: Tensor) -> Tensor:
        scaled = self.scale * vector
        return self.scale * (self.base(scaled) + self.shift * scaled)

    def free_graph(self) -> None:
        self.base.free_graph()

    def reduce(self, partial: Tensor) -> Tensor:
        return self.base.reduce(partial)

    def norm(self, vector: Tensor) -> Tensor:
        return self.base.norm(vector)

    def random_vector(self, generator: torch.Generator) -> Tensor:
        return self.base.random_vector(generator)


def check_finite(product: Tensor) -> Tensor:
    """Return ``product``, or raise :class:`NonFiniteProductError` if it holds NaN or inf."""
    # the extremes are NaN or infinite where any entry is: no product-sized temporary
    if product.numel() and not all(map(math.isfinite, map(float, torch.aminmax(product)))):
        raise NonFiniteProductError("a product held NaN or inf")
    return product
