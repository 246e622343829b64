"""Issue 30's fixes, each where a unit shows it: the guarded step, the largest stable rate at lr 0,
optimizer steps under manual optimization, the forecast with density snapshots, option pairs that
cannot give a value, the blocks' advice on a NaN, and the plot's overlap and stable-rate panels."""

import csv
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers.fake_trainer import FakeTrainer
from helpers.lightning_models import Classifier, dataset, loader, trainer_kwargs

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.callbacks._budget import run_length
from lightning_shortcut.callbacks._cost_report import CostReport
from lightning_shortcut.callbacks._guarded import GuardedMeasurements
from lightning_shortcut.hessian.linear_operator import NonFiniteProductError
from lightning_shortcut.hessian.optimizers import step_preconditioner
from lightning_shortcut.plot import draw_hessian_metrics, drawn_series, load_hessian_metrics


def _guard():
    said = {}  # the monitor's warn-once: the first message of each kind
    guard = GuardedMeasurements(lambda kind, message: said.setdefault(kind, message), None, False)
    return guard, said


def test_the_guarded_step_catches_the_engines_failures_and_nothing_else():
    guard, said = _guard()
    guard.begin()
    assert guard.run("the density", 7, lambda: SimpleNamespace(num_hvps=5)).num_hvps == 5

    def non_finite():
        raise NonFiniteProductError("a product held NaN or inf")

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory")

    assert guard.run("the density", 9, non_finite) is None
    assert guard.run("the density", 10, non_finite) is None  # the same failure: said once
    assert guard.run("the spectrum", 11, out_of_memory) is None
    assert guard.products == 5 and guard.seconds > 0  # every call booked to one account
    messages = list(said.values())
    assert len(messages) == 2
    assert "the density at step 9" in messages[0] and "non-finite" in messages[0]
    assert "the spectrum at step 11" in messages[1] and "out of memory" in messages[1]
    assert all("logged as NaN" in message for message in messages)

    def bug():
        raise RuntimeError("a bug in the user's loss")

    with pytest.raises(RuntimeError, match="bug"):  # not every RuntimeError: a bug surfaces
        guard.run("the spectrum", 12, bug)


def test_sgds_largest_stable_rate_does_not_depend_on_the_current_one():
    weight = torch.nn.Parameter(torch.zeros(3))
    hessian_max = 4.0
    rates = []
    for lr in (0.0, 0.1, 0.3):
        optimizer = torch.optim.SGD([weight], lr=lr, momentum=0.5, weight_decay=0.25)
        preconditioner = step_preconditioner(optimizer, [weight])
        rates.append(preconditioner.max_stable_lr_from_hessian(hessian_max))
        if lr > 0:  # where lr is not 0, the ratio's own answer agrees
            top = preconditioner.stability_from_hessian(hessian_max) * preconditioner.threshold
            assert preconditioner.max_stable_lr(top) == pytest.approx(rates[-1], rel=1e-12)
    # heavy ball: stable while lr (lambda + wd) < 2 + 2 momentum
    assert rates == pytest.approx([3.0 / 4.25] * 3, rel=1e-12)


def test_a_warm_up_from_lr_0_logs_the_largest_stable_rate(tmp_path):
    class WarmUp(Classifier):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1, step / 8))
            return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    pl.seed_everything(0, verbose=False)
    monitor = HessianEigenvalueMonitor(every_n_steps=2, num_samples=32, stderr=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=4, callbacks=[monitor]))
    trainer.fit(WarmUp(), train_dataloaders=loader())
    first = monitor.history[0]
    assert first["stability"] == 0.0  # lr 0 at step 0
    assert first["max_stable_lr"] == pytest.approx(2 / first["max_eigenvalue"], rel=1e-12)
    for record in monitor.history[1:]:  # lr > 0: the same formula, from the ratio
        assert record["max_stable_lr"] == pytest.approx(2 / record["max_eigenvalue"], rel=1e-9)


def test_under_manual_optimization_the_run_is_counted_in_optimizer_steps():
    manual = SimpleNamespace(automatic_optimization=False)
    two = dict(lightning_module=manual, optimizers=[object(), object()])
    # 50 batches of two optimizer steps: the report counts the steps global_step counts
    message = _report((0, 0.0), FakeTrainer(50, max_epochs=1, **two), every_n_steps=10)
    assert (
        "this run's 100 steps" in message
        and "optimizer steps (1e+03 ms each; 2 a batch)" in message
    )
    assert run_length(FakeTrainer(4, max_epochs=2, **two)) == 16  # both optimizers step
    assert run_length(FakeTrainer(4, max_epochs=2, max_steps=10, **two)) == 10  # max_steps counts
    assert run_length(FakeTrainer(4, max_epochs=2)) == 8
    automatic = SimpleNamespace(automatic_optimization=True)
    assert run_length(FakeTrainer(4, max_epochs=2, lightning_module=automatic)) == 8


