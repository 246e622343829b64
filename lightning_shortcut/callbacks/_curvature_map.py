"""Where the curvature lives, for ``HessianEigenvalueMonitor`` (issue 25): per-block extremes, the
extreme eigenvectors' profile over the blocks, the gradient's overlap with the top eigenspace, and
spectral density snapshots along training; every engine call goes through the guarded step."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_shortcut.callbacks._budget import OverheadBudget, run_length
from lightning_shortcut.callbacks._guarded import GuardedMeasurements
from lightning_shortcut.callbacks._options import block_settings
from lightning_shortcut.hessian.blocks import (
    block_profile,
    compute_block_eigenvalues,
    resolve_blocks,
)
from lightning_shortcut.hessian.density import compute_spectral_density
from lightning_shortcut.hessian.overlap import compute_gradient_overlap
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.plot_curvature import DENSITY_FILE

__all__ = ["DENSITY_FILE", "DENSITY_NUM_STEPS", "CurvatureMap", "density_steps"]

#: Lanczos steps of a density snapshot's probe (``spectral_density``'s default; one probe).
DENSITY_NUM_STEPS = 64
# what a measurement passes along: the Hessian batch and the loss, and the run's settings
Inputs = tuple[list[Any], Callable[..., Any], HessianSettings]


def evenly_spaced_steps(max_steps: float, points: int) -> list[int]:
    """``points`` evenly spaced steps from 0 to ``max_steps`` inclusive (fewer if they coincide)."""
    if points == 1:
        return [0]
    return sorted({round(index * max_steps / (points - 1)) for index in range(points)})


def density_steps(trainer: pl.Trainer, count: int) -> list[int]:
    """The steps of ``count`` snapshots over the run: 0, the run's last step and evenly between;
    where the Trainer does not know the run's length, 0 alone (the last is taken at the end)."""
    total = run_length(trainer)
    return evenly_spaced_steps(total if math.isfinite(total) else 0, count)


