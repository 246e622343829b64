"""A fake Trainer loop and a fake clock for a monitor's schedule: the hooks a real ``fit`` calls, in
its order, without a model, so that the scheduler is tested against the scheduler (milliseconds)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from lightning.pytorch.trainer.states import TrainerFn

from lightning_shortcut.callbacks._schedule import ScheduledMonitor


class UniformCosts:
    """The cost estimates of measurements all of one kind: the last one's cost is the next one's."""

    cycle = 1

    def next_kind(self):
        return None

    def seed_estimates(self, budget):
        pass

    def is_steady(self):
        return True

    def expected(self, base, budget, steady):
        return base

    def extra_to_come(self, step):
        return 0, 0.0


class CountingMonitor(ScheduledMonitor):
    """A :class:`ScheduledMonitor` whose measurement only records the step it was made at."""

    def __init__(self, *, every_n_steps=None, every_n_epochs=None, max_overhead=None, **kwargs):
        super().__init__(
            every_n_steps,
            every_n_epochs,
            max_overhead,
            kwargs.pop("at_fit_start", True),
            kwargs.pop("stages", ("fit",)),
            UniformCosts(),
            kwargs.pop("clock", None),
        )
        assert not kwargs, kwargs

    def _measure_and_log(self, trainer, pl_module, stage) -> None:
        self.history.append({"step": trainer.global_step, "stage": stage, "seconds": 0.0})


class FakeTrainer(SimpleNamespace):
    """What a monitor's schedule reads of a Trainer: steps, epochs, the run's length, the state."""

    def __init__(self, steps_per_epoch: int, max_epochs: int = -1, max_steps: int = -1, **kwargs):
        defaults = dict(
            global_step=0,
            current_epoch=0,
            num_training_batches=steps_per_epoch,
            max_epochs=max_epochs,
            max_steps=max_steps,
            sanity_checking=False,
            fast_dev_run=False,
            state=SimpleNamespace(fn=TrainerFn.FITTING),
            world_size=1,
            global_rank=0,
            is_global_zero=True,
            should_stop=False,
        )
        super().__init__(**{**defaults, **kwargs})

    @property
    def estimated_stepping_batches(self) -> float:
        """As Lightning's: ``max_steps`` if set, else ``max_epochs`` epochs, else ``inf``."""
        if self.max_steps != -1:
            return self.max_steps
        return self.max_epochs * self.num_training_batches if self.max_epochs > 0 else math.inf


class FakeClock:
    """An optimizer step takes 1 s and each measurement of the monitor ``cost`` s."""

    def __init__(self, trainer: FakeTrainer, cost: float) -> None:
        self.trainer, self.cost, self.monitor = trainer, cost, None

    def __call__(self) -> float:
        return self.trainer.global_step + self.cost * len(self.monitor.history)


def clocked(trainer: FakeTrainer, cost: float, **kwargs: Any) -> CountingMonitor:
    """A :class:`CountingMonitor` on a :class:`FakeClock` of ``cost`` s a measurement."""
    clock = FakeClock(trainer, cost)
    clock.monitor = CountingMonitor(clock=clock, **kwargs)
    return clock.monitor


def run_fit(monitor: ScheduledMonitor, trainer: FakeTrainer, stop_at: int | None = None) -> None:
    """The fit loop's hooks, as Lightning calls them, from the trainer's step and epoch on, to
    ``max_steps``/``max_epochs`` or ``stop_at`` (a callback setting ``should_stop``)."""
    monitor.on_train_start(trainer, None)
    while trainer.max_epochs < 0 or trainer.current_epoch < trainer.max_epochs:
        for batch_idx in range(trainer.num_training_batches):
            trainer.global_step += 1
            monitor.on_train_batch_end(trainer, None, None, None, batch_idx)
            if trainer.global_step in (trainer.max_steps, stop_at):
                trainer.should_stop = True
            if trainer.should_stop:
                break
        monitor.on_train_epoch_end(trainer, None)
        trainer.current_epoch += 1
        if trainer.should_stop:
            return
