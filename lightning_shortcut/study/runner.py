"""``run_study``: the study's parts in order under a progress bar, then their tables and figures."""

from __future__ import annotations

import logging

from lightning_shortcut.data.registry import get_dataset
from lightning_shortcut.study.config import StudyConfig
from lightning_shortcut.study.edge_of_stability import EdgeOfStabilityRuns
from lightning_shortcut.study.lr_sweep import LearningRateSweep
from lightning_shortcut.study.parts import StudyPart
from lightning_shortcut.study.report import write_tables
from lightning_shortcut.study.results import RunResult
from lightning_shortcut.study.training import TrainingGrid
from lightning_shortcut.study.unit_curvature import UnitCurvature
from lightning_shortcut.study.zero_point import ZeroPoint

__all__ = ["PARTS", "run_study"]

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
    steps = [step for part in parts for step in part.steps()]
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=not progress) as bar:
        task = bar.add_task("", total=len(steps))
        for description, work in steps:
            bar.update(task, description=description)
            work()
            bar.advance(task)
    tables = [table for part in parts for table in part.tables()]
    summary = write_tables(config, tables)
    figures = [path for part in parts for path in part.figures()]
    if progress:
        console.print(summary)
        names = [t.file_name for t in tables] + ["summary.md"] + [p.name for p in figures]
        console.print(f"Wrote {', '.join(names)} into {config.out}")
    return next(part.runs for part in parts if isinstance(part, TrainingGrid))
