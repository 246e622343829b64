"""``lightning-shortcut plot``: draw the ``hessian/*`` curves a run logged.

Reads a run's CSVLogger ``metrics.csv`` files, or its TensorBoard event files (when ``tensorboard``
is installed), and draws up to three panels against the step: the extreme eigenvalues with their
standard errors (``*_stderr``) as error bars, the condition number (resolved values only, log axis),
and the stability ratio on a log axis with the edge of stability at 1. The step axis spans the
run's logged steps (every metric's), so a run measured a few times still shows where in training
its points are.

What is read (:func:`read_run`):

- a file: that file;
- a folder: the run of the newest log below it. A run is a logger's ``name`` folder holding
  ``version_N`` folders, one per ``Trainer.fit``: a run resumed from a checkpoint logs into a new
  version, and the history before the checkpoint stays in the earlier one. The versions are merged
  by step: each resumed version continues the one before it from its first logged step, and holds
  every step from there (the earlier version's later steps were trained again after the resume;
  the logs do not hold the checkpoint's step, so rows between it and that first step stay). A
  version whose first step is not after the previous version's first step (``version_1`` starting
  at step 0) is a new run, not a resume: the versions before it are left out;
- a ``version_N`` folder or file: that version alone (and a note when it resumed an earlier one).
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LogPart",
    "RunLog",
    "draw_hessian_metrics",
    "drawn_series",
    "load_hessian_metrics",
    "load_step_range",
    "plot_hessian_metrics",
    "read_run",
]

Series = dict[str, list[tuple[int, float]]]
# one logged row: the step and the metrics logged at it
Row = tuple[int, dict[str, float]]

_EIGENVALUE_KEYS = ("max_eigenvalue", "min_eigenvalue")
_STDERR = "_stderr"
# a series with at most this many points gets larger markers: each point is a measurement to see
_FEW_POINTS = 5
_VERSION = re.compile(r"version_(\d+)")
_EVENTS = "events.out.tfevents.*"


@dataclass(frozen=True)
class LogPart:
    """One log file of a run and the steps taken from it.

    Attributes:
        path: the ``metrics.csv`` or event file.
        first_step: the first step taken from it (``None`` if it holds no row).
        last_step: the last step taken from it (a version that a later one resumed gives the steps
            before the resumed version's first).
    """

    path: Path
    first_step: int | None
    last_step: int | None

    def __str__(self) -> str:
        if self.first_step is None:
            return f"{self.path} (no rows)"
        return f"{self.path} (steps {self.first_step}-{self.last_step})"


@dataclass(frozen=True)
class RunLog:
    """A run's logged metrics, from one log file or merged from the versions of a resumed run.

    Attributes:
        parts: the files read, oldest version first, with the steps each gave.
        rows: every logged row, ``(step, {metric: value})``, in the order of ``parts``.
        notes: what the reader should know about what was read and what was left out.
    """

    parts: tuple[LogPart, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def series(self, prefix: str = "hessian/") -> Series:
        """The ``{prefix}*`` metrics: ``name (without prefix) -> [(step, value)]`` by step."""
        series: Series = defaultdict(list)
        for step, metrics in self.rows:
            for key, value in metrics.items():
                if key.startswith(prefix):
                    series[key[len(prefix) :]].append((step, value))
        return {key: sorted(points, key=lambda point: point[0]) for key, points in series.items()}

    @property
    def step_range(self) -> tuple[int, int] | None:
        """The first and last step at which anything was logged, or ``None``."""
        steps = [step for step, _ in self.rows]
        return (min(steps), max(steps)) if steps else None

    def describe(self) -> str:
        """``read FILE (steps A-B), ...``: what was read, one line."""
        return "read " + ", ".join(str(part) for part in self.parts)


def read_run(source: str | Path) -> RunLog:
    """The logged metrics of the run ``source`` names (see the module's docstring for which files).

    Args:
        source: a ``metrics.csv`` or TensorBoard event file, a logger's version folder, a run's
            folder (its ``version_*`` folders are merged by step) or any folder above it (the run
            of the newest log below it).

    Raises:
        FileNotFoundError: if there is no such file or no log below the folder.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"No such file or folder: {str(path)!r}.")
    if path.is_file():
        return _with_resume_hint(_read_versions([path]))
    logs = _version_logs(path)
    if not logs:
        raise FileNotFoundError(
            f"No metrics.csv (CSVLogger) or {_EVENTS} (TensorBoardLogger) below {str(path)!r}."
        )
    newest = max(logs, key=lambda log: log.stat().st_mtime)
    run = _run_folder(newest)
    if run is None or not run.is_relative_to(path):  # a version folder, or a log outside one
        versions = [newest]
    else:
        versions = sorted((log for log in logs if _run_folder(log) == run), key=_version_number)
    others = {_run_folder(log) or log for log in logs} - {run or newest}
    notes: tuple[str, ...] = ()
    if others:
        notes = (
            f"{len(others)} other run(s) below {str(path)!r} not read (the newest log is "
            f"{str(newest)!r}); give a run's folder to draw it.",
        )
    return _with_resume_hint(_read_versions(versions, notes))


def _version_logs(folder: Path) -> list[Path]:
    """Every run version's log below ``folder``: each ``metrics.csv``, else each folder's newest
    event file."""
    found = list(folder.rglob("metrics.csv"))
    if found:
        return found
    newest: dict[Path, Path] = {}
    for events in folder.rglob(_EVENTS):
        current = newest.get(events.parent)
        if current is None or events.stat().st_mtime > current.stat().st_mtime:
            newest[events.parent] = events
    return list(newest.values())


def _run_folder(log: Path) -> Path | None:
    """The run folder of a log in a ``version_N`` folder, else ``None``."""
    return log.parent.parent if _VERSION.fullmatch(log.parent.name) else None


def _version_number(log: Path) -> int:
    match = _VERSION.fullmatch(log.parent.name)
    return int(match.group(1)) if match else -1


def _with_resume_hint(run: RunLog) -> RunLog:
    """``run``, with a note where it is one version that resumed an earlier one of its run."""
    if len(run.parts) != 1 or run.step_range is None or run.step_range[0] == 0:
        return run
    log = run.parts[0].path
    folder = _run_folder(log)
    if folder is None or not any(
        _run_folder(other) == folder and _version_number(other) < _version_number(log)
        for other in _version_logs(folder)
    ):
        return run
    hint = (
        f"{log.parent.name} starts at step {run.step_range[0]}: it resumed an earlier version; "
        f"`lightning-shortcut plot {folder}` draws the run whole."
    )
    return RunLog(run.parts, run.rows, (*run.notes, hint))


def _read_versions(logs: Sequence[Path], notes: tuple[str, ...] = ()) -> RunLog:
    """Merge ``logs`` (one run's, oldest version first) into one run, as the module's docstring
    says: the chain of resumes that ends with the newest version, each cut where the next begins."""
    versions = [(log, rows) for log in logs if (rows := _read_rows(log))]
    if not versions:  # nothing logged yet
        return RunLog(tuple(LogPart(log, None, None) for log in logs[-1:]), (), notes)
    first_steps = [min(step for step, _ in rows) for _, rows in versions]
    start = len(versions) - 1
    while start > 0 and first_steps[start] > first_steps[start - 1]:
        start -= 1
    if start > 0:
        left_out = ", ".join(str(log) for log, _ in versions[:start])
        notes += (
            f"not merged: {left_out} ({versions[start][0].parent.name} starts at step "
            f"{first_steps[start]}, not after {versions[start - 1][0].parent.name}'s first step "
            f"{first_steps[start - 1]}: a new run, not a resume).",
        )
    parts, merged = [], []
    for index in range(start, len(versions)):
        log, rows = versions[index]
        if index + 1 < len(versions):  # the next version resumed from a checkpoint before this
            rows = [(step, metrics) for step, metrics in rows if step < first_steps[index + 1]]
        steps = [step for step, _ in rows]
        parts.append(LogPart(log, min(steps), max(steps)))
        merged += rows
    return RunLog(tuple(parts), tuple(merged), notes)


def _read_rows(path: Path) -> list[Row]:
    return _read_csv(path) if path.suffix == ".csv" else _read_events(path)


def _read_csv(path: Path) -> list[Row]:
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step", "")
            if not step:
                continue
            metrics = {
                key: float(value)
                for key, value in row.items()
                if key and key != "step" and value not in ("", None)
            }
            rows.append((int(float(step)), metrics))
    return rows


def _read_events(path: Path) -> list[Row]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError(
            "Reading TensorBoard event files needs `pip install tensorboard`; or log with "
            "CSVLogger and pass its metrics.csv."
        ) from error
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [
        (event.step, {tag: float(event.value)})
        for tag in accumulator.Tags()["scalars"]
        for event in accumulator.Scalars(tag)
    ]


def load_hessian_metrics(source: str | Path, prefix: str = "hessian/") -> Series:
    """The logged ``{prefix}*`` metrics of a run: ``name (without prefix) -> [(step, value)]``.

    Args:
        source: as in :func:`read_run`: a log file, a version folder, a run folder (a resumed run's
            versions merged by step) or a folder above it.
        prefix: the monitor's ``log_prefix``.

    Raises:
        FileNotFoundError: if there is no such file or no log below the folder.
        ValueError: if the log holds no ``{prefix}`` metric.
    """
    run = read_run(source)
    series = run.series(prefix)
    if not series:
        files = ", ".join(repr(str(part.path)) for part in run.parts)
        raise ValueError(
            f"{files} holds no '{prefix}*' metric; was HessianEigenvalueMonitor in the run "
            "(and is its log_prefix the one given)?"
        )
    return series


def load_step_range(source: str | Path) -> tuple[int, int] | None:
    """The first and last step at which the run logged anything (any metric), or ``None``.

    Args:
        source: as in :func:`read_run`.

    Raises:
        FileNotFoundError: if there is no such file or no log below the folder.
    """
    return read_run(source).step_range


def _panels(series: Series) -> list[tuple[str, list[str]]]:
    """The panels drawn from ``series``: ``(name, keys)`` for each panel with data."""
    eigenvalue_keys = [key for key in _EIGENVALUE_KEYS if key in series]
    eigenvalue_keys += sorted(
        key for key in series if key.startswith(("top_", "bottom_")) and not key.endswith(_STDERR)
    )
    panels = [
        ("eigenvalues", eigenvalue_keys),
        ("condition_number", ["condition_number"] if _condition_points(series) else []),
        ("stability", ["stability"] if _positive_points(series.get("stability", [])) else []),
    ]
    return [(name, keys) for name, keys in panels if keys]


def _condition_points(series: Series) -> list[tuple[int, float]]:
    """The resolved condition numbers: finite ones (``inf`` says the smallest was not resolved)."""
    return _positive_points(series.get("condition_number", []))


def _positive_points(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """What a log axis can show: the finite, positive values."""
    return [(step, value) for step, value in points if math.isfinite(value) and value > 0]


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

    panels = _panels(series)
    if not panels:
        raise ValueError(f"Nothing to plot: no eigenvalue or stability series in {sorted(series)}.")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (name, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            points = _positive_points(series[key]) if name != "eigenvalues" else series[key]
            xs, values = zip(*points, strict=True)
            size = 6 if len(points) <= _FEW_POINTS else 3
            (line,) = axis.plot(xs, values, marker="o", markersize=size, label=key, clip_on=False)
            bars = _error_bars(series, key)
            if bars:
                bar_steps, bar_values, errors = zip(*bars, strict=True)
                axis.errorbar(
                    bar_steps,
                    bar_values,
                    yerr=errors,
                    fmt="none",
                    ecolor=line.get_color(),
                    capsize=3,
                    label=f"{key} ± stderr",
                )
        if name == "condition_number":
            axis.set_yscale("log")
            axis.set_title("condition number (resolved values)")
        elif name == "stability":
            # a log axis: the ratio is often far below the edge (0.003 lies flat on a linear one)
            axis.set_yscale("log")
            axis.axhline(1.0, color="black", linestyle="--", linewidth=1, label="edge of stability")
            values = [value for _, value in _positive_points(series["stability"])]
            axis.set_ylim(min(*values, 1.0) / 2, max(*values, 1.0) * 2)
            hidden = len(series["stability"]) - len(values)
            axis.set_title(
                "stability (step curvature / threshold)"
                + (f"\n{hidden} values <= 0 or NaN not drawn" if hidden else "")
            )
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
