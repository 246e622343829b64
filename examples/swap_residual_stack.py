"""Swap a plain stack of layers for a ``ResidualStack`` and start it from small weights.

The classifier below has a body between an input layer and a head. The plain body is what a model
often has: ``2 * num_units`` layers of ``Linear`` and ``ReLU``. The residual body is one line,
``ResidualStack(width, num_units, shortcut_depth=2, activation="relu")``: ``num_units`` units
``h <- h + W_2 relu(W_1 h)``, the same number of weight layers, the same shape in and out.

``ResidualInit(ZeroInit(scale=1e-3))`` starts the residual branches near zero at the start of
``fit`` (the paper's initialization: each unit is close to the identity), without touching the model
code; the input layer and the head keep PyTorch's default. ``HessianEigenvalueMonitor(params=
"residual")`` measures the Hessian over the branch weights only, the paper's quantity.

Run::

    python examples/swap_residual_stack.py                  # both bodies, 16 units, 20 epochs
    python examples/swap_residual_stack.py --body residual --num-units 2 --max-epochs 1
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut import ResidualStack, ZeroInit
from lightning_shortcut.callbacks import HessianEigenvalueMonitor, ResidualInit


def plain_body(width: int, num_units: int) -> nn.Module:
    """``2 * num_units`` layers of Linear and ReLU: the body before the swap."""
    layers: list[nn.Module] = []
    for _ in range(2 * num_units):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def residual_body(width: int, num_units: int) -> nn.Module:
    """The body after the swap: the same number of weight layers, behind identity shortcuts."""
    return ResidualStack(width, num_units, shortcut_depth=2, activation="relu")


class Classifier(pl.LightningModule):
    """Input layer, body, head; SGD with momentum."""

    def __init__(self, body: nn.Module, width: int, lr: float = 0.05) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.body = body
        self.head = nn.Linear(width, 10)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(torch.relu(self.inp(x))))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def digits(num_images: int) -> tuple[TensorDataset, TensorDataset]:
    """The first ``num_images`` digits for training, standardized, and the rest for validation."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    x = (x - x[:num_images].mean(0)) / (x[:num_images].std(0) + 1e-6)
    return TensorDataset(x[:num_images], y[:num_images]), TensorDataset(x[-297:], y[-297:])


def train(body_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fit one classifier; its final training loss, validation accuracy and last measurement."""
    pl.seed_everything(0)
    train_set, val_set = digits(args.num_images)
    build = residual_body if body_name == "residual" else plain_body
    model = Classifier(build(args.width, args.num_units), args.width)
    callbacks: list[pl.Callback] = []
    if body_name == "residual":
        monitor = HessianEigenvalueMonitor(params="residual", every_n_epochs=args.every_n_epochs)
        callbacks = [ResidualInit(ZeroInit(scale=1e-3)), monitor]
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        callbacks=callbacks,
        default_root_dir=args.out,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(train_set, batch_size=64, shuffle=True))
    model.eval()
    with torch.no_grad():
        x, y = train_set.tensors
        loss = float(F.cross_entropy(model(x), y))
        x, y = val_set.tensors
        accuracy = float((model(x).argmax(1) == y).float().mean())
    result: dict[str, Any] = {"train_loss": loss, "val_accuracy": accuracy}
    if body_name == "residual":
        result["max_eigenvalues"] = [record["max_eigenvalue"] for record in monitor.history]
        result["measured_steps"] = [record["step"] for record in monitor.history]
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train the chosen bodies and print, then return, what each reached."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", choices=("plain", "residual", "both"), default="both")
    parser.add_argument("--num-units", type=int, default=16)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--num-images", type=int, default=1500, help="training images, of 1797")
    parser.add_argument("--every-n-epochs", type=int, default=5, help="the monitor's schedule")
    parser.add_argument("--out", default="lightning_logs")
    args = parser.parse_args(argv)
    if not 1 <= args.num_images <= 1500:
        parser.error(
            f"--num-images must be in 1 ... 1500 (297 are kept for validation), got {args.num_images}"
        )

    bodies = ("plain", "residual") if args.body == "both" else (args.body,)
    results = {name: train(name, args) for name in bodies}
    for name, result in results.items():
        print(
            f"{name:>8}: {2 * args.num_units} weight layers in the body, final training loss "
            f"{result['train_loss']:.3f}, validation accuracy {result['val_accuracy']:.1%}"
        )
    if "residual" in results:
        residual = results["residual"]
        curve = ", ".join(
            f"{value:.3g} (step {step})"
            for step, value in zip(
                residual["measured_steps"], residual["max_eigenvalues"], strict=True
            )
        )
        print(f"largest eigenvalue of the residual-branch Hessian: {curve}")
    return results


if __name__ == "__main__":
    main()
