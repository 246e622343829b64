"""Symmetric linear operators the eigensolvers work on, seen only through products ``A v``.

The solvers in :mod:`lightning_shortcut.hessian.solvers` never see a model: they take a
:class:`LinearOperator` (the Hessian of a loss is :class:`~lightning_shortcut.hessian.HessianOperator`),
so they are tested on plain matrices (:class:`MatrixOperator`) as well as on networks, and wrappers
such as :class:`ScaledOperator` (the step-preconditioned Hessian ``D^1/2 (H + s I) D^1/2``) reuse the
same solvers instead of a second engine.
"""

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

    Subclasses implement :meth:`_matvec`; calling the operator counts the product in
    :attr:`num_products`.

    The solvers hold vectors of length :attr:`local_dim` and compute inner products and norms
    through :meth:`reduce`, :meth:`norm` and :meth:`random_vector`. Here each process holds whole
    vectors (``local_dim == dim``, :meth:`reduce` is the identity); an operator whose vectors are
    sharded over processes (:class:`~lightning_shortcut.hessian.sharded.FullyShardedHessianOperator`)
    gives each process its shard and sums the partial inner products over the processes, so a
    solver's memory per process falls with their number.

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
        """Whether the vectors are sharded over processes (:meth:`reduce` is not the identity)."""
        return False

    def _matvec(self, vector: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, vector: Tensor) -> Tensor:
        """``A @ vector`` for a flat vector of length :attr:`local_dim`."""
        self.num_products += 1
        return self._matvec(vector)

    def free_graph(self) -> None:
        """Free what products keep from one call to the next (a Hessian's first-order graph), once
        a solver has taken its last product; a later product builds it again. Nothing here."""

    def reduce(self, partial: Tensor) -> Tensor:
        """Inner products from this process's parts of the vectors (``basis @ vector``): their sum
        over the processes that hold the other parts. The identity for whole vectors."""
        return partial

    def norm(self, vector: Tensor) -> Tensor:
        """The Euclidean norm of a vector of the operator's space (a 0-dim tensor)."""
        return vector.norm()

    def random_vector(self, generator: torch.Generator) -> Tensor:
        """A standard Gaussian vector, drawn on the CPU in float64 (device-independent), in the
        dtype and on the device of :attr:`like`; when sharded, this process's part of it."""
        return torch.randn(self.dim, generator=generator, dtype=torch.float64).to(self.like)


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
    # the extremes are NaN where any entry is, infinite where any is: no product-sized temporary
    if product.numel() and not all(map(math.isfinite, map(float, torch.aminmax(product)))):
        raise NonFiniteProductError("a product held NaN or inf")
    return product
