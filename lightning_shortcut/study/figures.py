"""The study's figures, one function each, written with matplotlib's Agg backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_shortcut.plot import pyplot, save_figure
from lightning_shortcut.study.results import EdgeResult, RunResult, SweepResult

__all__ = [
    "plot_edge_of_stability",
    "plot_eigenvalue_trajectories",
    "plot_loss_curves",
    "plot_lr_sweep",
    "plot_unit_curvature",
    "plot_zero_point",
]


def _units(count: int) -> str:
    return f"{count} unit" if count == 1 else f"{count} units"


# one color per shortcut depth, one line style per initialization
COLORS = {1: "tab:red", 2: "tab:blue", 3: "tab:green"}
STYLES = {"small": "-", "xavier": "--", "orthogonal": ":"}
# a diverged run's marker per initialization, at the edge of a panel it would stretch
DIVERGED_MARKERS = {"small": "*", "xavier": "x", "orthogonal": "+"}


def _save(fig: Any, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _run_label(run: RunResult) -> str:
    return f"n={run.shortcut_depth}, {run.init}" + (" (diverged)" if run.diverged else "")


def plot_zero_point(
    out: Path, shortcut_depths: Sequence[int], kappas: Sequence[dict[str, Any]]
) -> Path:
    """``kappa_zero_point.png``: measured and predicted condition numbers against the depth."""
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
    for depth in shortcut_depths:
        rows = [r for r in kappas if r["shortcut_depth"] == depth]
        finite = [r for r in rows if math.isfinite(r["kappa_measured"])]
        theory = [r for r in finite if math.isfinite(r["kappa_theory"])]
        color = COLORS.get(depth)
        if finite:
            measured = ([r["num_units"] for r in finite], [r["kappa_measured"] for r in finite])
            ax.plot(*measured, "o", color=color, label=f"n = {depth}, measured (Lanczos)")
        if theory:
            predicted = ([r["num_units"] for r in theory], [r["kappa_theory"] for r in theory])
            ax.plot(*predicted, "-", color=color, alpha=0.6, label=f"n = {depth}, theory")
        singular = [r for r in rows if r["kappa_measured"] == math.inf]
        if singular:  # min|lambda| below tol * max|lambda|: no finite condition number
            units = ", ".join(str(r["num_units"]) for r in singular)
            ax.plot([], [], " ", label=f"n = {depth}: singular Hessian at {units} units (inf)")
        if rows and all(r["max_abs_eigenvalue"] == 0 for r in rows):
            ax.plot([], [], " ", label=f"n = {depth}: Hessian is exactly 0 (no condition number)")
    ax.set_xscale("log", base=2)
    if any(math.isfinite(r["kappa_measured"]) for r in kappas):  # else no log axis: nothing to draw
        ax.set_yscale("log")
    ax.set(xlabel="number of residual units", ylabel="condition number at the zero point")
    ax.set_title("Hessian over the residual weights at the zero point")
    ax.legend(fontsize=8)
    return _save(fig, out / "kappa_zero_point.png", dpi=120)


def plot_loss_curves(out: Path, runs: Sequence[RunResult]) -> Path:
    """``loss_curves.png``: the minibatch loss of every run, one panel per number of units."""
    units = sorted({r.num_units for r in runs})
    fig, axes = pyplot().subplots(
        1, len(units), figsize=(4.2 * len(units), 3.8), squeeze=False, sharey=True
    )
    for ax, count in zip(axes[0], units, strict=True):
        for run in (r for r in runs if r.num_units == count):
            steps, losses = zip(*run.losses, strict=True) if run.losses else ((), ())
            style, color = STYLES.get(run.init, "-"), COLORS.get(run.shortcut_depth)
            ax.plot(steps, losses, style, color=color, label=_run_label(run))
        ax.set_yscale("log")
        stable = [loss for r in runs if not r.diverged for _, loss in r.losses[:1]]
        if stable:  # diverged runs leave the plot at the top instead of squashing it
            ax.set_ylim(top=3 * max(stable))
        ax.set(title=_units(count), xlabel="step")
    axes[0][0].set_ylabel("training loss (minibatch)")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out / "loss_curves.png", dpi=110)


def plot_eigenvalue_trajectories(out: Path, runs: Sequence[RunResult]) -> Path:
    """``eigenvalue_trajectories.png``: the extreme eigenvalues along training, deepest runs; a
    diverged run's values beyond the trained runs' axes are its marker on the panel's edge."""
    deepest = max(r.num_units for r in runs)
    shown = sorted((r for r in runs if r.num_units == deepest), key=lambda r: r.diverged)
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 3.8))
    keys = ("max_eigenvalue", "min_eigenvalue", "stability")
    titles = ("largest eigenvalue", "smallest eigenvalue", "stability (lr * curvature / 2)")
    axes[2].axhline(1.0, color="black", linestyle="--", linewidth=1)
    for ax, key, title in zip(axes, keys, titles, strict=True):
        ax.set_yscale("symlog", linthresh=1e-3)
        clip = any(key in s for r in shown if not r.diverged for s in r.spectra)
        rows = iter(range(len(shown)))
        for run in shown:  # the trained runs first: they set the axis
            _plot_trajectory(ax, run, key, next(rows) if run.diverged and clip else None)
        note = " (diverged runs at the edge)" if any(r.diverged for r in shown) else ""
        ax.set_title(f"{title}, {_units(deepest)}{note}", fontsize=10)
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7)
    return _save(fig, out / "eigenvalue_trajectories.png", dpi=110)


