import csv
import dataclasses
import math
import shlex
from pathlib import Path

import pytest

from lightning_shortcut.study import BUDGETS, StudyConfig, main, run_study
from lightning_shortcut.study.cli import build_parser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    config = StudyConfig(
        out=out, budget="quick", inits=("small", "xavier"), num_units=(1, 4), kappa_units=(1, 2, 4)
    )
    runs = run_study(config, progress=False)
    return out, runs


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_outputs_are_written(quick_study):
    out, runs = quick_study
    for name in (
        "summary.csv",
        "summary.md",
        "kappa_zero_point.csv",
        "kappa_zero_point.png",
        "loss_curves.png",
        "eigenvalue_trajectories.png",
        "lr_sweep.csv",
        "lr_sweep_summary.csv",
        "lr_sweep.png",
        "edge_of_stability.csv",
        "edge_of_stability.png",
        "unit_curvature.csv",
        "unit_curvature.png",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = _rows(out / "summary.csv")
    assert len(rows) == len(runs) == 3 * 2 * 2
    assert {
        "shortcut_depth",
        "init",
        "num_units",
        "kappa_init",
        "final_loss",
        "accuracy",
        "max_eigenvalue_start",
        "min_eigenvalue_end",
    } <= set(rows[0])
    assert "| shortcut_depth |" in (out / "summary.md").read_text()


def test_zero_point_shows_the_papers_claims(quick_study):
    out, _ = quick_study
    rows = _rows(out / "kappa_zero_point.csv")
    by = {(int(r["shortcut_depth"]), int(r["num_units"])): r for r in rows}
    depth_two = [float(by[(2, k)]["kappa_measured"]) for k in (1, 2, 4)]
    assert all(math.isfinite(k) for k in depth_two)
    assert max(depth_two) == pytest.approx(min(depth_two), rel=1e-4)  # the same at every depth
    for k in (1, 2, 4):
        assert float(by[(2, k)]["kappa_measured"]) == pytest.approx(
            float(by[(2, k)]["kappa_theory"]), rel=1e-4
        )
        assert float(by[(1, k)]["kappa_measured"]) == pytest.approx(
            float(by[(1, k)]["kappa_theory"]), rel=1e-3
        )
    depth_one = [float(by[(1, k)]["kappa_measured"]) for k in (1, 2, 4)]
    assert depth_one[0] < depth_one[1] < depth_one[2]  # grows with depth
    assert all(float(by[(3, k)]["max_abs_eigenvalue"]) == 0.0 for k in (1, 2, 4))  # vanishes


def test_shortcut_three_barely_moves(quick_study):
    _, runs = quick_study
    stuck = [r for r in runs if r.shortcut_depth == 3 and r.init == "small"]
    for run in stuck:  # minibatch losses: compare averages of the first and last few steps
        first = sum(loss for _, loss in run.losses[:10]) / 10
        last = sum(loss for _, loss in run.losses[-10:]) / 10
        assert abs(last - first) < 0.03 * first
    moving = next(
        r for r in runs if r.shortcut_depth == 1 and r.init == "small" and r.num_units == 1
    )
    assert moving.final_loss < 0.5 * moving.losses[0][1]


def test_lr_sweep_finds_the_edge_of_stability(quick_study):
    out, _ = quick_study
    rows = _rows(out / "lr_sweep.csv")
    assert list(rows[0]) == [
        "shortcut_depth",
        "init",
        "num_units",
        "lr",
        "final_loss",
        "diverged",
        "peak_loss",
        "max_eigenvalue_init",
        "stability_init",
    ]
    lrs = BUDGETS["quick"]["sweep_lrs"]
    assert len(rows) == 3 * 2 * len(lrs)  # n x units x lr, from small weights
    zero_point = {
        (int(r["shortcut_depth"]), int(r["num_units"])): r
        for r in _rows(out / "kappa_zero_point.csv")
    }
    for row in rows:
        lr, top, ratio = (float(row[k]) for k in ("lr", "max_eigenvalue_init", "stability_init"))
        assert ratio == pytest.approx(lr * top / 2, rel=1e-9)  # SGD: lr * lambda_max / 2
        diverged = row["diverged"] == "True"
        if ratio >= 2:  # well past the edge: a quadratic model predicts divergence
            assert diverged, row
        if ratio <= 0.5:
            assert not diverged, row
        depth, units = int(row["shortcut_depth"]), int(row["num_units"])
        if depth == 2:  # small weights: the zero point's +-sigma_max(C), at every depth
            expected = float(zero_point[(2, units)]["max_abs_eigenvalue"])
            assert top == pytest.approx(expected, rel=2e-3)  # the sweep's tol is 1e-3
        if depth == 3:  # the flat saddle: no learning rate of the grid moves it
            assert float(row["final_loss"]) == pytest.approx(8.32, rel=1e-3)
    summary = _rows(out / "lr_sweep_summary.csv")
    assert len(summary) == 3 * 2
    one = {
        int(r["num_units"]): float(r["predicted_max_lr"])
        for r in summary
        if r["shortcut_depth"] == "1"
    }
    assert one[4] < one[1] / 3  # n = 1: the predicted largest step falls with depth
    two = [float(r["predicted_max_lr"]) for r in summary if r["shortcut_depth"] == "2"]
    assert max(two) == pytest.approx(min(two), rel=1e-3)  # n = 2: it does not
    best = {(r["shortcut_depth"], r["num_units"]): r["best_lr"] for r in summary}
    # n = 3 ends alike at every learning rate: no best one to name; n = 2 trains, and has one
    assert all(math.isnan(float(best[("3", units)])) for units in ("1", "4"))
    assert all(float(best[("2", units)]) in lrs for units in ("1", "4"))
    assert "## Learning rate against depth" in (out / "summary.md").read_text()


def _unit_curvature(out):
    """unit_curvature.csv by (shortcut depth, init, units): the rows of each run, in step order."""
    runs = {}
    for row in _rows(out / "unit_curvature.csv"):
        key = (int(row["shortcut_depth"]), row["init"], int(row["num_units"]))
        runs.setdefault(key, []).append(row)
    return runs


def _unit_values(row):
    return [float(row[f"unit_{k}"]) for k in range(int(row["num_units"]))]


def test_unit_curvature_covers_every_run_unit_and_step(quick_study):
    out, _ = quick_study
    runs = _unit_curvature(out)
    units = BUDGETS["quick"]["curvature_units"]
    assert sorted(runs) == sorted(
        (n, init, k) for n in (1, 2, 3) for init in ("small", "xavier") for k in units
    )
    assert BUDGETS["quick"]["curvature_points"] == 3 and BUDGETS["quick"]["max_steps"] == 30
    for (_, _, count), rows in runs.items():
        steps = [int(r["step"]) for r in rows]
        diverged_at = rows[-1]["diverged_at_step"]
        if diverged_at:  # measured until the run diverged, and not after
            assert steps == [0, 15, 30][: len(steps)] and int(diverged_at) >= steps[-1]
        else:
            assert steps == [0, 15, 30]
        for row in rows:
            assert all(math.isfinite(v) for v in _unit_values(row)) and row["converged"] == "True"
            assert all(row[f"unit_{k}"] == "" for k in range(count, max(units)))  # no such unit
            assert float(row["max_unit_eigenvalue"]) == max(_unit_values(row))
    assert "## Each unit's lambda_max along training" in (out / "summary.md").read_text()


def test_unit_curvature_at_small_weights_is_the_zero_points(quick_study):
    """At step 0 from small weights each unit's block is (up to the init scale 1e-3 and the
    measurement's tol 1e-2) the zero point's: n = 2, +-sigma_i(C) with C = E[x (x - y)^T], so
    lambda_max = sigma_max(C) in every unit; n = 1, E[x x^T] (x) I, so lambda_max(E[x x^T]) in every
    unit (the depth-growing curvature sits between the units); n = 3, zero."""
    import torch

    from lightning_shortcut.data.registry import get_dataset

    out, _ = quick_study
    config = StudyConfig(budget="quick")
    datamodule = get_dataset(config.data).study_datamodule(
        config.data_dir, config.batch_size, config.seed
    )
    datamodule.setup("fit")
    inputs, targets = (t[: config.hessian_samples].double() for t in datamodule.train_set.tensors)
    correlation = inputs.T @ (inputs - targets) / len(inputs)
    sigma_max = float(torch.linalg.svdvals(correlation)[0])
    second_moment = float(torch.linalg.eigvalsh(inputs.T @ inputs / len(inputs))[-1])
    runs = _unit_curvature(out)
    sweep = {
        (int(r["shortcut_depth"]), int(r["num_units"])): float(r["max_eigenvalue_init"])
        for r in _rows(out / "lr_sweep.csv")
    }
    for count in BUDGETS["quick"]["curvature_units"]:
        start = {n: _unit_values(runs[(n, "small", count)][0]) for n in (1, 2, 3)}
        assert all(runs[(n, "small", count)][0]["step"] == "0" for n in (1, 2, 3))
        assert start[2] == pytest.approx([sigma_max] * count, rel=1.2e-2)
        assert start[1] == pytest.approx([second_moment] * count, rel=5e-2)
        assert max(start[3]) < 20 * config.small_scale  # the flat saddle, up to the init scale
        if (2, count) in sweep:  # a diagonal block's lambda_max is at most the whole Hessian's
            for n in (1, 2, 3):  # (the same initial weights as the sweep's)
                assert max(start[n]) <= sweep[(n, count)] * (1 + 1e-2 + 1e-3)
            assert max(start[2]) == pytest.approx(sweep[(2, count)], rel=1.2e-2)  # block-diagonal
    # Xavier: every unit far sharper; past 2 / lr at 4 units it diverges, at 2 units it trains
    threshold = 2 / config.lr
    assert min(_unit_values(runs[(2, "xavier", 4)][0])) > 5 * threshold
    assert all(runs[(n, "xavier", 4)][-1]["diverged_at_step"] for n in (1, 2, 3))
    assert not any(runs[(n, "xavier", 2)][-1]["diverged_at_step"] for n in (1, 2, 3))


def test_unit_curvature_figure_marks_runs_that_diverged(tmp_path, monkeypatch):
    from lightning_shortcut.study import figures
    from lightning_shortcut.study.unit_curvature import UnitCurvatureRun

    trained = UnitCurvatureRun(2, "small", 3, [0, 10], [8.3, 0.3], [[1.4] * 3, [0.5, 0.9, 0.7]])
    trained.converged = [True, True]
    at_once = UnitCurvatureRun(2, "xavier", 3, diverged_at_step=0)  # not even one measurement
    later = UnitCurvatureRun(2, "xavier", 2, [0], [40.0], [[30.0, 3e4]], [True], 4)
    rows = [row for run in (trained, at_once, later) for row in run.rows(3)]
    assert [r["step"] for r in rows] == [0, 10, 0, 0] and rows[2]["diverged_at_step"] == 0
    assert math.isnan(rows[2]["unit_0"]) and rows[3]["unit_2"] is None
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi: saved.append(fig) or path)
    figures.plot_unit_curvature(tmp_path, rows, threshold=20.0)
    (figure,) = saved
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == [
        "n = 2, small, 3 units",
        "n = 2, xavier, 2 units: diverged at step 4",
        "n = 2, xavier, 3 units: diverged at step 0",
    ]
    small, later_axis = figure.axes[:2]
    assert small.get_ylim() == pytest.approx((0, 1.08 * 1.4))  # 2 / lr = 20 is off this axis
    assert len(small.get_lines()) == 3 and len(later_axis.get_lines()) == 2 + 1 + 1  # 2 / lr, x


