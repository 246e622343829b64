"""The monitor's stability ratio: the run's optimizer read at each measurement, warned about once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_shortcut.callbacks._guarded import GuardedMeasurements
from lightning_shortcut.hessian.edge_of_stability import compute_edge_of_stability
from lightning_shortcut.hessian.operator import LossFn, resolve_params
from lightning_shortcut.hessian.optimizers import UnsupportedOptimizerError
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.spectrum import HessianSpectrum
from lightning_shortcut.hessian.tracking import SpectrumTracker

#: Measurements in a row above ``warn_above`` before the monitor warns.
CONSECUTIVE_ABOVE = 3


class EdgeOfStabilityTracker:
    """Computes ``stability`` and ``max_stable_lr`` for each fit measurement, warning (``warn``)
    when ``stability`` exceeds ``warn_above`` :data:`CONSECUTIVE_ABOVE` times in a row; ``tracker``
    warm-starts the preconditioned eigenvalue run (Adam, RMSprop, unequal groups)."""

    def __init__(
        self, warn_above: float | None, warn: Callable[[str, str], None], tracker: SpectrumTracker
    ) -> None:
        self.warn_above = warn_above
        self.warn = warn
        self.tracker = tracker
        self.above_in_a_row = 0
        self.skip_reason: str | None = None
        self.said_before_first_step = False

    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        spectrum: HessianSpectrum,
        guard: GuardedMeasurements,
        inputs: tuple[list[Any], LossFn, HessianSettings],
    ) -> tuple[dict[str, float], int]:
        """``({"stability": ..., "max_stable_lr": ...}, products)`` through ``guard``: empty where
        the ratio is unavailable (no optimizer, an unknown one, Adam before its first step), NaN
        where the guard caught a failure."""
        if self.skip_reason is not None or not trainer.optimizers:
            return {}, 0
        if spectrum.max is not None and not math.isfinite(spectrum.max):
            # a non-finite loss (the monitor warns about it already): no ratio, logged as NaN
            return {"stability": math.nan, "max_stable_lr": math.nan}, 0
        data, loss_fn, settings = inputs
        params = resolve_params(pl_module, settings.params)
        report = guard.run(
            "the stability ratio",
            trainer.global_step,
            lambda: compute_edge_of_stability(
                pl_module,
                data,
                trainer.optimizers,
                loss_fn,
                settings,
                hessian_max_eigenvalue=spectrum.max,
                start=self.tracker.start(params),
            ),
            unavailable=(UnsupportedOptimizerError, ValueError),
        )
        if report is None:
            if guard.unavailable:
                self.skip_reason, guard.unavailable = guard.unavailable, ""
                self.warn(
                    "stability",
                    "HessianEigenvalueMonitor logs eigenvalues but no stability ratio: "
                    f"{self.skip_reason}",
                )
                return {}, 0
            self.tracker.reset()  # a failure (warned about by the guard): NaN, cold next time
            return {"stability": math.nan, "max_stable_lr": math.nan}, 0
        if report.num_hvps:  # an eigenvalue run was made: its vectors start the next one
            self.tracker.update(report, params)
        if report.reason and math.isnan(report.stability):
            if report.before_first_step:  # an adaptive optimizer without state: expected at first
                if not self.said_before_first_step:
                    self.said_before_first_step = True
                    rank_zero_info(
                        f"HessianEigenvalueMonitor: {report.reason}, so stability is logged from "
                        "the next measurement on (none where the schedule or max_overhead leaves "
                        "no other)."
                    )
            else:
                self.warn("stability_unavailable", f"HessianEigenvalueMonitor: {report.reason}.")
            return {}, report.num_hvps
        self._check_level(trainer.global_step, report.stability, report.max_stable_lr, report.lr)
        return report.as_dict(), report.num_hvps

    def _check_level(self, step: int, stability: float, max_stable_lr: float, lr: float) -> None:
        if self.warn_above is None or not stability > self.warn_above:
            self.above_in_a_row = 0
            return
        self.above_in_a_row += 1
        if self.above_in_a_row >= CONSECUTIVE_ABOVE:
            self.warn(
                "stability_above",
                f"HessianEigenvalueMonitor: at step {step} the stability ratio is {stability:.3g}, "
                f"above warn_above={self.warn_above} for {self.above_in_a_row} measurements in a row: "
                f"a step of lr={lr:.3g} is beyond the edge of stability of the local quadratic "
                f"(max_stable_lr={max_stable_lr:.3g}).",
            )