def _plot_trajectory(ax: Any, run: RunResult, key: str, edge_row: int | None) -> None:
    """One run's ``key`` along training; with an ``edge_row``, values beyond the axis's limits are
    the run's marker on the nearer edge, the ``edge_row``-th beside its step."""
    points = [(s["step"], s[key]) for s in run.spectra if key in s]
    if not points:
        return
    marker = DIVERGED_MARKERS.get(run.init, "x") if run.diverged else "o"
    style, color = STYLES.get(run.init, "-") + marker, COLORS.get(run.shortcut_depth)
    low, high = ax.get_ylim()
    inside = [(s, v) for s, v in points if edge_row is None or low <= v <= high]
    steps, values = zip(*inside, strict=True) if inside else ((), ())
    ax.plot(steps, values, style, markersize=3, color=color, label=_run_label(run))
    if edge_row is None:
        return
    first, last = ax.get_xlim()
    dodge = 0.025 * (last - first) * edge_row  # runs off the axis at one step sit side by side
    for step, value in points:
        if not low <= value <= high:  # on the frame, in axes coordinates
            edge = 0.0 if value < low else 1.0
            transform = ax.get_xaxis_transform()
            ax.plot([step + dodge], [edge], marker, color=color, clip_on=False, transform=transform)
    ax.set_ylim(low, high)


def plot_lr_sweep(out: Path, results: Sequence[SweepResult]) -> Path:
    """``lr_sweep.png``: final loss against learning rate, a line per ``n``, the initial
    ``2 / lambda_max`` dashed; a panel per number of units."""
    unit_counts = sorted({r.num_units for r in results})
    fig, axes = pyplot().subplots(
        1, len(unit_counts), figsize=(4.2 * len(unit_counts), 3.6), squeeze=False
    )
    finite = [r.final_loss for r in results if math.isfinite(r.final_loss)]
    ceiling = 2 * max(finite) if finite else 1.0
    low, high = min(r.lr for r in results) / 1.5, max(r.lr for r in results) * 1.5
    for ax, units in zip(axes[0], unit_counts, strict=True):
        beyond = []
        for offset, n in enumerate(sorted({r.shortcut_depth for r in results})):
            runs = sorted(
                (r for r in results if r.num_units == units and r.shortcut_depth == n),
                key=lambda r: r.lr,
            )
            color = COLORS.get(n)
            lrs = [r.lr for r in runs]
            losses = [r.final_loss if not r.diverged else math.nan for r in runs]
            ax.plot(lrs, losses, "o-", color=color, markersize=4, label=f"n={n}")
            diverged = [r.lr for r in runs if r.diverged]  # one row of crosses per n, at the top
            ax.plot(diverged, [ceiling * 1.3**offset] * len(diverged), "x", color=color)
            if runs and runs[0].stability_init > 0:
                predicted = runs[0].lr / runs[0].stability_init
                if low <= predicted <= high:
                    ax.axvline(predicted, color=color, linestyle="--", lw=1)
                else:
                    beyond.append(f"n={n}: {predicted:.3g}")
        ax.set(xscale="log", yscale="log", xlim=(low, high))
        note = f"\n2 / lambda_max off the axis: {', '.join(beyond)}" if beyond else ""
        ax.set_title(f"{_units(units)} (x: diverged; dashed: 2 / lambda_max){note}", fontsize=8)
        ax.set_xlabel("learning rate")
    axes[0][0].set_ylabel("final training loss")
    axes[0][0].legend(fontsize=8)
    return _save(fig, out / "lr_sweep.png", dpi=110)


