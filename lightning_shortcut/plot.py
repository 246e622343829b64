"""``lightning-shortcut plot``: draw the ``hessian/*`` curves a run logged.

Reads a CSVLogger's ``metrics.csv`` (a file, a version folder or any folder above it: the newest
``metrics.csv`` below it is used) or TensorBoard event files (when ``tensorboard`` is installed), and
draws up to three panels against the step: the extreme eigenvalues, the condition number (resolved
values only), and the stability ratio with the edge of stability at 1. The step axis spans the run's
logged steps (every metric's, :func:`load_step_range`), so a run measured a few times still shows
where in training its points are.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = [
    "draw_hessian_metrics",
    "load_hessian_metrics",
    "load_step_range",
    "plot_hessian_metrics",
]

Series = dict[str, list[tuple[int, float]]]

_EIGENVALUE_KEYS = ("max_eigenvalue", "min_eigenvalue")
# a series with at most this many points gets larger markers: each point is a measurement to see
_FEW_POINTS = 5


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def _log_file(source: str | Path) -> Path:
    """The log ``source`` names: the file itself, or the newest ``metrics.csv`` below a folder, else
    its newest event file."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"No such file or folder: {str(path)!r}.")
    if path.is_dir():
        found = _newest(path, "metrics.csv") or _newest(path, "events.out.tfevents.*")
        if found is None:
            raise FileNotFoundError(
                f"No metrics.csv (CSVLogger) or events.out.tfevents.* (TensorBoardLogger) below "
                f"{str(path)!r}."
            )
        path = found
    return path


def load_hessian_metrics(source: str | Path, prefix: str = "hessian/") -> Series:
    """The logged ``{prefix}*`` metrics of a run: ``name (without prefix) -> [(step, value)]``.

    Args:
        source: a ``metrics.csv``, a TensorBoard event file, or a folder holding either (the newest
            ``metrics.csv`` below it, else the newest event file).
        prefix: the monitor's ``log_prefix``.

    Raises:
        FileNotFoundError: if there is no such file or no log below the folder.
        ValueError: if the log holds no ``{prefix}`` metric.
    """
    path = _log_file(source)
    series = _read_csv(path, prefix) if path.suffix == ".csv" else _read_events(path, prefix)
    if not series:
        raise ValueError(
            f"{str(path)!r} holds no '{prefix}*' metric; was HessianEigenvalueMonitor in the run "
            "(and is its log_prefix the one given)?"
        )
    return series


def load_step_range(source: str | Path) -> tuple[int, int] | None:
    """The first and last step at which the run logged anything (any metric), or ``None``.

    Args:
        source: as in :func:`load_hessian_metrics`.

    Raises:
        FileNotFoundError: if there is no such file or no log below the folder.
    """
    path = _log_file(source)
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            steps = [int(float(row["step"])) for row in csv.DictReader(handle) if row.get("step")]
    else:
        steps = [step for points in _read_events(path, "").values() for step, _ in points]
    return (min(steps), max(steps)) if steps else None


def _read_csv(path: Path, prefix: str) -> Series:
    series: Series = defaultdict(list)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step", "")
            if not step:
                continue
            for key, value in row.items():
                if key and key.startswith(prefix) and value not in ("", None):
                    series[key[len(prefix) :]].append((int(float(step)), float(value)))
    return dict(series)


def _read_events(path: Path, prefix: str) -> Series:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError(
            "Reading TensorBoard event files needs `pip install tensorboard`; or log with "
            "CSVLogger and pass its metrics.csv."
        ) from error
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag[len(prefix) :]: [(event.step, float(event.value)) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
        if tag.startswith(prefix)
    }


def draw_hessian_metrics(
    series: Series, title: str | None = None, steps: tuple[int, int] | None = None
) -> Any:
    """The figure of :func:`plot_hessian_metrics`, not yet saved.

    Args:
        series: as :func:`load_hessian_metrics` returns.
        title: the figure's title.
        steps: the step axis's range, the run's (:func:`load_step_range`); default: the points'.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ValueError: if ``series`` holds no eigenvalue, condition-number or stability series.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eigenvalue_keys = [key for key in series if key in _EIGENVALUE_KEYS]
    eigenvalue_keys += sorted(key for key in series if key.startswith(("top_", "bottom_")))
    condition = [(s, v) for s, v in series.get("condition_number", []) if math.isfinite(v)]
    panels = [
        ("eigenvalues", eigenvalue_keys),
        ("condition_number", ["condition_number"] if condition else []),
        ("stability", ["stability"] if "stability" in series else []),
    ]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        raise ValueError(f"Nothing to plot: no eigenvalue or stability series in {sorted(series)}.")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (name, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            points = condition if key == "condition_number" else series[key]
            xs, values = zip(*points, strict=True)
            size = 6 if len(points) <= _FEW_POINTS else 3
            axis.plot(xs, values, marker="o", markersize=size, label=key, clip_on=False)
        if name == "condition_number":
            axis.set_yscale("log")
            axis.set_title("condition number (resolved values)")
        elif name == "stability":
            axis.axhline(1.0, color="black", linestyle="--", linewidth=1, label="edge of stability")
            axis.set_title("stability (step curvature / threshold)")
        else:
            axis.axhline(0.0, color="grey", linewidth=0.5)
            axis.set_title("Hessian eigenvalues")
        if steps is not None:
            first, last = steps
            margin = max(1.0, 0.02 * (last - first))  # a single step still gets an axis around it
            axis.set_xlim(first - margin, last + margin)
        axis.set_xlabel("step")
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_hessian_metrics(
    series: Series,
    out: str | Path,
    title: str | None = None,
    steps: tuple[int, int] | None = None,
) -> Path:
    """Draw the eigenvalue, condition-number and stability panels that ``series`` has data for.

    Args:
        series: as :func:`load_hessian_metrics` returns.
        out: the image to write (its folder is created).
        title: the figure's title.
        steps: the step axis's range, the run's (:func:`load_step_range`); default: the points'.

    Returns:
        The path of the written image.

    Raises:
        ValueError: if ``series`` holds no eigenvalue, condition-number or stability series.
    """
    import matplotlib.pyplot as plt

    figure = draw_hessian_metrics(series, title, steps)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
