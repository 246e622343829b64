"""``run_study``: the study's parts under a progress bar, run side by side in forked processes, one
CPU thread each, then their tables and figures."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lightning_shortcut.data.registry import get_dataset
from lightning_shortcut.study.config import StudyConfig
from lightning_shortcut.study.edge_of_stability import EdgeOfStabilityRuns
from lightning_shortcut.study.lr_sweep import LearningRateSweep
from lightning_shortcut.study.parts import Step, StudyPart
from lightning_shortcut.study.report import write_tables
from lightning_shortcut.study.results import RunResult
from lightning_shortcut.study.training import TrainingGrid
from lightning_shortcut.study.unit_curvature import UnitCurvature
from lightning_shortcut.study.zero_point import ZeroPoint

__all__ = ["PARTS", "default_workers", "run_steps", "run_study"]

#: The parts of the study, run and reported in this order; a new kind of run is one more entry.
PARTS: tuple[type[StudyPart], ...] = (
    ZeroPoint,
    TrainingGrid,
    LearningRateSweep,
    EdgeOfStabilityRuns,
    UnitCurvature,
)


def run_study(config: StudyConfig, progress: bool = True) -> list[RunResult]:
    """Run the study and write its outputs into ``config.out``; returns the training runs."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one Trainer per run: quiet
    dataset = get_dataset(config.data)
    datamodule = dataset.study_datamodule(config.data_dir, config.batch_size, config.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    parts = [part(config, dataset, datamodule) for part in PARTS]
    owners = [(part, step) for part in parts for step in part.steps()]
    workers = config.workers or default_workers()
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    # no refresh thread: the workers are forked from this process, and a thread that held the
    # console's lock at the fork would leave it held in them; the bar is redrawn as steps finish
    bar = Progress(
        *columns, TimeElapsedColumn(), console=console, disable=not progress, auto_refresh=False
    )
    with bar:
        task = bar.add_task(f"{len(owners)} steps in {workers} processes", total=len(owners))

        def advance(description: str) -> None:
            bar.update(task, description=description, advance=1, refresh=True)

        results = run_steps([step for _, step in owners], workers, advance)
    for (part, _), result in zip(owners, results, strict=True):
        part.keep(result)
    tables = [table for part in parts for table in part.tables()]
    summary = write_tables(config, tables)
    figures = [path for part in parts for path in part.figures()]
    if progress:
        console.print(summary)
        names = [t.file_name for t in tables] + ["summary.md"] + [p.name for p in figures]
        console.print(f"Wrote {', '.join(names)} into {config.out}")
    return next(part.results for part in parts if isinstance(part, TrainingGrid))


def default_workers() -> int:
    """One worker per CPU core this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# the steps a forked worker runs, by index (set in the parent before the fork; not pickled)
_STEPS: Sequence[Step] = ()


def _run_step(index: int) -> tuple[int, Any]:
    return index, _STEPS[index][1]()


def run_steps(
    steps: Sequence[Step], workers: int = 1, advance: Callable[[str], None] | None = None
) -> list[Any]:
    """Run the ``(description, work)`` ``steps`` on one CPU thread each, in ``workers`` forked
    processes where fork is available (``work()``'s result picklable), calling ``advance`` with
    each finished step's description; returns the results in the steps' order."""
    global _STEPS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _STEPS, results, indices = steps, [None] * len(steps), range(len(steps))
    forked = workers > 1 and len(steps) > 1 and "fork" in multiprocessing.get_all_start_methods()
    try:
        pool = (
            multiprocessing.get_context("fork").Pool(min(workers, len(steps))) if forked else None
        )
        with pool or contextlib.nullcontext():
            done = pool.imap_unordered(_run_step, indices) if pool else map(_run_step, indices)
            for index, result in done:
                results[index] = result
                if advance is not None:
                    advance(steps[index][0])
        return results
    finally:
        _STEPS = ()
        torch.set_num_threads(threads)