class CurvatureMap:
    """The monitor's ``blocks``, ``gradient_overlap`` and ``density_snapshots`` (checked there),
    with its guarded step, warn-once, time budget and logging."""

    def __init__(
        self,
        blocks: Any,
        gradient_overlap: bool,
        density_snapshots: int,
        guard: GuardedMeasurements,
        warn: Callable[[str, str], None],
        budget: OverheadBudget,
        log: Callable[[pl.Trainer, str, dict[str, float]], None],
    ) -> None:
        self.blocks, self.gradient_overlap = blocks, gradient_overlap
        self.density_snapshots = density_snapshots
        self.guard, self.warn, self.budget, self.log = guard, warn, budget, log
        self.block_names: list[str] = []  # resolved at fit start
        self.plan: list[int] = []  # the steps of the snapshots still to take
        self.history: list[dict[str, Any]] = []  # every snapshot this monitor took
        self.taken: list[int] = []  # the steps of the snapshots taken in this run (checkpointed)
        guard.snapshots_to_come = self.snapshots_to_come  # the forecast adds them in

    def prepare(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, params: Any, sharded: bool = False
    ) -> None:
        """At fit start: resolve the blocks (refused where they do not fit the model, as any
        option on a ``sharded`` model) and plan the snapshots not taken yet."""
        if self.wanted() and sharded:
            raise ValueError(
                f"{', '.join(self.wanted())} are not available on a model sharded by fully_shard "
                "(the eigenvectors are one rank's rows); turn them off."
            )
        self.block_names = []
        if self.blocks is not None:
            self.block_names = list(resolve_blocks(pl_module, self.blocks, params))
        last = max(self.taken, default=-1)
        planned = density_steps(trainer, self.density_snapshots)
        self.plan = [step for step in planned if step >= trainer.global_step and step > last]
        if self.density_snapshots > 1 and not math.isfinite(run_length(trainer)):
            self.warn(
                "density_plan",
                f"HessianEigenvalueMonitor: density_snapshots={self.density_snapshots} but the "
                "Trainer does not know the run's length (no max_steps/max_epochs): one snapshot "
                "is taken at fit start and one at the end of fitting, none between.",
            )

    def wanted(self) -> list[str]:
        """The options that are on, by name."""
        on = (self.blocks is not None, self.gradient_overlap, self.density_snapshots > 0)
        names = ("blocks", "gradient_overlap", "density_snapshots")
        return [name for name, is_on in zip(names, on, strict=True) if is_on]

    # with every measurement

    def add_metrics(
        self,
        step: int,
        pl_module: pl.LightningModule,
        stage: str,
        spectrum: HessianSpectrum,
        inputs: Inputs,
        metrics: dict[str, float],
    ) -> None:
        """Add the blocks' extremes and the profile (fit) and the gradient overlap to ``metrics``
        (their products and time are the guard's, ``block_hvps`` and ``block_seconds`` too)."""
        if self.blocks is not None and stage == "fit":
            products, seconds = self.guard.products, self.guard.seconds
            metrics.update(self._block_metrics(step, pl_module, spectrum, inputs))
            metrics["block_hvps"] = float(self.guard.products - products)
            metrics["block_seconds"] = self.guard.seconds - seconds
        if self.gradient_overlap:
            metrics["gradient_overlap"] = self._overlap(step, pl_module, spectrum, inputs)

    def _block_metrics(
        self, step: int, pl_module: pl.LightningModule, spectrum: HessianSpectrum, inputs: Inputs
    ) -> dict[str, float]:
        data, loss_fn, run_settings = inputs
        settings = block_settings(run_settings)  # refused at construction if it cannot be
        spectra = self.guard.run(
            "the blocks' eigenvalues",
            step,
            lambda: compute_block_eigenvalues(pl_module, data, loss_fn, settings, self.blocks),
        )
        values = spectra.as_dict() if spectra is not None else {}
        for name in self.block_names:  # a failed call or block: NaN, never a value
            for end, k in (("max", settings.top_k), ("min", settings.bottom_k)):
                if k:
                    values.setdefault(f"block/{name}/{end}_eigenvalue", math.nan)
        failed = sorted(name for name, why in (spectra.reasons if spectra else {}).items() if why)
        if failed:
            errors = [*spectra[failed[0]].top_errors, *spectra[failed[0]].bottom_errors]
            finite = all(math.isfinite(error) for error in errors)
            advice = f"raise max_iter, now {settings.max_iter}, or tol, now {settings.tol:g}"
            self.guard.failed(
                "the blocks' eigenvalues",
                step,
                f"block(s) {failed}: {spectra.reasons[failed[0]]}",
                kind="blocks_not_converged" if finite else "blocks_non_finite",
                advice=advice if finite else "",
            )
        profile = self.guard.run(
            "the eigenvectors' profile",
            step,
            lambda: block_profile(pl_module, spectrum, self.blocks, params=settings.params),
        )
        for end, k in (("max", settings.top_k), ("min", settings.bottom_k)):
            shares = getattr(profile, "top" if end == "max" else "bottom", None) or {}
            for name in self.block_names if k else ():
                values[f"block/{name}/{end}_eigenvector_share"] = shares.get(name, math.nan)
        return values

    def _overlap(
        self, step: int, pl_module: pl.LightningModule, spectrum: HessianSpectrum, inputs: Inputs
    ) -> float:
        if not spectrum.top or not all(math.isfinite(value) for value in spectrum.top):
            return math.nan  # no top eigenvectors: the spectrum's warning says why
        data, loss_fn, settings = inputs
        result = self.guard.run(
            "gradient_overlap",
            step,
            lambda: compute_gradient_overlap(pl_module, data, loss_fn, settings, spectrum=spectrum),
        )
        return result.overlap if result is not None else math.nan

    # density snapshots: on their own steps, booked to the monitor

    def snapshots_to_come(self, step: int) -> int:
        """The snapshots still planned after ``step`` (the last one at the end included)."""
        return len([planned for planned in self.plan if planned > step])

    def snapshot_due(self, step: int) -> bool:
        """Whether a snapshot is due at ``step`` (then it is no longer planned)."""
        due = [planned for planned in self.plan if planned <= step]
        self.plan = self.plan[len(due) :]
        return bool(due)

    def snapshot_due_at_end(self, step: int) -> bool:
        """At the end of fitting: where the run stopped early or its length was unknown."""
        return step not in self.taken and len(self.taken) < self.density_snapshots

    def snapshot_if_due(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Inputs, at_end: bool
    ) -> None:
        """A snapshot where one is due, booked to the monitor's time budget, its costs logged."""
        due = self.snapshot_due_at_end if at_end else self.snapshot_due
        if not due(trainer.global_step):
            return
        self.budget.book(monitor=False)
        costs = self.snapshot(trainer, pl_module, inputs)
        self.budget.book(monitor=True)
        self.log(trainer, "fit", costs)

    def snapshot(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Inputs
    ) -> dict[str, float]:
        """One ``spectral_density`` on the fit's Hessian batch: kept in :attr:`history` and
        appended to the logger's folder's :data:`DENSITY_FILE`; its costs, to log."""
        data, loss_fn, settings = inputs
        step = trainer.global_step
        self.taken.append(step)
        self.guard.begin()
        density = self.guard.run(
            "the spectral density",
            step,
            lambda: compute_spectral_density(
                pl_module, data, loss_fn, settings, num_steps=DENSITY_NUM_STEPS
            ),
        )
        self.guard.snapshot_seconds = self.guard.seconds
        if density is None:
            return {"density_seconds": self.guard.seconds, "density_hvps": math.nan}
        record = {
            "step": step,
            "nodes": density.nodes.tolist(),
            "weights": density.weights.tolist(),
            "num_hvps": density.num_hvps,
            "seconds": density.seconds,
        }
        self.history.append(record)
        folder = trainer.log_dir if trainer.loggers else None  # a broadcast: asked on every rank
        if trainer.is_global_zero:
            self._write(folder, record)
        return {"density_seconds": density.seconds, "density_hvps": float(density.num_hvps)}

    def _write(self, folder: str | None, record: dict[str, Any]) -> None:
        # without a logger, log_dir is the working directory: nothing is written there
        if folder is None:
            self.warn(
                "density_file",
                "HessianEigenvalueMonitor: the Trainer has no logger (or no log folder), so the "
                f"density snapshots are not written to {DENSITY_FILE}; they are kept in the "
                "monitor's density_history only.",
            )
            return
        path = Path(folder) / DENSITY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "probe", "node", "weight"])
            probes = zip(record["nodes"], record["weights"], strict=True)
            for probe, (nodes, weights) in enumerate(probes):
                for node, weight in zip(nodes, weights, strict=True):
                    writer.writerow([record["step"], probe, repr(node), repr(weight)])

    def cost_note(self) -> str:
        """For the cost report: what the curvature map adds to a measurement, if anything."""
        notes = []
        if self.blocks is not None:
            notes.append(
                f"block_eigenvalues over {len(self.block_names)} block(s) (included; "
                "block_hvps and block_seconds are their share)"
            )
        if self.gradient_overlap:
            notes.append("a backward for gradient_overlap")
        if self.density_snapshots:
            notes.append(
                f"{self.density_snapshots} density snapshot(s) of {DENSITY_NUM_STEPS} products each "
                "(extra, on their own steps; density_seconds logs each)"
            )
        return "; with " + ", ".join(notes) if notes else ""
