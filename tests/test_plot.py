"""``lightning-shortcut plot``: a run's logged curves on the run's own step range."""

import csv
import os

import pytest
from matplotlib.container import ErrorbarContainer

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


def test_plot_writes_next_to_the_run_by_default(tmp_path, monkeypatch, capsys):
    run = tmp_path / "logs" / "run"
    run.mkdir(parents=True)
    metrics = _write_metrics(run / "metrics.csv", [0, 420], last_step=839)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli_main(["plot", str(run)])
    assert (run / "hessian.png").is_file() and not list(elsewhere.iterdir())
    assert f"wrote {run / 'hessian.png'}" in capsys.readouterr().out
    (run / "hessian.png").unlink()
    cli_main(["plot", str(metrics)])  # a file: next to it
    assert (run / "hessian.png").is_file() and not list(elsewhere.iterdir())


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


def _write_log(path, rows, mtime):
    """A CSVLogger-shaped metrics.csv of ``rows`` (dicts with a ``step``), its columns sorted as
    CSVLogger sorts them, modified at ``mtime``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for row in rows for key in row})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.utime(path, (mtime, mtime))
    return path


def _run_rows(first_step, last_step, offset):
    """Training loss every 10 steps from ``first_step``, the monitor every 20 steps (its values
    ``offset + step``, a standard error on the cold ones, at multiples of 40) and the stability."""
    rows = [
        {"epoch": s // 50, "step": s, "train_loss": 1.0 / (1 + s)}
        for s in range(first_step, last_step + 1, 10)
    ]
    for step in range((first_step + 19) // 20 * 20, last_step + 1, 20):
        row = {"epoch": step // 50, "step": step, "hessian/max_eigenvalue": offset + step}
        row |= {
            "hessian/min_eigenvalue": -0.5,
            "hessian/stability": 0.003,
            "hessian/converged": 1.0,
        }
        row |= {"hessian/num_hvps": 30.0}
        if step % 40 == 0:
            row["hessian/max_eigenvalue_stderr"] = 0.5
        rows.append(row)
    return sorted(rows, key=lambda row: row["step"])


def _resumed_run(root):
    """version_0 ran steps 0-100 (its last checkpoint at step 60); version_1 resumed from it and
    logged steps 70-200 with other values, so on steps 70-100 the resumed run's values hold."""
    first = _write_log(root / "version_0" / "metrics.csv", _run_rows(0, 100, 0.0), mtime=1_000)
    second = _write_log(root / "version_1" / "metrics.csv", _run_rows(70, 200, 1000.0), mtime=2_000)
    return first, second


def test_a_resumed_run_is_read_whole_from_its_versions(tmp_path):
    _resumed_run(tmp_path / "run")
    series = load_hessian_metrics(tmp_path / "run")
    expected = [(s, float(s)) for s in (0, 20, 40, 60)] + [
        (s, 1000.0 + s) for s in range(80, 201, 20)
    ]
    assert series["max_eigenvalue"] == expected
    assert series["max_eigenvalue_stderr"] == [
        (0, 0.5),
        (40, 0.5),
        (80, 0.5),
        (120, 0.5),
        (160, 0.5),
        (200, 0.5),
    ]
    assert load_step_range(tmp_path / "run") == (0, 200)
    # the folder above the run's: the same run, its newest
    assert load_hessian_metrics(tmp_path)["max_eigenvalue"] == expected


def test_a_later_version_from_step_zero_is_a_new_run(tmp_path):
    _write_log(tmp_path / "version_0" / "metrics.csv", _run_rows(0, 100, 0.0), mtime=1_000)
    _write_log(tmp_path / "version_1" / "metrics.csv", _run_rows(0, 60, 1000.0), mtime=2_000)
    series = load_hessian_metrics(tmp_path)
    assert series["max_eigenvalue"] == [(s, 1000.0 + s) for s in (0, 20, 40, 60)]
    assert load_step_range(tmp_path) == (0, 60)


def test_plot_names_what_it_read_and_what_it_drew(tmp_path, capsys):
    first, second = _resumed_run(tmp_path / "run")
    out = tmp_path / "curves.png"
    cli_main(["plot", str(tmp_path / "run"), "--out", str(out)])
    printed = capsys.readouterr().out
    read = [line for line in printed.splitlines() if line.startswith("read")]
    assert read and str(first) in read[0] and str(second) in read[0]
    assert "steps 0-60" in read[0] and "steps 70-200" in read[0]  # what each file gave
    (wrote,) = [line for line in printed.splitlines() if line.startswith("wrote")]
    drawn = wrote.split("(", 1)[1]
    assert "max_eigenvalue" in drawn and "min_eigenvalue" in drawn and "stability" in drawn
    assert "stderr" in drawn  # the error bars
    for key in ("converged", "num_hvps", "epoch", "train_loss"):
        assert key not in drawn
    # one version of a resumed run: read alone, and said so
    cli_main(["plot", str(second.parent), "--out", str(out)])
    printed = capsys.readouterr().out
    assert str(second) in printed and str(first) not in printed
    assert "resume" in printed and str(tmp_path / "run") in printed


def _axis(figure, title_word):
    (axis,) = [axis for axis in figure.axes if title_word in axis.get_title()]
    return axis


