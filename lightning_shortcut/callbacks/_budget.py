"""``OverheadBudget``: the wall time a callback spends next to training, and whether it may spend more."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException

__all__ = ["OverheadBudget", "accrual_rate", "run_length", "steps_per_batch"]


def steps_per_batch(trainer: pl.Trainer) -> int:
    """Optimizer steps (``global_step``) per training batch: one, but under manual optimization,
    where every optimizer's step counts, one per optimizer (each taken to step once a batch)."""
    module = getattr(trainer, "lightning_module", None)
    if module is None or getattr(module, "automatic_optimization", True):
        return 1
    return max(len(getattr(trainer, "optimizers", ())), 1)


def run_length(trainer: pl.Trainer) -> float:
    """The run's optimizer steps (``global_step`` at its end) as the Trainer estimates them; ``inf``
    where it cannot (no ``max_steps``/``max_epochs``, or accumulation scheduled per epoch)."""
    try:
        total = float(getattr(trainer, "estimated_stepping_batches", math.inf))
    except MisconfigurationException:  # accumulation scheduled per epoch
        return math.inf
    if total <= 0:  # -1: an iterable dataset without max_steps
        return math.inf
    total *= steps_per_batch(trainer)
    max_steps = getattr(trainer, "max_steps", -1)
    return min(total, float(max_steps)) if max_steps is not None and max_steps > 0 else total


def accrual_rate(share: float, initial: float, total: float) -> float:
    """The share of training time that accrues once ``initial`` is granted out of ``share`` of a
    run of ``total`` (``inf``: unknown length); ``0`` where ``initial`` used it all."""
    return max(share - initial / total, 0.0)


class OverheadBudget:
    """Books wall time to training or to the callback and decides whether one more measurement fits.

    Time between two calls is booked to whichever side the second call names. A measurement fits
    when the callback's time plus the estimate (the last cost of the same ``kind``, such as cold or
    warm, else the last cost) stays within its allowance (:meth:`allowance`), and the training
    since the last measurement pays for it at ``share``, so that left-over time is not spent in a
    burst (docs/monitor.md, "When it measures"). ``clock`` defaults to :func:`time.perf_counter`.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.perf_counter
        self.train_seconds = 0.0
        self.monitor_seconds = 0.0
        self.last_cost = 0.0
        self.costs: dict[str, float] = {}  # the last cost of each kind of measurement
        self.train_seconds_at_last = 0.0  # the training time when the last measurement ended
        # the callback's time before the first decision (the measurement at the initial point)
        self.initial_seconds: float | None = None
        self._mark = 0.0

    def start(self) -> None:
        """Set the mark: time from now on is booked by the next call."""
        self._mark = self.clock()

    def book(self, *, monitor: bool) -> float:
        """Book the time since the mark to the callback (``monitor=True``) or to training."""
        now = self.clock()
        seconds, self._mark = now - self._mark, now
        if monitor:
            self.monitor_seconds += seconds
        else:
            self.train_seconds += seconds
        return seconds

    @contextmanager
    def measuring(self, kind: str | None = None) -> Iterator[None]:
        """Book the time before the block to training, the block's to the callback (as ``kind``)."""
        self.book(monitor=False)
        yield
        self.last_cost = self.book(monitor=True)
        self.train_seconds_at_last = self.train_seconds
        if kind is not None:
            self.costs[kind] = self.last_cost

    def estimate(self, kind: str | None = None) -> float:
        """The expected cost of the next measurement of ``kind``."""
        return self.costs.get(kind, self.last_cost) if kind is not None else self.last_cost

    def allows(self, share: float | None, trainer: pl.Trainer, kind: str | None = None) -> bool:
        """Whether a measurement (of ``kind``) now keeps the callback within ``share`` of training
        time (``None``: always, ``0``: never); rank zero decides for every rank, as each product is
        a collective."""
        if share is None or share == 0:
            return share is None
        self.book(monitor=False)
        if self.initial_seconds is None:  # the first decision: all measured so far was initial
            self.initial_seconds = self.monitor_seconds
        estimate = self.estimate(kind)
        allowed = self.monitor_seconds + estimate <= self.allowance(
            share, trainer
        ) and estimate <= share * (self.train_seconds - self.train_seconds_at_last)
        if trainer.world_size > 1:
            allowed = trainer.strategy.broadcast(allowed, src=0)
        return bool(allowed)

    def allowance(self, share: float, trainer: pl.Trainer) -> float:
        """The callback's time allowed so far: ``share`` of the training time so far, or, where the
        run's length is known, the initial time granted at once and the rest accruing evenly."""
        total = self.projected_train_seconds(trainer)
        if total is None:
            return share * self.train_seconds
        initial = self.initial_seconds or 0.0
        return initial + accrual_rate(share, initial, total) * self.train_seconds

    def projected_train_seconds(self, trainer: pl.Trainer) -> float | None:
        """The whole run's training time at the pace so far, or ``None`` if its length is unknown."""
        steps = getattr(trainer, "global_step", 0)
        total = run_length(trainer)
        if steps <= 0 or not math.isfinite(total):
            return None
        return self.train_seconds * max(total, steps) / steps

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds,
            "monitor_seconds": self.monitor_seconds,
            "last_cost": self.last_cost,
            "costs": dict(self.costs),
            "train_seconds_at_last": self.train_seconds_at_last,
            "initial_seconds": self.initial_seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.monitor_seconds = float(state_dict.get("monitor_seconds", 0.0))
        self.last_cost = float(state_dict.get("last_cost", 0.0))
        self.costs = {str(k): float(v) for k, v in state_dict.get("costs", {}).items()}
        # a checkpoint from before the plan: nothing granted at once
        initial = state_dict.get("initial_seconds", 0.0)
        self.initial_seconds = None if initial is None else float(initial)
        # a checkpoint from before the pacing: wait a full interval from the resume
        self.train_seconds_at_last = float(
            state_dict.get("train_seconds_at_last", self.train_seconds)
        )
