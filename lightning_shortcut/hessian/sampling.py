"""The Hessian batch's sampling error: how much an eigenvalue owes to the choice of samples.

Every measurement takes the Hessian of the mean loss over a fixed sample of the data (the *Hessian
batch*). A different sample of the same size gives a different Hessian, and a different
``lambda_max``. :func:`rayleigh_stderr` estimates that spread at the returned eigenvector ``v``: the
Hessian batch's ``n`` samples are split into ``m`` chunks, each chunk's Rayleigh quotient
``q_c = v^T H_c v`` is computed (``H_c`` the Hessian of the chunk's mean loss), and the standard
error of the full batch's ``q = sum_c n_c q_c / n`` follows from their spread, as in cluster sampling:

    stderr(q)^2 = m / (m - 1) * sum_c (n_c / n)^2 (q_c - q)^2

(``std(q_c) / sqrt(m)`` for equal chunks). By the envelope theorem, ``lambda_max`` of a resampled
batch moves to first order as ``v^T H v`` does at the fixed ``v``, so this is the standard error of
the reported eigenvalue over Hessian batches of the same size drawn from the same data (the
selection bias of a maximum, which makes ``lambda_max`` of a small batch too large on average, is
not included). It needs a loss that is a mean over samples: in ``mode="eval"`` every standard loss
is; BatchNorm in train mode couples the samples of a batch, and the callers do not report it there.
Cost: each chunk builds its own first-order graph and takes one Hessian-vector product per vector,
so the estimate costs a gradient and a product on the whole batch per vector, plus the overhead of
``m`` small passes instead of one large one (on a 16-unit MLP on 256 samples, about 25 products'
time; on larger models and batches, less). Computing the chunks' quotients by forward-mode
derivatives, vmapped over the chunks, gives the same values and was slower still here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from lightning_shortcut.hessian.operator import HessianOperator

__all__ = ["STDERR_CHUNKS", "rayleigh_stderr", "split_batch"]

#: Chunks the Hessian batch is split into: the standard error's own relative error is about
#: ``1 / sqrt(2 (m - 1))``, 18% for 16 chunks.
STDERR_CHUNKS = 16


def split_batch(batch: Any, size: int, pieces: int) -> list[Any]:
    """Split a batch into ``pieces`` batches of nearly equal size along the sample dimension.

    Tensors whose first dimension is ``size`` are split; every other leaf is shared.
    """
    bounds = [round(index * size / pieces) for index in range(pieces + 1)]
    return [
        tree_map(
            lambda leaf, begin=begin, end=end: (
                leaf[begin:end]
                if isinstance(leaf, Tensor) and leaf.ndim and len(leaf) == size
                else leaf
            ),
            batch,
        )
        for begin, end in itertools.pairwise(bounds)
        if end > begin
    ]


def _chunks(operator: HessianOperator, num_chunks: int) -> list[Any]:
    """The operator's batches split into about ``num_chunks`` chunks in all, by size."""
    total = sum(operator.sizes)
    return [
        chunk
        for batch, size in zip(operator.batches, operator.sizes, strict=True)
        for chunk in split_batch(batch, size, max(1, min(size, round(num_chunks * size / total))))
    ]


def _chunk_quotients(operator: HessianOperator, vectors: Sequence[Tensor], num_chunks: int):
    """``(quotients, sizes)``: each vector's ``q_c`` by a Hessian-vector product on each chunk."""
    rows, sizes = [[] for _ in vectors], []
    for batch in _chunks(operator, num_chunks):
        chunk = HessianOperator(
            operator.model,
            [batch],
            operator.loss_fn,
            operator.params,
            None,
            operator.fixed_seed,
            operator.hvp,
        )
        try:
            for index, vector in enumerate(vectors):
                rows[index].append(float(torch.dot(vector, chunk(vector).to(vector))))
        finally:
            chunk.release()
        sizes.append(chunk.sizes[0])
    return rows, sizes


def rayleigh_stderr(
    operator: HessianOperator, vectors: Sequence[Tensor], num_chunks: int = STDERR_CHUNKS
) -> list[float]:
    """The standard error of ``v^T H v`` over the Hessian batch, for each unit vector ``v``.

    Args:
        operator: the Hessian operator of the measurement (its batches, loss, parameters and, under
            DDP, its ``all_reduce``: the chunks of every rank count).
        vectors: flat unit vectors, such as the returned eigenvectors.
        num_chunks: chunks to split this rank's share of the batch into.

    Returns:
        One standard error per vector; ``nan`` where there are fewer than two chunks (over all
        ranks) or a chunk's quotient is not finite.
    """
    if not vectors:
        return []
    rows, sizes = _chunk_quotients(operator, vectors, num_chunks)
    moments = torch.zeros(len(vectors), 5, dtype=torch.float64)
    for index, quotients in enumerate(rows):
        for size, quotient in zip(sizes, quotients, strict=True):
            # sums of n q, n, n^2 q^2, n^2 q, n^2: enough for the weighted spread after a sum
            # over ranks
            moments[index] += torch.tensor(
                [size * quotient, size, size**2 * quotient**2, size**2 * quotient, size**2],
                dtype=torch.float64,
            )
    packed = torch.cat([moments.flatten(), moments.new_tensor([float(len(sizes))])])
    if operator.all_reduce is not None:
        packed = operator.all_reduce(packed.to(operator.like.device)).double().cpu()
    moments, count = packed[:-1].view(len(vectors), 5), float(packed[-1])
    return [_stderr(row, count) for row in moments.tolist()]


def _stderr(row: Sequence[float], count: float) -> float:
    weighted, total, squares, cross, weights = row
    if count < 2 or not all(math.isfinite(value) for value in row) or total == 0:
        return math.nan
    mean = weighted / total
    spread = squares - 2 * mean * cross + mean**2 * weights  # sum n_c^2 (q_c - q)^2
    return math.sqrt(max(spread, 0.0) * count / (count - 1)) / total
