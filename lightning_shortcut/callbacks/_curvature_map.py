"""Where the curvature lives, for ``HessianEigenvalueMonitor``: per-block extremes, the extreme
eigenvectors' profile over the blocks, the gradient's overlap with the top eigenspace, and spectral
density snapshots along training (issue 25).

:class:`CurvatureMap` is a mixin of the monitor: the monitor keeps its options and calls
:meth:`CurvatureMap._curvature_metrics` once per measurement; the density snapshots take their own
steps (the hooks below), booked to the monitor's time budget like a measurement.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_shortcut.callbacks._budget import run_length
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

__all__ = ["DENSITY_FILE", "DENSITY_NUM_STEPS", "CurvatureMap", "density_steps"]

#: The file, in ``trainer.log_dir``, the density snapshots are written to (one row per quadrature
#: node: ``step, probe, node, weight``); ``lightning-shortcut plot`` reads it.
DENSITY_FILE = "hessian_density.csv"
#: Lanczos steps of a density snapshot's probe (``spectral_density``'s default; one probe).
DENSITY_NUM_STEPS = 64


def density_steps(trainer: pl.Trainer, count: int) -> list[int]:
    """The steps of ``count`` snapshots over the run: 0, the run's last step and evenly between;
    where the Trainer does not know the run's length, 0 alone (the last is taken at the end)."""
    total = run_length(trainer)
    if count == 0:
        return []
    if not math.isfinite(total) or count == 1:
        return [0]
    return sorted({round(i * total / (count - 1)) for i in range(count)})


