"""The study's tables: CSV files, ``summary.md`` and the console summary."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_shortcut.study.config import StudyConfig
from lightning_shortcut.study.parts import Table

__all__ = ["markdown", "write_csv", "write_tables"]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a CSV file with a header line of the first row's keys."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)  # nan, inf and -inf as such


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as a Markdown table of ``columns`` (default: every key of the first row)."""
    header = list(columns or rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(config: StudyConfig, tables: Sequence[Table]) -> str:
    """Write each table's CSV and ``summary.md`` into ``config.out``; returns the console text."""
    for table in tables:
        write_csv(config.out / table.file_name, table.rows)
    rendered = [markdown(table.rows, table.columns) for table in tables]
    sections = (f"## {t.title}\n\n{text}" for t, text in zip(tables, rendered, strict=True))
    (config.out / "summary.md").write_text(
        f"# shortcut-study on {config.data} ({config.budget} budget, {config.max_steps} SGD steps, "
        f"lr {config.lr}, small init scale {config.small_scale})\n\n" + "\n".join(sections)
    )
    console = (f"[bold]{t.label}[/bold]\n{text}" for t, text in zip(tables, rendered, strict=True))
    return "\n" + "\n".join(console)
