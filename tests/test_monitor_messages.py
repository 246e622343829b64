"""What HessianEigenvalueMonitor says: its warnings and its cost report fit what happened."""

import logging
import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers.lightning_models import Classifier, dataset
from torch import nn
from torch.utils.data import DataLoader

from lightning_shortcut import ResidualStack, ZeroInit
from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.callbacks._warnings import MeasurementWarnings
from lightning_shortcut.hessian import HessianSettings, hessian_eigenvalues
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.tracking import SpectrumTracker


def said(monitor_warnings, spectrum, step=0):
    """The warnings ``MeasurementWarnings.about`` gives for ``spectrum``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor_warnings.about(spectrum, spectrum.as_dict(), step)
    return [str(warning.message) for warning in caught]


def stack_spectrum(shortcut_depth, seed=0):
    """The residual Hessian of a ResidualStack of ``shortcut_depth`` at the exact zero point,
    swapped in between an input layer and a 3-class head (width 8: rank-limited by the head)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 8), ResidualStack(8, 2, shortcut_depth, activation="tanh"), nn.Linear(8, 3)
    ).double()
    ZeroInit(scale=0.0)(model)
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    return hessian_eigenvalues(
        model, (x, y), params="residual", min_abs=True, tol=1e-2, max_iter=300
    )


# item 3: a zero Hessian is not a non-finite loss


def test_a_zero_hessian_says_the_condition_number_is_zero_over_zero():
    spectrum = stack_spectrum(shortcut_depth=3)  # every eigenvalue exactly 0
    assert spectrum.max == spectrum.min == 0.0 and math.isnan(spectrum.condition_number)
    messages = said(
        MeasurementWarnings(256, HessianSettings(tol=1e-2, max_iter=100, params="residual")),
        spectrum,
        step=0,
    )
    assert len(messages) == 1
    assert "non-finite" not in messages[0]
    assert "exactly zero at step 0" in messages[0] and "condition_number is 0/0" in messages[0]


def test_a_non_finite_spectrum_still_says_non_finite():
    failed = HessianSpectrum.nan(HessianSettings(min_abs=True), reason="non-finite loss")
    messages = said(
        MeasurementWarnings(256, HessianSettings(tol=1e-2, max_iter=100)), failed, step=7
    )
    assert len(messages) == 1 and "non-finite loss or spectrum at step 7" in messages[0]


# item 4: the advice on an unresolved smallest |eigenvalue| fits `params`


@pytest.fixture(scope="module")
def singular_residual_spectrum():
    spectrum = stack_spectrum(shortcut_depth=2)  # eigenvalues +-sigma_i(C), C of rank <= 2 < 8
    assert spectrum.converged and spectrum.min_abs_resolved is False
    return spectrum


def test_with_params_residual_it_does_not_advise_params_residual(singular_residual_spectrum):
    monitor = HessianEigenvalueMonitor(params="residual", min_abs=True)
    messages = said(monitor._warnings, singular_residual_spectrum, step=3)
    assert len(messages) == 1
    assert "logged as inf" in messages[0]
    assert "gives the paper's" not in messages[0]
    # why a residual Hessian is singular there: rank limited by the head's outputs and the samples
    assert "params='residual' is in use" in messages[0]
    assert "outputs" in messages[0] and "a Hessian batch of 256 samples" in messages[0]
    # the samples the batch holds, where the data gave fewer than num_samples
    with pytest.warns(UserWarning, match="only 64"):
        monitor._warnings.about_samples(64, "fit")
    monitor._warnings._warned.discard("unresolved")
    messages = said(monitor._warnings, singular_residual_spectrum, step=4)
    assert "a Hessian batch of 64 samples at most 64" in messages[-1]


def test_on_the_full_hessian_it_still_points_to_params_residual(singular_residual_spectrum):
    messages = said(HessianEigenvalueMonitor(min_abs=True)._warnings, singular_residual_spectrum)
    assert len(messages) == 1 and "params='residual'" in messages[0]
    custom = HessianEigenvalueMonitor(min_abs=True, params=lambda module: module.parameters())
    messages = said(custom._warnings, singular_residual_spectrum)
    assert "params='residual' gives" not in messages[0] and "`params` selects" in messages[0]


# item 5: a Hessian batch smaller than num_samples is said once


def fake_trainer(**attributes):
    """What gathering a Hessian batch and logging read of a Trainer, on one CPU process."""
    defaults = dict(
        global_rank=0,
        world_size=1,
        precision_plugin=SimpleNamespace(convert_input=lambda batch: batch),
        strategy=SimpleNamespace(batch_to_device=lambda batch: batch),
    )
    return SimpleNamespace(**{**defaults, **attributes})


