"""Add the Hessian monitor to a Trainer you already have.

The model below stands for yours: a small CNN with BatchNorm, trained by Adam on batches that are
dicts. Nothing in it changes except one method, ``hessian_loss(batch)``, which tells the monitor how
to compute the mean loss of a batch (its default, the cross-entropy of ``model(inputs)``, cannot
read a dict). The monitor is one entry in ``callbacks``, with its defaults.

What it prints (on Lightning's logger, once each):

- before the first step, as info: Adam has no state yet, so the stability ratio (which needs
  Adam's step sizes) starts with the next measurement;
- after the first steps: what one measurement costs (Hessian-vector products, seconds, the
  number of training steps it is as long as) and how often the default budget (5% of the
  training time) lets it measure. On a CPU a measurement of this CNN is as long as about 20
  training steps, so the budget allows one every few hundred steps; ``--every-n-steps`` gives a
  fixed schedule instead, whatever it costs.

Every measurement goes to the Trainer's loggers (``hessian/max_eigenvalue``,
``hessian/min_eigenvalue``, ``hessian/stability``, ...) and to ``monitor.history``, which this
script prints at the end.

Run::

    python examples/monitor_existing_trainer.py                 # 8 epochs on sklearn's digits
    python examples/monitor_existing_trainer.py --every-n-steps 50  # a curve, at a cost
    python examples/monitor_existing_trainer.py --max-epochs 1 --num-images 128
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_shortcut.callbacks import HessianEigenvalueMonitor


class DigitImages(Dataset):
    """scikit-learn's 8x8 digits as ``{"image": (1, 8, 8), "label": int}`` samples."""

    def __init__(self, num_images: int) -> None:
        digits = load_digits()
        self.images = torch.tensor(digits.images[:num_images], dtype=torch.float32)[:, None] / 16
        self.labels = torch.tensor(digits.target[:num_images], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


class SmallCNN(pl.LightningModule):
    """Your model: conv, BatchNorm, ReLU, pooling and a linear head, trained by Adam."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).flatten(1))

    def hessian_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The mean loss of a batch: the one line the monitor needs from a dict-batch model."""
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.hessian_loss(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Train with the default monitor; print and return its measurements (``monitor.history``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--num-images", type=int, default=1797, help="of digits' 1797")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--every-n-steps",
        type=int,
        default=None,
        help="measure on this fixed schedule, whatever it costs (default: the 5%% time budget)",
    )
    parser.add_argument("--out", default="lightning_logs", help="the logger's folder")
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    loader = DataLoader(DigitImages(args.num_images), batch_size=args.batch_size, shuffle=True)
    if args.every_n_steps is None:
        monitor = HessianEigenvalueMonitor()  # the defaults: a 5% time budget, 256 samples
    else:
        monitor = HessianEigenvalueMonitor(every_n_steps=args.every_n_steps)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        callbacks=[monitor],
        default_root_dir=args.out,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(SmallCNN(), loader)

    print(f"{len(monitor.history)} measurement(s) in {trainer.global_step} steps:")
    for record in monitor.history:
        # no stability before Adam's first step: its step sizes do not exist yet
        stability = record.get("stability", math.nan)
        print(
            f"  step {record['step']:>5}  max {record['max_eigenvalue']:9.4g}  "
            f"min {record['min_eigenvalue']:9.4g}  stability {stability:7.3g}  "
            f"({record['num_hvps']:.0f} products, {record['seconds']:.2f} s)"
        )
    return monitor.history


if __name__ == "__main__":
    main()
