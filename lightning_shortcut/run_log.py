"""A run's logged metrics, read back from its CSVLogger ``metrics.csv`` files or its TensorBoard
event files (when ``tensorboard`` is installed): what ``lightning-shortcut plot`` draws. How a
resumed run's ``version_N`` folders are merged by step is in docs/recipes.md."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LogPart", "RunLog", "Series", "read_run"]

Series = dict[str, list[tuple[int, float]]]
# one logged row: the step and the metrics logged at it
Row = tuple[int, dict[str, float]]

_VERSION = re.compile(r"version_(\d+)")
_EVENTS = "events.out.tfevents.*"


@dataclass(frozen=True)
class LogPart:
    """One log file of a run (``metrics.csv`` or event file) and the first and last step taken from
    it (``None`` if it holds no row; a resumed version: the steps before the next one's first)."""

    path: Path
    first_step: int | None
    last_step: int | None

    def __str__(self) -> str:
        if self.first_step is None:
            return f"{self.path} (no rows)"
        return f"{self.path} (steps {self.first_step}-{self.last_step})"


@dataclass(frozen=True)
class RunLog:
    """A run's logged metrics: the ``parts`` read (oldest version first), every logged row
    ``(step, {metric: value})`` in their order, and ``notes`` on what was read or left out."""

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
    """The logged metrics of the run ``source`` names.

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
    note = (
        f"{len(others)} other run(s) below {str(path)!r} not read (the newest log is "
        f"{str(newest)!r}); give a run's folder to draw it."
    )
    return _with_resume_hint(_read_versions(versions, (note,) if others else ()))


def _version_logs(folder: Path) -> list[Path]:
    """Each run version's log below ``folder``: its ``metrics.csv``, else its newest event file."""
    if found := list(folder.rglob("metrics.csv")):
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
    """Merge ``logs`` (one run's, oldest version first): the chain of resumes that ends with the
    newest version, each cut where the next begins."""
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
