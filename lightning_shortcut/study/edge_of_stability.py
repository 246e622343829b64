"""The edge of stability: full-batch gradient descent drives ``lambda_max`` up to ``2 / lr``.

Cohen, Kaur, Li, Kolter and Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the
Edge of Stability" (ICLR 2021), Fig. 1: full-batch gradient descent on a 5 000-sample CIFAR-10
subset; the sharpness (the largest eigenvalue of the training loss's Hessian) rises along training
(progressive sharpening) until it reaches ``2 / lr``, the largest curvature a quadratic model is
stable at, and then hovers just above it while the loss keeps falling, not monotonically.

This part reproduces the figure on the study's data: the first ``edge_samples`` training samples
(inputs flattened, class labels one-hot), a tanh MLP (two hidden layers of :data:`WIDTH` units, at
PyTorch's default initialization, the same weights for every learning rate) on the squared loss
``0.5 * mean ||f(x) - y||^2``, trained by full-batch gradient descent (``torch.optim.SGD`` without
momentum on the whole subset) at each of ``edge_lrs`` for ``edge_steps`` steps. ``lambda_max`` of
the Hessian of that full-batch loss over all parameters is measured every ``edge_every`` steps and
at the last, each measurement warm-started from the previous one's eigenvector (``start=``).
"""

from __future__ import annotations

import math
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_shortcut.hessian import hessian_eigenvalues
from lightning_shortcut.study.figures import plot_edge_of_stability
from lightning_shortcut.study.parts import Step, StudyPart, Table, diverged
from lightning_shortcut.study.results import EdgeResult, columns, row
from lightning_shortcut.theory import half_mse_loss

__all__ = ["WIDTH", "EdgeOfStabilityRuns"]

#: Units in each of the MLP's two hidden layers.
WIDTH = 64
# lambda_max to 0.1%: "just above 2 / lr" is a few percent, so the measurement must be finer.
_TOL = 1e-3
# a measured step is "at the edge" from this stability ratio on
_AT_EDGE = 0.95


def _squared_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    inputs, targets = batch
    return half_mse_loss(model(inputs), targets)


class EdgeOfStabilityRuns(StudyPart):
    """Full-batch gradient descent at each of ``edge_lrs``, ``lambda_max`` along training against
    ``2 / lr``: ``edge_of_stability.csv`` (per learning rate: ``lambda_max`` at the first and last
    measurement, the first measured step at which ``lr * lambda_max / 2 >= 0.95``, the median,
    smallest and largest stability ratio ``lr * lambda_max / 2`` over the run's second half, the
    final loss, the measurements and their mean Hessian-vector products) and
    ``edge_of_stability.png``.

    ``self.models`` keeps each run's final model by learning rate, the weights of its last
    measurement.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models: dict[float, nn.Module] = {}

    def steps(self) -> list[Step]:
        return [
            (f"edge of stability lr={lr:.3g}", partial(self._run, lr))
            for lr in self.config.edge_lrs
        ]

    def tables(self) -> list[Table]:
        rows = [row(result) for result in self.results]
        title, label = "Edge of stability (full-batch gradient descent)", "Edge of stability"
        return [Table("edge_of_stability.csv", title, label, rows, columns(EdgeResult))]

    def figures(self) -> list[Path]:
        return [plot_edge_of_stability(self.config.out, self.results)] if self.results else []

    def full_batch(self) -> tuple[Tensor, Tensor]:
        """The first ``edge_samples`` training samples (all if fewer), inputs flattened, class
        labels one-hot: the batch of every step and of every Hessian."""
        inputs, targets = self.datamodule.train_set.tensors
        count = min(self.config.edge_samples, len(inputs))
        inputs, targets = inputs[:count].flatten(1), targets[:count]
        if not targets.is_floating_point():
            targets = F.one_hot(targets, self.datamodule.num_classes).to(inputs.dtype)
        return inputs, targets.flatten(1)

    def _mlp(self, inputs: Tensor, targets: Tensor) -> nn.Module:
        torch.manual_seed(self.config.seed)  # the same initial weights at every learning rate
        return nn.Sequential(
            nn.Linear(inputs.shape[1], WIDTH),
            nn.Tanh(),
            nn.Linear(WIDTH, WIDTH),
            nn.Tanh(),
            nn.Linear(WIDTH, targets.shape[1]),
        )

    def keep(self, result: tuple[nn.Module, EdgeResult]) -> None:
        model, run = result
        self.models[run.lr] = model
        self.results.append(run)

    def _run(self, lr: float) -> tuple[nn.Module, EdgeResult]:
        config, clock = self.config, time.perf_counter()
        batch = self.full_batch()
        model = self._mlp(*batch)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        sharpness: list[tuple[int, float]] = []
        losses: list[tuple[int, float]] = []
        products: list[int] = []
        converged, run_diverged, previous = True, False, None
        for step in range(config.edge_steps + 1):
            loss = _squared_loss(model, batch)
            losses.append((step, float(loss.detach())))
            if diverged(losses[-1][1]):
                run_diverged = True
                break
            if step % config.edge_every == 0 or step == config.edge_steps:
                previous = hessian_eigenvalues(  # warm: from the last measurement's vector
                    model, batch, _squared_loss, top_k=1, bottom_k=0, tol=_TOL, start=previous
                )
                sharpness.append((step, previous.max))
                products.append(previous.num_hvps)
                converged = converged and previous.converged
            if step == config.edge_steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return model, _result(lr, sharpness, losses, products, converged, run_diverged, clock)


def _result(
    lr: float,
    sharpness: list[tuple[int, float]],
    losses: list[tuple[int, float]],
    products: list[int],
    converged: bool,
    run_diverged: bool,
    clock: float,
) -> EdgeResult:
    """One run's row: the stability ratios ``lr * lambda_max / 2`` summarized over its second half
    (the measurements from half the last measured step on)."""
    ratios = [(step, lr * value / 2) for step, value in sharpness]
    last_step = ratios[-1][0] if ratios else 0
    second_half = [ratio for step, ratio in ratios if step >= last_step / 2]
    at_edge = [step for step, ratio in ratios if ratio >= _AT_EDGE]
    return EdgeResult(
        lr=lr,
        threshold=2 / lr,
        max_eigenvalue_start=sharpness[0][1] if sharpness else math.nan,
        max_eigenvalue_end=sharpness[-1][1] if sharpness else math.nan,
        first_step_at_edge=at_edge[0] if at_edge else None,
        median_stability_second_half=statistics.median(second_half) if second_half else math.nan,
        min_stability_second_half=min(second_half, default=math.nan),
        max_stability_second_half=max(second_half, default=math.nan),
        final_loss=math.inf if run_diverged else losses[-1][1],
        diverged=run_diverged,
        measurements=len(sharpness),
        products_per_measurement=sum(products) / len(products) if products else math.nan,
        converged=converged,
        seconds=time.perf_counter() - clock,
        sharpness=sharpness,
        losses=losses,
        products=products,
    )
