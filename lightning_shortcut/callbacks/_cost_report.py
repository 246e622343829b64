"""What a measurement costs, said once early in fit: in training steps, and what the schedule implies."""

from __future__ import annotations

import math

import lightning.pytorch as pl

from lightning_shortcut.callbacks._budget import accrual_rate, run_length

#: Optimizer steps timed before the report (fewer if the first epoch is shorter).
STEPS_TO_TIME = 10


class CostReport:
    """Times the first training steps after fit start, then reports one measurement's cost once.

    Args:
        clock: the monitor's wall clock.
    """

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
    ) -> str:
        """The report, once: ``cost`` is the latest measurement's seconds, ``what`` what it did."""
        self.pending = False
        steps = trainer.global_step - self._start_step
        training = self.clock() - self._start - (monitor_seconds - self._monitor_seconds)
        step_seconds = max(training, 1e-9) / steps
        in_steps = cost / step_seconds
        total = run_length(trainer)
        lines = [
            f"{name}: one measurement takes {cost:.3g} s" + (f" ({what})" if what else "") + ", "
            f"as long as about {in_steps:.3g} training steps ({step_seconds * 1e3:.3g} ms each)."
        ]
        if every_n_steps is None and every_n_epochs is None and budget is not None:
            # the budget's plan: the time before the first step is granted, the rest of
            # ``budget`` of the run accrues evenly (OverheadBudget)
            known = math.isfinite(total)
            rate = accrual_rate(budget, self._monitor_seconds / step_seconds, total)
            interval = math.inf if rate <= 0 else max(1.0, in_steps / rate)
            if math.isinf(interval):
                lines.append(
                    f"Within max_overhead={budget} it measures no more: the measurement at the "
                    "initial point used this run's budget."
                )
            else:
                count = (
                    f" (about {1 + total / interval:.0f} in all of this run's {total:.0f} steps)"
                )
                lines.append(
                    f"Within max_overhead={budget} it measures about every {interval:.0f} steps"
                    + (count if known else "")
                    + "."
                )
        elif every_n_steps is not None:
            lines.append(
                f"every_n_steps={every_n_steps} adds about {in_steps / every_n_steps:.0%}."
            )
        else:
            per_epoch = trainer.num_training_batches
            share = in_steps / (per_epoch * every_n_epochs) if math.isfinite(per_epoch) else 0.0
            lines.append(f"every_n_epochs={every_n_epochs} adds about {share:.0%}.")
        lines.append(f"To change it: {levers}, max_overhead, every_n_steps or every_n_epochs.")
        return " ".join(lines)