def test_stability_is_drawn_on_a_log_axis_with_the_edge(tmp_path):
    _resumed_run(tmp_path)
    axis = _axis(draw_hessian_metrics(load_hessian_metrics(tmp_path)), "stability")
    assert axis.get_yscale() == "log"
    low, high = axis.get_ylim()
    assert low <= 0.003 and high >= 1.0 and high / low < 1e4  # the points and the edge, not flat


def test_standard_errors_are_drawn_as_error_bars(tmp_path):
    _resumed_run(tmp_path)
    series = load_hessian_metrics(tmp_path)
    axis = _axis(draw_hessian_metrics(series), "eigenvalues")
    bars = [c for c in axis.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and bars[0].get_label() == "max_eigenvalue ± stderr"
    (segments,) = bars[0].lines[2]
    spans = sorted(
        (float(s[0][0]), float(s[0][1]), float(s[1][1])) for s in segments.get_segments()
    )
    values = dict(series["max_eigenvalue"])
    expected = [
        (step, values[step] - 0.5, values[step] + 0.5)
        for step, _ in series["max_eigenvalue_stderr"]
    ]
    assert [value for span in spans for value in span] == pytest.approx(
        [value for span in expected for value in span]
    )


def test_a_resumed_tensorboard_run_is_read_whole(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    for version, (steps, offset) in enumerate(
        [(range(0, 101, 20), 0.0), (range(80, 201, 20), 1000.0)]
    ):
        writer = SummaryWriter(tmp_path / "run" / f"version_{version}")
        for step in steps:
            writer.add_scalar("hessian/max_eigenvalue", offset + step, step)
        writer.close()
        for events in (tmp_path / "run" / f"version_{version}").iterdir():
            os.utime(events, (1_000 * (version + 1),) * 2)
    series = load_hessian_metrics(tmp_path)
    expected = [(s, float(s)) for s in (0, 20, 40, 60)] + [
        (s, 1000.0 + s) for s in range(80, 201, 20)
    ]
    assert series["max_eigenvalue"] == expected


def _write_block_run(folder, names, steps=(0, 10, 20), density_steps=(0, 20)):
    """A version folder with per-block metrics of ``names`` at ``steps`` and a density file."""
    folder.mkdir(parents=True)
    columns = ["epoch", "step", "hessian/max_eigenvalue"]
    ends = ("max_eigenvalue", "max_eigenvector_share")
    columns += [f"hessian/block/{name}/{end}" for name in names for end in ends]
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for index, step in enumerate(steps):
            row = {"epoch": 0, "step": step, "hessian/max_eigenvalue": 3.0 + index}
            for rank, name in enumerate(names):
                row[f"hessian/block/{name}/max_eigenvalue"] = 1.0 + rank + index
                row[f"hessian/block/{name}/max_eigenvector_share"] = 1.0 / len(names)
            writer.writerow(row)
    with open(folder / "hessian_density.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "probe", "node", "weight"])
        for index, step in enumerate(density_steps):
            for node, weight in ((-0.5, 0.25), (0.1, 0.5), (2.0 + index, 0.25)):
                writer.writerow([step, 0, node, weight])


def test_plot_draws_the_block_curves_and_the_density_snapshots(tmp_path, capsys):
    from lightning_shortcut.plot import read_run
    from lightning_shortcut.plot_curvature import density_curves, read_density_snapshots

    _write_block_run(tmp_path / "run" / "version_0", ["stack.units.0", "stack.units.1"])
    out = tmp_path / "figures" / "hessian.png"
    cli_main(["plot", str(tmp_path / "run"), "--out", str(out)])
    printed = capsys.readouterr().out
    blocks, density = out.with_name("hessian_blocks.png"), out.with_name("hessian_density.png")
    assert blocks.stat().st_size > 10_000 and density.stat().st_size > 10_000
    assert (
        f"wrote {blocks} (block/stack.units.0/max_eigenvalue, block/stack.units.1/max_eigenvalue, "
        in printed
    )
    assert f"wrote {density} (step 0, step 20)" in printed
    # each snapshot's smoothed density integrates to one
    grid, curves = density_curves(read_density_snapshots(read_run(tmp_path / "run")))
    spacing = grid[1] - grid[0]
    for curve in curves.values():
        assert sum(curve) * spacing == pytest.approx(1.0, abs=1e-3)


def test_many_blocks_are_drawn_as_a_heatmap(tmp_path, capsys):
    from matplotlib.image import AxesImage

    from lightning_shortcut.plot_curvature import draw_block_figure

    names = [f"unit{i}" for i in range(12)]
    _write_block_run(tmp_path / "version_0", names, density_steps=())
    figure = draw_block_figure(load_hessian_metrics(tmp_path))
    images = [child for child in figure.axes[0].get_children() if isinstance(child, AxesImage)]
    assert images and images[0].get_array().shape == (12, 3)
    cli_main(["plot", str(tmp_path), "--out", str(tmp_path / "h.png")])
    printed = capsys.readouterr().out
    assert "max_eigenvalue heatmap of 12 blocks" in printed
    assert not (tmp_path / "h_density.png").exists()  # no snapshot: no density figure
