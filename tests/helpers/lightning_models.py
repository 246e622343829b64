"""Small LightningModules and loaders for the callback tests."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut import ResidualStack
from lightning_shortcut.callbacks import HessianEigenvalueMonitor


class Classifier(pl.LightningModule):
    """Linear -> BatchNorm -> ResidualStack -> dropout -> head; SGD with momentum."""

    def __init__(
        self,
        features: int = 6,
        width: int = 8,
        classes: int = 3,
        lr: float = 0.05,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.bn = nn.BatchNorm1d(width)
        self.stack = ResidualStack(width, 2, 2, activation="tanh")
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, classes)
        self.lr = lr

    def forward(self, x):
        return self.head(self.drop(self.stack(torch.tanh(self.bn(self.inp(x))))))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class FakeClock(pl.Callback):
    """A deterministic wall clock for a monitor's time budget: an optimizer step takes 1 s and each
    of the monitor's measurements ``cost`` s, or ``cost[global_rank]`` s when one cost is given per
    rank. Build both with :func:`clocked_monitor` and put the clock in the Trainer's callbacks too
    (it reads the step from the Trainer)."""

    def __init__(self, cost: float | Sequence[float]) -> None:
        self.cost, self.monitor, self.trainer = cost, None, None

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def __call__(self) -> float:
        cost = (
            self.cost if isinstance(self.cost, int | float) else self.cost[self.trainer.global_rank]
        )
        return self.trainer.global_step + cost * len(self.monitor.history)


def clocked_monitor(
    cost: float | Sequence[float], **kwargs
) -> tuple[HessianEigenvalueMonitor, FakeClock]:
    """A ``HessianEigenvalueMonitor(**kwargs)`` on a :class:`FakeClock` of ``cost``, and the clock.

    Without the standard errors unless asked: the budget would read their share of a measurement
    from the real clock, and the schedule would not be the fake clock's alone."""
    kwargs.setdefault("stderr", False)
    clock = FakeClock(cost)
    clock.monitor = HessianEigenvalueMonitor(**kwargs)
    clock.monitor._use_clock(clock)
    return clock.monitor, clock


def dataset(
    num_samples: int = 96, features: int = 6, classes: int = 3, seed: int = 0
) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, features, generator=generator)
    y = torch.randint(0, classes, (num_samples,), generator=generator)
    return TensorDataset(x, y)


def loader(shuffle: bool = True, batch_size: int = 16, **kwargs) -> DataLoader:
    return DataLoader(dataset(**kwargs), batch_size=batch_size, shuffle=shuffle)


def trainer_kwargs(tmp_path, **overrides):
    kwargs = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    kwargs.update(overrides)
    return kwargs


def fit(tmp_path, callbacks, seed=0, ckpt_path=None, model=Classifier, shuffle=True, **overrides):
    """Seed, then build ``model`` (a class or factory) and fit it."""
    pl.seed_everything(seed, verbose=False)
    model = model()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, **overrides))
    trainer.fit(model, train_dataloaders=loader(shuffle=shuffle), ckpt_path=ckpt_path)
    return trainer, model
