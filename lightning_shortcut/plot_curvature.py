"""``lightning-shortcut plot``'s figures of where the curvature lives: the per-block curves and the
spectral density snapshots of ``HessianEigenvalueMonitor(blocks=..., density_snapshots=...)``, as
docs/recipes.md shows. Only matplotlib (and its numpy) is imported, not torch."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lightning_shortcut.plot import pyplot, save_figure, step_axis
from lightning_shortcut.run_log import RunLog, Series

__all__ = [
    "DENSITY_FILE",
    "MAX_LINES",
    "block_series",
    "density_curves",
    "draw_block_figure",
    "draw_density_figure",
    "plot_curvature_figures",
    "read_density_snapshots",
]

#: The monitor's density file in a version folder (``trainer.log_dir``).
DENSITY_FILE = "hessian_density.csv"
#: Above this many blocks a metric is drawn as a heatmap of blocks by step, not one line per block.
MAX_LINES = 8
#: The density's smoothing width, as a share of the range of the snapshots' nodes.
SIGMA_SHARE = 0.01
# what a log axis shows below the density's smallest values (PyHessian adds 1e-7 the same way)
_FLOOR = 1e-7
_BLOCK_METRICS = (
    "max_eigenvalue",
    "min_eigenvalue",
    "max_eigenvector_share",
    "min_eigenvector_share",
)
# a snapshot: the quadrature nodes and weights of each probe
Snapshot = list[tuple[list[float], list[float]]]


def block_series(series: Series) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The ``block/<name>/<metric>`` series: ``metric -> {block name -> [(step, value)]}``, the
    blocks in the order they were first logged."""
    found: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, points in series.items():
        name, _, metric = key.removeprefix("block/").rpartition("/")
        if key.startswith("block/") and name and metric in _BLOCK_METRICS:
            found.setdefault(metric, {})[name] = points
    return {metric: found[metric] for metric in _BLOCK_METRICS if metric in found}


def drawn_block_series(series: Series) -> list[str]:
    """What :func:`draw_block_figure` draws: ``block/<name>/<metric>`` for each line, or
    ``<metric> heatmap of N blocks`` for a heatmap."""
    drawn = []
    for metric, blocks in block_series(series).items():
        if len(blocks) > MAX_LINES:
            drawn.append(f"{metric} heatmap of {len(blocks)} blocks")
        else:
            drawn += [f"block/{name}/{metric}" for name in blocks]
    return drawn


