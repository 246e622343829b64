"""Wall-time cost of the recipes' HessianEigenvalueMonitor on recipe-shaped training runs.

Each recipe model (``shortcut2_small_relu``: ResidualInit with small weights, SGD with momentum, the
recipe's batch size and epochs) is trained without the monitor and with it, ``--repeats`` times in
alternating order (without first, then with first: the wall clock of a shared machine drifts).
Printed: the median wall times, the overhead as the median over repeats of the ratio of the two
neighbouring runs (which cancels slow drift), the number of measurements made (and, after the
table, the steps they were made at, from the last repeat), and the monitor's
share of the training time by its own clock (``monitor time / (fit time - monitor time)``). The
monitor takes the recipes' arguments (``lightning_shortcut.recipes.MONITOR_ARGS``: residual
parameters, 512 samples, top and bottom eigenvalue, ``tol=1e-2``, self-scheduled within
``max_overhead=0.05`` of the training time; ``--max-overhead`` to change it); ``--schedules budget
epoch`` adds the fixed one-measurement-per-epoch schedule for comparison, ``budget_cold`` the same
budget without the sampling error, and warm-started (``budget_warm``). ``digits`` is the real offline recipe data; ``mnist``/``cifar10`` use random data of
the recipes' shapes (``--mnist-samples``/``--cifar-samples`` to shrink them). Fewer ``--epochs``
than the recipe make the measurement at fit start weigh more, so the overhead printed is then an
upper bound for the recipe.

Run: ``python benchmarks/bench_monitor_overhead.py [--device cuda] [--epochs N]``.
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

from lightning_shortcut import ZeroInit
from lightning_shortcut.callbacks import HessianEigenvalueMonitor, ResidualInit
from lightning_shortcut.data import DigitsDataModule
from lightning_shortcut.models import ResidualClassifier
from lightning_shortcut.recipes import DATASETS, INITS, MONITOR_ARGS

# "budget": the monitor's default schedule (within max_overhead of the training time), every
# measurement cold with its sampling error; "budget_cold": the same without the sampling error;
# "budget_warm": warm-started with cold audits and the sampling error on cold measurements, for the
# count of measurements side by side; "epoch": one uncapped measurement per epoch
SCHEDULES = {
    "budget": {"max_overhead": 0.05},
    "budget_cold": {"max_overhead": 0.05, "stderr": False},
    "budget_warm": {"max_overhead": 0.05, "warm_start": True},
    "epoch": {"every_n_epochs": 1, "max_overhead": None},
}


def _loader(dataset: str, samples: int) -> DataLoader:
    spec = DATASETS[dataset]
    if dataset == "digits":
        datamodule = DigitsDataModule(batch_size=spec.recipe.data_args["batch_size"])
        datamodule.setup("fit")
        return datamodule.train_dataloader()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *spec.input_shape, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    return DataLoader(
        TensorDataset(x, y), batch_size=spec.recipe.data_args["batch_size"], shuffle=True
    )


def _fit(
    dataset: str,
    loader: DataLoader,
    epochs: int,
    schedule: str | None,
    accelerator: str,
    max_overhead: float | None = None,
) -> tuple[float, list[int], float]:
    """Wall seconds of one fit, the steps measured and the monitor's own seconds."""
    spec = DATASETS[dataset]
    pl.seed_everything(0, verbose=False)
    recipe = spec.recipe
    model = ResidualClassifier(
        spec.input_shape,
        spec.num_classes,
        width=recipe.width,
        num_units=recipe.num_units,
        shortcut_depth=2,
        layer=spec.layer,
        activation="relu",
        lr=recipe.lr,
        momentum=0.9,
    )
    callbacks: list[pl.Callback] = [ResidualInit(ZeroInit(**INITS["small"][1]))]
    monitor = None
    if schedule is not None:
        monitor_args = {**MONITOR_ARGS, **SCHEDULES[schedule]}
        if schedule.startswith("budget") and max_overhead is not None:
            monitor_args["max_overhead"] = max_overhead
        monitor = HessianEigenvalueMonitor(**monitor_args)
        callbacks.append(monitor)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    if monitor is None:
        return seconds, [], 0.0
    return seconds, [record["step"] for record in monitor.history], monitor.budget.monitor_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist", "cifar10"])
    parser.add_argument("--schedules", nargs="+", default=["budget"], choices=list(SCHEDULES))
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--max-overhead", type=float, default=None, help="default: the recipes'")
    parser.add_argument("--mnist-samples", type=int, default=60000)
    parser.add_argument("--cifar-samples", type=int, default=50000)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    budget = 0.05 if args.max_overhead is None else args.max_overhead
    print(f"# Monitor overhead ({args.device}, median of {args.repeats}, budget {budget})\n")
    print(
        "| recipe data | samples | epochs | schedule | without (s) | with (s) | measurements "
        "| overhead | share by own clock |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        samples = {"mnist": args.mnist_samples, "cifar10": args.cifar_samples}.get(dataset, 0)
        loader = _loader(dataset, samples)
        epochs = args.epochs or DATASETS[dataset].recipe.max_epochs
        plain: list[float] = []
        monitored: dict[str, list[float]] = {s: [] for s in args.schedules}
        steps: dict[str, list[int]] = {}
        shares: dict[str, list[float]] = {s: [] for s in args.schedules}
        # warm-up, not timed: imports, the CUDA context, and the monitor's one-time costs (the
        # first double-backward and vmapped pass of a process), which would otherwise fall on
        # whichever schedule runs first
        _fit(dataset, loader, 1, "budget", accelerator)
        for repeat in range(args.repeats):
            order = [None, *args.schedules]
            for schedule in order if repeat % 2 == 0 else reversed(order):
                seconds, measured, own = _fit(
                    dataset, loader, epochs, schedule, accelerator, args.max_overhead
                )
                if schedule is None:
                    plain.append(seconds)
                else:
                    monitored[schedule].append(seconds)
                    steps[schedule] = measured
                    shares[schedule].append(own / (seconds - own))
        a = statistics.median(plain)
        for schedule in args.schedules:
            b = statistics.median(monitored[schedule])
            ratio = statistics.median(
                m / p for m, p in zip(monitored[schedule], plain, strict=True)
            )
            share = statistics.median(shares[schedule])
            print(
                f"| {dataset} | {len(loader.dataset)} | {epochs} | {schedule} | {a:.2f} | {b:.2f} "
                f"| {len(steps[schedule])} | {100 * (ratio - 1):+.1f}% | {100 * share:.1f}% |",
                flush=True,
            )
        for schedule in args.schedules:
            print(f"\n{dataset}, {schedule}: measured at steps {steps[schedule]}", flush=True)


if __name__ == "__main__":
    main()
