"""Where the curvature lives along training: each residual unit's ``lambda_max`` (its diagonal
block's, a lower bound on the whole Hessian's) along SGD, by shortcut depth (docs/study.md, Part 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_shortcut.callbacks._curvature_map import evenly_spaced_steps as measurement_steps
from lightning_shortcut.hessian import block_eigenvalues
from lightning_shortcut.study.figures import plot_unit_curvature
from lightning_shortcut.study.parts import Step, StudyPart, Table, diverged

__all__ = ["INITS", "UnitCurvature", "UnitCurvatureRun", "measurement_steps"]

#: The initializations of the part: the paper's small weights and the Xavier baseline.
INITS = ("small", "xavier")
# each unit's lambda_max to 1% of the unit's largest |eigenvalue| (the training grid's monitor's
# tol): on the figure's log axis a finer value changes nothing, and 1e-3 costs a third more
_TOL = 1e-2


@dataclass
class UnitCurvatureRun:
    """One run of the part: per measured step the training-set loss, each unit's ``lambda_max``
    (unit 0, nearest the input, first; NaN where not converged) and whether all converged; and the
    step at which the loss diverged and the run stopped, or None."""

    shortcut_depth: int
    init: str
    num_units: int
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    max_eigenvalues: list[list[float]] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    diverged_at_step: int | None = None

    def rows(self, width: int) -> list[dict[str, Any]]:
        """One row per measured step, with the columns ``unit_0`` to ``unit_<width - 1>`` (empty
        beyond ``num_units``); a run that diverged before measuring has one row of NaN."""
        measurements = list(
            zip(self.steps, self.losses, self.max_eigenvalues, self.converged, strict=True)
        )
        if not self.steps and self.diverged_at_step is not None:
            measurements = [(self.diverged_at_step, math.inf, [math.nan] * self.num_units, False)]
        rows = []
        for step, loss, values, converged in measurements:
            finite = [value for value in values if math.isfinite(value)]
            rows.append(
                {
                    "shortcut_depth": self.shortcut_depth,
                    "init": self.init,
                    "num_units": self.num_units,
                    "step": step,
                    "loss": loss,
                    "min_unit_eigenvalue": min(finite, default=math.nan),
                    "max_unit_eigenvalue": max(finite, default=math.nan),
                    "sharpest_unit": values.index(max(finite)) if finite else None,
                    "converged": converged,
                    "diverged_at_step": self.diverged_at_step,
                }
                | {f"unit_{k}": values[k] if k < len(values) else None for k in range(width)}
            )
        return rows


class UnitCurvature(StudyPart):
    """Each residual unit's ``lambda_max`` along SGD from :data:`INITS`, for every shortcut depth
    and ``curvature_units`` number of units: ``unit_curvature.csv`` (:meth:`UnitCurvatureRun.rows`)
    and ``unit_curvature.png``."""

    def steps(self) -> list[Step]:
        grid = (self.config.curvature_units, self.config.shortcut_depths, INITS)
        return self._each("unit curvature n={1} {2:<6} {0:>3} units", self._run, *grid)

    def tables(self) -> list[Table]:
        rows, title = self._rows(), "Each unit's lambda_max along training"
        shown = [key for key in rows[0] if not key.startswith("unit_")]  # summary.md: no unit's
        return [Table("unit_curvature.csv", title, "Unit curvature", rows, shown)]

    def figures(self) -> list[Path]:
        if not self.results:
            return []
        return [plot_unit_curvature(self.config.out, self._rows(), threshold=2 / self.config.lr)]

    def _rows(self) -> list[dict[str, Any]]:
        """Every run's rows, with a column per unit of the deepest run."""
        width = max(run.num_units for run in self.results)
        return [row for run in self.results for row in run.rows(width)]

    def _run(self, num_units: int, shortcut_depth: int, init: str) -> UnitCurvatureRun:
        config = self.config
        model = self._model(shortcut_depth, init, num_units)
        optimizer = model.configure_optimizers()
        run = UnitCurvatureRun(shortcut_depth, init, num_units)
        measured = set(measurement_steps(config.max_steps, config.curvature_points))
        batches = self._minibatches()
        model.train()
        for step in range(config.max_steps + 1):
            if step in measured and diverged(self._measure(model, run, step)):
                break
            if step < config.max_steps and diverged(self._sgd_step(model, optimizer, batches)):
                break
        else:
            return run
        run.diverged_at_step = step
        return run

    def _measure(self, model: pl.LightningModule, run: UnitCurvatureRun, step: int) -> float:
        """Append the training loss and each unit's ``lambda_max`` to ``run``; returns the loss."""
        task = self.dataset.task
        loss, _ = task.evaluate(model, self.datamodule.train_set, self.datamodule.num_classes)
        if not math.isfinite(loss):
            return loss
        batch, seed = self._hessian_batch(), self.config.seed
        spectra = block_eigenvalues(
            model, batch, task.loss_fn, blocks="residual", top_k=1, bottom_k=0, tol=_TOL, seed=seed
        )
        run.steps.append(step)
        run.losses.append(loss)
        run.max_eigenvalues.append(
            [math.nan if value is None else value for value in spectra.max.values()]
        )
        run.converged.append(spectra.all_converged)
        model.train()  # evaluate() left it in eval mode
        return loss
