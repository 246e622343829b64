"""The learning rate against depth: where each shortcut depth diverges from small weights, beside
the initial ``2 / lambda_max`` (docs/study.md, Part 3)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_shortcut.hessian import edge_of_stability, hessian_eigenvalues
from lightning_shortcut.study.figures import plot_lr_sweep
from lightning_shortcut.study.parts import Step, StudyPart, Table, diverged
from lightning_shortcut.study.results import SweepResult, row

__all__ = ["LearningRateSweep"]

INIT = "small"
#: Final losses within this fraction of each other are alike: the sweep names no best learning
#: rate where every run that did not diverge ended alike (``n = 3`` from small weights, which no
#: learning rate moves off its saddle, ends at 8.32 everywhere, its losses 3e-7 apart).
ALIKE = 1e-3


def _all_alike(runs: list[SweepResult]) -> bool:
    """Whether the runs' final losses agree within :data:`ALIKE` (relative), over two runs or more."""
    losses = [run.final_loss for run in runs]
    return len(losses) > 1 and max(losses) - min(losses) <= ALIKE * abs(min(losses))


class LearningRateSweep(StudyPart):
    """SGD from small weights at every learning rate of ``sweep_lrs`` for every shortcut depth and
    ``num_units``: ``lr_sweep.csv``, ``lr_sweep_summary.csv`` (no best learning rate where the
    runs all ended within :data:`ALIKE`) and ``lr_sweep.png``."""

    def steps(self) -> list[Step]:
        grid = (self.config.shortcut_depths, self.config.num_units)
        return self._each("lr sweep n={} {:>3} units", self._sweep, *grid)

    def tables(self) -> list[Table]:
        rows = [row(result) for result in self.results]
        summary = ("lr_sweep_summary.csv", "Learning rate against depth", "LR vs depth")
        return [
            Table("lr_sweep.csv", "Learning rate sweep", "LR sweep", rows),
            Table(*summary, self._summary()),
        ]

    def figures(self) -> list[Path]:
        return [plot_lr_sweep(self.config.out, self.results)] if self.results else []

    def keep(self, result: list[SweepResult]) -> None:
        self.results.extend(result)

    def _sweep(self, shortcut_depth: int, num_units: int) -> list[SweepResult]:
        loss_fn, batch, max_eigenvalue = self.dataset.task.loss_fn, self._hessian_batch(), None
        results = []
        for lr in self.config.sweep_lrs:
            model = self._model(shortcut_depth, INIT, num_units, lr)
            optimizer = model.configure_optimizers()
            if max_eigenvalue is None:  # the same initial weights at every learning rate
                max_eigenvalue = hessian_eigenvalues(model, batch, loss_fn, bottom_k=0).max
            report = edge_of_stability(  # SGD: lr * lambda_max / c, no product
                model, batch, optimizer, loss_fn, hessian_max_eigenvalue=max_eigenvalue
            )
            trained = self._train(model, optimizer)  # final_loss, diverged, peak_loss
            run = (shortcut_depth, INIT, num_units, lr, *trained, max_eigenvalue, report.stability)
            results.append(SweepResult(*run))
        return results

    def _train(
        self, model: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> tuple[float, bool, float]:
        """``sweep_steps`` SGD steps: (final train loss, diverged, largest minibatch loss on the
        way, where a spike that came back down is a catapult, not a divergence)."""
        batches, peak = self._minibatches(), -math.inf
        model.train()
        for _ in range(self.config.sweep_steps):
            value = self._sgd_step(model, optimizer, batches)
            peak = max(peak, value) if math.isfinite(value) else math.inf
            if diverged(value):
                return math.inf, True, peak
        task, data = self.dataset.task, self.datamodule
        final, _ = task.evaluate(model, data.train_set, data.num_classes)
        return (math.inf, True, peak) if diverged(final) else (final, False, peak)

    def _summary(self) -> list[dict[str, Any]]:
        by_run: dict[tuple[int, int], list[SweepResult]] = {}  # in the steps' order
        for result in self.results:
            by_run.setdefault((result.shortcut_depth, result.num_units), []).append(result)
        rows = []
        for (depth, units), runs in by_run.items():
            trained = [r for r in runs if not r.diverged]
            # where nothing trained, the smallest loss would be a pick of noise
            alike = not trained or _all_alike(trained)
            best = None if alike else min(trained, key=lambda r: r.final_loss)
            first, diverged_lrs = runs[0], [r.lr for r in runs if r.diverged]
            # the learning rate at which the initial stability ratio is 1
            predicted = first.lr / first.stability_init if first.stability_init > 0 else math.inf
            rows.append(
                {
                    "shortcut_depth": depth,
                    "num_units": units,
                    "max_eigenvalue_init": first.max_eigenvalue_init,
                    "predicted_max_lr": predicted,
                    "largest_lr_not_diverged": max((r.lr for r in trained), default=math.nan),
                    "smallest_lr_diverged": min(diverged_lrs, default=math.nan),
                    "best_lr": best.lr if best else math.nan,
                    "best_final_loss": best.final_loss if best else math.nan,
                }
            )
        return rows
