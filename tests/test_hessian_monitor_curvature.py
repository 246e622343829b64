"""The monitor in real training setups: stability, the model's own loss, precision, compile, plots."""

import csv
import logging
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.lightning_models import Classifier, fit, loader, trainer_kwargs
from helpers.reference import dense_hessian
from lightning.pytorch.loggers import CSVLogger

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.cli import main as cli_main
from lightning_shortcut.plot import load_hessian_metrics


class AdamClassifier(Classifier):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class LBFGSClassifier(Classifier):
    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.1)


class DictBatchClassifier(Classifier):
    """A dict batch and its own loss: the monitor uses ``hessian_loss``."""

    def training_step(self, batch, batch_idx):
        return self.hessian_loss(batch)

    def hessian_loss(self, batch):
        return F.cross_entropy(self(batch["x"]), batch["y"])


def _dict_loader():
    x, y = loader(shuffle=False).dataset.tensors
    samples = [{"x": x[i], "y": y[i]} for i in range(len(x))]
    return torch.utils.data.DataLoader(samples, batch_size=16)


def _stability_by_hand(model, batch, lr, constant):
    model.eval()
    hessian = dense_hessian(model, lambda m: F.cross_entropy(m(batch[0]), batch[1]))
    return lr * float(torch.linalg.eigvalsh(hessian.double()).max()) / constant


def test_sgd_stability_is_lr_times_lambda_max_over_the_momentum_constant(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=3, num_samples=48, tol=1e-6, max_iter=200)
    _, model = fit(tmp_path, [monitor], max_epochs=1)
    record = monitor.history[-1]
    assert set(record) >= {"stability", "max_stable_lr"}
    x, y = loader(shuffle=False).dataset.tensors
    expected = _stability_by_hand(model, (x[:48], y[:48]), 0.05, (2 + 2 * 0.9) / (1 - 0.0))
    assert record["stability"] == pytest.approx(expected, rel=1e-4)
    assert record["max_stable_lr"] == pytest.approx(0.05 / record["stability"], rel=1e-9)


def test_adam_stability_needs_state_and_costs_one_more_run(tmp_path, caplog):
    monitor = HessianEigenvalueMonitor(every_n_steps=3, num_samples=48)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        warnings.filterwarnings("error", message=".*no state yet")  # expected at step 0: info
        fit(tmp_path, [monitor], model=AdamClassifier, max_epochs=1)
    said = [r.getMessage() for r in caplog.records if "from the next measurement" in r.getMessage()]
    assert len(said) == 1 and "Adam has no state yet" in said[0]
    first, later = monitor.history[0], monitor.history[-1]
    assert "stability" not in first  # the fit-start measurement: Adam has taken no step
    assert later["stability"] > 0 and later["max_stable_lr"] > 0


def test_unknown_optimizer_logs_eigenvalues_and_says_so_once(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=2, num_samples=48)
    with pytest.warns(UserWarning, match="no stability ratio") as record:
        fit(tmp_path, [monitor], model=LBFGSClassifier, max_epochs=1)
    assert sum("no stability ratio" in str(w.message) for w in record) == 1
    assert all("stability" not in r and "max_stable_lr" not in r for r in monitor.history)
    assert all(math.isfinite(r["max_eigenvalue"]) for r in monitor.history)


def test_warns_when_stability_stays_above_the_level(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=1, num_samples=48, warn_above=1e-6)
    with pytest.warns(UserWarning, match=r"above warn_above=1e-06 for 3 measurements in a row"):
        fit(tmp_path, [monitor], max_epochs=1)
    quiet = HessianEigenvalueMonitor(every_n_steps=1, num_samples=48, warn_above=None)
    fit(tmp_path, [quiet], max_epochs=1)


def test_hessian_loss_hook_with_dict_batches(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=3, num_samples=48, tol=1e-6, max_iter=200)
    pl.seed_everything(0)
    model = DictBatchClassifier()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[monitor], max_epochs=1))
    trainer.fit(model, train_dataloaders=_dict_loader())
    x, y = loader(shuffle=False).dataset.tensors
    model.eval()
    hessian = dense_hessian(model, lambda m: F.cross_entropy(m(x[:48]), y[:48]))
    expected = float(torch.linalg.eigvalsh(hessian.double()).max())
    assert monitor.history[-1]["max_eigenvalue"] == pytest.approx(expected, rel=1e-4)


def test_explicit_loss_fn_wins_over_the_hook(tmp_path):
    calls = []

    def loss_fn(module, batch):
        calls.append(1)
        return F.cross_entropy(module(batch["x"]), batch["y"])

    monitor = HessianEigenvalueMonitor(at_fit_start=True, max_overhead=0, loss_fn=loss_fn)
    pl.seed_everything(0)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[monitor], max_epochs=1))
    trainer.fit(DictBatchClassifier(), train_dataloaders=_dict_loader())
    assert calls


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_trainer_precision_converts_the_hessian_batch(tmp_path, precision):
    monitor = HessianEigenvalueMonitor(every_n_steps=3, num_samples=48)
    fit(tmp_path, [monitor], max_epochs=1, precision=precision)
    assert len(monitor.history) >= 2
    assert all(math.isfinite(r["max_eigenvalue"]) for r in monitor.history)
    reference = HessianEigenvalueMonitor(every_n_steps=3, num_samples=48)
    fit(tmp_path, [reference], max_epochs=1)
    tolerance = 1e-2 if precision == "64-true" else 0.1  # bf16: about 2-3 digits
    assert monitor.history[0]["max_eigenvalue"] == pytest.approx(
        reference.history[0]["max_eigenvalue"], rel=tolerance
    )


class CompiledClassifier(Classifier):
    def configure_model(self):
        self.stack = torch.compile(self.stack, backend="aot_eager")


def test_compiled_submodule_is_measured_eagerly(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=3, num_samples=48)
    fit(tmp_path, [monitor], model=CompiledClassifier, max_epochs=1)
    assert all(
        r["converged"] == 1.0 and math.isfinite(r["max_eigenvalue"]) for r in monitor.history
    )
    torch._dynamo.reset()


def test_metrics_rows_have_the_epoch_and_plot_draws_them(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=2, num_samples=48, min_abs=True, max_iter=300)
    trainer, _ = fit(tmp_path, [monitor], logger=CSVLogger(tmp_path), max_epochs=2)
    metrics = trainer.logger.log_dir + "/metrics.csv"
    with open(metrics) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("hessian/max_eigenvalue")]
    assert rows and all(row["epoch"] != "" for row in rows)
    assert {float(row["epoch"]) for row in rows} == {0.0, 1.0}
    series = load_hessian_metrics(tmp_path)
    assert {"max_eigenvalue", "min_eigenvalue", "stability"} <= set(series)
    out = tmp_path / "curves.png"
    cli_main(["plot", str(tmp_path), "--out", str(out)])
    assert out.stat().st_size > 10_000
    with pytest.raises(SystemExit):
        cli_main(["plot", str(tmp_path / "nowhere"), "--out", str(out)])


def test_fit_start_says_what_a_measurement_costs(tmp_path, caplog):
    monitor = HessianEigenvalueMonitor(num_samples=48)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        fit(tmp_path, [monitor], max_epochs=2)
    messages = [
        r.getMessage() for r in caplog.records if "HessianEigenvalueMonitor" in r.getMessage()
    ]
    assert len(messages) == 1
    assert "training steps" in messages[0] and "num_samples" in messages[0]
