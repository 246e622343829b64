"""Vector helpers shared by the solvers, in an operator's space (its ``local_dim``, ``reduce`` and
``norm``: whole or sharded vectors alike): random starts, Gram-Schmidt against row bases."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator


class HostMemorySpace(LinearOperator):
    """The space of ``base`` with its vectors kept where ``home`` is (host memory): only products
    and inner products' sums over processes go to the device of ``base``."""

    def __init__(self, base: LinearOperator, home: Tensor) -> None:
        super().__init__(base.dim, home, base.local_dim)
        self.base = base
        self.pinned = base.like.is_cuda and home.device.type == "cpu"

    @property
    def sharded(self) -> bool:
        return self.base.sharded

    def _matvec(self, vector: Tensor) -> Tensor:
        product = self.base(vector.to(self.base.like, non_blocking=self.pinned))
        return product.to(self.like)

    def reduce(self, partial: Tensor) -> Tensor:
        if not self.base.sharded:
            return partial
        return self.base.reduce(partial.to(self.base.like)).to(partial)

    def norm(self, vector: Tensor) -> Tensor:
        if not self.base.sharded:
            return vector.norm()
        return self.reduce(torch.dot(vector, vector).reshape(1)).sqrt().reshape(())

    def random_vector(self, generator: torch.Generator) -> Tensor:
        return self.base.random_vector(generator).to(self.like)

    def free_graph(self) -> None:
        self.base.free_graph()

    def empty(self, rows: int) -> Tensor:
        """Uninitialized storage for ``rows`` vectors (pinned where the base is on a GPU)."""
        return self.like.new_empty(rows, self.local_dim, pin_memory=self.pinned)


def owned_product(product: Tensor, *held: Tensor) -> Tensor:
    """``product``, or a copy where it shares memory with ``held``: one safe to change in place."""
    pointer = product.untyped_storage().data_ptr()
    if any(pointer == tensor.untyped_storage().data_ptr() for tensor in held):
        return product.clone()
    return product


def stack_rows(vectors: Sequence[Tensor], space: LinearOperator) -> Tensor:
    """The vectors as the rows of a matrix (``0 x local_dim`` for none)."""
    return torch.stack(list(vectors)) if vectors else space.like.new_zeros(0, space.local_dim)


def orthogonalize(
    space: LinearOperator, vector: Tensor, *bases: Tensor, inplace: bool = False
) -> Tensor:
    """``vector`` minus its projection on bases with orthonormal rows (changed in place where
    ``inplace``): classical Gram-Schmidt done twice (Giraud et al. 2005)."""
    bases = tuple(basis for basis in bases if basis.shape[0] > 0)
    if not bases:
        return vector
    vector = vector if inplace else vector.clone()
    for _ in range(2):
        for basis in bases:
            vector.addmv_(basis.T, space.reduce(basis @ vector), alpha=-1)
    return vector


def orthonormal_rows(space: LinearOperator, vectors: Sequence[Tensor]) -> Tensor | None:
    """Orthonormal rows spanning the finite, non-zero ``vectors`` (``None`` if none), dropping one
    within ``1e-8`` of the span before it; decided on reduced norms, so all ranks decide alike."""
    rows: list[Tensor] = []
    for vector in vectors:
        vector = vector.to(space.like)
        norm = float(space.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            continue
        rest = orthogonalize(space, vector / norm, stack_rows(rows, space), inplace=True)
        remaining = float(space.norm(rest))
        if remaining > 1e-8:
            rows.append(rest / remaining)
    return torch.stack(rows) if rows else None


def projection_norm(space: LinearOperator, rows: Tensor, vector: Tensor) -> float:
    """The norm of ``vector``'s projection on orthonormal ``rows`` (inner products reduced)."""
    return float(space.reduce(rows @ vector.to(rows)).norm())


def random_unit_vector(
    space: LinearOperator, generator: torch.Generator, against: Tensor | None = None
) -> Tensor:
    """A Gaussian unit vector drawn on the CPU, orthogonal to the rows of ``against``."""
    vector = space.random_vector(generator)
    if against is not None:
        vector = orthogonalize(space, vector, against, inplace=True)
    return vector / space.norm(vector)


def start_vector(
    space: LinearOperator,
    generator: torch.Generator,
    against: Tensor,
    vectors: Sequence[Tensor] = (),
    weights: Sequence[float] = (),
    noise: float = 0.0,
) -> Tensor:
    """A unit start vector orthogonal to ``against``: random, or the sum of ``vectors`` (of norms
    ``weights``) plus a random one of weight ``noise`` (drawn either way: the generator alike)."""
    random = random_unit_vector(space, generator, against)
    if not vectors:
        return random
    like = space.like
    combined = sum(
        weight * v.to(like) / space.norm(v.to(like)).clamp_min(1e-300)
        for v, weight in zip(vectors, weights, strict=True)
    )
    combined = orthogonalize(space, combined, against, inplace=True)
    norm = space.norm(combined)
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return random
    mixed = combined / norm + noise * random
    mixed = orthogonalize(space, mixed, against, inplace=True)
    return mixed / space.norm(mixed)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run small dense algebra on one thread (multithreaded LAPACK is 10-100x slower there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