def test_a_dataset_smaller_than_num_samples_is_said_once():
    data = DataLoader(dataset(num_samples=64), batch_size=16)
    monitor = HessianEigenvalueMonitor(num_samples=1000, data=data)
    with pytest.warns(UserWarning, match=r"num_samples=1000 .*only 64"):
        batches = monitor._gather_hessian_batch(fake_trainer(), Classifier(), "fit")
    assert sum(len(batch[0]) for batch in batches) == 64 == monitor._samples
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next stage's batch says nothing
        monitor._gather_hessian_batch(fake_trainer(), Classifier(), "validate")
        HessianEigenvalueMonitor(num_samples=64, data=data)._gather_hessian_batch(
            fake_trainer(), Classifier(), "fit"
        )


# item 7: the forecast of a fixed schedule comes within 30% of what the run costs


class ScriptedStability:
    """Adam's stability run, scripted: none before the optimizer's first step, then an eigenvalue
    run of its own costing ``cold`` or ``warm`` seconds, warm-started by a real tracker."""

    def __init__(self, monitor, cold, warm):
        self.monitor, self.cold, self.warm = monitor, cold, warm
        self.tracker = SpectrumTracker()

    def measure(self, trainer, pl_module, spectrum, guard, inputs):
        if trainer.global_step == 0:
            return {}, 0
        warm = self.tracker.start(self.monitor.params) is not None
        cost = self.warm if warm else self.cold
        self.monitor.now += cost
        run = HessianSpectrum(top=[1.0], warm_start=warm, vectors=[torch.ones(2)])
        self.tracker.update(run, self.monitor.params)
        guard.products, guard.seconds = guard.products + 20, guard.seconds + cost
        return {"stability": 0.5}, 20


class ScriptedMonitor(HessianEigenvalueMonitor):
    """The monitor with a scripted solver on a fake clock: a cold measurement costs ``cold[0]``
    seconds the first time (the process's one-time costs, the standard errors) and ``cold[1]``
    after; a warm one ``warm`` seconds, or ``given_up`` seconds where the warm rule gives it up
    (its products, then a cold run); with ``stability=(cold, warm)``, Adam's stability run adds
    that much. Training steps take ``step_seconds``. The warm starts, the audits and the back-off
    are the real tracker's."""

    def __init__(self, cold, warm, given_up=None, stability=None, **kwargs):
        self.now = 0.0
        kwargs.setdefault("warm_start", True)
        super().__init__(edge_of_stability=stability is not None, stderr=False, **kwargs)
        self._use_clock(lambda: self.now)
        self.cold, self.warm, self.given_up = cold, warm, given_up
        self.colds = 0
        self.params = [torch.zeros(2)]  # the same parameters at every measurement
        if stability is not None:
            self._stability = ScriptedStability(self, *stability)

    def _prepare(self, trainer, pl_module, stage):
        self._batches[stage] = []

    def _compute_spectrum(self, trainer, pl_module, stage):
        warm = self._tracker.start(self.params) is not None
        if warm and self.given_up is None:
            cost, products = self.warm, 5
        else:
            cost, products = self.cold[min(self.colds, 1)], 25
            self.colds += 1
            if warm:
                cost, products = self.given_up, 35
        self.now += cost
        spectrum = HessianSpectrum(
            top=[1.0],
            bottom=[-1.0],
            max=1.0,
            min=-1.0,
            num_hvps=products,
            seconds=cost,
            warm_start=warm and self.given_up is None,
            warm_given_up=warm and self.given_up is not None,
            vectors=[torch.ones(2)],
        )
        self._tracker.update(spectrum, self.params)
        self._guard.products, self._guard.seconds = products, cost  # as the guarded step books
        return spectrum


def scripted_run(
    monitor, steps, steps_per_epoch, step_seconds, caplog, known_length=True, accumulate=1
):
    """Drive ``monitor``'s hooks through ``steps`` optimizer steps (epochs of ``steps_per_epoch``,
    each ``accumulate`` batches); the cost report it gave and the overhead the run then had (its
    time over the training time)."""
    trainer = SimpleNamespace(
        sanity_checking=False,
        fast_dev_run=False,
        global_step=0,
        current_epoch=0,
        world_size=1,
        global_rank=0,
        is_global_zero=True,
        loggers=[],
        callback_metrics={},
        estimated_stepping_batches=steps if known_length else math.inf,
        num_training_batches=steps_per_epoch * accumulate,
        accumulate_grad_batches=accumulate,
    )
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        monitor.on_train_start(trainer, None)
        for step in range(1, steps + 1):
            monitor.now += step_seconds
            trainer.global_step = step
            monitor.on_train_batch_end(trainer, None, None, None, step - 1)
            if step % steps_per_epoch == 0:
                monitor.on_train_epoch_end(trainer, None)
                trainer.current_epoch += 1
    reports = [r.getMessage() for r in caplog.records if "adds about" in r.getMessage()]
    assert len(reports) == 1, reports
    return reports[0], monitor.budget.monitor_seconds / monitor.budget.train_seconds