def test_cli_arguments_and_bad_data(tmp_path):
    with pytest.raises(SystemExit, match="download=True"):
        main(
            [
                "--out",
                str(tmp_path),
                "--data",
                "mnist",
                "--data-dir",
                str(tmp_path),
                "--budget",
                "quick",
            ]
        )
    with pytest.raises(ValueError, match="budget"):
        StudyConfig(budget="huge")


def _config(args):
    namespace = build_parser().parse_args(args)
    return StudyConfig(**{f.name: namespace[f.name] for f in dataclasses.fields(StudyConfig)})


def test_flags_keep_their_spelling():
    config = _config(
        shlex.split(
            "--out o --data mnist --data-dir d --budget quick --max-steps 7 --num-units 2 8 "
            "--shortcut-depths 1 2 --inits small orthogonal --lr 0.3 --seed 1"
        )
    )
    assert config.out == Path("o") and config.data == "mnist" and config.data_dir == Path("d")
    assert (config.max_steps, config.num_units, config.shortcut_depths) == (7, (2, 8), (1, 2))
    assert config.inits == ("small", "orthogonal") and (config.lr, config.seed) == (0.3, 1)
    assert config.kappa_units == BUDGETS["quick"]["kappa_units"]  # filled from the budget
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--inits", "gaussian"])