def draw_block_figure(
    series: Series, title: str | None = None, steps: tuple[int, int] | None = None
) -> Any:
    """The per-block figure, not yet saved: a panel per metric, a line per block (a heatmap above
    :data:`MAX_LINES` blocks); arguments as :func:`~lightning_shortcut.plot.draw_hessian_metrics`.

    Raises:
        ValueError: if ``series`` holds no ``block/<name>/<metric>`` series.
    """
    metrics = block_series(series)
    if not metrics:
        raise ValueError("No per-block series (block/<name>/...) to plot: was `blocks` set?")
    figure, axes = pyplot().subplots(
        1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False
    )
    for axis, (metric, blocks) in zip(axes[0], metrics.items(), strict=True):
        if len(blocks) > MAX_LINES:
            measured = sorted({step for points in blocks.values() for step, _ in points})
            column = {step: index for index, step in enumerate(measured)}
            grid = np.full((len(blocks), len(measured)), np.nan)
            for row, points in enumerate(blocks.values()):
                for step, value in points:
                    grid[row, column[step]] = value
            image = axis.imshow(grid, aspect="auto", interpolation="nearest", origin="lower")
            figure.colorbar(image, ax=axis)
            ticks = list(range(0, len(measured), max(1, len(measured) // 6)))
            axis.set_xticks(ticks, [str(measured[t]) for t in ticks])
            axis.set_yticks(range(len(blocks)), list(blocks), fontsize=6)
        else:
            for name, points in blocks.items():
                xs, values = zip(*points, strict=True)
                axis.plot(xs, values, marker="o", markersize=3, label=name, clip_on=False)
            axis.legend(fontsize=7)
            step_axis(axis, steps)
        axis.set_title(f"per block: {metric}")
        axis.set_xlabel("step")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def read_density_snapshots(run: RunLog) -> dict[int, Snapshot]:
    """The density snapshots of ``run``: ``step -> [(nodes, weights) per probe]``, from the
    :data:`DENSITY_FILE` next to each log file read, within the steps taken from it."""
    snapshots: dict[int, Snapshot] = {}
    for part in run.parts:
        path = part.path.parent / DENSITY_FILE
        if not path.is_file():
            continue
        by_step: dict[int, dict[int, tuple[list[float], list[float]]]] = defaultdict(dict)
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = int(row["step"])
                if part.first_step is not None and not part.first_step <= step <= part.last_step:
                    continue
                nodes, weights = by_step[step].setdefault(int(row["probe"]), ([], []))
                nodes.append(float(row["node"]))
                weights.append(float(row["weight"]))
        for step, probes in by_step.items():  # a later version's replace an earlier one's
            snapshots[step] = [probes[probe] for probe in sorted(probes)]
    return dict(sorted(snapshots.items()))


def density_curves(
    snapshots: dict[int, Snapshot], points: int = 400
) -> tuple[list[float], dict[int, list[float]]]:
    """Each snapshot's smoothed density on one eigenvalue grid: ``(grid, {step: density})``; each
    density integrates to one over the real line (the weights of a probe sum to one)."""
    nodes = [node for snapshot in snapshots.values() for probe, _ in snapshot for node in probe]
    low, high = min(nodes), max(nodes)
    width = high - low or max(abs(high), 1.0)
    sigma = SIGMA_SHARE * width
    grid = np.linspace(low - 0.05 * width - 3 * sigma, high + 0.05 * width + 3 * sigma, points)
    curves = {}
    for step, snapshot in snapshots.items():
        density = np.zeros_like(grid)
        for probe_nodes, probe_weights in snapshot:
            diffs = (grid[:, None] - np.asarray(probe_nodes)[None]) / sigma
            kernel = np.exp(-0.5 * diffs**2) / (sigma * math.sqrt(2 * math.pi))
            density += kernel @ np.asarray(probe_weights)
        curves[step] = (density / len(snapshot)).tolist()
    return grid.tolist(), curves


def draw_density_figure(snapshots: dict[int, Snapshot], title: str | None = None) -> Any:
    """The snapshots' :func:`density_curves` on a log axis, labelled by step, not yet saved.

    Raises:
        ValueError: if there is no snapshot.
    """
    plt = pyplot()
    if not snapshots:
        raise ValueError("No density snapshot to plot: was `density_snapshots` set?")
    grid, curves = density_curves(snapshots)
    figure, axis = plt.subplots(figsize=(6, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(curves)))
    for color, (step, density) in zip(colors, curves.items(), strict=True):
        axis.semilogy(grid, np.asarray(density) + _FLOOR, color=color, label=f"step {step}")
    axis.set_xlabel("eigenvalue")
    axis.set_ylabel("density (log)")
    axis.set_title("Hessian spectral density" + (f"\n{title}" if title else ""))
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_curvature_figures(
    run: RunLog, series: Series, out: str | Path, title: str | None = None
) -> list[tuple[Path, list[str]]]:
    """Write the blocks figure (``<out stem>_blocks<suffix>``) and the density figure
    (``<out stem>_density<suffix>``) next to ``out``, each where the run has its data; returns
    ``(path, what was drawn)`` for each."""
    out = Path(out)
    written = []
    if block_series(series):
        figure = draw_block_figure(series, title, run.step_range)
        path = save_figure(figure, out.with_name(f"{out.stem}_blocks{out.suffix}"))
        written.append((path, drawn_block_series(series)))
    if snapshots := read_density_snapshots(run):
        figure = draw_density_figure(snapshots, title)
        path = save_figure(figure, out.with_name(f"{out.stem}_density{out.suffix}"))
        written.append((path, [f"step {step}" for step in snapshots]))
    return written
