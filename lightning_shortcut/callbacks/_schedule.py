"""``ScheduledMonitor``: when a monitoring callback measures, and within what share of the time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from lightning_shortcut.callbacks._budget import OverheadBudget
from lightning_shortcut.callbacks._cost_report import CostReport, ExpectedCost
from lightning_shortcut.callbacks._guarded import GuardedMeasurements
from lightning_shortcut.hessian._validation import check_non_negative_float, check_positive_int

__all__ = ["DEFAULT_MAX_OVERHEAD", "STAGES", "ScheduledMonitor"]

#: The share of training wall time a self-scheduling monitor plans for by default: half the 10% it
#: may add, leaving room for estimates that miss and for costs its clock cannot see.
DEFAULT_MAX_OVERHEAD = 0.05
STAGES = ("fit", "validate", "test")


class ScheduledMonitor(Callback):
    """Base class of a callback that measures the model during fitting: it decides when.

    It measures as :class:`~lightning_shortcut.callbacks.HessianEigenvalueMonitor` documents (its
    options are this class's ``every_n_steps``, ``every_n_epochs``, ``max_overhead``,
    ``at_fit_start`` and ``stages``), at most once per global step; :attr:`history`, the last
    measured step and the budget are kept in checkpoints. ``costs`` is the monitor's guarded step
    and account, ``clock`` the time budget's wall clock (default :func:`time.perf_counter`).

    A subclass implements :meth:`_measure_and_log` and may override :meth:`_prepare`,
    :meth:`_on_fit_started` and :meth:`_describe_cost`.
    """

    def __init__(
        self,
        every_n_steps: int | None,
        every_n_epochs: int | None,
        max_overhead: float | None,
        at_fit_start: bool,
        stages: Sequence[str],
        costs: GuardedMeasurements,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.max_overhead = max_overhead
        self.at_fit_start = at_fit_start
        self.stages = (stages,) if isinstance(stages, str) else tuple(stages)
        self.__validate_schedule()
        self.history: list[dict[str, Any]] = []
        self.budget = OverheadBudget(clock)
        self._costs = costs
        self._cost_report = CostReport(self.budget.clock)
        self._last_step: int = -1  # the last global step measured in fit
        self._last_checked_step: int = -1  # the last global step the schedule was asked about
        self._fit_costs: list[float] = []  # of the measurements since this fit started, in order
        self._steady_cost: float | None = None  # of the last one in this fit of the usual kind

    def _use_clock(self, clock: Callable[[], float]) -> None:
        """Time the budget and the cost report by ``clock`` (tests and simulations)."""
        self.budget.clock = self._cost_report.clock = clock

    def __validate_schedule(self) -> None:
        for name in ("every_n_steps", "every_n_epochs"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.max_overhead is not None:
            check_non_negative_float("max_overhead", self.max_overhead)
        if not self.stages or any(stage not in STAGES for stage in self.stages):
            raise ValueError(
                f"`stages` must be a non-empty subset of {list(STAGES)}, got {self.stages!r}."
            )

    @property
    def self_scheduling(self) -> bool:
        """Whether the monitor picks its steps within the time budget (no fixed schedule given)."""
        return self.every_n_steps is None and self.every_n_epochs is None

    @property
    def overhead_budget(self) -> float | None:
        """The share of training time the monitor may use (``None``: no limit)."""
        if self.max_overhead is not None:
            return float(self.max_overhead)
        return DEFAULT_MAX_OVERHEAD if self.self_scheduling else None

    # to implement

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """At the start of ``stage``: get ready to measure in it (for instance, take the data)."""

    def _measure_and_log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        """Measure, append a record to :attr:`history` and log it."""
        raise NotImplementedError

    def _on_fit_started(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called after :meth:`_prepare` and any measurement at the initial point of a fit."""

    def _describe_cost(self, record: dict[str, float]) -> tuple[str, str]:
        """For the cost report: what a measurement did and the levers besides the schedule's."""
        return "", ""

    # Lightning hooks: one line each

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_fit(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._measure_if_step_due(trainer, pl_module)
        self._report_cost_once(trainer, epoch_end=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure_if_epoch_due(trainer, pl_module)
        self._report_cost_once(trainer, epoch_end=True)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure_at_evaluation_start(trainer, pl_module, "validate")

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._measure_at_evaluation_start(trainer, pl_module, "test")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(record) for record in self.history],
            "last_step": self._last_step,
            **self.budget.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(record) for record in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", -1))
        self.budget.load_state_dict(state_dict)

    # decisions

    def _should_skip(self, trainer: pl.Trainer, stage: str) -> bool:
        return stage not in self.stages or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def _step_is_due(self, step: int) -> bool:
        return self.self_scheduling or (
            self.every_n_steps is not None and step % self.every_n_steps == 0
        )

    def _within_budget(self, trainer: pl.Trainer) -> bool:
        return self.budget.allows(self.overhead_budget, trainer, self._costs.next_kind())

    def _start_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the time budget, prepare (booked to the monitor), measure at the initial point."""
        if self._should_skip(trainer, "fit"):
            return
        self.budget.start()
        self._fit_costs, self._steady_cost = [], None
        self._prepare(trainer, pl_module, "fit")
        self.budget.book(monitor=True)
        if self.at_fit_start and trainer.global_step == 0:
            self._measure_in_fit(trainer, pl_module)
        self._on_fit_started(trainer, pl_module)
        self._cost_report.start(trainer, self.budget.monitor_seconds)

    def _measure_if_step_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self._should_skip(trainer, "fit") or step in (0, self._last_checked_step):
            return
        self._last_checked_step = step  # gradient accumulation calls this hook several times a step
        if self._step_is_due(step) and self._within_budget(trainer):
            self._measure_in_fit(trainer, pl_module)

    def _measure_if_epoch_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer, "fit") or self.every_n_epochs is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and self._within_budget(trainer):
            self._measure_in_fit(trainer, pl_module)

    def _measure_at_evaluation_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        if self._should_skip(trainer, stage):
            return
        if stage == "validate" and trainer.state.fn != TrainerFn.VALIDATING:
            return  # the validation loop inside fit is not a stage of its own
        self._prepare(trainer, pl_module, stage)
        self._measure_and_log(trainer, pl_module, stage)

    def _measure_in_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure once per global step, booking the time to the budget."""
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        with self.budget.measuring(self._costs.next_kind()):
            self._measure_and_log(trainer, pl_module, "fit")
        self._fit_costs.append(self.budget.last_cost)
        if len(self._fit_costs) > 1 and self._costs.is_steady():  # the first: one-time costs
            self._steady_cost = self.budget.last_cost
        self._costs.seed_estimates(self.budget)

    def _costs_timed(self) -> bool:
        """Whether the cost report can forecast: after one measurement (budget), or a steady one
        after the first of this fit, or a whole cycle (fixed schedule)."""
        if self.self_scheduling:
            return bool(self.history)
        return self._steady_cost is not None or len(self._fit_costs) >= max(2, self._costs.cycle)

    def _expected_cost(self) -> ExpectedCost:
        """A fixed schedule's mean measurement: the last steady one, else the last cycle's mean."""
        if self._steady_cost is not None:
            base = ExpectedCost(self._steady_cost)
        else:
            cycle = self._fit_costs[-self._costs.cycle :]
            base = ExpectedCost(sum(cycle) / len(cycle), f"the mean of the last {len(cycle)}")
        return self._costs.expected(base, self.budget, self._steady_cost)

    def _report_cost_once(self, trainer: pl.Trainer, epoch_end: bool) -> None:
        """Once, when the costs are timed: what a measurement costs and the schedule implies."""
        if self._should_skip(trainer, "fit") or not self._costs_timed():
            return
        if self._cost_report.ready(trainer, epoch_end):
            what, levers = self._describe_cost(self.history[-1])
            message = self._cost_report.message(
                trainer,
                self.budget.monitor_seconds,
                self.history[-1]["seconds"],
                name=type(self).__name__,
                what=what,
                levers=levers,
                budget=self.overhead_budget,
                every_n_steps=self.every_n_steps,
                every_n_epochs=self.every_n_epochs,
                expected=self._expected_cost(),
                extra=self._costs.extra_to_come(trainer.global_step),
            )
            rank_zero_info(message)
