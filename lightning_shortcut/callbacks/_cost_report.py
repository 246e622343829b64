"""What a measurement costs, said once early in fit: in training steps, and what the schedule implies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl

from lightning_shortcut.callbacks._budget import accrual_rate, run_length, steps_per_batch

#: Optimizer steps timed before the report (fewer if the first epoch is shorter).
STEPS_TO_TIME = 10


@dataclass(frozen=True)
class ExpectedCost:
    """The expected ``seconds`` of a measurement on a fixed schedule, averaged over the kinds to
    come, and the ``mix`` of the average in words (empty: every measurement alike)."""

    seconds: float
    mix: str = ""


class CostReport:
    """Times the first training steps after fit start, then reports a measurement's cost once."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.pending = False
        self._start = 0.0
        self._start_step = 0
        self._monitor_seconds = 0.0

    def start(self, trainer: pl.Trainer, monitor_seconds: float) -> None:
        """Start timing training steps (after the measurement at fit start, if any)."""
        self.pending = True
        self._start, self._start_step = self.clock(), trainer.global_step
        self._monitor_seconds = monitor_seconds

    def ready(self, trainer: pl.Trainer, epoch_end: bool) -> bool:
        steps = trainer.global_step - self._start_step
        return self.pending and (steps >= STEPS_TO_TIME or (epoch_end and steps > 0))

    def message(
        self,
        trainer: pl.Trainer,
        monitor_seconds: float,
        cost: float,
        *,
        name: str,
        what: str,
        levers: str,
        budget: float | None,
        every_n_steps: int | None,
        every_n_epochs: int | None,
        expected: ExpectedCost | None = None,
        extra: tuple[int, float] = (0, 0.0),
    ) -> str:
        """The report, once: ``cost`` is the latest measurement's seconds, ``expected`` a fixed
        schedule's average (default ``cost``), ``extra`` the snapshots to come and their seconds."""
        self.pending = False
        steps = trainer.global_step - self._start_step
        training = self.clock() - self._start - (monitor_seconds - self._monitor_seconds)
        step_seconds = max(training, 1e-9) / steps
        in_steps = cost / step_seconds
        per_batch = steps_per_batch(trainer)  # global_step counts each optimizer's step
        kind, note = ("training", "") if per_batch == 1 else ("optimizer", f"; {per_batch} a batch")
        lines = [
            f"{name}: one measurement takes {cost:.3g} s" + (f" ({what})" if what else "") + ", "
            f"as long as about {in_steps:.3g} {kind} steps ({step_seconds * 1e3:.3g} ms each{note})."
        ]
        if every_n_steps is None and every_n_epochs is None:
            if budget is not None:
                lines.append(self._budget_plan(trainer, budget, in_steps, step_seconds, extra))
        else:
            lines.append(
                _fixed_schedule(
                    trainer,
                    monitor_seconds,
                    step_seconds,
                    expected or ExpectedCost(cost),
                    every_n_steps,
                    every_n_epochs,
                    budget,
                    extra,
                )
            )
        levers = f"{levers}, " if levers else ""
        lines.append(f"To change it: {levers}max_overhead, every_n_steps or every_n_epochs.")
        return " ".join(lines)

    def _budget_plan(
        self,
        trainer: pl.Trainer,
        budget: float,
        in_steps: float,
        step_seconds: float,
        extra: tuple[int, float],
    ) -> str:
        """How often the budget lets it measure, less the ``extra`` work still to come."""
        total = run_length(trainer)
        rate = accrual_rate(budget, self._monitor_seconds / step_seconds, total)
        if math.isfinite(total):
            rate = max(rate - extra[0] * extra[1] / step_seconds / total, 0.0)
        interval = math.inf if rate <= 0 else max(1.0, in_steps / rate)
        if math.isinf(interval):
            return (
                f"Within max_overhead={budget} it measures no more: the measurement at the "
                "initial point used this run's budget."
            )
        count = ""
        if math.isfinite(total):
            count = f" (about {1 + total / interval:.0f} in all of this run's {total:.0f} steps)"
        return f"Within max_overhead={budget} it measures about every {interval:.0f} steps{count}."


def _steps_per_epoch(trainer: pl.Trainer) -> float:
    """Optimizer steps in a training epoch (``inf`` where the Trainer does not know its length)."""
    batches = float(getattr(trainer, "num_training_batches", math.inf))
    if not math.isfinite(batches) or batches <= 0:
        return math.inf
    accumulate = max(int(getattr(trainer, "accumulate_grad_batches", 1)), 1)
    return float(math.ceil(batches / accumulate) * steps_per_batch(trainer))


def _fixed_schedule(
    trainer: pl.Trainer,
    monitor_seconds: float,
    step_seconds: float,
    expected: ExpectedCost,
    every_n_steps: int | None,
    every_n_epochs: int | None,
    budget: float | None,
    extra: tuple[int, float],
) -> str:
    """What a fixed schedule adds: over the whole run where the Trainer knows its length (the time
    measured so far and what is still due), else per training step from here on."""
    names, intervals = [], []  # the schedule's intervals in optimizer steps
    if every_n_steps is not None:
        names.append(f"every_n_steps={every_n_steps}")
        intervals.append(float(every_n_steps))
    if every_n_epochs is not None:
        names.append(f"every_n_epochs={every_n_epochs}")
        intervals.append(every_n_epochs * _steps_per_epoch(trainer))
    schedule = " and ".join(names) + (" add" if len(names) > 1 else " adds")
    intervals = [interval for interval in intervals if math.isfinite(interval)]
    mix = f" ({expected.mix})" if expected.mix else ""
    each = f"about {expected.seconds:.3g} s each{mix}"
    if not intervals:
        return f"{schedule} measurements of {each}; the epochs' length is unknown."
    total, step = run_length(trainer), trainer.global_step
    if math.isfinite(total) and total > step:
        due = sum(math.floor(total / i) - math.floor(step / i) for i in intervals)
        count, seconds = extra
        spent = monitor_seconds + due * expected.seconds + count * seconds
        share = spent / (total * step_seconds)
        one = f"about {expected.seconds:.3g} s{mix}"
        to_come = f"s to come at {each}" if due != 1 else f" to come at {one}"
        snapshots = ""
        if count:
            snapshots = f", and {count} density snapshot(s) at about {seconds:.3g} s each"
        line = (
            f"{schedule} about {share:.0%} to this run's {total:.0f} steps: "
            f"{monitor_seconds:.3g} s measured so far and {due} measurement{to_come}{snapshots}."
        )
    else:
        share = sum(1 / i for i in intervals) * expected.seconds / step_seconds
        line = (
            f"{schedule} about {share:.0%} to the training time from here on "
            f"({monitor_seconds:.3g} s measured so far), measurements at {each}."
        )
    if budget is not None and share > budget:
        line += f" max_overhead={budget} skips those beyond it."
    return line