class CurvatureMap:
    """The curvature map's part of the monitor (a mixin placed before ``ColdAndWarmCosts``).

    The monitor sets ``blocks``, ``gradient_overlap`` and ``density_snapshots`` and has the
    attributes and methods used here (``settings``, ``_run_settings``, ``_hessian_inputs``,
    ``_warnings``, ``_log_metrics``, ``_sharded``, ``budget``, ``log_prefix``).
    """

    blocks: Any
    gradient_overlap: bool
    density_snapshots: int
    settings: HessianSettings
    _run_settings: HessianSettings
    _block_names: list[str]
    _density_plan: list[int]
    density_history: list[dict[str, Any]]

    def _init_curvature_map(self) -> None:
        """The state the curvature map keeps (its options are the monitor's)."""
        self._block_names: list[str] = []  # resolved at fit start
        self._density_plan: list[int] = []  # the steps of the snapshots still to take
        self.density_history: list[dict[str, Any]] = []  # every snapshot taken by this monitor

    # checks at fit start

    def _prepare_curvature_map(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        """At fit start: resolve the blocks (refused here, naming them, where they do not fit the
        model) and plan the density snapshots."""
        if stage != "fit":
            return
        wanted = [
            name
            for name, on in (
                ("blocks", self.blocks is not None),
                ("gradient_overlap", self.gradient_overlap),
                ("density_snapshots", self.density_snapshots > 0),
            )
            if on
        ]
        if wanted and self._sharded:
            raise ValueError(
                f"{', '.join(wanted)} are not available on a model sharded by fully_shard (the "
                "eigenvectors are one rank's rows); turn them off."
            )
        self._block_names = []
        if self.blocks is not None:
            self._block_names = list(resolve_blocks(pl_module, self.blocks, self.settings.params))
        self._density_plan = density_steps(trainer, self.density_snapshots)
        self._density_plan = [step for step in self._density_plan if step >= trainer.global_step]
        if self.density_snapshots > 1 and not math.isfinite(run_length(trainer)):
            self._warnings.once(
                "density_plan",
                f"HessianEigenvalueMonitor: density_snapshots={self.density_snapshots} but the "
                "Trainer does not know the run's length (no max_steps/max_epochs): one snapshot "
                "is taken at fit start and one at the end of fitting, none between.",
            )

    # with every measurement

    def _curvature_metrics(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        spectrum: HessianSpectrum,
        metrics: dict[str, float],
    ) -> None:
        """Add the blocks' extremes and the profile (fit) and the gradient overlap to ``metrics``
        (their products and time to ``num_hvps`` and ``seconds``, and on their own)."""
        if self.blocks is not None and stage == "fit":
            metrics.update(self._block_metrics(trainer, pl_module, spectrum))
            metrics["num_hvps"] += metrics["block_hvps"]
            metrics["seconds"] += metrics["block_seconds"]
        if self.gradient_overlap:
            value, seconds = self._overlap(trainer, pl_module, stage, spectrum)
            metrics["gradient_overlap"] = value
            metrics["seconds"] += seconds

    def _block_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, spectrum: HessianSpectrum
    ) -> dict[str, float]:
        settings = block_settings(self._run_settings)  # refused at construction if it cannot be
        top_k, bottom_k = settings.top_k, settings.bottom_k
        begin = time.perf_counter()
        try:
            spectra = compute_block_eigenvalues(
                pl_module, *self._hessian_inputs(pl_module, "fit"), settings, self.blocks
            )
            values, products = spectra.as_dict(), spectra.num_hvps
            failed = {name: why for name, why in spectra.reasons.items() if why}
        except (RuntimeError, torch.OutOfMemoryError) as error:
            values, products = {}, 0
            failed = dict.fromkeys(self._block_names, str(error))
        for name in self._block_names:  # a failed call or block: NaN, never a value
            for end, k in (("max", top_k), ("min", bottom_k)):
                if k:
                    values.setdefault(f"block/{name}/{end}_eigenvalue", math.nan)
        if failed:
            self._warnings.once(
                "blocks",
                f"HessianEigenvalueMonitor: at step {trainer.global_step} the eigenvalues of "
                f"block(s) {sorted(failed)} were not found ({next(iter(failed.values()))}); "
                f"logged as NaN (raise max_iter, now {settings.max_iter}, or tol, now "
                f"{settings.tol:g}).",
            )
        profile = block_profile(pl_module, spectrum, self.blocks, params=settings.params)
        for end, shares, k in (("max", profile.top, top_k), ("min", profile.bottom, bottom_k)):
            for name in self._block_names if k else ():
                share = (shares or {}).get(name, math.nan)
                values[f"block/{name}/{end}_eigenvector_share"] = share
        values["block_hvps"] = float(products)
        values["block_seconds"] = time.perf_counter() - begin
        return values

    def _overlap(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        spectrum: HessianSpectrum,
    ) -> tuple[float, float]:
        if not spectrum.top or not all(math.isfinite(value) for value in spectrum.top):
            return math.nan, 0.0
        result = compute_gradient_overlap(
            pl_module,
            *self._hessian_inputs(pl_module, stage),
            self._run_settings,
            spectrum=spectrum,
        )
        return result.overlap, result.seconds

    # density snapshots: their own steps, booked to the monitor

    @override
    def _on_fit_started(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super()._on_fit_started(trainer, pl_module)  # type: ignore[misc]
        self._snapshot_if_due(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]
        self._snapshot_if_due(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # type: ignore[misc]
        taken = {record["step"] for record in self.density_history}
        # the end: where the run stopped early or its length was unknown
        if (
            self.density_snapshots
            and not self._should_skip(trainer, "fit")
            and trainer.global_step not in taken
            and len(taken) < self.density_snapshots
        ):
            self._take_snapshot(trainer, pl_module)

    def _snapshot_if_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.density_snapshots or self._should_skip(trainer, "fit"):
            return
        plan = self._density_plan
        if plan and trainer.global_step >= plan[0]:
            while plan and trainer.global_step >= plan[0]:
                plan.pop(0)
            self._take_snapshot(trainer, pl_module)

    def _take_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One ``spectral_density`` on the fit's Hessian batch: logged, kept in
        :attr:`density_history` and appended to ``trainer.log_dir``'s :data:`DENSITY_FILE`."""
        self.budget.book(monitor=False)
        try:
            density = compute_spectral_density(
                pl_module,
                *self._hessian_inputs(pl_module, "fit"),
                self._run_settings,
                num_steps=DENSITY_NUM_STEPS,
            )
        except (RuntimeError, torch.OutOfMemoryError) as error:
            self._warnings.once(
                "density",
                f"HessianEigenvalueMonitor could not compute the spectral density at step "
                f"{trainer.global_step}: {error}",
            )
            self.budget.book(monitor=True)
            return
        self.budget.book(monitor=True)
        record = {
            "step": trainer.global_step,
            "nodes": density.nodes.tolist(),
            "weights": density.weights.tolist(),
            "num_hvps": density.num_hvps,
            "seconds": density.seconds,
        }
        self.density_history.append(record)
        costs = {"density_seconds": density.seconds, "density_hvps": float(density.num_hvps)}
        self._log_metrics(trainer, "fit", costs)
        if trainer.is_global_zero:
            self._write_density(trainer, record)

    def _write_density(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        folder = getattr(trainer, "log_dir", None)
        if folder is None:
            self._warnings.once(
                "density_file",
                "HessianEigenvalueMonitor: the Trainer has no logger (log_dir is None): the "
                "density snapshots are kept in the monitor's density_history only.",
            )
            return
        path = Path(folder) / DENSITY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "probe", "node", "weight"])
            for probe, (nodes, weights) in enumerate(
                zip(record["nodes"], record["weights"], strict=True)
            ):
                for node, weight in zip(nodes, weights, strict=True):
                    writer.writerow([record["step"], probe, repr(node), repr(weight)])

    def _curvature_cost_note(self) -> str:
        """For the cost report: what the curvature map adds to a measurement, if anything."""
        notes = []
        if self.blocks is not None:
            notes.append(
                f"block_eigenvalues over {len(self._block_names)} blocks (included; "
                "block_hvps and block_seconds are their share)"
            )
        if self.gradient_overlap:
            notes.append("a backward for gradient_overlap")
        if self.density_snapshots:
            notes.append(
                f"{self.density_snapshots} density snapshots of {DENSITY_NUM_STEPS} products each "
                "(extra, on their own steps; density_seconds logs each)"
            )
        return "; with " + ", ".join(notes) if notes else ""
