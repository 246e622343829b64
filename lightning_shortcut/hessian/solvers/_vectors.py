"""Vector helpers shared by the solvers: random starts, Gram-Schmidt against row bases.

Every helper works in the space of an operator (:class:`~lightning_shortcut.hessian.LinearOperator`):
vectors of its ``local_dim``, inner products and norms through its ``reduce`` and ``norm``, so the
same code runs on whole vectors and on vectors sharded over processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator


class HostMemorySpace(LinearOperator):
    """The space of ``base`` with its vectors kept in host memory (``home``): a solver working in it
    holds its basis there, and only the vector of each product and the product itself go to the
    device of ``base`` (the products' graph and temporaries stay there).

    Inner products are reduced where ``base`` reduces them (on its device: a process group of
    accelerators takes no host tensors); norms are the square roots of reduced squared norms.

    Args:
        base: the operator, its vectors on an accelerator.
        home: an empty tensor of the dtype and device the vectors are kept in (the CPU).
    """

    def __init__(self, base: LinearOperator, home: Tensor) -> None:
        super().__init__(base.dim, home, base.local_dim)
        self.base = base
        #: whether host buffers should be page-locked (faster copies to and from a CUDA device)
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
        """Uninitialized storage for ``rows`` vectors, page-locked where copies go to CUDA."""
        return torch.empty(
            rows,
            self.local_dim,
            dtype=self.like.dtype,
            device=self.like.device,
            pin_memory=self.pinned,
        )


def owned_product(product: Tensor, *held: Tensor) -> Tensor:
    """A product the solver may change in place: ``product`` itself, or a copy where it shares
    memory with a tensor the solver holds (an operator that returned its argument, or a view)."""
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
    """``vector`` minus its projection on bases with orthonormal rows: a new vector, or ``vector``
    itself changed where ``inplace`` (no second vector is held).

    Classical Gram-Schmidt done twice ("twice is enough", Giraud et al. 2005).
    """
    bases = tuple(basis for basis in bases if basis.shape[0] > 0)
    if not bases:
        return vector
    vector = vector if inplace else vector.clone()
    for _ in range(2):
        for basis in bases:
            vector.addmv_(basis.T, space.reduce(basis @ vector), alpha=-1)
    return vector


def orthonormal_rows(space: LinearOperator, vectors: Sequence[Tensor]) -> Tensor | None:
    """Orthonormal rows spanning the finite, non-zero ``vectors`` (``None`` if none).

    Gram-Schmidt done twice, in the operator's space: on sharded vectors every decision (finite,
    non-zero, independent) is taken on reduced norms, so all ranks take it alike (a decision on a
    rank's own part could differ between ranks and leave them waiting in different collectives).
    A vector within ``1e-8`` (relative) of the span of those before it is dropped.
    """
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
    """A Gaussian unit vector drawn on the CPU (device-independent), orthogonal to ``against``'s rows."""
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
    """A unit start vector orthogonal to ``against``: random, or the sum of ``vectors`` (each scaled
    to norm ``weights[i]``) plus a random unit vector of weight ``noise`` (a warm start:
    :class:`~lightning_shortcut.hessian.tracking.RunStart`). The random vector is drawn either way,
    so that a warm and a cold start use the generator alike."""
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
    """Run the small dense algebra (``eigh`` and ``svd`` of a matrix of the basis' size) on one
    thread: multithreaded LAPACK on such matrices is 10-100 times slower, far more on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
