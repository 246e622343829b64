"""``lightning-shortcut plot``: draw the ``hessian/*`` curves a run logged (docs/recipes.md shows
the panels); what is read: :func:`~lightning_shortcut.run_log.read_run`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning_shortcut.run_log import RunLog, Series, read_run

__all__ = [
    "draw_hessian_metrics",
    "drawn_series",
    "load_hessian_metrics",
    "load_step_range",
    "plot_hessian_metrics",
    "read_run",
]

_EIGENVALUE_KEYS = ("max_eigenvalue", "min_eigenvalue")
# the panels, in their order, and their titles; those on a log axis
_TITLES = {
    "eigenvalues": "Hessian eigenvalues",
    "condition_number": "condition number (resolved values)",
    "stability": "stability (step curvature / threshold)",
    "max_stable_lr": "largest stable learning rate",
    "gradient_overlap": "gradient's share in the top eigenspace",
}
_LOG_PANELS = ("condition_number", "stability", "max_stable_lr")
_STDERR = "_stderr"
# a series with at most this many points gets larger markers: each point is a measurement to see
_FEW_POINTS = 5


def load_hessian_metrics(source: str | Path | RunLog, prefix: str = "hessian/") -> Series:
    """The logged ``{prefix}*`` metrics of a run: ``name (without prefix) -> [(step, value)]``.

    Args:
        source: as in :func:`read_run`, or a run it read.
        prefix: the monitor's ``log_prefix``.

    Raises:
        FileNotFoundError: if there is no such file or no log below the folder.
        ValueError: if the log holds no ``{prefix}`` metric.
    """
    run = source if isinstance(source, RunLog) else read_run(source)
    series = run.series(prefix)
    if not series:
        files = ", ".join(repr(str(part.path)) for part in run.parts)
        raise ValueError(
            f"{files} holds no '{prefix}*' metric; was HessianEigenvalueMonitor in the run "
            "(and is its log_prefix the one given)?"
        )
    return series


def load_step_range(source: str | Path) -> tuple[int, int] | None:
    """The first and last step at which the run ``source`` (as in :func:`read_run`) logged any
    metric, or ``None``; ``FileNotFoundError`` where there is no log."""
    return read_run(source).step_range


def _panels(series: Series) -> list[tuple[str, list[str]]]:
    """The panels drawn from ``series``, in order: ``(name, keys)`` for each panel with data."""
    keys = {name: [name] for name in _TITLES if _drawn_points(name, series.get(name, []))}
    keys["eigenvalues"] = [key for key in _EIGENVALUE_KEYS if key in series]
    keys["eigenvalues"] += sorted(
        key for key in series if key.startswith(("top_", "bottom_")) and not key.endswith(_STDERR)
    )
    return [(name, keys[name]) for name in _TITLES if keys.get(name)]


def _drawn_points(name: str, points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points a panel shows: the finite values, on a log axis the positive ones."""
    log = name in _LOG_PANELS
    return [
        (step, value) for step, value in points if math.isfinite(value) and (value > 0 or not log)
    ]


def _error_bars(series: Series, key: str) -> list[tuple[int, float, float]]:
    """``(step, value, stderr)`` where ``key`` has a finite logged standard error."""
    values = dict(series[key])
    return [
        (step, values[step], error)
        for step, error in series.get(key + _STDERR, [])
        if step in values and math.isfinite(error) and math.isfinite(values[step])
    ]


def drawn_series(series: Series) -> list[str]:
    """What :func:`draw_hessian_metrics` draws from ``series``: each series' name, followed by
    ``" ± stderr"`` where its logged standard errors are drawn as error bars."""
    return [
        key + (" ± stderr" if _error_bars(series, key) else "")
        for _, keys in _panels(series)
        for key in keys
    ]


def draw_hessian_metrics(
    series: Series, title: str | None = None, steps: tuple[int, int] | None = None
) -> Any:
    """The matplotlib figure of :func:`plot_hessian_metrics`, not yet saved.

    Args:
        series: as :func:`load_hessian_metrics` returns.
        title: the figure's title.
        steps: the step axis's range, the run's (:func:`load_step_range`); default: the points'.

    Raises:
        ValueError: if ``series`` holds no eigenvalue, condition-number or stability series.
    """
    panels = _panels(series)
    if not panels:
        raise ValueError(f"Nothing to plot: no series of {list(_TITLES)} in {sorted(series)}.")
    figure, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (name, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            points = series[key] if name == "eigenvalues" else _drawn_points(name, series[key])
            xs, values = zip(*points, strict=True)
            size = 6 if len(points) <= _FEW_POINTS else 3
            (line,) = axis.plot(xs, values, marker="o", markersize=size, label=key, clip_on=False)
            if bars := _error_bars(series, key):
                bar_steps, bar_values, errors = zip(*bars, strict=True)
                style = {"fmt": "none", "ecolor": line.get_color(), "capsize": 3}
                axis.errorbar(bar_steps, bar_values, yerr=errors, label=f"{key} ± stderr", **style)
        hidden = len(series.get(name, [])) - len(_drawn_points(name, series.get(name, [])))
        axis.set_title(_TITLES[name] + (f"\n{hidden} values not drawn" if hidden else ""))
        if name in _LOG_PANELS:
            # a log axis: the ratio is often far below the edge (0.003 lies flat on a linear one)
            axis.set_yscale("log")
        if name == "stability":
            axis.axhline(1.0, color="black", linestyle="--", linewidth=1, label="edge of stability")
            values = [value for _, value in _drawn_points(name, series[name])]
            axis.set_ylim(min(*values, 1.0) / 2, max(*values, 1.0) * 2)
        elif name == "gradient_overlap":
            axis.set_ylim(-0.02, 1.02)
        elif name == "eigenvalues":
            axis.axhline(0.0, color="grey", linewidth=0.5)
        step_axis(axis, steps)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_hessian_metrics(
    series: Series, out: str | Path, title: str | None = None, steps: tuple[int, int] | None = None
) -> Path:
    """Draw the panels of :func:`draw_hessian_metrics` (same arguments, same ``ValueError``) into
    the image ``out`` (its folder created) and return its path."""
    return save_figure(draw_hessian_metrics(series, title, steps), Path(out))


def step_axis(axis: Any, steps: tuple[int, int] | None) -> None:
    """Label ``axis`` as the step axis, over the run's ``steps`` where given (a margin around)."""
    if steps is not None:
        margin = max(1.0, 0.02 * (steps[1] - steps[0]))  # a single step still gets an axis
        axis.set_xlim(steps[0] - margin, steps[1] + margin)
    axis.set_xlabel("step")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures are written, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, dpi: int = 120) -> Path:
    """Write ``figure`` to ``path`` (its folder created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path
