"""The Hessian batch's sampling error: the standard error of ``q = v^T H v`` at the returned
eigenvector over ``m`` chunks, ``stderr(q)^2 = m / (m - 1) * sum_c (n_c / n)^2 (q_c - q)^2`` as in
cluster sampling (the docs' engine page). The chunks' products are one ``torch.func.vmap`` pass
where possible, else one graph per chunk: the same numbers."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.utils._pytree import tree_map

from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.operator import HessianOperator

__all__ = ["STDERR_CHUNKS", "VMAP_MAX_ENTRIES", "rayleigh_stderr", "split_batch"]

#: Chunks the Hessian batch is split into (the standard error's own error is about 18%).
STDERR_CHUNKS = 16
#: The most entries ``chunks * parameters`` of the vmapped products' batched tensors.
VMAP_MAX_ENTRIES = 2**24


def _has_samples(leaf: Any, size: int) -> bool:
    return isinstance(leaf, Tensor) and leaf.ndim > 0 and len(leaf) == size


def split_batch(batch: Any, size: int, pieces: int) -> list[Any]:
    """Split the tensors of ``batch`` whose first dimension is ``size`` into ``pieces`` of nearly
    equal size; every other leaf is shared."""
    bounds = [round(index * size / pieces) for index in range(pieces + 1)]
    return [
        tree_map(
            lambda leaf, begin=begin, end=end: (
                leaf[begin:end] if _has_samples(leaf, size) else leaf
            ),
            batch,
        )
        for begin, end in itertools.pairwise(bounds)
        if end > begin
    ]


class _LossOf(nn.Module):
    """``loss_fn(model, batch)`` as a module, for :func:`torch.func.functional_call`."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def _chunk_counts(operator: HessianOperator, num_chunks: int) -> list[int]:
    """Chunks per batch: about ``num_chunks`` in all, by size."""
    total = sum(operator.sizes)
    return [max(1, min(size, round(num_chunks * size / total))) for size in operator.sizes]


def _vmapped_quotients(operator: HessianOperator, vectors: Sequence[Tensor], num_chunks: int):
    """``(quotients, sizes)`` by one vmapped pass per batch and vector, or ``None``."""
    counts = _chunk_counts(operator, num_chunks)
    uneven = any(size % count for size, count in zip(operator.sizes, counts, strict=True))
    if uneven or sum(counts) * operator.dim > VMAP_MAX_ENTRIES:
        return None
    wrapper = _LossOf(operator.model, operator.loss_fn)
    names = {id(param): f"model.{name}" for name, param in operator.model.named_parameters()}
    if any(id(param) not in names for param in operator.params):
        return None
    keys = [names[id(param)] for param in operator.params]
    primals = tuple(param.detach() for param in operator.params)
    tangents = [
        tuple(piece.to(param) for piece, param in zip(operator.unflatten(v), primals, strict=True))
        for v in vectors
    ]

    def loss(weights, chunk):
        return functional_call(
            wrapper, dict(zip(keys, weights, strict=True)), (chunk,), strict=False
        )

    def quotient(weights, tangent, chunk):
        _, product = jvp(lambda w: grad(loss)(w, chunk), (weights,), (tangent,))
        return sum((p * t).sum() for p, t in zip(product, tangent, strict=True))

    rows, sizes = [[] for _ in vectors], []
    try:
        with warnings.catch_warnings():
            # torch.func's first use scripts a helper: its deprecation warning is not the user's
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            for batch, size, count in zip(operator.batches, operator.sizes, counts, strict=True):
                chunks = tree_map(
                    lambda leaf, size=size, count=count: (
                        leaf.reshape(count, size // count, *leaf.shape[1:])
                        if _has_samples(leaf, size)
                        else leaf
                    ),
                    batch,
                )
                dims = tree_map(
                    lambda leaf, size=size: 0 if _has_samples(leaf, size) else None, batch
                )
                batched = vmap(quotient, in_dims=(None, None, dims))
                for row, tangent in zip(rows, tangents, strict=True):
                    row.extend(batched(primals, tangent, chunks).tolist())
                sizes.extend([size // count] * count)
    except torch.OutOfMemoryError:
        raise  # the caller's to see
    except RuntimeError as error:  # what torch.func cannot vmap (.item(), data-dependent flow)
        warnings.warn(
            f"The sampling error's chunks could not be vmapped ({type(error).__name__}: "
            f"{str(error)[:100]}...); their products are taken chunk by chunk (slower, the same "
            "values).",
            UserWarning,
            stacklevel=2,
        )
        return None
    return rows, sizes


def _chunk_quotients(operator: HessianOperator, vectors: Sequence[Tensor], num_chunks: int):
    """``(quotients, sizes)``: each vector's ``q_c`` by a Hessian-vector product on each chunk."""
    vmapped = _vmapped_quotients(operator, vectors, num_chunks)
    if vmapped is not None:
        return vmapped
    rows, sizes = [[] for _ in vectors], []
    counts = _chunk_counts(operator, num_chunks)
    chunks = zip(operator.batches, operator.sizes, counts, strict=True)
    for batch in (chunk for args in chunks for chunk in split_batch(*args)):
        chunk = operator.on_batches([batch])  # this rank's chunk: its quotients are summed below
        try:
            for index, vector in enumerate(vectors):
                rows[index].append(float(torch.dot(vector, chunk(vector).to(vector))))
        finally:
            chunk.free_graph()
        sizes.append(chunk.sizes[0])
    return rows, sizes


def rayleigh_stderr(
    operator: HessianOperator, vectors: Sequence[Tensor], num_chunks: int = STDERR_CHUNKS
) -> list[float]:
    """The standard error of ``v^T H v`` over the batch of ``operator`` (every rank's chunks under
    its ``all_reduce``) for each unit vector ``v``, this rank's share split into ``num_chunks``;
    ``nan`` for fewer than two chunks in all or a quotient that is not finite."""
    if not vectors:
        return []
    rows, sizes = _chunk_quotients(operator, vectors, num_chunks)
    moments = torch.zeros(len(vectors), 5, dtype=torch.float64)
    for index, quotients in enumerate(rows):
        for size, quotient in zip(sizes, quotients, strict=True):
            # sums of n q, n, n^2 q^2, n^2 q, n^2: the weighted spread after a sum over ranks
            moments[index] += torch.tensor(
                [size * quotient, size, size**2 * quotient**2, size**2 * quotient, size**2],
                dtype=torch.float64,
            )
    packed = torch.cat([moments.flatten(), moments.new_tensor([float(len(sizes))])])
    all_reduce = operator.settings.all_reduce
    if all_reduce is not None:
        packed = all_reduce(packed.to(operator.like.device)).double().cpu()
    moments, count = packed[:-1].view(len(vectors), 5), float(packed[-1])
    return [_stderr(row, count) for row in moments.tolist()]


def _stderr(row: Sequence[float], count: float) -> float:
    weighted, total, squares, cross, weights = row
    if count < 2 or not all(math.isfinite(value) for value in row) or total == 0:
        return math.nan
    mean = weighted / total
    spread = squares - 2 * mean * cross + mean**2 * weights  # sum n_c^2 (q_c - q)^2
    return math.sqrt(max(spread, 0.0) * count / (count - 1)) / total
