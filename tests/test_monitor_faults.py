"""The fault matrix (issue 30): every monitor feature crossed with every fault a run meets.

In each cell ``fit`` completes, the weights are bit-identical to the same run without the monitor,
a warning names the fault (where the fault is one: a learning rate of 0 or a resume is not), and
nothing is written outside the run's folder (the working directory, an empty temporary folder,
stays empty). The runs are tiny (8 optimizer steps on 64 samples); the runs without the monitor are
shared by the cells of a fault.
"""

import math
import os
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.lightning_models import Classifier, dataset
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.hessian.linear_operator import LinearOperator

# the options of each feature, on top of a lean monitor (no standard errors, no stability ratio)
FEATURES = {
    "default": None,  # the monitor's own defaults: standard errors and stability ratio on
    "edge_of_stability": dict(edge_of_stability=True),
    "stderr": dict(stderr=True),
    "blocks": dict(blocks="modules"),
    "gradient_overlap": dict(gradient_overlap=True),
    "density_snapshots": dict(density_snapshots=3),
    "warm_start": dict(warm_start=2),
    "min_abs": dict(min_abs=True),
}
LEAN = dict(stderr=False, edge_of_stability=False)
STEPS = 8


class Diverging(Classifier):
    """Its loss is blown up from step 3 on: the weights turn inf, then NaN."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1e30 if self.global_step >= 3 else loss


class ZeroLearningRate(Classifier):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class TwoOptimizers(Classifier):
    """Manual optimization: the body and the head each have their optimizer, both stepped every
    batch (``global_step`` counts both)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        body, head = self.optimizers()
        loss = F.cross_entropy(self(batch[0]), batch[1])
        body.zero_grad()
        head.zero_grad()
        self.manual_backward(loss)
        body.step()
        head.step()

    def configure_optimizers(self):
        body = [p for name, p in self.named_parameters() if not name.startswith("head")]
        return (
            torch.optim.SGD(body, lr=self.lr, momentum=0.9),
            torch.optim.SGD(self.head.parameters(), lr=self.lr),
        )


def _nan_data():
    x, y = dataset(num_samples=32).tensors
    x = x.clone()
    x[5, 2] = math.nan  # one NaN in the Hessian batch; the training data is clean
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _raise_out_of_memory(self, vector):
    raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")


# per fault: the model, the Trainer's and the monitor's options, and what a warning must say
FAULTS = {
    "nan_in_hessian_batch": (Classifier, {}, lambda: dict(data=_nan_data()), r"non-finite|NaN"),
    "diverges": (Diverging, {}, dict, r"non-finite"),
    "out_of_memory": (Classifier, {}, dict, r"out of memory"),
    "no_convergence": (Classifier, {}, lambda: dict(max_iter=2, tol=1e-12), r"max_iter"),
    "lr_0": (ZeroLearningRate, {}, dict, None),
    "no_logger": (Classifier, dict(logger=False), dict, None),
    "two_optimizers": (TwoOptimizers, dict(max_steps=-1, max_epochs=1), dict, None),
    "resume": (Classifier, {}, dict, None),
}


