"""The zero point: condition numbers of the Hessian of exactly zero-initialized stacks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning_shortcut.study.figures import plot_zero_point
from lightning_shortcut.study.parts import Step, StudyPart, Table
from lightning_shortcut.theory import zero_point_hessian

__all__ = ["ZeroPoint"]

# n = 1 beyond 8 units (K d^2 = 2048 parameters at d = 16): the smallest |eigenvalue| is too
# ill-conditioned for Lanczos in seconds; that explosion is the paper's point, shown up to here
_DEPTH_ONE_MAX_UNITS = 8


class ZeroPoint(StudyPart):
    """The residual Hessian's condition number at the exact zero point for every shortcut depth and
    ``kappa_units``, beside the closed forms': ``kappa_zero_point.csv`` and ``.png``."""

    def steps(self) -> list[Step]:
        return [("zero point: condition numbers", self._sweep)]

    def tables(self) -> list[Table]:
        title = "Condition number at the zero point"
        return [Table("kappa_zero_point.csv", title, "Zero point", self.results)]

    def figures(self) -> list[Path]:
        return [plot_zero_point(self.config.out, self.config.shortcut_depths, self.results)]

    def keep(self, result: list[dict[str, Any]]) -> None:
        self.results = result  # one step: every row

    def _sweep(self) -> list[dict[str, Any]]:
        return [
            self._measure(shortcut_depth, num_units)
            for shortcut_depth in self.config.shortcut_depths
            for num_units in self.config.kappa_units
            if not (shortcut_depth == 1 and num_units > _DEPTH_ONE_MAX_UNITS)
        ]

    def _measure(self, shortcut_depth: int, num_units: int) -> dict[str, Any]:
        measured = self._both_ends(self._model(shortcut_depth, "zero", num_units), max_iter=3000)
        theory = math.nan
        if self.dataset.task.closed_form:
            inputs, targets = self._hessian_batch()
            theory = zero_point_hessian(
                inputs, targets, shortcut_depth=shortcut_depth, num_units=num_units
            ).condition_number
        return {
            "shortcut_depth": shortcut_depth,
            "num_units": num_units,
            "kappa_measured": measured.condition_number,
            "kappa_theory": theory,
            "max_abs_eigenvalue": max(abs(measured.max), abs(measured.min)),
            "converged": measured.converged,
            "num_hvps": measured.num_hvps,
        }
