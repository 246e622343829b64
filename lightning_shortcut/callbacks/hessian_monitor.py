"""``HessianEigenvalueMonitor``: the loss Hessian's extreme eigenvalues, logged during training."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_shortcut.callbacks._cost_report import ExpectedCost
from lightning_shortcut.callbacks._edge_of_stability import EdgeOfStabilityTracker
from lightning_shortcut.callbacks._hessian_batch import (
    check_loss,
    gather_hessian_batch,
    resolve_loss_fn,
    stage_dataloader,
)
from lightning_shortcut.callbacks._options import validate_monitor_options
from lightning_shortcut.callbacks._schedule import DEFAULT_MAX_OVERHEAD, ScheduledMonitor
from lightning_shortcut.callbacks._strategies import (
    check_sharded_model,
    refuse_strategies_without_double_backward,
)
from lightning_shortcut.callbacks._warnings import MeasurementWarnings
from lightning_shortcut.hessian.operator import (
    batch_size,
    resolve_params,
)
from lightning_shortcut.hessian.sharded import fsdp_modules
from lightning_shortcut.hessian.spectrum import (
    HessianSpectrum,
    hessian_eigenvalues,
)
from lightning_shortcut.hessian.tracking import SpectrumTracker

__all__ = ["DEFAULT_MAX_OVERHEAD", "HessianEigenvalueMonitor"]

LossFn = Callable[[pl.LightningModule, Any], Tensor]
ParamsSpec = Literal["all", "residual"] | Callable[[nn.Module], Iterable[Tensor]] | None


class HessianEigenvalueMonitor(ScheduledMonitor):
    r"""Compute and log the top and bottom eigenvalues of the loss Hessian during training.

    Add it to any ``Trainer``: it needs no change to the model and does not change training. The
    Hessian is that of the mean loss over a fixed *Hessian batch*: the first ``num_samples`` samples
    of the train dataloader's dataset (in dataset order, so no RNG is drawn), taken once at the start
    of fitting and kept on the module's device, so successive measurements differ only by the
    weights. Everything numerical is :func:`~lightning_shortcut.hessian.hessian_eigenvalues`; this
    class schedules, gathers data and logs.

    Logged metrics, at ``step = trainer.global_step`` to every logger of the Trainer (rank zero
    only), each a float:

    - ``{log_prefix}max_eigenvalue``: the largest eigenvalue (when ``top_k >= 1``).
    - ``{log_prefix}max_eigenvalue_stderr``: its standard error over Hessian batches of
      ``num_samples`` samples, from 16 chunks of it (:mod:`~lightning_shortcut.hessian.sampling`;
      ``stderr=True``, ``mode="eval"``), with every cold measurement.
    - ``{log_prefix}min_eigenvalue``, ``{log_prefix}min_eigenvalue_stderr``: the same for the
      smallest eigenvalue (when ``bottom_k >= 1``).
    - ``{log_prefix}min_abs_eigenvalue``: the smallest ``|eigenvalue|`` (with ``min_abs=True``).
    - ``{log_prefix}condition_number``: largest over smallest ``|eigenvalue|`` (with
      ``min_abs=True``); ``inf`` when the smallest is below what ``tol`` resolves (the Hessian is
      singular to within ``tol``, as a network's full Hessian usually is; ``params="residual"`` at
      the paper's zero point is well conditioned), never a number that only reflects ``tol``.
    - ``{log_prefix}min_abs_resolved``: ``1.0`` if the smallest ``|eigenvalue|`` is known to
      relative accuracy ``tol``, ``0.0`` if it is below resolution (with ``min_abs=True``).
    - ``{log_prefix}top_<i>``, ``{log_prefix}bottom_<i>``: the ``i``-th largest and smallest
      eigenvalues, ``i = 1 ... k`` (when ``top_k > 1``, ``bottom_k > 1``).
    - ``{log_prefix}hvp_error``: with ``hvp="finite_difference"``, the products' estimated
      relative error (included in the solver's error bounds).
    - ``{log_prefix}num_hvps``: Hessian-vector products used (with the stability ratio's and the
      standard errors').
    - ``{log_prefix}seconds``: wall time of the measurement.
    - ``{log_prefix}converged``: ``1.0`` if every value met ``tol``, else ``0.0``.
    - ``{log_prefix}warm_start``: ``1.0`` for a warm measurement, ``0.0`` for a cold one (the first,
      every ``audit_every``-th, each after a failure, a resume or a change of parameters, a warm run
      given up for a cold one, and the cold ones of the back-off after it).
    - ``{log_prefix}stability`` (fit): the step-preconditioned Hessian's largest eigenvalue over the
      optimizer's threshold, 1.0 the edge of stability (:func:`~lightning_shortcut.hessian.edge_of_stability`);
      free for SGD with one lr, one more eigenvalue run for Adam/AdamW/RMSprop or unequal groups.
    - ``{log_prefix}max_stable_lr``: the first group's learning rate at which ``stability`` is 1.
    - ``epoch``: the epoch, with every row.

    Inside ``trainer.validate``/``test`` the names are ``{log_prefix}validate/...``/``test/...``. The
    values also go to ``trainer.callback_metrics`` and :attr:`history` (kept in checkpoints).
    Guarantees: training is bit-for-bit the same with or without the monitor; at most one measurement
    per ``global_step``; sanity checking and ``fast_dev_run`` are skipped; under DDP and
    ``fully_shard`` every product is summed over the ranks' shares; a non-finite loss or a solver
    that did not converge is logged (NaN where there is no value) and warned about once, and
    training goes on.

    Schedule: by default the monitor measures after any optimizer step where its wall time so far,
    plus the last cost of a measurement of the kind due (cold or warm; before the first warm one,
    the cold one's without its standard errors), stays within its allowance:
    ``max_overhead`` (5%) of the run's training wall time (everything else since
    ``on_train_start``), projected from the steps so far when the Trainer knows the run's length,
    with the time before the first step granted at once and the rest accruing evenly, so that the
    points spread over the run (without a known length: 5% of the training time so far); and where
    the training since its last measurement pays for the next at 5%. The measurement at the initial
    point is always made
    and counts against the budget. The budget is kept in checkpoints; under DDP rank zero decides and
    broadcasts. For the same steps in every run, give ``every_n_steps`` or ``every_n_epochs``, a fixed
    schedule that the budget does not cut unless ``max_overhead`` is set.

    Cost: ``num_hvps`` products on ``num_samples`` samples, each as costly as 1.6-4.3 gradients on
    them (``benchmarks/bench_hessian.py``). A cold measurement takes at least 20 products per
    eigenvalue run; a warm one, started from the previous measurement's vectors, as few as 4 (the
    rule, and why it keeps ``tol``: [warm starts][warm-rule] in the docs' engine page). Where
    the Hessian moves too far between measurements (SGD with momentum on clustered spectra, such as
    the recipes'), warm runs are given up for cold ones after a few products and the monitor backs
    off to cold measurements for a while: warm starts then save nothing and cost up to about 7%
    more. After the first steps the monitor says once what a measurement costs.

    Memory between measurements (``warm_start=True``): the previous fit measurement's eigenvectors
    and the Ritz vectors next to them, at most ``top_k + bottom_k + 4`` vectors of the size of
    ``params`` (6 by default), plus one for Adam's edge-of-stability run; a measurement itself holds a
    Lanczos basis of 20 such vectors (``solver_options={"max_basis": ...}``).

    Strategies: one device, DDP and ``ModelParallelStrategy`` with ``fully_shard`` (FSDP2) over all
    ranks give exact products (solver vectors sharded like the parameters); ``FSDPStrategy`` and
    DeepSpeed are refused at setup, other shardings at fit start (``docs/strategies.md``).

    Loss: ``loss_fn`` if given, else the module's ``hessian_loss(self, batch)`` (the scalar mean loss:
    the way to use a model's own loss), else the cross-entropy of ``pl_module(inputs)``. The batch is
    converted as the Trainer converts training batches (``precision``; bfloat16 gives 2-3 digits).

    Every argument is keyword-only.

    Args:
        every_n_steps: *Schedule.* Measure every this many optimizer steps (``None``: not by steps).
        every_n_epochs: *Schedule.* Measure at the end of every this many training epochs (``None``:
            not by epochs).
        max_overhead: *Schedule.* The share of training wall time the monitor may use, e.g.
            ``0.05``; a due measurement that would exceed it is skipped, and ``0`` keeps only the
            one at fit start. ``None`` (default): ``0.05`` when the monitor schedules itself, no
            limit for a fixed ``every_n_steps``/``every_n_epochs`` schedule.
        at_fit_start: *Schedule.* Measure at the initial point, before the first step (the paper's
            moment).
        stages: *Schedule.* Where to measure: ``"fit"`` and, at the start of
            ``trainer.validate``/``trainer.test``, ``"validate"``/``"test"`` (on the first
            ``num_samples`` samples of their dataloader).
        num_samples: *Hessian batch.* Its size (over all ranks): the first ``num_samples`` samples
            of the train dataloader's dataset. 256 matched a 2048-sample Hessian's extremes as well
            as 512 at half the cost on a BatchNorm CNN; the logged ``*_stderr`` says how much the
            choice of samples moves the values.
        batch_size: *Hessian batch.* Chunk size, to bound memory (default: one chunk, whose
            first-order graph is then built once per measurement and reused by every product;
            with several chunks each product recomputes it for every chunk).
        data: *Hessian batch.* A ``DataLoader`` or ``LightningDataModule`` to draw it from instead of
            the Trainer's train dataloader.
        params: *Hessian batch.* ``"all"``/``None`` (every trainable parameter), ``"residual"`` (the
            ResidualStack branch parameters, the paper's quantity) or a callable
            ``module -> parameters``.
        loss_fn: *Hessian batch.* ``loss_fn(pl_module, batch) -> scalar`` (see Loss).
        mode: *Hessian batch.* ``"eval"`` (dropout off, BatchNorm running statistics) or ``"train"``.
        method: *Solver.* A solver of :data:`~lightning_shortcut.hessian.SOLVERS`: ``"lanczos"``,
            ``"power"``, ``"pyhessian"`` or one you registered.
        top_k: *Solver.* Number of largest eigenvalues.
        bottom_k: *Solver.* Number of smallest eigenvalues.
        min_abs: *Solver.* Also the smallest ``|eigenvalue|`` and the condition number (Lanczos
            only).
        tol: *Solver.* The error allowed in each eigenvalue, relative to the largest
            ``|eigenvalue|``.
        max_iter: *Solver.* The products one eigenvalue run may use (default 100; ``None``: 300,
            1000 with ``min_abs``); a run that reaches it returns its best estimates, logged with
            ``converged=0`` and warned about once.
        warm_start: *Solver.* Start each fit measurement from the previous one's vectors (see Cost
            and Memory); ``False``: every measurement is cold.
        audit_every: *Solver.* With ``warm_start``, every this many fit measurements one is cold, so
            that an eigenvalue crossing (a new direction rising above the tracked one, which warm
            runs cannot see) is caught within this many measurements.
        hvp: *Solver.* ``"autograd"`` (double backward, exact) or ``"finite_difference"`` (the
            central difference of two gradients, its error estimated and logged as ``hvp_error``;
            see :class:`~lightning_shortcut.hessian.HessianOperator`).
        seed: *Solver.* Seed of the solver's private generator.
        solver_options: *Solver.* Extra arguments of the solver, e.g. ``{"max_basis": 10}``.
        stderr: *Output.* Log the standard errors of the extreme eigenvalues over Hessian batches of
            the same size with every cold measurement (only in ``mode="eval"``). Each takes a
            product on each of 16 chunks of the Hessian batch (in one vmapped pass where it can),
            a fraction of a cold measurement, so it comes with the audits rather than every
            measurement.
        edge_of_stability: *Output.* Log ``stability`` and ``max_stable_lr`` from the run's
            optimizer (:func:`~lightning_shortcut.hessian.edge_of_stability`).
        warn_above: *Output.* Warn once when ``stability`` stays above this for 3 measurements
            (``None``: never).
        log_prefix: *Output.* Prefix of the logged names.
        clock: The time budget's wall clock in seconds (default :func:`time.perf_counter`); for
            simulations and tests that need a deterministic schedule.

    Raises:
        TypeError: on an argument of the wrong type, naming it and what is accepted.
        ValueError: on a bad argument value, naming it and what is accepted; at the start of
            fitting, on a batch the default loss cannot read or a ``params="residual"`` model
            without ResidualStack.
        MisconfigurationException: under ``FSDPStrategy`` or DeepSpeed, which do not support
            double backward; at the start of fitting, under a sharding other than ``fully_shard``
            over all ranks (see Strategies).

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
        batch_size: int | None = None,
        data: DataLoader | pl.LightningDataModule | None = None,
        params: ParamsSpec = None,
        loss_fn: LossFn | None = None,
        mode: Literal["eval", "train"] = "eval",
        method: str = "lanczos",
        top_k: int = 1,
        bottom_k: int = 1,
        min_abs: bool = False,
        tol: float = 1e-2,
        max_iter: int | None = 100,
        warm_start: bool = True,
        audit_every: int = 10,
        hvp: Literal["autograd", "finite_difference"] = "autograd",
        seed: int = 0,
        solver_options: dict[str, Any] | None = None,
        stderr: bool = True,
        edge_of_stability: bool = True,
        warn_above: float | None = 2.0,
        log_prefix: str = "hessian/",
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(every_n_steps, every_n_epochs, max_overhead, at_fit_start, stages, clock)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.data = data
        self.params = params
        self.loss_fn = loss_fn
        self.mode = mode
        self.method = method
        self.top_k, self.bottom_k = top_k, bottom_k
        self.min_abs = min_abs
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.audit_every = audit_every
        self.hvp = hvp
        self.seed = seed
        self.solver_options = dict(solver_options or {})
        self.stderr = stderr
        self.edge_of_stability = edge_of_stability
        self.warn_above = warn_above
        self.log_prefix = log_prefix
        validate_monitor_options(self)
        self._batches: dict[str, list[Any]] = {}  # the Hessian batch of each stage
        self._samples = num_samples  # in the last Hessian batch gathered
        self._sharded = False  # the model is sharded by fully_shard (FSDP2)
        self._stderr_share = 0.0  # of the last measurement in fit, in its time
        self._wholly_warm = False  # the last fit measurement's eigenvalue runs were all warm
        self._warnings = MeasurementWarnings(num_samples, tol, max_iter, params=params)
        # warm starts of the fit measurements (audit_every=1 when off: every one is cold)
        self._tracker = SpectrumTracker(audit_every if warm_start else 1)
        self._stability = EdgeOfStabilityTracker(
            warn_above, self._warnings.once, SpectrumTracker(audit_every if warm_start else 1)
        )

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_steps=self.every_n_steps,
            every_n_epochs=self.every_n_epochs,
            method=self.method,
            log_prefix=self.log_prefix,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "tracker": self._tracker.state_dict(),
            "stability_tracker": self._stability.tracker.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._tracker.load_state_dict(state_dict.get("tracker", {}))
        self._stability.tracker.load_state_dict(state_dict.get("stability_tracker", {}))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_strategies_without_double_backward(trainer)

    # the Hessian batch and the loss

    @override
    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._sharded = check_sharded_model(trainer, pl_module, self.params, self.method)
        self._batches[stage] = self._gather_hessian_batch(trainer, pl_module, stage)

    def _gather_hessian_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> list[Any]:
        """This rank's share of the stage's Hessian batch, checked against the loss."""
        loader = stage_dataloader(trainer, self.data, stage)
        batches = gather_hessian_batch(trainer, loader, self.num_samples, self.batch_size, stage)
        check_loss(resolve_loss_fn(self.loss_fn, pl_module), pl_module, batches[0])
        # the samples there are (a dataset smaller than num_samples gives fewer), over all ranks
        self._samples = sum(batch_size(batch) for batch in batches) * trainer.world_size
        if self._samples < self.num_samples:
            self._warnings.once(
                "few_samples",
                f"HessianEigenvalueMonitor: num_samples={self.num_samples} asked, but the {stage} "
                f"data holds only {self._samples}: the Hessian batch is those {self._samples} "
                "samples (the standard errors and the cost are for them).",
            )
        return batches

    @override
    def _next_kind(self) -> str:
        return "cold" if self._tracker.cold_next else "warm"

    @override
    def _seed_estimates(self) -> None:
        # a warm measurement that stops warm computes no standard errors and costs less than a cold
        # one; one given up costs more (its products, then a cold run). Until one is made, expect
        # the cold one's cost without the standard errors; the first attempt corrects it.
        if "warm" not in self.budget.costs and self._stderr_share:
            self.budget.costs["warm"] = self.budget.last_cost * (1 - self._stderr_share)

    @override
    def _cost_cycle(self) -> int:
        # one cold audit in audit_every measurements (and, under Adam, one cold stability run)
        return self._tracker.audit_every

    @override
    def _is_steady(self) -> bool:
        return self._wholly_warm

    @override
    def _expected_cost(self) -> ExpectedCost:
        # one cold audit in audit_every measurements at the last cold one's cost, the others at
        # the last wholly warm one's; where none has been (warm runs given up), the last cycle's
        # mean. Warm runs given up later are not foreseen: the message says they cost more.
        expected = super()._expected_cost()
        audit_every = self._cost_cycle()
        if audit_every == 1:
            return ExpectedCost(expected.seconds, "each cold")
        if self._steady_cost is None:
            return ExpectedCost(
                expected.seconds, f"{expected.mix}: warm runs were given up for cold ones"
            )
        cold = self.budget.costs.get("cold", expected.seconds)
        return ExpectedCost(
            (cold + (audit_every - 1) * expected.seconds) / audit_every,
            f"one cold in audit_every={audit_every} at {cold:.3g} s, the others warm at "
            f"{expected.seconds:.3g} s; a warm run given up for a cold one costs more",
        )

    @override
    def _describe_cost(self, record: dict[str, float]) -> tuple[str, str]:
        start = "warm" if record.get("warm_start") else "cold"
        return (
            f"{int(record['num_hvps'])} Hessian-vector products on {self._samples} samples, "
            f"{start}",
            f"num_samples (the cost is linear in it), tol (now {self.tol:g})",
        )

    # measuring and logging

    @override
    def _measure_and_log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        spectrum = self._compute_spectrum(trainer, pl_module, stage)
        metrics = self._collect_metrics(trainer, pl_module, stage, spectrum)
        self._warnings.about(spectrum, metrics, trainer.global_step)
        self.history.append(
            {"step": trainer.global_step, "epoch": trainer.current_epoch, "stage": stage, **metrics}
        )
        self._log_metrics(trainer, stage, metrics)

    def _compute_spectrum(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> HessianSpectrum:
        """The spectrum on the stage's Hessian batch; NaN (and a warning) if the solver fails."""
        batches = self._batches.get(stage)
        if batches is None:
            batches = self._batches[stage] = self._gather_hessian_batch(trainer, pl_module, stage)
        params = resolve_params(pl_module, self.params) if stage == "fit" else None
        start = self._tracker.start(params) if stage == "fit" else None
        try:
            spectrum = hessian_eigenvalues(
                pl_module,
                top_k=self.top_k,
                bottom_k=self.bottom_k,
                min_abs=self.min_abs,
                start=start,
                stderr="cold" if self._wants_stderr() else False,
                **self._hessian_args(trainer, pl_module, batches),
            )
            if stage == "fit":
                self._tracker.update(spectrum, params)
                self._stderr_share = spectrum.stderr_seconds / max(spectrum.seconds, 1e-12)
            return spectrum
        # a numerical or memory error is logged as NaN: training goes on
        except (RuntimeError, torch.OutOfMemoryError) as error:
            self._warnings.once(
                "error",
                f"HessianEigenvalueMonitor could not compute the spectrum at step "
                f"{trainer.global_step}: {error}",
            )
            if stage == "fit":
                self._tracker.reset()
            return HessianSpectrum.nan(
                self.top_k,
                self.bottom_k,
                self.min_abs,
                self.method,
                reason=str(error),
                stderr=self._wants_stderr() and start is None,
            )

    def _wants_stderr(self) -> bool:
        """Whether the standard errors are wanted (they come with cold measurements, a warm run
        given up for a cold one included: on a warm one they cost about as much as it)."""
        return self.stderr and self.mode == "eval" and not self._sharded

    def _hessian_args(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batches: list[Any]
    ) -> dict[str, Any]:
        """What every solver call of a measurement shares: data, loss, parameters, settings."""
        all_reduce = None
        # fully_shard parameters: the engine sums over their device mesh itself
        if trainer.world_size > 1 and not fsdp_modules(pl_module):
            all_reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        return {
            "data": batches,
            "loss_fn": resolve_loss_fn(self.loss_fn, pl_module),
            "params": self.params,
            "method": self.method,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "seed": self.seed,
            "mode": self.mode,
            "all_reduce": all_reduce,
            "solver_options": self.solver_options,
            "hvp": self.hvp,
        }

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
        stability_warm = True  # no eigenvalue run of its own (SGD) counts as warm
        if self.edge_of_stability and stage == "fit" and spectrum.converged is not None:
            ratio, products, seconds = self._stability.measure(
                trainer,
                pl_module,
                spectrum,
                **self._hessian_args(trainer, pl_module, self._batches[stage]),
            )
            metrics.update(ratio)
            metrics["num_hvps"] += products
            metrics["seconds"] += seconds
            stability_warm = products == 0 or self._stability.tracker.warm_in_a_row > 0
        if stage == "fit":
            self._wholly_warm = spectrum.warm_start and stability_warm
        return metrics

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
