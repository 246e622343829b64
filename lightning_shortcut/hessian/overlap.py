"""How much of the gradient lies in the top eigenspace of the Hessian.

Gur-Ari, Roberts and Dyer ("Gradient descent happens in a tiny subspace", 2018) found that after a
short initial phase most of the gradient lies in the span of the Hessian's top ``k`` eigenvectors,
``k`` the number of classes. :func:`gradient_overlap` measures that fraction,
``||P g||^2 / ||g||^2`` for ``P`` the projector onto the span of a measurement's top eigenvectors
and ``g`` the gradient of the same mean loss over the same data (one backward on the Hessian batch).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_shortcut.hessian.context import hessian_operator, select_parameters
from lightning_shortcut.hessian.operator import LossFn, ParamsSpec
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Mode

__all__ = ["GradientOverlap", "compute_gradient_overlap", "gradient_overlap"]


@dataclass(frozen=True)
class GradientOverlap:
    """The share of the gradient's squared norm in the span of the top eigenvectors.

    Attributes:
        overlap: ``||P g||^2 / ||g||^2`` (in ``[0, 1]``; NaN for a zero or non-finite gradient, or
            a spectrum without top vectors).
        components: the share along each direction of the span, in the order of the top
            eigenvalues (the vectors orthonormalized in that order); they sum to ``overlap``.
        gradient_norm: ``||g||``.
        seconds: wall time of the call.
    """

    overlap: float
    components: list[float]
    gradient_norm: float
    seconds: float


def gradient_overlap(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    spectrum: HessianSpectrum,
    params: ParamsSpec = None,
    mode: Mode = "eval",
    seed: int = 0,
    all_reduce: AllReduce | None = None,
) -> GradientOverlap:
    """The share of the gradient on ``data`` that lies in the span of ``spectrum``'s top vectors.

    Costs one backward per batch of ``data`` (no Hessian-vector product); no side effects, as
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues`. Pass the ``data``, ``loss_fn``,
    ``params``, ``mode``, ``seed`` and ``all_reduce`` the spectrum was measured with: the gradient
    is then that of the loss whose Hessian it is.

    Args:
        model: the model.
        data: one batch or an iterable of batches (the mean loss over all samples).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss; default: cross-entropy.
        spectrum: a result of ``hessian_eigenvalues`` with ``top_k >= 1``; its ``top_k`` top
            eigenvectors span the subspace.
        params: the parameters (as the spectrum's).
        mode: ``"eval"`` or ``"train"`` (dropout masks fixed by ``seed`` as in the products).
        seed: the seed of the products' fixed dropout masks in train mode.
        all_reduce: sum across processes for distributed data.

    Returns:
        A :class:`GradientOverlap`.

    Raises:
        ValueError: if the spectrum's vectors do not have the size of ``params``, or the model is
            sharded by ``fully_shard``; and where ``hessian_eigenvalues`` refuses ``data``,
            ``loss_fn`` or ``params``.

    Example:
        ```python
        spectrum = hessian_eigenvalues(model, (x, y), top_k=10, bottom_k=0, vectors=True)
        gradient_overlap(model, (x, y), spectrum=spectrum).overlap  # e.g. 0.93
        ```
    """
    settings = HessianSettings(params=params, mode=mode, seed=seed, all_reduce=all_reduce)
    return compute_gradient_overlap(model, data, loss_fn, settings, spectrum=spectrum)


def compute_gradient_overlap(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    settings: HessianSettings,
    *,
    spectrum: HessianSpectrum,
) -> GradientOverlap:
    """:func:`gradient_overlap` with the operator's options (``params``, ``mode``, ``seed``,
    ``all_reduce``) as one :class:`~lightning_shortcut.hessian.HessianSettings`: pass the
    settings the spectrum was measured with."""
    selection = select_parameters(model, settings, unsharded_only="gradient_overlap")
    begin = time.perf_counter()
    with hessian_operator(model, data, loss_fn, settings, selection) as operator:
        top = spectrum.vectors[: len(spectrum.top)]
        for vector in top:
            if vector.numel() != operator.dim:
                raise ValueError(
                    f"The spectrum's vectors have {vector.numel()} entries but "
                    f"params={settings.params!r} "
                    f"of {type(model).__name__} has {operator.dim}: pass the params the spectrum "
                    "was measured with."
                )
        gradient = operator._gradient_sum(operator.like.new_zeros(operator.dim))
        count = float(sum(operator.sizes))
        if settings.all_reduce is not None:
            packed = settings.all_reduce(torch.cat([gradient, gradient.new_tensor([count])]))
            gradient, count = packed[:-1], float(packed[-1])
        gradient = gradient.double().cpu() / count
    norm = float(gradient.norm())
    components: list[float] = []
    if top and norm > 0 and math.isfinite(norm):
        # Gram-Schmidt in the order of the eigenvalues: the first component is the top vector's
        basis, _ = torch.linalg.qr(torch.stack([v.detach().double().cpu() for v in top], dim=1))
        components = ((basis.T @ gradient) / norm).square().tolist()
    overlap = math.fsum(components) if components else math.nan
    return GradientOverlap(
        overlap=overlap,
        components=components,
        gradient_norm=norm,
        seconds=time.perf_counter() - begin,
    )
