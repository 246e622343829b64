import csv
import dataclasses
import math
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers.lightning_models import (
    Classifier,
    dataset,
    fit,
    loader,
    trainer_kwargs,
)
from helpers.reference import dense_hessian
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_shortcut import residual_parameters
from lightning_shortcut.callbacks import HessianEigenvalueMonitor


def test_logs_expected_keys_to_csv(tmp_path):
    monitor = HessianEigenvalueMonitor(
        every_n_steps=3, top_k=2, bottom_k=2, min_abs=True, num_samples=40, max_iter=40
    )
    trainer, _ = fit(tmp_path, [monitor], logger=CSVLogger(tmp_path), max_epochs=1)
    with open(trainer.logger.log_dir + "/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = set(rows[0])
    expected = {
        f"hessian/{name}"
        for name in (
            "max_eigenvalue",
            "min_eigenvalue",
            "condition_number",
            "min_abs_eigenvalue",
            "top_1",
            "top_2",
            "bottom_2",
            "num_hvps",
            "seconds",
        )
    }
    assert expected <= keys
    logged_steps = sorted({int(r["step"]) for r in rows if r["hessian/max_eigenvalue"]})
    assert logged_steps == [
        0,
        3,
        6,
    ]  # 96 samples / 16 = 6 steps; at fit start, every 3, epoch end (6)
    assert [record["step"] for record in monitor.history] == [0, 3, 6]
    for record in monitor.history:
        assert record["max_eigenvalue"] >= record["min_eigenvalue"]
        assert record["condition_number"] >= 1.0
        assert record["stage"] == "fit" and record["epoch"] == 0


def test_tensorboard_and_no_logger(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = HessianEigenvalueMonitor(num_samples=32, every_n_epochs=1)
    trainer, _ = fit(tmp_path, [monitor], logger=TensorBoardLogger(tmp_path), max_epochs=1)
    assert len(monitor.history) == 2
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    measured = {key for row in monitor.history for key in row} - {"step", "epoch", "stage"}
    assert {"max_eigenvalue", "min_eigenvalue", "num_hvps", "stability", "warm_start"} <= measured
    assert "max_eigenvalue_stderr" in measured  # with the cold measurement at step 0
    assert {f"hessian/{key}" for key in measured} <= set(events.Tags()["scalars"])
    assert [r["step"] for r in monitor.history] == [0, 6]
    for key in measured:
        logged = [(e.step, e.value) for e in events.Scalars(f"hessian/{key}")]
        rows = [r for r in monitor.history if key in r]
        assert [step for step, _ in logged] == [r["step"] for r in rows]
        for (_, value), record in zip(logged, rows, strict=True):
            # TensorBoard stores float32
            assert value == pytest.approx(record[key], rel=1e-6, abs=1e-30, nan_ok=True), key
    monitor = HessianEigenvalueMonitor(num_samples=32, every_n_epochs=1)
    trainer, _ = fit(tmp_path, [monitor], max_epochs=1)
    assert len(monitor.history) == 2
    assert "hessian/max_eigenvalue" in trainer.callback_metrics


def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path):
    def run(callbacks):
        trainer, model = fit(tmp_path, callbacks, max_epochs=2, accumulate_grad_batches=1)
        optimizer = trainer.optimizers[0]
        state = [
            t
            for group in optimizer.state.values()
            for t in group.values()
            if isinstance(t, torch.Tensor)
        ]
        return model, state, torch.get_rng_state()

    monitor = HessianEigenvalueMonitor(every_n_steps=2, num_samples=48, top_k=2, mode="train")
    plain_model, plain_state, plain_rng = run([])
    monitored_model, monitored_state, monitored_rng = run([monitor])
    assert len(monitor.history) > 3
    for (name, a), (_, b) in zip(
        plain_model.state_dict().items(), monitored_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(plain_state, monitored_state, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain_rng, monitored_rng)
    for pa, pb in zip(plain_model.parameters(), monitored_model.parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None)
        if pa.grad is not None:
            assert torch.equal(pa.grad, pb.grad)
    assert monitored_model.training == plain_model.training


def test_gradient_accumulation_measures_once_per_step(tmp_path):
    monitor = HessianEigenvalueMonitor(every_n_steps=1, every_n_epochs=None, num_samples=32)
    fit(tmp_path, [monitor], max_epochs=1, accumulate_grad_batches=2)
    assert [r["step"] for r in monitor.history] == [0, 1, 2, 3]


def test_resume_continues_schedule_and_history(tmp_path):
    def monitor():
        return HessianEigenvalueMonitor(every_n_steps=4, num_samples=32, warm_start=True)

    # no shuffling and no dropout: training after a resume is then the same as without one
    common = dict(shuffle=False, enable_checkpointing=True)
    full = monitor()
    fit(
        tmp_path / "full",
        [full],
        max_epochs=4,
        model=lambda: Classifier(dropout=0.0),
        shuffle=False,
    )
    first = monitor()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(
        tmp_path / "a",
        [first, checkpoint],
        max_epochs=2,
        model=lambda: Classifier(dropout=0.0),
        **common,
    )
    resumed = monitor()
    fit(
        tmp_path / "b",
        [resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")],
        max_epochs=4,
        model=lambda: Classifier(dropout=0.0),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        **common,
    )
    steps = [r["step"] for r in resumed.history]
    assert steps == [r["step"] for r in full.history]
    assert len(steps) == len(set(steps))
    # the warm-start vectors are not checkpointed: the first measurement after the resume is cold
    # (warm in the uninterrupted run), and the values agree with the uninterrupted run's within tol
    after = [r for r in resumed.history if r["step"] > 12]
    assert after[0]["warm_start"] == 0.0
    assert all(r["warm_given_up"] in (0.0, 1.0) for r in full.history)  # with warm starts on
    assert next(r for r in full.history if r["step"] == after[0]["step"])["warm_start"] == 1.0
    for a, b in zip(resumed.history, full.history, strict=True):
        scale = max(abs(b["max_eigenvalue"]), abs(b["min_eigenvalue"]))
        assert abs(a["max_eigenvalue"] - b["max_eigenvalue"]) <= 1e-2 * scale


def test_distinct_state_keys():
    a = HessianEigenvalueMonitor(every_n_steps=10)
    b = HessianEigenvalueMonitor(
        every_n_steps=10, log_prefix="hessian_residual/", params="residual"
    )
    assert a.state_key != b.state_key


def test_validate_and_test_under_inference_mode(tmp_path):
    monitor = HessianEigenvalueMonitor(stages=("validate", "test"), num_samples=32)
    pl.seed_everything(0)
    model = Classifier()
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, callbacks=[monitor], logger=CSVLogger(tmp_path))
    )
    trainer.validate(model, loader(shuffle=False))
    trainer.test(model, loader(shuffle=False))
    assert [r["stage"] for r in monitor.history] == ["validate", "test"]
    assert all(math.isfinite(r["max_eigenvalue"]) for r in monitor.history)
    assert "hessian/test/max_eigenvalue" in trainer.callback_metrics


def test_nan_loss_warns_once_and_training_continues(tmp_path):
    def nan_loss(module, batch):
        return torch.nn.functional.cross_entropy(module(batch[0]), batch[1]) * float("nan")

    monitor = HessianEigenvalueMonitor(every_n_steps=1, num_samples=16, loss_fn=nan_loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(tmp_path, [monitor], max_epochs=1)
    assert trainer.global_step == 6
    assert all(math.isnan(r["max_eigenvalue"]) for r in monitor.history)
    assert sum("non-finite" in str(w.message) for w in caught) == 1


def test_non_convergence_warns_and_logs_estimates(tmp_path):
    # at the initial point only
    monitor = HessianEigenvalueMonitor(num_samples=32, tol=1e-12, max_iter=3, max_overhead=0)
    with pytest.warns(UserWarning, match="did not reach"):
        fit(tmp_path, [monitor], max_epochs=1)
    assert monitor.history[0]["converged"] == 0.0 and math.isfinite(
        monitor.history[0]["max_eigenvalue"]
    )


def test_fast_dev_run_is_skipped(tmp_path):
    """In a real fit (sanity checking, whose hooks cannot measure in a fit, is checked on the
    schedule's hooks in test_overhead_budget.py)."""
    monitor = HessianEigenvalueMonitor(every_n_steps=1, num_samples=16)
    fit(tmp_path, [monitor], fast_dev_run=2)
    assert monitor.history == []


def test_residual_params_and_attention_model(tmp_path):
    from lightning.pytorch.demos import Transformer

    class LanguageModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Transformer(
                vocab_size=11, ninp=8, nhead=2, nhid=16, nlayers=1, dropout=0.1
            )

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return torch.nn.functional.nll_loss(self.model(inputs, targets), targets.view(-1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def lm_loss(module, batch):
        inputs, targets = batch
        return torch.nn.functional.nll_loss(module.model(inputs, targets), targets.view(-1))

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (32, 6), generator=generator)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(tokens, tokens.roll(1, dims=1)), batch_size=8
    )
    monitor = HessianEigenvalueMonitor(num_samples=16, loss_fn=lm_loss, every_n_epochs=1)
    pl.seed_everything(0)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[monitor], max_epochs=1))
    trainer.fit(LanguageModel(), data)
    assert len(monitor.history) == 2
    assert all(
        math.isfinite(r["max_eigenvalue"]) and r["converged"] == 1.0 for r in monitor.history
    )