def test_print_config_then_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--print_config", "--num-units", "2", "8"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "num_units:" in printed and "budget: default" in printed
    (tmp_path / "study.yaml").write_text(printed)
    config = _config(["--config", str(tmp_path / "study.yaml"), "--budget", "quick", "--out", "x"])
    assert config.budget == "quick" and config.out == Path("x") and config.num_units == (2, 8)
    assert config.max_steps == BUDGETS["quick"]["max_steps"]  # null in the file: the budget's
    assert config == StudyConfig(budget="quick", out=Path("x"), num_units=(2, 8))


def test_zero_point_figure_with_singular_hessians(tmp_path):
    from lightning_shortcut.study.figures import plot_zero_point

    rows = [  # a classifier's zero point: singular (inf) for n = 1, 2; exactly 0 for n = 3
        {
            "shortcut_depth": n,
            "num_units": k,
            "kappa_measured": kappa,
            "kappa_theory": math.nan,
            "max_abs_eigenvalue": 0.0 if n == 3 else 0.2,
        }
        for n, kappa in ((1, math.inf), (2, math.inf), (3, math.nan))
        for k in (1, 2)
    ]
    assert plot_zero_point(tmp_path, (1, 2, 3), rows).stat().st_size > 0


def test_edge_of_stability_sharpness_rises_to_two_over_lr(quick_study):
    out, _ = quick_study
    rows = {float(r["lr"]): r for r in _rows(out / "edge_of_stability.csv")}
    assert sorted(rows) == sorted(BUDGETS["quick"]["edge_lrs"])
    largest, smallest = rows[max(rows)], rows[min(rows)]
    for row in rows.values():
        assert row["diverged"] == "False" and row["converged"] == "True"
        assert float(row["threshold"]) == pytest.approx(2 / float(row["lr"]))
        assert float(row["max_eigenvalue_start"]) < 0.8 * float(row["threshold"])  # starts stable
    # the largest step: sharpness rose to 2 / lr and stays within a few percent of it
    assert 0.95 < float(largest["median_stability_second_half"]) < 1.15
    assert float(largest["min_stability_second_half"]) > 0.85  # it hovers: no way back down
    assert float(largest["max_eigenvalue_end"]) == pytest.approx(
        float(largest["threshold"]), rel=0.15
    )
    assert int(largest["first_step_at_edge"]) < BUDGETS["quick"]["edge_steps"] / 2
    # the smallest: still sharpening, below its edge, at the end of the quick budget
    assert float(smallest["max_eigenvalue_end"]) > 1.5 * float(smallest["max_eigenvalue_start"])
    assert float(smallest["median_stability_second_half"]) < 0.9
    assert smallest["first_step_at_edge"] == ""  # None: never at the edge
    assert "## Edge of stability" in (out / "summary.md").read_text()


