"""The one path of every engine call the monitor makes (:meth:`GuardedMeasurements.run`: catch the
engine's documented failures, warn once, log NaN) and the one account of what they cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import torch

from lightning_shortcut.callbacks._cost_report import ExpectedCost
from lightning_shortcut.hessian.linear_operator import NonFiniteProductError
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.solvers.lanczos_values import VALUES_ONLY
from lightning_shortcut.hessian.spectrum import HessianSpectrum
from lightning_shortcut.hessian.tracking import DEFAULT_AUDIT_EVERY, SpectrumTracker

__all__ = ["GUARDED_FAILURES", "GuardedMeasurements"]

#: The failures of an engine call that the monitor logs as NaN (in words); any other is a bug.
GUARDED_FAILURES = {
    NonFiniteProductError: "a non-finite loss or Hessian-vector product (a NaN or inf in the "
    "Hessian batch or the weights)",
    torch.OutOfMemoryError: "out of memory (lower num_samples or set chunk_size)",
}
Result = TypeVar("Result")


class GuardedMeasurements:
    """The guarded step and the cost account of ``HessianEigenvalueMonitor``: estimates of the fit
    measurements of a cycle, one costly and the others light (cold and warm, which its ``tracker``
    decides; without warm starts, with and without the standard errors, one in ``stderr_every``),
    and of the snapshots to come. ``warn`` is the monitor's warn-once; ``warm_start`` and
    ``stderr`` its options (``stderr`` ``False`` where off)."""

    def __init__(
        self,
        warn: Callable[[str, str], None],
        tracker: SpectrumTracker,
        warm_start: bool | int,
        stderr: bool | int = False,
    ) -> None:
        self.warn, self.tracker, self.warm_start = warn, tracker, warm_start
        #: with every this many cold fit measurements the standard errors (0: never)
        self.stderr_every = (
            (1 if warm_start else DEFAULT_AUDIT_EVERY) if stderr is True else int(stderr)
        )
        self.cold_count = 0  # cold fit measurements so far: the standard errors' schedule
        self.stderr_on = True  # the run's settings ask for them (not under fully_shard)
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

    # the standard errors' schedule

    def _stderr_due(self, cold: bool) -> bool:
        every = self.stderr_every if self.stderr_on else 0
        return cold and bool(every) and self.cold_count % every == 0

    def for_next(self, settings: HessianSettings, cold: bool) -> HessianSettings:
        """``settings`` (the run's: none under ``fully_shard``) for the next fit measurement: the
        standard errors where their schedule has them (every ``stderr_every``-th cold one)."""
        self.stderr_on = bool(settings.stderr)
        due = self._stderr_due(cold)
        self.cold_count += cold
        return settings if due or not settings.stderr else replace(settings, stderr=False)

    def note(self, spectrum: HessianSpectrum) -> None:
        """Learn from a fit spectrum the share of its time that one without the standard errors
        would not spend: theirs, and the values-only pass's second run for the vectors."""
        share = spectrum.stderr_seconds / max(spectrum.seconds, 1e-12)
        if spectrum.stderr_seconds and spectrum.method == VALUES_ONLY:
            share += (1 - share) / 2
        self.stderr_share = share

    # the estimates the budget and the cost report read

    def next_kind(self) -> str:
        if self.warm_start:
            return "cold" if self.tracker.cold_next else "warm"
        return "cold" if self._stderr_due(cold=True) else "values"

    @property
    def cycle(self) -> int:
        # one cold audit in audit_every measurements (and, under Adam, one cold stability run);
        # without warm starts, one with the standard errors in stderr_every
        if self.warm_start:
            return self.tracker.audit_every
        return max(self.stderr_every, 1) if self.stderr_on else 1

    def seed_estimates(self, budget: Any) -> None:
        # a warm measurement computes no standard errors, nor one off their schedule: until one is
        # made, expect the costly one's cost without them (one given up costs more; the first
        # attempt corrects it)
        light = "warm" if self.warm_start else "values"
        if light not in budget.costs and self.stderr_share:
            budget.costs[light] = budget.last_cost * (1 - self.stderr_share)

    def is_steady(self) -> bool:
        if self.warm_start:
            return self.wholly_warm
        return self.cycle > 1 and (self.cold_count - 1) % self.cycle != 0

    def expected(self, base: ExpectedCost, budget: Any, steady: float | None) -> ExpectedCost:
        # one cold audit in audit_every at the last cold one's cost, the others at the last wholly
        # warm one's (else the last cycle's mean); warm runs given up later are not foreseen
        if self.cycle == 1:
            return ExpectedCost(base.seconds, "each cold")
        if steady is None:
            why = "warm runs were given up for cold ones" if self.warm_start else "none light yet"
            return ExpectedCost(base.seconds, f"{base.mix}: {why}")
        cold = budget.costs.get("cold", base.seconds)
        mix = (
            f"one cold in every {self.cycle} (warm_start={self.warm_start}) at {cold:.3g} s, "
            f"the others warm at {base.seconds:.3g} s; a warm run given up for a cold one "
            "costs more"
            if self.warm_start
            else f"the standard errors with one in every {self.cycle} at {cold:.3g} s, the "
            f"others at {base.seconds:.3g} s"
        )
        return ExpectedCost((cold + (self.cycle - 1) * base.seconds) / self.cycle, mix)

    def extra_to_come(self, step: int) -> tuple[int, float]:
        return self.snapshots_to_come(step), self.snapshot_seconds
