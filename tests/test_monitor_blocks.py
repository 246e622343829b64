"""The monitor's curvature map (issue 25): per-block extremes and profiles, the gradient overlap and
density snapshots, against the engine's functions on the same weights."""

import csv
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.fake_trainer import FakeTrainer
from helpers.lightning_models import Classifier, dataset, loader, trainer_kwargs
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.callbacks._curvature_map import DENSITY_FILE, density_steps
from lightning_shortcut.hessian import (
    block_eigenvalues,
    block_profile,
    gradient_overlap,
    hessian_eigenvalues,
)
from lightning_shortcut.plot import read_run
from lightning_shortcut.plot_curvature import read_density_snapshots


def _loss(module, batch):
    return F.cross_entropy(module(batch[0]), batch[1])


def _monitor(**kwargs):
    options = dict(stderr=False, edge_of_stability=False, loss_fn=_loss, every_n_steps=1)
    return HessianEigenvalueMonitor(**{**options, **kwargs})


def _fake_trainer(step=0, **kwargs):
    trainer = FakeTrainer(6, max_steps=10, global_step=step, **kwargs)
    trainer.callback_metrics, trainer.loggers, trainer.log_dir = {}, [], None
    return trainer


def _measured(monitor, model, batches, step=0):
    """One fit measurement of ``monitor`` on ``batches``, through its own path."""
    trainer = _fake_trainer(step)
    monitor._batches["fit"] = batches
    monitor._curvature.prepare(trainer, model, monitor.settings.params)
    monitor._measure_and_log(trainer, model, "fit")
    return monitor.history[-1]


@pytest.fixture
def model_and_batches():
    torch.manual_seed(0)
    model = Classifier().eval()
    x, y = dataset().tensors
    return model, [(x[:48], y[:48])]


def test_block_metrics_match_the_engine_on_the_same_weights(model_and_batches):
    model, batches = model_and_batches
    monitor = _monitor(blocks="residual", gradient_overlap=True)
    record = _measured(monitor, model, batches)
    common = dict(tol=monitor.settings.tol, max_iter=monitor.settings.max_iter, seed=0)
    spectra = block_eigenvalues(model, batches, _loss, blocks="residual", **common)
    assert spectra.names == ["stack.units.0", "stack.units.1"]
    for name in spectra.names:
        for end in ("max", "min"):
            key = f"block/{name}/{end}_eigenvalue"
            assert record[key] == pytest.approx(getattr(spectra, end)[name], rel=1e-9), key
    spectrum = hessian_eigenvalues(model, batches, _loss, **common, vectors=True)
    profile = block_profile(model, spectrum, "residual")
    for name in spectra.names:
        assert record[f"block/{name}/max_eigenvector_share"] == pytest.approx(profile.top[name])
        assert record[f"block/{name}/min_eigenvector_share"] == pytest.approx(profile.bottom[name])
    overlap = gradient_overlap(model, batches, _loss, spectrum=spectrum).overlap
    assert record["gradient_overlap"] == pytest.approx(overlap, rel=1e-6)
    assert record["block_hvps"] == spectra.num_hvps
    # the measurement's cost includes the blocks' (and says how much is theirs)
    assert record["num_hvps"] == spectrum.num_hvps + spectra.num_hvps
    assert "block_eigenvalues over 2 block(s)" in monitor._describe_cost(record)[0]


def test_a_block_that_does_not_converge_is_nan_with_one_warning(model_and_batches):
    model, batches = model_and_batches
    monitor = _monitor(blocks="modules", max_iter=2, tol=1e-12)
    with pytest.warns(UserWarning, match=r"block\(s\).*logged as NaN") as warned:
        record = _measured(monitor, model, batches)
        _measured(monitor, model, batches, step=1)
    assert sum("block(s)" in str(w.message) for w in warned) == 1
    assert math.isnan(record["block/stack/max_eigenvalue"])
    assert math.isnan(record["block/head/min_eigenvalue"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(blocks=3), ValueError, "`blocks` must be None"),
        (dict(blocks="layers"), ValueError, "`blocks` must be None"),
        (dict(blocks="residual", hvp="finite_difference"), ValueError, "hvp='autograd'"),
        (dict(gradient_overlap="yes"), TypeError, "`gradient_overlap` must be a bool"),
        (dict(gradient_overlap=True, top_k=0), ValueError, "top_k >= 1"),
        (dict(density_snapshots=-1), ValueError, "density_snapshots"),
        (dict(density_snapshots=2.5), TypeError, "density_snapshots"),
    ],
)
def test_bad_options_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        _monitor(**kwargs)


def test_residual_blocks_on_a_model_without_a_stack_are_refused_at_fit_start():
    monitor = _monitor(blocks="residual")
    model = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ValueError, match="contains no ResidualStack"):
        monitor._curvature.prepare(_fake_trainer(), model, None)
    with pytest.raises(ValueError, match="matches no parameter"):
        _monitor(blocks={"a": "nope"})._curvature.prepare(_fake_trainer(), model, None)


def test_density_steps_spread_over_a_known_run_and_start_only_otherwise():
    assert density_steps(FakeTrainer(6, max_steps=10), 3) == [0, 5, 10]
    assert density_steps(FakeTrainer(5, max_epochs=2), 5) == [0, 2, 5, 8, 10]
    assert density_steps(FakeTrainer(5), 4) == [0]
    assert density_steps(FakeTrainer(5, max_steps=10), 0) == []


def test_density_snapshots_are_written_with_the_logs_and_read_back(tmp_path):
    pl.seed_everything(0, verbose=False)
    monitor = _monitor(blocks="residual", every_n_steps=2, density_snapshots=3)
    logger = CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_steps=4, logger=logger, callbacks=[monitor])
    )
    trainer.fit(Classifier(), train_dataloaders=loader())
    path = tmp_path / "run" / "version_0" / DENSITY_FILE
    assert path.is_file()
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(row["step"]) for row in rows}) == [0, 2, 4]
    assert [record["step"] for record in monitor.density_history] == [0, 2, 4]
    run = read_run(tmp_path / "run")
    snapshots = read_density_snapshots(run)
    assert list(snapshots) == [0, 2, 4]
    for step, probes in snapshots.items():
        ((nodes, weights),) = probes
        assert sum(weights) == pytest.approx(1.0, abs=1e-5), step
        assert nodes == pytest.approx(monitor.density_history[[0, 2, 4].index(step)]["nodes"][0])
    series = run.series("hessian/")
    assert [step for step, _ in series["density_seconds"]] == [0, 2, 4]
    assert [step for step, _ in series["block/stack.units.1/max_eigenvalue"]] == [0, 2, 4]


def test_without_a_logger_the_snapshots_stay_in_the_monitor(model_and_batches):
    model, batches = model_and_batches
    monitor = _monitor(density_snapshots=2)
    trainer = _fake_trainer()
    monitor._batches["fit"] = batches
    monitor._curvature.prepare(trainer, model, monitor.settings.params)
    with pytest.warns(UserWarning, match="no logger"):
        monitor._on_fit_started(trainer, model)
    assert [record["step"] for record in monitor.density_history] == [0]
    assert trainer.callback_metrics["hessian/density_hvps"] > 0
    assert SimpleNamespace(**monitor.density_history[0]).num_hvps > 0
