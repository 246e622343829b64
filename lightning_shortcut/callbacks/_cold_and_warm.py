"""What a monitor's measurements cost when they come in two kinds: cold, and warm-started."""

from __future__ import annotations

from typing_extensions import override

from lightning_shortcut.callbacks._cost_report import ExpectedCost
from lightning_shortcut.callbacks._schedule import ScheduledMonitor
from lightning_shortcut.hessian.tracking import SpectrumTracker


class ColdAndWarmCosts(ScheduledMonitor):
    """The budget's and the cost report's estimates for a monitor whose fit measurements are
    cold or warm (a :class:`~lightning_shortcut.hessian.SpectrumTracker` decides which): a cold
    one costs several warm ones, and one warm run given up costs more than a cold one.

    A subclass sets ``_tracker``, ``_stderr_share`` (the standard errors' share of the last fit
    measurement's time), ``_wholly_warm`` (whether its eigenvalue runs were all warm) and
    ``warm_start``.
    """

    _tracker: SpectrumTracker
    _stderr_share: float = 0.0
    _wholly_warm: bool = False
    warm_start: bool | int

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
            f"one cold in every {audit_every} (warm_start={self.warm_start}) at {cold:.3g} s, "
            f"the others warm at {expected.seconds:.3g} s; a warm run given up for a cold one "
            "costs more",
        )
