"""``HessianEigenvalueMonitor``: the loss Hessian's extreme eigenvalues, logged during training."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_shortcut.callbacks._curvature_map import CurvatureMap, Inputs
from lightning_shortcut.callbacks._edge_of_stability import EdgeOfStabilityTracker
from lightning_shortcut.callbacks._guarded import GuardedMeasurements
from lightning_shortcut.callbacks._hessian_batch import (
    check_loss,
    gather_hessian_batch,
    resolve_loss_fn,
    samples_over_ranks,
    stage_dataloader,
)
from lightning_shortcut.callbacks._options import monitor_settings, validate_monitor_options
from lightning_shortcut.callbacks._schedule import DEFAULT_MAX_OVERHEAD, ScheduledMonitor
from lightning_shortcut.callbacks._strategies import (
    check_sharded_model,
    refuse_strategies_without_double_backward,
    run_settings,
)
from lightning_shortcut.callbacks._warnings import MeasurementWarnings
from lightning_shortcut.hessian.operator import resolve_params
from lightning_shortcut.hessian.spectrum import HessianSpectrum, compute_spectrum
from lightning_shortcut.hessian.tracking import DEFAULT_AUDIT_EVERY, SpectrumTracker

__all__ = ["DEFAULT_MAX_OVERHEAD", "HessianEigenvalueMonitor"]

LossFn = Callable[[pl.LightningModule, Any], Tensor]
ParamsSpec = Literal["all", "residual"] | Callable[[nn.Module], Iterable[Tensor]] | None


class HessianEigenvalueMonitor(ScheduledMonitor):
    r"""Compute and log the top and bottom eigenvalues of the loss Hessian during training.

    Add it to any ``Trainer``: it needs no change to the model and does not change training. The
    Hessian is that of the mean loss over a fixed *Hessian batch* (the first ``num_samples`` samples
    of the train dataloader's dataset, taken once at the start of fitting). The numbers come from
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues`; this class schedules, gathers data and
    logs. The manual (schedule, cost, warm starts, the Hessian batch, strategies, the loss) is the
    docs site's "The monitor" page, ``docs/monitor.md``.

    Logged metrics, each a float, at ``step = trainer.global_step`` to every logger (rank zero), in
    ``trainer.callback_metrics`` and in :attr:`history` (kept in checkpoints); inside
    ``trainer.validate``/``test`` under ``{log_prefix}validate/``/``test/``:

    - ``{log_prefix}max_eigenvalue``, ``min_eigenvalue``: the extremes (``top_k``/``bottom_k >= 1``).
    - ``{log_prefix}max_eigenvalue_stderr``, ``min_eigenvalue_stderr``: their standard errors over
      Hessian batches of ``num_samples`` samples (``mode="eval"``, on ``stderr``'s schedule).
    - ``{log_prefix}top_<i>``, ``bottom_<i>``: the ``i``-th largest and smallest (``k > 1``).
    - ``{log_prefix}min_abs_eigenvalue``, ``condition_number``, ``min_abs_resolved`` (``min_abs``):
      the smallest ``|eigenvalue|``, max over min ``|eigenvalue|`` (``inf`` where the smallest is
      below what ``tol`` resolves, never a number that only reflects ``tol``), and ``1.0`` if it
      is resolved.
    - ``{log_prefix}stability``, ``max_stable_lr`` (fit, ``edge_of_stability``): the
      step-preconditioned Hessian's largest eigenvalue over the optimizer's threshold (1.0 is the
      edge of stability), and the first group's learning rate at which it is 1.
    - ``{log_prefix}hvp_error``: the products' relative error (``hvp="finite_difference"``).
    - ``{log_prefix}num_hvps``, ``seconds``, ``converged``, ``warm_start``: the products and wall
      time the measurement took, ``1.0`` if every value met ``tol``, ``1.0`` if it was warm.
    - ``{log_prefix}warm_given_up`` (``warm_start`` on): ``1.0`` where a warm try was given up and
      run again cold (both runs' products in ``num_hvps``).
    - ``{log_prefix}block/<name>/max_eigenvalue``, ``min_eigenvalue``, ``max_eigenvector_share``,
      ``min_...``; ``block_hvps``, ``block_seconds``, ``gradient_overlap``, ``density_seconds``/``hvps``.
    - ``epoch``: the epoch, with every row.

    Guarantees: training is bit-for-bit the same with or without the monitor; at most one
    measurement per ``global_step``; sanity checking and ``fast_dev_run`` are skipped; under DDP and
    ``fully_shard`` every product is summed over the ranks' shares; a measurement of any kind that
    meets a non-finite loss or product, runs out of memory or does not converge is logged (NaN where
    there is no value) and warned about once, naming it and the step, and training goes on.

    Every argument is keyword-only. The measurements' options are checked here, once, into
    ``settings``: one frozen :class:`~lightning_shortcut.hessian.HessianSettings` for all of them.

    Args:
        every_n_steps: *Schedule.* Measure every this many optimizer steps (``None``: not by steps).
        every_n_epochs: *Schedule.* Measure at the end of every this many epochs (``None``: not).
        max_overhead: *Schedule.* The share of training wall time the monitor may use (``0``: only
            the measurement at fit start); ``None``: ``0.05`` when it schedules itself (neither
            ``every_n_*`` given), no limit on a fixed schedule.
        at_fit_start: *Schedule.* Measure at the initial point, before the first step.
        stages: *Schedule.* ``"fit"`` and, at the start of ``trainer.validate``/``test``,
            ``"validate"``/``"test"`` (on the first ``num_samples`` samples of their dataloader).
        num_samples: *Hessian batch.* Its size over all ranks (256 matched a 2048-sample Hessian's
            extremes as well as 512 on a BatchNorm CNN; ``*_stderr`` says how much it matters).
        chunk_size: *Hessian batch.* Samples per forward-backward pass of a product, to bound
            memory (default: one chunk, whose graph every product reuses; not a training batch).
        data: *Hessian batch.* A ``DataLoader`` or datamodule to draw it from instead.
        params: *Hessian batch.* ``"all"``/``None`` (every trainable parameter), ``"residual"`` (the
            ResidualStack branches, the paper's quantity) or a callable ``module -> parameters``.
        loss_fn: *Hessian batch.* ``loss_fn(pl_module, batch) -> scalar``; default the module's
            ``hessian_loss(batch)``, else the cross-entropy of ``pl_module(inputs)``.
        mode: *Hessian batch.* ``"eval"`` (dropout off, BatchNorm running statistics) or ``"train"``.
        method: *Solver.* A solver of :data:`~lightning_shortcut.hessian.SOLVERS`.
        top_k: *Solver.* Number of largest eigenvalues.
        bottom_k: *Solver.* Number of smallest eigenvalues.
        min_abs: *Solver.* Also the smallest ``|eigenvalue|`` and the condition number (Lanczos).
        tol: *Solver.* The error allowed in each eigenvalue, relative to the largest
            ``|eigenvalue|``: ``1e-2``, as a curve along training reads 1% (the engine's: ``1e-3``).
        max_iter: *Solver.* The products one eigenvalue run may use; one that reaches it logs its
            best estimates with ``converged=0`` and a warning.
        warm_start: *Solver.* ``False`` (default): every measurement is cold. ``True``: each fit
            measurement starts from the previous one's vectors and every 10th is cold (an audit:
            an eigenvalue crossing, which warm runs cannot see, is caught within 10); an int
            ``n >= 2``: an audit every ``n``. Off by default: they pay on full-batch or slowly
            moving runs measured often, not under SGD measured far apart (``docs/benchmarks.md``).
        hvp: *Solver.* ``"autograd"`` (double backward, exact) or ``"finite_difference"`` (two
            gradients, its error logged as ``hvp_error``).
        seed: *Solver.* Seed of the solver's private generator.
        solver_options: *Solver.* Options of the solver, e.g. ``{"max_basis": 10}``, checked here.
        stderr: *Output.* Log the extremes' standard errors (``mode="eval"``): ``True`` with one fit
            measurement in 10 (the first, or the cold audits of ``warm_start``), an int ``n`` with
            every ``n``-th cold one, and with each ``validate``/``test`` one. Each costs a product
            per 16 chunks of the batch, and where no eigenvector is kept the run again for them.
        edge_of_stability: *Output.* Log ``stability`` and ``max_stable_lr`` from the run's
            optimizer (:func:`~lightning_shortcut.hessian.edge_of_stability`).
        warn_above: *Output.* Warn once when ``stability`` stays above this for 3 measurements
            (``None``: never).
        log_prefix: *Output.* Prefix of the logged names.
        blocks: *Where.* Also each block's extremes and the extreme eigenvectors' shares per block
            (``"residual"``, ``"modules"``, a mapping or callable; ``docs/blocks.md``).
        gradient_overlap: *Where.* Also the gradient's share in the top eigenvectors' span.
        density_snapshots: *Where.* Spectral densities at fit start, end and between (same page).

    Raises:
        TypeError: on an argument of the wrong type, naming it and what is accepted.
        ValueError: on a bad argument value, naming it and what is accepted; at the start of
            fitting, on a batch the default loss cannot read or a ``params="residual"`` model
            without ResidualStack.
        MisconfigurationException: under ``FSDPStrategy`` or DeepSpeed, which do not support
            double backward; at the start of fitting, under a sharding other than ``fully_shard``
            over all ranks (``docs/strategies.md``).

    Example:
        ```python
        # as often as 5% of the training time allows
        trainer = Trainer(callbacks=[HessianEigenvalueMonitor(params="residual")])
        # every 100 steps, whatever it costs
        trainer = Trainer(callbacks=[HessianEigenvalueMonitor(every_n_steps=100)])
        ```
    """

    def __init__(
        self,
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        max_overhead: float | None = None,
        at_fit_start: bool = True,
        stages: Sequence[str] = ("fit",),
        num_samples: int = 256,
        chunk_size: int | None = None,
        data: DataLoader | pl.LightningDataModule | None = None,
        params: ParamsSpec = None,
        loss_fn: LossFn | None = None,
        mode: Literal["eval", "train"] = "eval",
        method: str = "lanczos",
        top_k: int = 1,
        bottom_k: int = 1,
        min_abs: bool = False,
        tol: float = 1e-2,
        max_iter: int = 100,
        warm_start: bool | int = False,
        hvp: Literal["autograd", "finite_difference"] = "autograd",
        seed: int = 0,
        solver_options: dict[str, Any] | None = None,
        stderr: bool | int = True,
        edge_of_stability: bool = True,
        warn_above: float | None = 2.0,
        log_prefix: str = "hessian/",
        blocks: Any = None,
        gradient_overlap: bool = False,
        density_snapshots: int = 0,
    ) -> None:
        #: every measurement's settings, checked here (eigenvectors only where a part reads them)
        self.settings = monitor_settings(
            params=params, mode=mode, method=method, top_k=top_k, bottom_k=bottom_k,
            min_abs=min_abs, tol=tol, max_iter=max_iter, hvp=hvp, seed=seed,
            solver_options=solver_options, stderr=stderr,
            vectors=bool(warm_start) or blocks is not None or gradient_overlap,
        )  # fmt: skip
        self.num_samples, self.chunk_size, self.data = num_samples, chunk_size, data
        self.loss_fn, self.warm_start, self.log_prefix = loss_fn, warm_start, log_prefix
        self.edge_of_stability, self.warn_above = edge_of_stability, warn_above
        self.blocks, self.gradient_overlap = blocks, gradient_overlap
        self.density_snapshots = density_snapshots
        validate_monitor_options(self)
        # the parts, each with its own state (the standard errors' schedule: the guard's)
        self._warnings = MeasurementWarnings(num_samples, self.settings)
        self._tracker = SpectrumTracker(self.audit_every)
        stderr = self.settings.stderr and stderr
        self._guard = GuardedMeasurements(self._warnings.once, self._tracker, warm_start, stderr)
        self._stability = EdgeOfStabilityTracker(
            warn_above, self._warnings.once, SpectrumTracker(self.audit_every)
        )
        super().__init__(
            every_n_steps, every_n_epochs, max_overhead, at_fit_start, stages, self._guard
        )
        self._curvature = CurvatureMap(
            blocks, gradient_overlap, density_snapshots, self._guard, self._warnings.once,
            self.budget, self._log_metrics,
        )  # fmt: skip
        self._batches: dict[str, list[Any]] = {}  # the Hessian batch of each stage
        self._samples = num_samples  # in the last Hessian batch gathered
        self._sharded = False  # the model is sharded by fully_shard (FSDP2)
        self._run_settings = self.settings  # with the run's all_reduce (set at each stage start)

    @property
    def audit_every(self) -> int:
        """Every this many fit measurements one is cold: 1 (all cold) without warm starts."""
        return DEFAULT_AUDIT_EVERY if self.warm_start is True else int(self.warm_start) or 1

    @property
    def density_history(self) -> list[dict[str, Any]]:
        """Every density snapshot this monitor took (``step``, ``nodes``, ``weights``, costs)."""
        return self._curvature.history

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_steps=self.every_n_steps,
            every_n_epochs=self.every_n_epochs,
            method=self.settings.method,
            log_prefix=self.log_prefix,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "tracker": self._tracker.state_dict(),
            "stability_tracker": self._stability.tracker.state_dict(),
            "density_steps": list(self._curvature.taken),
            "cold_measurements": self._guard.cold_count,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._tracker.load_state_dict(state_dict.get("tracker", {}))
        self._stability.tracker.load_state_dict(state_dict.get("stability_tracker", {}))
        self._curvature.taken = [int(step) for step in state_dict.get("density_steps", [])]
        self._guard.cold_count = int(state_dict.get("cold_measurements", 0))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_strategies_without_double_backward(trainer)
        if stage == "fit":  # a new fit plans its snapshots anew (a resume restores them after)
            self._curvature.taken = []

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._snapshot(trainer, pl_module, at_end=False)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer, pl_module, at_end=True)

    # the Hessian batch and the loss

    @override
    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._sharded = check_sharded_model(trainer, pl_module, self.settings)
        self._run_settings = run_settings(trainer, self.settings, self._sharded)
        self._batches[stage] = self._gather_hessian_batch(trainer, pl_module, stage)
        if stage == "fit":
            self._curvature.prepare(trainer, pl_module, self.settings.params, self._sharded)

    def _gather_hessian_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> list[Any]:
        """This rank's share of the stage's Hessian batch, checked against the loss."""
        loader = stage_dataloader(trainer, self.data, stage)
        batches = gather_hessian_batch(trainer, loader, self.num_samples, self.chunk_size, stage)
        check_loss(resolve_loss_fn(self.loss_fn, pl_module), pl_module, batches[0])
        self._samples = samples_over_ranks(trainer, batches)  # fewer where the data is smaller
        self._warnings.about_samples(self._samples, stage)
        return batches

    def _inputs(self, pl_module: pl.LightningModule, stage: str) -> Inputs:
        """What every engine call of a measurement takes: the batch, the loss, the settings."""
        return self._batches[stage], resolve_loss_fn(self.loss_fn, pl_module), self._run_settings

    @override
    def _describe_cost(self, record: dict[str, float]) -> tuple[str, str]:
        return (
            f"{int(record['num_hvps'])} Hessian-vector products on {self._samples} samples, "
            f"{'warm' if record.get('warm_start') else 'cold'}{self._curvature.cost_note()}",
            f"num_samples (the cost is linear in it), tol (now {self.settings.tol:g})",
        )

    # measuring and logging

    @override
    def _measure_and_log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        self._guard.begin()
        spectrum = self._compute_spectrum(trainer, pl_module, stage)
        metrics = self._collect_metrics(trainer, pl_module, stage, spectrum)
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "stage": stage}
        self.history.append({**row, **metrics})
        self._log_metrics(trainer, stage, metrics)

    def _compute_spectrum(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> HessianSpectrum:
        """The spectrum on the stage's Hessian batch; NaN where the guarded step caught a failure."""
        if stage not in self._batches:
            self._batches[stage] = self._gather_hessian_batch(trainer, pl_module, stage)
        params = resolve_params(pl_module, self.settings.params) if stage == "fit" else None
        start = self._tracker.start(params) if stage == "fit" else None
        data, loss_fn, settings = self._inputs(pl_module, stage)
        if stage == "fit":  # the standard errors on their schedule
            settings = self._guard.for_next(settings, cold=start is None)
        spectrum = self._guard.run(
            "the spectrum",
            trainer.global_step,
            lambda: compute_spectrum(pl_module, data, loss_fn, settings, start=start),
        )
        if spectrum is None:
            if stage == "fit":
                self._tracker.reset()
            why = "the guarded step caught a failure"
            return HessianSpectrum.nan(
                settings, why, stderr=bool(settings.stderr) and start is None
            )
        if stage == "fit":
            self._tracker.update(spectrum, params)
            self._guard.note(spectrum)
        self._warnings.about(spectrum, spectrum.as_dict(), trainer.global_step)  # an engine result
        return spectrum

    def _collect_metrics(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        spectrum: HessianSpectrum,
    ) -> dict[str, float]:
        """Every value a measurement logs, by name without prefix: the one place to add one (and
        to list it under "Logged metrics" in the class docstring)."""
        metrics = spectrum.as_dict()
        if self.warm_start:  # a column of its own where warm tries happen: given up, or not
            metrics["warm_given_up"] = float(spectrum.warm_given_up)
        inputs = self._inputs(pl_module, stage)
        stability_warm = True  # no eigenvalue run of its own (SGD) counts as warm
        if self.edge_of_stability and stage == "fit" and spectrum.converged is not None:
            ratio, products = self._stability.measure(
                trainer, pl_module, spectrum, self._guard, inputs
            )
            metrics.update(ratio)
            stability_warm = products == 0 or self._stability.tracker.warm_in_a_row > 0
        if stage == "fit":
            self._guard.wholly_warm = spectrum.warm_start and stability_warm
        self._curvature.add_metrics(
            trainer.global_step, pl_module, stage, spectrum, inputs, metrics
        )
        # the guard's account: every call of this measurement
        metrics["num_hvps"], metrics["seconds"] = float(self._guard.products), self._guard.seconds
        return metrics

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, at_end: bool) -> None:
        if self.density_snapshots and not self._should_skip(trainer, "fit"):
            inputs = self._inputs(pl_module, "fit")
            self._curvature.snapshot_if_due(trainer, pl_module, inputs, at_end)

    @override
    def _on_fit_started(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot(trainer, pl_module, at_end=False)

    def _log_metrics(self, trainer: pl.Trainer, stage: str, metrics: dict[str, float]) -> None:
        prefix = self.log_prefix if stage == "fit" else f"{self.log_prefix}{stage}/"
        prefixed = {f"{prefix}{name}": value for name, value in metrics.items()}
        for name, value in prefixed.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {**prefixed, "epoch": float(trainer.current_epoch)}, step=trainer.global_step
                )