def test_edge_of_stability_tracks_the_full_batch_hessian(tmp_path):
    """The warm-started measurements are lambda_max of the full-batch loss: the last one equals
    scipy's eigsh on Hessian-vector products at the final weights, and the loss is the full batch's."""
    import numpy as np
    import torch
    from scipy.sparse.linalg import LinearOperator, eigsh

    from lightning_shortcut.data.registry import get_dataset
    from lightning_shortcut.study.edge_of_stability import EdgeOfStabilityRuns
    from lightning_shortcut.theory import half_mse_loss

    config = StudyConfig(out=tmp_path, budget="quick", edge_lrs=(0.5,), edge_steps=180)
    dataset = get_dataset(config.data)
    datamodule = dataset.study_datamodule(config.data_dir, config.batch_size, config.seed)
    datamodule.setup("fit")
    part = EdgeOfStabilityRuns(config, dataset, datamodule)
    part.run()
    (result,) = part.results
    assert [step for step, _ in result.sharpness] == [*range(0, 180, 25), 180]
    model, (inputs, targets) = part.models[0.5], part.full_batch()
    assert inputs.shape == (1000, 16) and targets.shape == (1000, 16)
    params = list(model.parameters())
    loss = half_mse_loss(model(inputs), targets)
    assert result.losses[-1] == (180, pytest.approx(float(loss.detach()), rel=1e-6))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])

    def hvp(vector):
        v = torch.as_tensor(np.asarray(vector).ravel(), dtype=flat.dtype)
        products = torch.autograd.grad(flat, params, v, retain_graph=True)
        return torch.cat([p.reshape(-1) for p in products]).double().numpy()

    size = flat.numel()
    operator = LinearOperator((size, size), matvec=hvp, dtype=np.float64)
    (reference,) = eigsh(operator, k=1, which="LA", tol=1e-8, return_eigenvectors=False)
    assert result.sharpness[-1][1] == pytest.approx(reference, rel=2e-3)  # the part's tol: 1e-3
    assert result.max_eigenvalue_end == result.sharpness[-1][1]