def _initial_extremes(params_of) -> tuple[float, float, float]:
    """The extreme eigenvalues of the Hessian over ``params_of(model)`` at the initial weights of
    :func:`fit`'s model, on the monitor's Hessian batch (the first 16 samples, eval mode), in
    float64, and ``max|lambda|`` over all parameters."""
    pl.seed_everything(0, verbose=False)
    model = Classifier().double().eval()
    x, y = dataset()[:16]
    loss = lambda m: torch.nn.functional.cross_entropy(m(x.double()), y)  # noqa: E731
    chosen = torch.linalg.eigvalsh(dense_hessian(model, loss, params_of(model)))
    every = torch.linalg.eigvalsh(dense_hessian(model, loss))
    return float(chosen[-1]), float(chosen[0]), float(every.abs().max())


def test_residual_params_need_a_stack(tmp_path):
    monitor = HessianEigenvalueMonitor(params="residual", num_samples=16, every_n_epochs=1)
    _trainer, _model = fit(tmp_path, [monitor], max_epochs=1)
    assert len(monitor.history) == 2
    # the first measurement is of the Hessian over exactly the stack's branch weights
    top, bottom, _ = _initial_extremes(residual_parameters)
    top_all, bottom_all, scale = _initial_extremes(lambda m: list(m.parameters()))
    first = monitor.history[0]
    assert first["step"] == 0
    resolution = 1e-2 * max(abs(top), abs(bottom))  # the monitor's tol, relative to max|lambda|
    assert first["max_eigenvalue"] == pytest.approx(top, abs=resolution)
    assert first["min_eigenvalue"] == pytest.approx(bottom, abs=resolution)
    assert abs(top - top_all) > 0.1 * scale or abs(bottom - bottom_all) > 0.1 * scale

    class NoStack(Classifier):
        def __init__(self):
            super().__init__()
            self.stack = torch.nn.Identity()

    with pytest.raises(ValueError, match="contains no ResidualStack"):
        fit(
            tmp_path,
            [HessianEigenvalueMonitor(params="residual", num_samples=16)],
            max_epochs=1,
            model=NoStack,
        )


