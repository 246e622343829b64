"""Training runs: shortcut depth x init x number of units, each a Trainer with the Hessian monitor."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.study.figures import plot_eigenvalue_trajectories, plot_loss_curves
from lightning_shortcut.study.parts import Step, StudyPart, Table, diverged
from lightning_shortcut.study.results import RunResult, columns, row

__all__ = ["TrainingGrid"]


class _LossRecorder(Callback):
    """Keeps the training loss per step and stops a run whose loss is no longer finite."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.diverged = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        self.losses.append((trainer.global_step, loss))
        if diverged(loss):
            self.diverged = True
            trainer.should_stop = True


class TrainingGrid(StudyPart):
    """SGD from each initialization, for every shortcut depth and ``num_units``: ``summary.csv``
    (:class:`~lightning_shortcut.study.results.RunResult`), ``loss_curves.png`` and
    ``eigenvalue_trajectories.png``."""

    def steps(self) -> list[Step]:
        config, description = self.config, "training n={} {:<10} {:>3} units"
        grid = (config.shortcut_depths, config.inits, config.num_units)
        return self._each(description, self._train, *grid)

    def tables(self) -> list[Table]:
        rows = [row(run) for run in self.results]
        return [Table("summary.csv", "Training runs", "Training", rows, columns(RunResult))]

    def figures(self) -> list[Path]:
        out, runs = self.config.out, self.results
        return [plot_loss_curves(out, runs), plot_eigenvalue_trajectories(out, runs)]

    def _train(self, shortcut_depth: int, init: str, num_units: int) -> RunResult:
        task = self.dataset.task
        start = time.perf_counter()
        model = self._model(shortcut_depth, init, num_units)
        initial = self._both_ends(model, max_iter=500)
        monitor, recorder = self._fit(model)
        num_classes = self.datamodule.num_classes
        final_loss, _ = task.evaluate(model, self.datamodule.train_set, num_classes)
        _, accuracy = task.evaluate(model, self.datamodule.val_set, num_classes)
        first, last = monitor.history[0], monitor.history[-1]
        return RunResult(
            shortcut_depth=shortcut_depth,
            init=init,
            num_units=num_units,
            kappa_init=math.nan if initial.condition_number is None else initial.condition_number,
            kappa_init_converged=initial.converged,
            max_eigenvalue_start=first["max_eigenvalue"],
            min_eigenvalue_start=first["min_eigenvalue"],
            max_eigenvalue_end=last["max_eigenvalue"],
            min_eigenvalue_end=last["min_eigenvalue"],
            final_loss=final_loss if not recorder.diverged else math.inf,
            accuracy=accuracy if not recorder.diverged else math.nan,
            diverged=recorder.diverged,
            seconds=time.perf_counter() - start,
            losses=recorder.losses,
            spectra=monitor.history,
        )

    def _fit(self, model: pl.LightningModule) -> tuple[HessianEigenvalueMonitor, _LossRecorder]:
        """Train ``model`` for ``max_steps`` SGD steps, measuring every ``hessian_every``."""
        config = self.config
        recorder = _LossRecorder()
        monitor = HessianEigenvalueMonitor(
            every_n_steps=config.hessian_every,
            num_samples=config.hessian_samples,
            params="residual",
            loss_fn=self.dataset.task.loss_fn,
            tol=1e-2,
            max_iter=60,
            stderr=False,  # the study reads the values alone
            data=self.datamodule.train_dataloader(),
        )
        trainer = pl.Trainer(
            max_steps=config.max_steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[monitor, recorder],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, train_dataloaders=self.datamodule.train_dataloader())
        return monitor, recorder