def _fit(root, model_class, trainer_options, callbacks, ckpt_path=None, max_steps=STEPS):
    pl.seed_everything(0, verbose=False)
    model = model_class()
    options = dict(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=CSVLogger(root, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    options.update(trainer_options)
    trainer = pl.Trainer(**options, callbacks=callbacks)
    loader = DataLoader(dataset(num_samples=64), batch_size=16, shuffle=True)
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer, model


class StopHalfway(pl.Callback):
    """Stops the run after half its steps, as an interruption would."""

    def on_train_batch_end(self, trainer, *args):
        trainer.should_stop = trainer.should_stop or trainer.global_step >= STEPS // 2


def _run(root, fault, monitor):
    """The fault's run (with ``monitor``, or without it where ``None``): its final weights."""
    model_class, trainer_options, _, _ = FAULTS[fault]
    callbacks = [monitor] if monitor is not None else []
    if fault != "resume":
        return _fit(root, model_class, trainer_options, callbacks)[1]
    trainer, _ = _fit(root, model_class, trainer_options, [*callbacks, StopHalfway()])
    trainer.save_checkpoint(root / "half.ckpt")
    if monitor is not None:  # a new process: a new monitor, its state from the checkpoint
        callbacks = [HessianEigenvalueMonitor(**monitor.options)]
        monitor.resumed = callbacks[0]
    return _fit(root, model_class, {}, callbacks, ckpt_path=root / "half.ckpt")[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The final weights of each fault's run without the monitor (shared by its cells)."""
    cache = {}

    def weights(fault):
        if fault not in cache:
            root = tmp_path_factory.mktemp(f"reference-{fault}")
            with warnings.catch_warnings(), _injected(fault):
                warnings.simplefilter("ignore")
                cache[fault] = _state(_run(root, fault, None))
        return cache[fault]

    return weights


class _injected:
    """Out-of-memory inside every product, while the fault is ``out_of_memory``."""

    def __init__(self, fault):
        self.patch = pytest.MonkeyPatch() if fault == "out_of_memory" else None

    def __enter__(self):
        if self.patch is not None:
            self.patch.setattr(LinearOperator, "__call__", _raise_out_of_memory)

    def __exit__(self, *exc):
        if self.patch is not None:
            self.patch.undo()


def _state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _bits(tensor):
    """The tensor's bytes, so that NaN weights (a diverged run) compare equal to themselves."""
    return tensor.contiguous().view(-1).view(torch.uint8)


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_never_ends_corrupts_or_escapes_a_run(fault, feature, tmp_path, reference):
    _, _, monitor_options, pattern = FAULTS[fault]
    options = dict(every_n_steps=4, num_samples=16, **monitor_options())
    options.update(LEAN if FEATURES[feature] is not None else {})
    options.update(FEATURES[feature] or {})
    monitor = HessianEigenvalueMonitor(**options)
    monitor.options = options
    expected = reference(fault)
    cwd, root = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(record=True) as caught, _injected(fault):
            warnings.simplefilter("always")
            model = _state(_run(root, fault, monitor))
    finally:
        os.chdir(before)
    assert list(cwd.iterdir()) == []  # nothing written outside the run's folder
    assert model.keys() == expected.keys()
    for name, tensor in model.items():  # training bit-identical to the run without the monitor
        assert torch.equal(_bits(tensor), _bits(expected[name])), name
    said = [str(warning.message) for warning in caught]
    ours = [message for message in said if "HessianEigenvalueMonitor" in message]
    if pattern is not None:
        assert any(re.search(pattern, message) for message in ours), ours
    _check_cell(fault, feature, monitor, ours)


def _check_cell(fault, feature, monitor, ours):
    """What each fault must show beyond the common checks."""
    records = [record for record in monitor.history if record["stage"] == "fit"]
    assert records, "no measurement"
    if fault == "out_of_memory":  # said as what it is, not as a NaN
        assert all(math.isnan(record["max_eigenvalue"]) for record in records)
        assert not any("non-finite" in message for message in ours), ours
    if fault == "lr_0" and "stability" in records[-1]:
        # SGD's largest stable rate does not depend on the current one: finite at lr 0
        assert all(record["stability"] == 0.0 for record in records)
        for record in records:  # plain SGD: 2 / lambda_max
            assert record["max_stable_lr"] == pytest.approx(2 / record["max_eigenvalue"])
    if fault == "nan_in_hessian_batch" and feature in ("default", "edge_of_stability"):
        # what could not be measured is logged as NaN, not left out of the row
        assert all(math.isnan(record["stability"]) for record in records)
        assert all(math.isnan(record["max_stable_lr"]) for record in records)
    if fault == "no_logger" and feature == "density_snapshots":
        assert any("no logger" in message for message in ours)
    if fault == "two_optimizers" and feature == "density_snapshots":
        # global_step counts both optimizers' steps: 4 batches x 2 = 8, spread over
        assert [record["step"] for record in monitor.density_history] == [0, 4, 8]
    if fault == "two_optimizers" and feature in ("default", "edge_of_stability"):
        assert any("no stability ratio" in message for message in ours)
    if fault == "resume":
        resumed = monitor.resumed
        assert [record["step"] for record in resumed.history] == [0, 4, 8]
        if feature == "density_snapshots":  # those taken before the resume are not taken again
            assert [record["step"] for record in monitor.density_history] == [0, 4]
            assert [record["step"] for record in resumed.density_history] == [8]
