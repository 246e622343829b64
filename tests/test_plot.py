"""``lightning-shortcut plot``: a run's logged curves on the run's own step range."""

import csv

import pytest

from lightning_shortcut.cli import main as cli_main
from lightning_shortcut.plot import draw_hessian_metrics, load_hessian_metrics, load_step_range


def _write_metrics(path, hessian_steps, last_step):
    """A CSVLogger-shaped metrics.csv: the training loss every 50 steps and an epoch-end validation
    loss, the monitor's values at ``hessian_steps``."""
    columns = ["epoch", "step", "train_loss", "val_loss", "hessian/max_eigenvalue"]
    columns += ["hessian/min_eigenvalue", "hessian/stability"]
    rows = [{"epoch": 0, "step": s, "train_loss": 1.0 / (1 + s)} for s in range(49, last_step, 50)]
    rows.append({"epoch": 0, "step": last_step, "val_loss": 0.5})
    for index, step in enumerate(hessian_steps):
        values = {"hessian/max_eigenvalue": 2.0 + index, "hessian/min_eigenvalue": -0.1}
        rows.append({"epoch": 0, "step": step, "hessian/stability": 0.3, **values})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["step"]))
    return path


@pytest.mark.parametrize("hessian_steps", [[0], [0, 420], [300]])
def test_a_run_with_few_points_is_drawn_on_its_own_steps(tmp_path, hessian_steps):
    metrics = _write_metrics(tmp_path / "metrics.csv", hessian_steps, last_step=839)
    assert load_step_range(tmp_path) == (0 if 0 in hessian_steps else 49, 839)
    series = load_hessian_metrics(tmp_path)
    assert series["max_eigenvalue"] == [(s, 2.0 + i) for i, s in enumerate(hessian_steps)]
    figure = draw_hessian_metrics(series, steps=load_step_range(metrics))
    first = min(load_step_range(metrics))
    for axis in figure.axes:
        low, high = axis.get_xlim()
        assert low <= first and high >= 839  # the run's steps, not a dot's +-0.04
        assert high - low < 1.1 * (839 - first)
        for line in axis.get_lines():
            if line.get_marker() == "o":
                assert line.get_markersize() >= 6 and not line.get_clip_on()  # seen on an edge
    out = tmp_path / "curves.png"
    cli_main(["plot", str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 10_000


def test_many_points_keep_small_markers_and_the_default_range(tmp_path):
    steps = list(range(0, 840, 42))
    _write_metrics(tmp_path / "metrics.csv", steps, last_step=839)
    figure = draw_hessian_metrics(load_hessian_metrics(tmp_path))
    markers = [line for line in figure.axes[0].get_lines() if line.get_marker() == "o"]
    assert markers and all(line.get_markersize() == 3 for line in markers)
    low, high = figure.axes[0].get_xlim()
    assert low <= 0 and high >= 798


def test_step_range_of_a_missing_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        load_step_range(tmp_path)
