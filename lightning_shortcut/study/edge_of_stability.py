"""The edge of stability (Cohen et al., ICLR 2021, Fig. 1): full-batch gradient descent of a tanh
MLP drives ``lambda_max`` up to ``2 / lr``, then hovers just above it (docs/study.md, Part 4)."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_shortcut.hessian import HessianSpectrum, hessian_eigenvalues
from lightning_shortcut.models import regression_loss
from lightning_shortcut.study.figures import plot_edge_of_stability
from lightning_shortcut.study.parts import Step, StudyPart, Table, diverged
from lightning_shortcut.study.results import EdgeResult, columns, row

__all__ = ["WIDTH", "EdgeOfStabilityRuns"]

#: Units in each of the MLP's two hidden layers.
WIDTH = 64
# lambda_max to 0.1%: "just above 2 / lr" is a few percent, so the measurement must be finer.
_TOL = 1e-3
# a measured step is "at the edge" from this stability ratio on
_AT_EDGE = 0.95


class EdgeOfStabilityRuns(StudyPart):
    """Full-batch gradient descent at each of ``edge_lrs``: ``edge_of_stability.csv`` (a row per
    learning rate) and ``edge_of_stability.png``; ``self.models`` keeps each run's final model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models: dict[float, nn.Module] = {}

    def steps(self) -> list[Step]:
        return self._each("edge of stability lr={:.3g}", self._run, self.config.edge_lrs)

    def tables(self) -> list[Table]:
        rows = [row(result) for result in self.results]
        title, label = "Edge of stability (full-batch gradient descent)", "Edge of stability"
        return [Table("edge_of_stability.csv", title, label, rows, columns(EdgeResult))]

    def figures(self) -> list[Path]:
        return [plot_edge_of_stability(self.config.out, self.results)] if self.results else []

    def full_batch(self) -> tuple[Tensor, Tensor]:
        """The first ``edge_samples`` training samples, inputs flattened, class labels one-hot."""
        inputs, targets = self.datamodule.train_set.tensors
        count = min(self.config.edge_samples, len(inputs))
        inputs, targets = inputs[:count].flatten(1), targets[:count]
        if not targets.is_floating_point():
            targets = F.one_hot(targets, self.datamodule.num_classes).to(inputs.dtype)
        return inputs, targets.flatten(1)

    def _mlp(self, inputs: Tensor, targets: Tensor) -> nn.Module:
        torch.manual_seed(self.config.seed)  # the same initial weights at every learning rate
        sizes = (inputs.shape[1], WIDTH, WIDTH, targets.shape[1])
        layers = [m for pair in itertools.pairwise(sizes) for m in (nn.Linear(*pair), nn.Tanh())]
        return nn.Sequential(*layers[:-1])  # no tanh on the output

    def keep(self, result: tuple[nn.Module, EdgeResult]) -> None:
        model, run = result
        self.models[run.lr] = model
        self.results.append(run)

    def _run(self, lr: float) -> tuple[nn.Module, EdgeResult]:
        config, clock = self.config, time.perf_counter()
        batch = self.full_batch()
        model = self._mlp(*batch)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        losses: list[tuple[int, float]] = []
        measured: list[tuple[int, HessianSpectrum]] = []
        previous = None
        for step in range(config.edge_steps + 1):
            loss = regression_loss(model, batch)
            losses.append((step, float(loss.detach())))
            if diverged(losses[-1][1]):
                break  # the last loss says so
            if step % config.edge_every == 0 or step == config.edge_steps:
                previous = hessian_eigenvalues(  # warm: from the last measurement's vector
                    model,
                    batch,
                    regression_loss,
                    top_k=1,
                    bottom_k=0,
                    tol=_TOL,
                    start=previous,
                    vectors=True,
                )
                measured.append((step, previous))
            if step < config.edge_steps:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return model, _result(lr, measured, losses, diverged(losses[-1][1]), clock)


def _result(
    lr: float,
    measured: list[tuple[int, HessianSpectrum]],
    losses: list[tuple[int, float]],
    run_diverged: bool,
    clock: float,
) -> EdgeResult:
    """One run's row: the stability ratios ``lr * lambda_max / 2`` of its second half summarized."""
    sharpness = [(step, spectrum.max) for step, spectrum in measured]
    products = [spectrum.num_hvps for _, spectrum in measured]
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
        converged=all(spectrum.converged for _, spectrum in measured),
        seconds=time.perf_counter() - clock,
        sharpness=sharpness,
        losses=losses,
        products=products,
    )