def test_trajectories_keep_the_axes_on_the_runs_that_trained(tmp_path, monkeypatch):
    from lightning_shortcut.study import figures
    from lightning_shortcut.study.results import RunResult

    def run(init, diverged, spectra):
        return RunResult(1, init, 32, 1.0, True, 0, 0, 0, 0, 0.2, 0.9, diverged, 1.0, [], spectra)

    def point(step, top, bottom):
        return {"step": step, "max_eigenvalue": top, "min_eigenvalue": bottom, "stability": top}

    trained = run("small", False, [point(step, 2.0 + step / 100, -0.5) for step in (0, 50, 100)])
    blown_up = run("xavier", True, [point(0, 3e12, -2e12), point(50, math.nan, math.nan)])
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi: saved.append(fig) or path)
    figures.plot_eigenvalue_trajectories(tmp_path, [blown_up, trained])
    (figure,) = saved
    top_axis, bottom_axis, _ = figure.axes
    assert top_axis.get_ylim()[1] < 10 and bottom_axis.get_ylim()[0] > -10  # not 1e12
    edges = [  # markers on the frame: y in axes coordinates, at the top for +3e12 and for nan
        (list(line.get_xdata()), list(line.get_ydata()))
        for line in top_axis.get_lines()
        if line.get_transform() != top_axis.transData
    ]
    assert [y for _, y in edges] == [[1.0], [1.0]] and edges[0][0][0] == 0
    bottom_edges = [
        list(line.get_ydata())
        for line in bottom_axis.get_lines()
        if line.get_transform() != bottom_axis.transData
    ]
    assert bottom_edges == [[0.0], [1.0]]  # -2e12 below, nan at the top


def _steps_that_report_their_process(barrier=None):
    import os

    import torch

    def work(index):
        if barrier is not None and index < 2:  # each waits for the other: two processes run them
            barrier.wait(timeout=60)
        torch.manual_seed(index)
        return index, os.getpid(), torch.get_num_threads(), float(torch.randn(64, 64).sum())

    return [(f"step {index}", lambda index=index: work(index)) for index in range(6)]


def test_steps_run_in_forked_workers_on_one_thread_and_keep_their_order():
    import multiprocessing
    import os

    import torch

    from lightning_shortcut.study.runner import run_steps

    threads = torch.get_num_threads()
    finished = []
    here = run_steps(_steps_that_report_their_process(), workers=1)
    # with a pool's tiny tasks, a busy machine can leave one worker to drain the queue alone
    barrier = multiprocessing.get_context("fork").Barrier(2)
    steps = _steps_that_report_their_process(barrier)
    forked = run_steps(steps, workers=2, advance=finished.append)
    assert [r[0] for r in forked] == list(range(6))  # results in the steps' order
    assert sorted(finished) == [f"step {index}" for index in range(6)]
    assert {r[1] for r in here} == {os.getpid()}
    assert os.getpid() not in {r[1] for r in forked} and len({r[1] for r in forked}) == 2
    assert {r[2] for r in here + forked} == {1}  # one thread per step, wherever it runs
    assert [r[3] for r in forked] == [r[3] for r in here]
    assert torch.get_num_threads() == threads  # restored


def test_a_run_in_this_process_matches_the_same_run_in_a_worker(quick_study, tmp_path):
    """The quick study ran its steps in worker processes (one per core); the same training run
    here, on one thread, gives the same numbers."""
    from lightning_shortcut.data.registry import get_dataset
    from lightning_shortcut.study.runner import run_steps
    from lightning_shortcut.study.training import TrainingGrid

    _, runs = quick_study
    config = StudyConfig(
        out=tmp_path, budget="quick", inits=("small", "xavier"), num_units=(1, 4), workers=1
    )
    dataset = get_dataset(config.data)
    datamodule = dataset.study_datamodule(config.data_dir, config.batch_size, config.seed)
    datamodule.setup("fit")
    part = TrainingGrid(config, dataset, datamodule)
    (here,) = run_steps([("run", lambda: part._train(2, "small", 4))])
    (there,) = [r for r in runs if (r.shortcut_depth, r.init, r.num_units) == (2, "small", 4)]
    untimed = [
        [{k: v for k, v in row.items() if "seconds" not in k} for row in run.spectra]
        for run in (here, there)
    ]
    assert here.losses == there.losses and untimed[0] == untimed[1] and len(untimed[0]) > 1
    assert here.final_loss == there.final_loss and here.kappa_init == there.kappa_init


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        StudyConfig(workers=0)
