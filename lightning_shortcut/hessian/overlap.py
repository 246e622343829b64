"""How much of the gradient lies in the top eigenspace of the Hessian (Gur-Ari, Roberts and Dyer,
"Gradient descent happens in a tiny subspace", 2018)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.context import hessian_operator, select_parameters
from lightning_shortcut.hessian.params import ParamsSpec, check_vector_size
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Mode

__all__ = ["GradientOverlap", "compute_gradient_overlap", "gradient_overlap"]


@dataclass(frozen=True)
class GradientOverlap:
    """The share of the gradient's squared norm in the span of the top eigenvectors.

    Attributes:
        overlap: ``||P g||^2 / ||g||^2`` for ``P`` the projector on the span (NaN for a zero or
            non-finite gradient, or no top vectors).
        components: the share along each top vector (orthonormalized in order), summing to it.
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
    """The share of the gradient on ``data`` that lies in the span of ``spectrum``'s top vectors:
    one backward per batch. Pass the other arguments the spectrum was measured with.

    Args:
        spectrum: a result of ``hessian_eigenvalues`` with ``top_k >= 1`` and ``vectors=True``; its
            top eigenvectors span the subspace.

    Returns:
        A :class:`GradientOverlap`.

    Raises:
        ValueError: if the spectrum's vectors do not have the size of ``params``, the model is
            sharded by ``fully_shard``, or as ``hessian_eigenvalues``.

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
    """:func:`gradient_overlap` with the spectrum's settings as one ``HessianSettings``."""
    selection = select_parameters(model, settings, unsharded_only="gradient_overlap")
    begin = time.perf_counter()
    with hessian_operator(model, data, loss_fn, settings, selection) as operator:
        top = spectrum.top_vectors
        check_vector_size(top, operator.dim, settings.params, model)
        gradient = operator.gradient().double().cpu()
    norm = float(gradient.norm())
    components: list[float] = []
    if top and norm > 0 and math.isfinite(norm):
        # orthonormalized in the order of the eigenvalues: the first component is the top's
        basis, _ = torch.linalg.qr(torch.stack([v.detach().double().cpu() for v in top], dim=1))
        components = ((basis.T @ gradient) / norm).square().tolist()
    overlap = math.fsum(components) if components else math.nan
    return GradientOverlap(overlap, components, norm, time.perf_counter() - begin)