class Ticks:
    def __init__(self, *times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def _report(extra, trainer=None, **schedule):
    """2 s at the initial point, 10 training steps of 1 s, measurements of 2 s, a run of 100."""
    report = CostReport(Ticks(0.0, 10.0))
    trainer = trainer or SimpleNamespace(global_step=0, estimated_stepping_batches=100)
    report.start(trainer, monitor_seconds=2.0)
    trainer.global_step = 10
    options = dict(every_n_steps=None, every_n_epochs=None, budget=0.05)
    options.update(schedule)
    return report.message(
        trainer, 2.0, 2.0, name="Monitor", what="", levers="", extra=extra, **options
    )


def test_the_forecast_adds_the_density_snapshots_to_come():
    # every 10 steps: 9 measurements to come at 2 s, and 2 snapshots at 3 s, over 100 steps of 1 s
    assert "about 20% to this run's 100 steps" in _report((0, 0.0), every_n_steps=10)
    message = _report((2, 3.0), every_n_steps=10)
    assert "about 26% to this run's 100 steps" in message
    assert "2 density snapshot(s) at about 3 s each" in message
    # the budget: the snapshots to come are spent from it (3% of the run left, 1% theirs)
    assert "about every 67 steps" in _report((0, 0.0))
    assert "about every 100 steps" in _report((1, 1.0))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(gradient_overlap=True, method="pyhessian"), r"gradient_overlap.*pyhessian"),
        (dict(blocks="modules", method="pyhessian"), r"blocks.*pyhessian"),
        # the values-only pass keeps no eigenvector: a warm start would fail at the next measurement
        (dict(warm_start=True, method="lanczos_values"), r"warm_start=True.*lanczos_values"),
        (dict(gradient_overlap=True, method="lanczos_values"), r"gradient_overlap.*lanczos_val"),
        (dict(blocks="modules", method="lanczos_values"), r"blocks='modules'.*lanczos_values"),
    ],
)
def test_options_that_cannot_give_a_value_are_refused_together(options, match):
    with pytest.raises(ValueError, match=match):
        HessianEigenvalueMonitor(**options)


def test_blocks_that_meet_a_nan_are_not_told_to_raise_max_iter():
    torch.manual_seed(0)
    model = Classifier().eval()
    x, y = dataset().tensors
    x = x[:48].clone()
    x[3, 1] = math.nan
    monitor = HessianEigenvalueMonitor(
        every_n_steps=1, stderr=False, edge_of_stability=False, blocks="modules"
    )
    trainer = FakeTrainer(6, max_steps=10)
    trainer.callback_metrics, trainer.loggers, trainer.log_dir = {}, [], None
    monitor._batches["fit"] = [(x, y[:48])]
    monitor._curvature.prepare(trainer, model, None)
    with pytest.warns(UserWarning) as warned:
        monitor._measure_and_log(trainer, model, "fit")
    blocks = [str(w.message) for w in warned if "block(s)" in str(w.message)]
    assert len(blocks) == 1 and "non-finite" in blocks[0] and "max_iter" not in blocks[0]
    assert math.isnan(monitor.history[-1]["block/stack/max_eigenvalue"])


def test_plot_draws_the_gradient_overlap_and_the_largest_stable_rate(tmp_path):
    path = tmp_path / "metrics.csv"
    columns = ["step", "hessian/max_eigenvalue", "hessian/max_stable_lr"]
    columns.append("hessian/gradient_overlap")
    rows = [(0, 2.0, 1.0, 0.1), (10, 3.0, 0.67, float("nan")), (20, 4.0, 0.5, 0.6)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    series = load_hessian_metrics(path)
    assert drawn_series(series) == ["max_eigenvalue", "max_stable_lr", "gradient_overlap"]
    figure = draw_hessian_metrics(series)
    titles = [axis.get_title() for axis in figure.axes]
    (stable,) = [axis for axis, title in zip(figure.axes, titles, strict=True) if "stable" in title]
    assert stable.get_yscale() == "log"
    assert list(stable.lines[0].get_ydata()) == [1.0, 0.67, 0.5]
    (overlap,) = [axis for axis, title in zip(figure.axes, titles, strict=True) if "share" in title]
    assert list(overlap.lines[0].get_ydata()) == [0.1, 0.6]  # the NaN is not drawn, and said
    assert "1 values not drawn" in overlap.get_title()


def test_a_monitor_fitted_twice_takes_its_density_snapshots_in_each_fit(tmp_path):
    # the snapshots taken are kept for a resume, not carried into a new fit of the same monitor
    monitor = HessianEigenvalueMonitor(
        every_n_steps=2, num_samples=32, stderr=False, edge_of_stability=False, density_snapshots=1
    )
    for _ in range(2):
        torch.manual_seed(0)
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[monitor], max_steps=2))
        trainer.fit(Classifier(), loader())
    assert [record["step"] for record in monitor.density_history] == [0, 0]
