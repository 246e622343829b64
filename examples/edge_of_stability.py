"""Watch the edge of stability: full-batch gradient descent on digits and the monitor's ratio.

Gradient descent with step ``lr`` on a quadratic is stable while the Hessian's largest eigenvalue
``lambda_max`` stays below ``2 / lr``. Cohen et al. (2021) found that on neural networks full-batch
gradient descent drives ``lambda_max`` up to ``2 / lr`` ("progressive sharpening") and then keeps it
hovering there while the loss still falls, non-monotonically ("the edge of stability").

The monitor logs that ratio as ``hessian/stability``: ``lr * lambda_max / 2`` for plain SGD, 1.0 at
the edge. Here the Hessian batch is the whole training set (``num_samples=len(dataset)``), so
``lambda_max`` is the sharpness of the very loss that gradient descent minimizes, measured on a
fixed schedule (``every_n_steps``) to draw a curve.

The model is a tanh MLP on scikit-learn's digits with the squared loss on one-hot targets, as in
Cohen et al.'s Figure 1 (which used a CIFAR-10 subset). With the defaults (lr 0.5, so the edge is
``lambda_max = 4``) the sharpness rises from 2.3 to 4 in about 90 steps, overshoots to 5.4 and then
hovers at 4.2 - 4.8 (stability 1.06 - 1.19) while the loss keeps falling, with bumps.

Run::

    python examples/edge_of_stability.py                     # 1000 images, 300 steps, lr 0.5
    python examples/edge_of_stability.py --lr 0.25 --steps 600
    python examples/edge_of_stability.py --num-images 64 --steps 6 --every-n-steps 2
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut.callbacks import HessianEigenvalueMonitor


class FullBatchMLP(pl.LightningModule):
    """A tanh MLP trained by plain gradient descent on ``0.5 * mean ||f(x) - onehot(y)||^2``."""

    def __init__(self, lr: float, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 10),
        )  # fmt: skip
        self.lr = lr
        self.losses: list[float] = []  # the training loss before each step

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def hessian_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss the monitor differentiates twice: the training loss itself."""
        x, y = batch
        target = nn.functional.one_hot(y, 10).to(x.dtype)
        return 0.5 * ((self(x) - target) ** 2).sum(dim=1).mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.hessian_loss(batch)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def standardized_digits(num_images: int) -> TensorDataset:
    """The first ``num_images`` of digits' 8x8 images as 64 standardized features, and labels."""
    digits = load_digits()
    x = torch.tensor(digits.data[:num_images], dtype=torch.float32)
    y = torch.tensor(digits.target[:num_images], dtype=torch.long)
    return TensorDataset((x - x.mean(0)) / (x.std(0) + 1e-6), y)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run gradient descent; print and return the monitor's measurements, each with the loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--num-images", type=int, default=1000, help="of digits' 1797")
    parser.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    dataset = standardized_digits(args.num_images)
    full_batch = DataLoader(dataset, batch_size=len(dataset))  # one step per epoch: plain GD
    # full-batch descent moves the Hessian little between measurements: warm starts pay here
    monitor = HessianEigenvalueMonitor(
        every_n_steps=args.every_n_steps, num_samples=len(dataset), bottom_k=0, warm_start=True
    )
    model = FullBatchMLP(args.lr, args.hidden)
    trainer = pl.Trainer(
        max_steps=args.steps,
        callbacks=[monitor],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, full_batch)

    print(f"lr {args.lr:g}: the edge of stability is lambda_max = 2 / lr = {2 / args.lr:.4g}")
    print(f"{'step':>6} {'loss':>8} {'lambda_max':>11} {'stability':>10}")
    with torch.no_grad():
        final_loss = float(model.hessian_loss(dataset.tensors))
    rows = []
    for record in monitor.history:
        step = record["step"]
        # the loss at the measured weights: the one before step `step`, or after the last step
        loss = model.losses[step] if step < len(model.losses) else final_loss
        rows.append({**record, "loss": loss})
        print(f"{step:>6} {loss:8.4f} {record['max_eigenvalue']:11.4g} {record['stability']:10.3f}")
    second_half = [row["stability"] for row in rows if row["step"] >= args.steps / 2]
    if second_half:
        print(f"median stability over the second half: {statistics.median(second_half):.3f}")
    return rows


if __name__ == "__main__":
    main()