def test_default_loss_rejects_unreadable_batches_at_start(tmp_path):
    class DictModel(Classifier):
        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch["x"]), batch["y"])

    data = [{"x": x, "y": y} for x, y in dataset()]
    dict_loader = torch.utils.data.DataLoader(data, batch_size=16)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, callbacks=[HessianEigenvalueMonitor(num_samples=16)])
    )
    with pytest.raises(ValueError, match="loss_fn"):
        trainer.fit(DictModel(), dict_loader)


def test_fsdp_is_refused_at_setup():
    from lightning.pytorch.strategies import FSDPStrategy

    monitor = HessianEigenvalueMonitor()
    with pytest.raises(MisconfigurationException, match="double backward"):
        monitor.setup(SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy)), None, "fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_epochs": -1}, "every_n_epochs"),
        ({"max_overhead": -0.1}, "max_overhead"),
        ({"max_overhead": float("inf")}, "max_overhead"),
        ({"max_overhead": "10%"}, "max_overhead"),
        ({"num_samples": 0}, "num_samples"),
        ({"method": "exact"}, "exact"),
        ({"top_k": -1}, "top_k"),
        ({"params": "weights"}, "params"),
        ({"stages": ("fit", "predict")}, "stages"),
        ({"mode": "inference"}, "inference"),
        ({"data": [1, 2]}, "data"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"max_iter": None}, "max_iter"),
        ({"warm_start": 1}, r"warm_start.*int >= 2 .*got 1"),
        ({"warm_start": "yes"}, "warm_start"),
        ({"stderr": 0}, r"stderr.*int n >= 1.*got 0"),
        ({"stderr": "cold"}, r"stderr.*bool or an int.*got 'cold'"),
        ({"stderr": 2.5}, "stderr"),
        # solver options are refused where they enter, not at fit start
        ({"solver_options": {"max_basis": 2}}, r"max_basis.*>= 3, got 2"),
        (
            {"solver_options": {"basis": 10}},
            r"no option 'basis'; its options are \['host_basis', 'max_basis'\]",
        ),
        ({"solver_options": {"tol": 0.1}}, "pass tol= instead"),
        ({"method": "power", "solver_options": {"max_basis": 10}}, "no option 'max_basis'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        HessianEigenvalueMonitor(**kwargs)


def test_warm_starts_are_one_option_off_by_default_and_no_clock_is_public():
    import inspect

    assert HessianEigenvalueMonitor().audit_every == 1  # every measurement cold
    assert HessianEigenvalueMonitor(warm_start=True).audit_every == 10
    assert HessianEigenvalueMonitor(warm_start=4).audit_every == 4
    parameters = inspect.signature(HessianEigenvalueMonitor).parameters
    assert "clock" not in parameters and "audit_every" not in parameters
    assert "batch_size" not in parameters and parameters["chunk_size"].default is None


@pytest.mark.parametrize("stderr, rows", [(True, [0, 10]), (4, [0, 4, 8])])
def test_standard_errors_come_on_their_schedule_and_the_values_alone_otherwise(
    tmp_path, stderr, rows
):
    """The default: the standard errors with the first fit measurement and every 10th, the
    values-only pass (no eigenvector kept) for the others."""
    monitor = HessianEigenvalueMonitor(every_n_steps=1, num_samples=32, stderr=stderr, tol=1e-4)
    assert monitor.settings.vectors is False  # no part of this monitor reads eigenvectors
    fit(tmp_path, [monitor], max_steps=11)
    with_stderr = [i for i, row in enumerate(monitor.history) if "max_eigenvalue_stderr" in row]
    assert len(monitor.history) == 12 and with_stderr == rows
    assert all(monitor.history[i]["max_eigenvalue_stderr"] > 0 for i in rows)
    assert monitor.state_dict()["cold_measurements"] == 12


def test_parts_that_read_eigenvectors_keep_them():
    for options in ({"warm_start": True}, {"blocks": "modules"}, {"gradient_overlap": True}):
        assert HessianEigenvalueMonitor(**options).settings.vectors is None, options
    assert HessianEigenvalueMonitor(mode="train")._guard.stderr_every == 0


def test_the_forecast_averages_the_standard_errors_over_their_cycle():
    """Without warm starts the costly kind is a measurement with the standard errors, one in 10:
    the forecast is (costly + 9 light) / 10 and says so."""
    from lightning_shortcut.callbacks._cost_report import ExpectedCost

    guard = HessianEigenvalueMonitor()._guard
    assert (guard.cycle, guard.next_kind()) == (10, "cold")
    settings = HessianEigenvalueMonitor().settings
    assert guard.for_next(settings, cold=True).stderr == "cold"
    assert (guard.next_kind(), guard.is_steady()) == ("values", False)
    assert guard.for_next(settings, cold=True).stderr is False
    assert guard.is_steady()
    budget = SimpleNamespace(costs={"cold": 3.0})
    expected = guard.expected(ExpectedCost(1.0), budget, steady=1.0)
    assert expected.seconds == pytest.approx((3.0 + 9 * 1.0) / 10)
    assert "standard errors with one in every 10" in expected.mix
    # the run's settings without them (fully_shard): no measurement is booked as carrying them
    guard.for_next(dataclasses.replace(settings, stderr=False), cold=True)
    assert (guard.cycle, guard.next_kind()) == (1, "values")
