"""Vector helpers shared by the solvers: random starts, Gram-Schmidt against row bases."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def stack_rows(vectors: Sequence[Tensor], like: Tensor, dim: int) -> Tensor:
    """The vectors as the rows of a matrix (``0 x dim`` for none)."""
    return torch.stack(list(vectors)) if vectors else like.new_zeros(0, dim)


def orthogonalize(vector: Tensor, *bases: Tensor) -> Tensor:
    """``vector`` minus its projection on bases with orthonormal rows.

    Classical Gram-Schmidt done twice ("twice is enough", Giraud et al. 2005).
    """
    bases = tuple(basis for basis in bases if basis.shape[0] > 0)
    for _ in range(2):
        for basis in bases:
            vector = torch.addmv(vector, basis.T, basis @ vector, alpha=-1)
    return vector


def random_unit_vector(
    dim: int, like: Tensor, generator: torch.Generator, against: Tensor | None = None
) -> Tensor:
    """A Gaussian unit vector drawn on the CPU (device-independent), orthogonal to ``against``'s rows."""
    vector = torch.randn(dim, generator=generator, dtype=torch.float64).to(like)
    if against is not None:
        vector = orthogonalize(vector, against)
    return vector / vector.norm()


#: Weight of the random part of a warm start: enough that no eigenvector is missing from the start
#: (a start inside an invariant subspace would hide the rest of the spectrum), small enough to keep
#: most of the head start.
WARM_START_NOISE = 0.3


def start_vector(
    dim: int,
    like: Tensor,
    generator: torch.Generator,
    against: Tensor,
    warm: Sequence[Tensor] | None = None,
) -> Tensor:
    """A unit start vector orthogonal to ``against``: random, or the sum of ``warm`` plus noise."""
    noise = random_unit_vector(dim, like, generator, against)
    if not warm:
        return noise
    combined = sum(v.to(like) / v.norm().clamp_min(1e-300) for v in warm)
    combined = orthogonalize(combined, against)
    norm = combined.norm()
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return noise
    mixed = combined / norm + WARM_START_NOISE * noise
    mixed = orthogonalize(mixed, against)
    return mixed / mixed.norm()
