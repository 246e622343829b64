"""Wall-time cost of HessianEigenvalueMonitor with default settings on recipe-shaped training runs.

Each configuration is trained with and without the monitor, alternating, ``--repeats`` times; the
ratio of the medians is printed. ``digits`` is the real offline recipe data; ``mnist``/``cifar10``
use random data of the recipes' shapes and sizes (``--mnist-samples`` to shrink them).

Run: ``python benchmarks/bench_monitor_overhead.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.data import DigitsDataModule
from lightning_shortcut.models import ResidualClassifier
from lightning_shortcut.recipes import DATASETS


def _loader(dataset: str, samples: int) -> DataLoader:
    spec = DATASETS[dataset]
    if dataset == "digits":
        datamodule = DigitsDataModule(batch_size=spec.data_args["batch_size"])
        datamodule.setup("fit")
        return datamodule.train_dataloader()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *spec.input_shape, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=spec.data_args["batch_size"], shuffle=True)


def _fit(dataset: str, loader: DataLoader, epochs: int, monitor: bool, accelerator: str) -> float:
    spec = DATASETS[dataset]
    pl.seed_everything(0, verbose=False)
    model = ResidualClassifier(
        spec.input_shape, 10, width=spec.width, num_units=spec.num_units, shortcut_depth=2,
        layer=spec.layer, activation="relu", lr=spec.lr, momentum=0.9,
    )  # fmt: skip
    callbacks = [HessianEigenvalueMonitor()] if monitor else []
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist", "cifar10"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mnist-samples", type=int, default=60000)
    parser.add_argument("--cifar-samples", type=int, default=50000)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    print(f"# Monitor overhead ({args.device}, {args.epochs} epochs, median of {args.repeats})\n")
    print("| recipe data | samples | without (s) | with monitor (s) | overhead |")
    print("|---|---|---|---|---|")
    for dataset in args.datasets:
        samples = {"mnist": args.mnist_samples, "cifar10": args.cifar_samples}.get(dataset, 0)
        loader = _loader(dataset, samples)
        plain, monitored = [], []
        for _ in range(args.repeats):
            plain.append(_fit(dataset, loader, args.epochs, False, accelerator))
            monitored.append(_fit(dataset, loader, args.epochs, True, accelerator))
        a, b = statistics.median(plain), statistics.median(monitored)
        print(
            f"| {dataset} | {len(loader.dataset)} | {a:.2f} | {b:.2f} | {100 * (b / a - 1):+.1f}% |"
        )


if __name__ == "__main__":
    main()