def forecast(report):
    return float(re.search(r"adds about ([\d,]+)%", report).group(1).replace(",", "")) / 100


@pytest.mark.parametrize(
    "steps_per_epoch, known_length",
    # epochs of 4 steps: before, the report came at the first epoch's end from the cold
    # measurement alone ("adds about 1452%" where the run costs 532%)
    [(4, True), (50, True), (50, False)],
)
def test_the_forecast_of_a_fixed_schedule_matches_the_run(steps_per_epoch, known_length, caplog):
    """The issue's GRU: cold 1.8 s (later audits 1.2 s), warm 0.4 s, 12.4 ms a step, every 10
    steps for 100 steps: one cold at the initial point, nine warm ones and an audit."""
    monitor = ScriptedMonitor(cold=(1.8, 1.2), warm=0.4, every_n_steps=10)
    report, overhead = scripted_run(monitor, 100, steps_per_epoch, 0.0124, caplog, known_length)
    assert overhead == pytest.approx((1.8 + 9 * 0.4 + 1.2) / 1.24)
    assert forecast(report) == pytest.approx(overhead, rel=0.3), report
    assert "one cold in every 10 (warm_start=True) at 1.8 s, the others warm at 0.4 s" in report
    if known_length:
        assert "this run's 100 steps" in report


def test_the_forecast_waits_for_a_wholly_warm_measurement_under_adam(caplog):
    """Adam's stability run starts at the second measurement, cold (0.6 s on top of a warm
    0.4 s), and is warm after (0.1 s): the second measurement is no warm one to forecast from
    (it says 1010% where the run costs 653%)."""
    monitor = ScriptedMonitor(cold=(1.8, 1.2), warm=0.4, stability=(0.6, 0.1), every_n_steps=10)
    report, overhead = scripted_run(monitor, 100, 50, 0.0124, caplog)
    assert overhead == pytest.approx((1.8 + 1.0 + 8 * 0.5 + 1.3) / 1.24)
    assert forecast(report) == pytest.approx(overhead, rel=0.3), report
    assert "the others warm at 0.5 s" in report


def test_the_forecast_when_warm_starts_are_given_up(caplog):
    """Warm attempts given up (2.2 s: their products, then a cold run): the tracker backs off to
    cold measurements; the forecast follows the costs of that mix, not of warm ones."""
    monitor = ScriptedMonitor(cold=(1.8, 1.9), warm=0.4, given_up=2.2, every_n_steps=10)
    report, overhead = scripted_run(monitor, 100, 4, 0.0124, caplog)
    assert forecast(report) == pytest.approx(overhead, rel=0.3), report


def test_every_n_epochs_counts_optimizer_steps_under_accumulation(caplog):
    """An epoch of 20 batches accumulated by 2 is 10 optimizer steps: every_n_epochs=1 measures
    every 10 steps, as every_n_steps=10 does."""
    monitor = ScriptedMonitor(cold=(1.8, 1.2), warm=0.4, every_n_epochs=1)
    report, overhead = scripted_run(monitor, 100, 10, 0.0124, caplog, accumulate=2)
    assert forecast(report) == pytest.approx(overhead, rel=0.3), report
    assert "every_n_epochs=1" in report


@pytest.mark.parametrize("given_up", [False, True])
def test_a_warm_monitor_logs_whether_a_warm_try_was_given_up(given_up):
    spectrum = HessianSpectrum(top=[1.0], bottom=[-1.0], max=1.0, min=-1.0, warm_given_up=given_up)
    trainer = SimpleNamespace(global_step=0)
    warm = HessianEigenvalueMonitor(warm_start=True, edge_of_stability=False)
    cold = HessianEigenvalueMonitor(edge_of_stability=False)  # no warm tries: no such column
    warm._batches["validate"] = cold._batches["validate"] = []
    assert warm._collect_metrics(trainer, None, "validate", spectrum)["warm_given_up"] == given_up
    assert "warm_given_up" not in cold._collect_metrics(trainer, None, "validate", spectrum)