def plot_edge_of_stability(out: Path, results: Sequence[EdgeResult]) -> Path:
    """``edge_of_stability.png``: the full-batch loss and ``lambda_max`` along training, a color per
    learning rate, its ``2 / lr`` dashed (Cohen et al. 2021, Fig. 1)."""
    fig, (loss_ax, sharp_ax) = pyplot().subplots(1, 2, figsize=(11, 3.8))
    trained = [r for r in results if not r.diverged]
    values = [v for r in trained for _, v in r.sharpness if math.isfinite(v)]
    top = 1.25 * max([r.threshold for r in results] + values)
    for index, result in enumerate(sorted(results, key=lambda r: -r.lr)):
        color = f"C{index}"
        label = f"lr {result.lr:.3g} (2 / lr = {result.threshold:.3g})"
        label += " (diverged)" if result.diverged else ""
        if result.losses:
            steps, losses = zip(*result.losses, strict=True)
            loss_ax.plot(steps, losses, color=color, linewidth=1, label=label)
        if result.sharpness:
            steps, sharpness = zip(*result.sharpness, strict=True)
            sharp_ax.plot(steps, sharpness, "o-", color=color, markersize=2.5, linewidth=1)
        sharp_ax.axhline(result.threshold, color=color, linestyle="--", linewidth=1)
        if result.diverged:  # at the edge of the axis instead of stretching it
            last = result.losses[-1][0] if result.losses else 0
            sharp_ax.plot([last], [top], "x", color=color, markersize=8, clip_on=False)
    loss_ax.set(yscale="log", xlabel="step", title="full-batch training loss")
    loss_ax.legend(fontsize=8)
    sharp_ax.set(ylim=(0, top), xlabel="step", title="lambda_max (sharpness); dashed: 2 / lr")
    return _save(fig, out / "edge_of_stability.png", dpi=110)


def plot_unit_curvature(out: Path, rows: Sequence[dict[str, Any]], threshold: float) -> Path:
    """``unit_curvature.png`` from the rows of ``unit_curvature.csv``: each unit's ``lambda_max``
    along training, a panel per run on its own linear axis from 0, ``threshold`` (``2 / lr``)
    dotted where inside, a diverged run's x at the top of its panel."""
    panels = sorted({(r["init"], r["num_units"]) for r in rows})  # small weights first
    depths = sorted({r["shortcut_depth"] for r in rows})
    plt = pyplot()
    size = (3.9 * len(depths) + 1.4, 2.5 * len(panels) + 0.4)
    fig, axes = plt.subplots(len(panels), len(depths), figsize=size, squeeze=False, sharex=True)
    for row_axes, (init, count) in zip(axes, panels, strict=True):
        colors = plt.get_cmap("viridis")([k / max(count - 1, 1) for k in range(count)])
        for ax, depth in zip(row_axes, depths, strict=True):
            key = (init, count, depth)
            runs = [r for r in rows if (r["init"], r["num_units"], r["shortcut_depth"]) == key]
            title = f"n = {depth}, {init}, {_units(count)}"
            steps = [r["step"] for r in runs]
            for unit in range(count):
                values = [r[f"unit_{unit}"] for r in runs]
                ax.plot(steps, values, "o-", color=colors[unit], markersize=3, linewidth=1.2)
            finite = [v for r in runs for k in range(count) if math.isfinite(v := r[f"unit_{k}"])]
            if finite and min(finite) >= 0 and max(finite) > 0:  # from 0, the top line inside
                ax.set_ylim(0, 1.08 * max(finite))
            low, high = ax.get_ylim()
            if low <= threshold <= high:
                ax.axhline(threshold, color="gray", linestyle=":", linewidth=1)
            diverged_at = runs[-1]["diverged_at_step"] if runs else None
            if diverged_at is not None:  # on the top edge, in axes coordinates
                edge = {"clip_on": False, "transform": ax.get_xaxis_transform()}
                ax.plot([diverged_at], [1.0], "x", color="black", markersize=8, **edge)
                title += f": diverged at step {diverged_at}"
            ax.set_title(title, fontsize=9)
        row_axes[0].set_ylabel("lambda_max of the unit", fontsize=9)
        shown = sorted({round(i * (count - 1) / 7) for i in range(8)})  # at most 8 entries
        handles = [
            plt.Line2D([], [], color=colors[unit], marker="o", markersize=3, label=f"unit {unit}")
            for unit in shown
        ]
        handles.append(
            plt.Line2D([], [], color="gray", linestyle=":", label=f"2 / lr = {threshold:.3g}")
        )
        row_axes[-1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    for ax in axes[-1]:
        ax.set_xlabel("step")
    title = "Largest eigenvalue of each residual unit's Hessian block along SGD"
    fig.suptitle(f"{title} (each panel its own scale)", fontsize=11)
    return _save(fig, out / "unit_curvature.png", dpi=110)
