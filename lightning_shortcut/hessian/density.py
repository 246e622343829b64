"""Hessian trace (Hutchinson) and spectral density (stochastic Lanczos quadrature), without side
effects (pyhessian 0.1's ``density()`` calls the removed ``torch.eig``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian._validation import check_positive_int
from lightning_shortcut.hessian.batches import LossFn
from lightning_shortcut.hessian.context import hessian_operator, select_parameters
from lightning_shortcut.hessian.params import ParamsSpec
from lightning_shortcut.hessian.settings import AllReduce, HessianSettings, Mode
from lightning_shortcut.hessian.solvers import LanczosProcess
from lightning_shortcut.hessian.solvers._stopping import INVARIANT
from lightning_shortcut.hessian.solvers._vectors import random_unit_vector

__all__ = [
    "SpectralDensity",
    "TraceEstimate",
    "compute_spectral_density",
    "hessian_trace",
    "spectral_density",
]


@dataclass
class TraceEstimate:
    """Hutchinson estimate of ``tr(H)``: the mean of ``v^T H v`` over Rademacher probes ``v``,
    its standard error (``nan`` for one probe), the probes and products used, and the wall time."""

    trace: float
    standard_error: float
    num_probes: int
    num_hvps: int
    seconds: float


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: ``nodes[p]``, the Ritz values of probe ``p``, and
    ``weights[p]``, summing to one, approximate the measure ``(1/d) sum_i delta(lambda_i)``."""

    nodes: Tensor
    weights: Tensor
    num_hvps: int
    seconds: float

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """The measure smoothed by a Gaussian of width ``sigma``, evaluated on ``grid``."""
        if sigma <= 0:
            raise ValueError(f"`sigma` must be > 0, got {sigma!r}.")
        grid = grid.to(torch.float64)
        diffs = grid[:, None, None] - self.nodes[None]
        kernel = torch.exp(-0.5 * (diffs / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(dim=(1, 2)) / self.nodes.shape[0]


def hessian_trace(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    num_probes: int = 100,
    rtol: float | None = None,
    params: ParamsSpec = None,
    seed: int = 0,
    mode: Mode = "eval",
    all_reduce: AllReduce | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of the Hessian trace with Rademacher probes. The arguments not listed
    below are those of :func:`~lightning_shortcut.hessian.hessian_eigenvalues`.

    Args:
        num_probes: the maximum number of probes.
        rtol: stop early once the standard error is at most ``rtol * |trace|`` (at least 2 probes).

    Example:
        ```python
        estimate = hessian_trace(model, (x, y), num_probes=200)
        estimate.trace, estimate.standard_error
        ```
    """
    check_positive_int("num_probes", num_probes)
    settings = HessianSettings(params=params, mode=mode, seed=seed, all_reduce=all_reduce)
    selection = select_parameters(model, settings, unsharded_only="hessian_trace")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    with hessian_operator(model, data, loss_fn, settings, selection) as operator:
        for _ in range(num_probes):
            signs = torch.randint(0, 2, (operator.dim,), generator=generator) * 2 - 1
            probe = signs.to(operator.like)
            samples.append(float(probe @ operator(probe)))
            if rtol is not None and len(samples) >= 2:
                mean, error = _mean_and_error(samples)
                if error <= rtol * abs(mean):
                    break
    mean, error = _mean_and_error(samples)
    return TraceEstimate(
        mean, error, len(samples), operator.num_products, time.perf_counter() - start
    )


def _mean_and_error(samples: list[float]) -> tuple[float, float]:
    values = torch.tensor(samples, dtype=torch.float64)
    error = values.std() / math.sqrt(len(samples)) if len(samples) > 1 else math.nan
    return float(values.mean()), float(error)


def spectral_density(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    num_probes: int = 1,
    num_steps: int = 64,
    params: ParamsSpec = None,
    seed: int = 0,
    mode: Mode = "eval",
    all_reduce: AllReduce | None = None,
) -> SpectralDensity:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani et al., 2019):
    ``num_steps`` Lanczos steps from each of ``num_probes`` Gaussian vectors.

    Example:
        ```python
        sld = spectral_density(model, (x, y), num_probes=4, num_steps=80)
        curve = sld.density(torch.linspace(-1, 5, 400), sigma=0.05)
        ```
    """
    settings = HessianSettings(params=params, mode=mode, seed=seed, all_reduce=all_reduce)
    return compute_spectral_density(
        model, data, loss_fn, settings, num_probes=num_probes, num_steps=num_steps
    )


def compute_spectral_density(
    model: nn.Module,
    data: Any,
    loss_fn: LossFn | None,
    settings: HessianSettings,
    *,
    num_probes: int = 1,
    num_steps: int = 64,
) -> SpectralDensity:
    """:func:`spectral_density` with the operator's options as one ``HessianSettings``."""
    check_positive_int("num_probes", num_probes)
    check_positive_int("num_steps", num_steps)
    selection = select_parameters(model, settings, unsharded_only="spectral_density")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
    all_nodes: list[Tensor] = []
    all_weights: list[Tensor] = []
    with hessian_operator(model, data, loss_fn, settings, selection) as operator:
        steps = min(num_steps, operator.dim)
        buffer = operator.empty(steps)
        no_lock = operator.like.new_zeros(0, operator.dim)
        for _ in range(num_probes):
            probe = random_unit_vector(operator, generator)
            process = LanczosProcess(operator, probe, buffer, no_lock)
            for _ in range(steps):
                process.step()
                if process.beta <= INVARIANT * float(process.projected.abs().max()):
                    break  # an invariant subspace: its Ritz values are exact
            values, vectors, _ = process.ritz()
            unused = (0, steps - values.numel())  # an invariant subspace: weight 0
            all_nodes.append(torch.nn.functional.pad(values, unused))
            all_weights.append(torch.nn.functional.pad(vectors[0] ** 2, unused))
    nodes, weights = torch.stack(all_nodes), torch.stack(all_weights)
    return SpectralDensity(nodes, weights, operator.num_products, time.perf_counter() - start)
