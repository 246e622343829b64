"""The one path of every engine call the monitor makes (:meth:`GuardedMeasurements.run`: catch the
engine's documented failures, warn once, log NaN) and the one account of what they cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from lightning_shortcut.callbacks._cost_report import ExpectedCost
from lightning_shortcut.hessian.linear_operator import NonFiniteProductError
from lightning_shortcut.hessian.tracking import SpectrumTracker

__all__ = ["GUARDED_FAILURES", "GuardedMeasurements"]

#: The failures of an engine call that the monitor logs as NaN (in words); any other is a bug.
GUARDED_FAILURES = {
    NonFiniteProductError: "a non-finite loss or Hessian-vector product (a NaN or inf in the "
    "Hessian batch or the weights)",
    torch.OutOfMemoryError: "out of memory (lower num_samples or set chunk_size)",
}
Result = TypeVar("Result")


class GuardedMeasurements:
    """The guarded step and the cost account of ``HessianEigenvalueMonitor``: estimates of cold and
    warm fit measurements (its ``tracker`` decides which comes next) and of the snapshots to come;
    ``warn`` is the monitor's warn-once, ``warm_start`` its option."""

    def __init__(
        self, warn: Callable[[str, str], None], tracker: SpectrumTracker, warm_start: bool | int
    ) -> None:
        self.warn, self.tracker, self.warm_start = warn, tracker, warm_start
        self.products = 0  # the current measurement's, over every call
        self.seconds = 0.0
        self.stderr_share = 0.0  # the standard errors' share of the last fit spectrum's time
        self.wholly_warm = False  # the last fit measurement's eigenvalue runs were all warm
        self.snapshot_seconds = 0.0  # the last density snapshot's
        self.snapshots_to_come: Callable[[int], int] = lambda step: 0
        self.unavailable = ""  # why the last call given ``unavailable`` errors had no value

    # the guarded step

    def begin(self) -> None:
        """Open the account of a new measurement."""
        self.products, self.seconds = 0, 0.0

    def run(
        self,
        name: str,
        step: int,
        call: Callable[[], Result],
        unavailable: tuple[type[Exception], ...] = (),
    ) -> Result | None:
        """``call()``, or ``None`` (and a warning) where it met a failure the engine documents,
        its products and wall time booked; an ``unavailable`` error (no value for this run) is
        kept in :attr:`unavailable`, for the caller to stop asking."""
        begin = time.perf_counter()
        try:
            result = call()
        except tuple(GUARDED_FAILURES) as error:
            failure = next(kind for kind in GUARDED_FAILURES if isinstance(error, kind))
            self.failed(name, step, GUARDED_FAILURES[failure], kind=failure.__name__)
            result = None
        except unavailable as error:
            self.unavailable = str(error)
            result = None
        self.products += int(getattr(result, "num_hvps", 0) or 0)
        self.seconds += time.perf_counter() - begin
        return result

    def failed(self, name: str, step: int, why: str, *, kind: str = "", advice: str = "") -> None:
        """Warn, once per measurement and kind of failure, that ``name`` has no value at ``step``."""
        self.warn(
            f"{name}:{kind or why}",
            f"HessianEigenvalueMonitor could not measure {name} at step {step}: {why}; logged as "
            f"NaN, training goes on{f' ({advice})' if advice else ''}.",
        )

    # the estimates the budget and the cost report read

    def next_kind(self) -> str:
        return "cold" if self.tracker.cold_next else "warm"

    @property
    def cycle(self) -> int:
        # one cold audit in audit_every measurements (and, under Adam, one cold stability run)
        return self.tracker.audit_every

    def seed_estimates(self, budget: Any) -> None:
        # a warm measurement computes no standard errors: until one is made, expect the cold one's
        # cost without them (one given up costs more; the first attempt corrects it)
        if "warm" not in budget.costs and self.stderr_share:
            budget.costs["warm"] = budget.last_cost * (1 - self.stderr_share)

    def is_steady(self) -> bool:
        return self.wholly_warm

    def expected(self, base: ExpectedCost, budget: Any, steady: float | None) -> ExpectedCost:
        # one cold audit in audit_every at the last cold one's cost, the others at the last wholly
        # warm one's (else the last cycle's mean); warm runs given up later are not foreseen
        if self.cycle == 1:
            return ExpectedCost(base.seconds, "each cold")
        if steady is None:
            return ExpectedCost(base.seconds, f"{base.mix}: warm runs were given up for cold ones")
        cold = budget.costs.get("cold", base.seconds)
        return ExpectedCost(
            (cold + (self.cycle - 1) * base.seconds) / self.cycle,
            f"one cold in every {self.cycle} (warm_start={self.warm_start}) at {cold:.3g} s, "
            f"the others warm at {base.seconds:.3g} s; a warm run given up for a cold one "
            "costs more",
        )

    def extra_to_come(self, step: int) -> tuple[int, float]:
        return self.snapshots_to_come(step), self.snapshot_seconds
