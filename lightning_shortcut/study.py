"""``shortcut-study``: the paper's comparisons as a table and figures.

Two parts, both written into ``--out``:

1. The zero point: the condition number of the Hessian over the residual parameters of exactly
   zero-initialized stacks, measured with the Lanczos engine, against the number of units for each
   shortcut depth, beside the theory's prediction (``kappa_zero_point.csv/png``).
2. Training: a grid shortcut depth x init x number of units, each run a Lightning ``Trainer`` with
   :class:`~lightning_shortcut.callbacks.HessianEigenvalueMonitor`; ``summary.csv``/``summary.md``
   hold the condition number at the initial point (``kappa_init``), the eigenvalues at the first and
   last measurement, the final loss over the training set and the validation accuracy;
   ``loss_curves.png`` and ``eigenvalue_trajectories.png`` show the runs.

The default runs offline on scikit-learn's ``digits`` in the theory's exact setting: inputs are
the images' whitened PCA coordinates in 16 dimensions, targets the one-hot labels in the first 10 of
16 outputs, the model a bias-free linear :class:`~lightning_shortcut.ResidualStack` on
``0.5 * mean ||f(x) - y||^2`` trained by SGD. ``--data mnist|fashion_mnist|cifar10`` runs the
classifier (input projection, stack, head) on those datasets instead.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from lightning_shortcut.hessian import hessian_eigenvalues
from lightning_shortcut.hessian.operator import cross_entropy_loss
from lightning_shortcut.init import InitStrategy, OrthogonalInit, XavierInit, ZeroInit
from lightning_shortcut.models import ResidualClassifier, ResidualRegressor, regression_loss
from lightning_shortcut.residual import residual_parameters
from lightning_shortcut.theory import zero_point_hessian

__all__ = ["BUDGETS", "StudyConfig", "main", "run_study"]

BUDGETS: dict[str, dict[str, Any]] = {
    # for tests and smoke runs: seconds
    "quick": {"num_units": (1, 4), "kappa_units": (1, 2, 4), "max_steps": 30, "hessian_every": 15},
    # the README's default: a few minutes on two CPU cores
    "default": {
        "num_units": (2, 8, 32),
        "kappa_units": (1, 2, 4, 8, 16, 32, 64),
        "max_steps": 600,
        "hessian_every": 50,
    },
    "full": {
        "num_units": (1, 4, 16, 64),
        "kappa_units": (1, 2, 4, 8, 16, 32, 64),
        "max_steps": 3000,
        "hessian_every": 100,
    },
}
INIT_NAMES = ("small", "xavier", "orthogonal")
# n = 1 at the zero point: beyond this many parameters (K d^2) the smallest |eigenvalue| is too
# ill-conditioned for Lanczos in seconds; that explosion is the paper's point, shown up to here.
_DEPTH_ONE_MAX_PARAMS = 2048


@dataclass
class StudyConfig:
    """What the study runs. ``budget`` fills ``num_units``, ``kappa_units``, ``max_steps`` and
    ``hessian_every`` unless they are given."""

    out: Path = Path("study_out")
    data: str = "digits"
    data_dir: Path = Path("data")
    budget: str = "default"
    shortcut_depths: tuple[int, ...] = (1, 2, 3)
    inits: tuple[str, ...] = INIT_NAMES
    num_units: tuple[int, ...] | None = None
    kappa_units: tuple[int, ...] | None = None
    max_steps: int | None = None
    hessian_every: int | None = None
    lr: float = 0.1
    small_scale: float = 1e-3
    batch_size: int = 64
    hessian_samples: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"Unknown budget {self.budget!r}; expected one of {list(BUDGETS)}.")
        if self.data not in _DATA:
            raise ValueError(f"Unknown data {self.data!r}; expected one of {list(_DATA)}.")
        unknown = [i for i in self.inits if i not in INIT_NAMES]
        if unknown:
            raise ValueError(f"Unknown inits {unknown}; expected some of {list(INIT_NAMES)}.")
        for key, value in BUDGETS[self.budget].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.out = Path(self.out)


def _digits(config: StudyConfig) -> pl.LightningDataModule:
    return DigitsDataModule(
        task="regression", width=16, batch_size=config.batch_size, seed=config.seed
    )


_DATA = {
    "digits": _digits,
    "mnist": lambda c: MNISTDataModule(c.data_dir, batch_size=c.batch_size, seed=c.seed),
    "fashion_mnist": lambda c: FashionMNISTDataModule(
        c.data_dir, batch_size=c.batch_size, seed=c.seed
    ),
    "cifar10": lambda c: CIFAR10DataModule(c.data_dir, batch_size=c.batch_size, seed=c.seed),
}


def _strategy(name: str, config: StudyConfig, exact_zero: bool = False) -> InitStrategy:
    if name == "small":
        return ZeroInit(scale=0.0 if exact_zero else config.small_scale)
    return XavierInit() if name == "xavier" else OrthogonalInit()


def _model(
    config: StudyConfig, datamodule: Any, shortcut_depth: int, num_units: int
) -> pl.LightningModule:
    if config.data == "digits":
        return ResidualRegressor(16, num_units, shortcut_depth, num_classes=10, lr=config.lr)
    conv = config.data == "cifar10"
    return ResidualClassifier(
        datamodule.input_shape,
        datamodule.num_classes,
        width=32,
        num_units=num_units,
        shortcut_depth=shortcut_depth,
        layer="conv" if conv else "linear",
        activation=None,
        lr=config.lr,
    )


def _loss_fn(config: StudyConfig):
    return regression_loss if config.data == "digits" else cross_entropy_loss


@dataclass
class RunResult:
    shortcut_depth: int
    init: str
    num_units: int
    kappa_init: float
    kappa_init_converged: bool
    max_eigenvalue_start: float
    min_eigenvalue_start: float
    max_eigenvalue_end: float
    min_eigenvalue_end: float
    final_loss: float
    accuracy: float
    diverged: bool
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list, repr=False)
    spectra: list[dict[str, Any]] = field(default_factory=list, repr=False)


class _Recorder(Callback):
    """Keeps the training loss per step and stops a run whose loss is no longer finite."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.diverged = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        self.losses.append((trainer.global_step, loss))
        if not math.isfinite(loss) or loss > 1e6:
            self.diverged = True
            trainer.should_stop = True


def _evaluate(model: pl.LightningModule, dataset, config: StudyConfig) -> tuple[float, float]:
    inputs, targets = dataset.tensors
    with torch.no_grad():
        model.eval()
        outputs = model(inputs)
        if config.data == "digits":
            loss = float(0.5 * (outputs - targets).pow(2).sum(dim=1).mean())
            accuracy = float(
                (outputs[:, :10].argmax(1) == targets[:, :10].argmax(1)).float().mean()
            )
        else:
            loss = float(torch.nn.functional.cross_entropy(outputs, targets))
            accuracy = float((outputs.argmax(1) == targets).float().mean())
    return loss, accuracy


def _hessian_batch(datamodule: Any, config: StudyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = datamodule.train_set.tensors
    return inputs[: config.hessian_samples], targets[: config.hessian_samples]


def _train_one(
    config: StudyConfig, datamodule: Any, shortcut_depth: int, init: str, num_units: int
) -> RunResult:
    start = time.perf_counter()
    pl.seed_everything(config.seed, verbose=False)
    model = _strategy(init, config)(_model(config, datamodule, shortcut_depth, num_units))
    initial = hessian_eigenvalues(
        model, _hessian_batch(datamodule, config), _loss_fn(config),
        params=residual_parameters(model), min_abs=True, tol=1e-6, max_iter=500,
    )  # fmt: skip
    recorder = _Recorder()
    monitor = HessianEigenvalueMonitor(
        every_n_steps=config.hessian_every,
        num_samples=config.hessian_samples,
        params="residual",
        loss_fn=_loss_fn(config),
        tol=1e-2,
        max_iter=60,
        data=datamodule.train_dataloader(),
    )
    trainer = pl.Trainer(
        max_steps=config.max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[monitor, recorder],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_dataloaders=datamodule.train_dataloader())
    final_loss, _ = _evaluate(model, datamodule.train_set, config)
    _, accuracy = _evaluate(model, datamodule.val_set, config)
    history = monitor.history
    return RunResult(
        shortcut_depth=shortcut_depth,
        init=init,
        num_units=num_units,
        kappa_init=initial.condition_number if initial.condition_number is not None else math.nan,
        kappa_init_converged=initial.converged,
        max_eigenvalue_start=history[0]["max_eigenvalue"],
        min_eigenvalue_start=history[0]["min_eigenvalue"],
        max_eigenvalue_end=history[-1]["max_eigenvalue"],
        min_eigenvalue_end=history[-1]["min_eigenvalue"],
        final_loss=final_loss if not recorder.diverged else math.inf,
        accuracy=accuracy if not recorder.diverged else math.nan,
        diverged=recorder.diverged,
        seconds=time.perf_counter() - start,
        losses=recorder.losses,
        spectra=history,
    )


def _zero_point_kappas(config: StudyConfig, datamodule: Any) -> list[dict[str, Any]]:
    """Measured (Lanczos) and predicted condition numbers at the exact zero point."""
    rows = []
    batch = _hessian_batch(datamodule, config)
    for shortcut_depth in config.shortcut_depths:
        for num_units in config.kappa_units:
            if shortcut_depth == 1 and num_units * 16 * 16 > _DEPTH_ONE_MAX_PARAMS:
                continue
            pl.seed_everything(config.seed, verbose=False)
            model = ZeroInit()(_model(config, datamodule, shortcut_depth, num_units))
            measured = hessian_eigenvalues(
                model, batch, _loss_fn(config), params=residual_parameters(model),
                min_abs=True, tol=1e-6, max_iter=3000,
            )  # fmt: skip
            theory = math.nan
            if config.data == "digits":
                theory = zero_point_hessian(
                    batch[0], batch[1], shortcut_depth=shortcut_depth, num_units=num_units
                ).condition_number
            rows.append(
                {
                    "shortcut_depth": shortcut_depth,
                    "num_units": num_units,
                    "kappa_measured": measured.condition_number,
                    "kappa_theory": theory,
                    "max_abs_eigenvalue": max(abs(measured.max), abs(measured.min)),
                    "converged": measured.converged,
                    "num_hvps": measured.num_hvps,
                }
            )
    return rows


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    return str(value)


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_COLORS = {1: "tab:red", 2: "tab:blue", 3: "tab:green"}
_STYLES = {"small": "-", "xavier": "--", "orthogonal": ":"}


def _figures(
    config: StudyConfig, kappas: list[dict[str, Any]], runs: list[RunResult]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for depth in config.shortcut_depths:
        rows = [r for r in kappas if r["shortcut_depth"] == depth]
        finite = [r for r in rows if math.isfinite(r["kappa_measured"])]
        if finite:
            ax.plot([r["num_units"] for r in finite], [r["kappa_measured"] for r in finite], "o",
                    color=_COLORS.get(depth), label=f"n = {depth}, measured (Lanczos)")  # fmt: skip
            theory = [r for r in finite if math.isfinite(r["kappa_theory"])]
            if theory:
                ax.plot([r["num_units"] for r in theory], [r["kappa_theory"] for r in theory], "-",
                        color=_COLORS.get(depth), alpha=0.6, label=f"n = {depth}, theory")  # fmt: skip
        elif rows:
            ax.plot([], [], " ", label=f"n = {depth}: Hessian is exactly 0 (no condition number)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("number of residual units")
    ax.set_ylabel("condition number at the zero point")
    ax.set_title("Hessian over the residual weights at the zero point")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(config.out / "kappa_zero_point.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    units = sorted({r.num_units for r in runs})
    fig, axes = plt.subplots(
        1, len(units), figsize=(4.2 * len(units), 3.8), squeeze=False, sharey=True
    )
    for ax, count in zip(axes[0], units, strict=True):
        for run in (r for r in runs if r.num_units == count):
            steps, losses = zip(*run.losses, strict=True) if run.losses else ((), ())
            ax.plot(steps, losses, _STYLES.get(run.init, "-"), color=_COLORS.get(run.shortcut_depth),
                    label=f"n={run.shortcut_depth}, {run.init}" + (" (diverged)" if run.diverged else ""))  # fmt: skip
        ax.set_yscale("log")
        stable = [loss for r in runs if not r.diverged for _, loss in r.losses[:1]]
        if stable:  # diverged runs leave the plot at the top instead of squashing it
            ax.set_ylim(top=3 * max(stable))
        ax.set_title(f"{count} units")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss (minibatch)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    written.append(config.out / "loss_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    deepest = max(units)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in (r for r in runs if r.num_units == deepest):
        steps = [s["step"] for s in run.spectra]
        for ax, key in zip(axes, ("max_eigenvalue", "min_eigenvalue"), strict=True):
            ax.plot(steps, [s[key] for s in run.spectra], _STYLES.get(run.init, "-") + "o", markersize=3,
                    color=_COLORS.get(run.shortcut_depth),
                    label=f"n={run.shortcut_depth}, {run.init}" + (" (diverged)" if run.diverged else ""))  # fmt: skip
    for ax, title in zip(axes, ("largest eigenvalue", "smallest eigenvalue"), strict=True):
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(f"{title}, {deepest} units")
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    written.append(config.out / "eigenvalue_trajectories.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def run_study(config: StudyConfig, progress: bool = True) -> list[RunResult]:
    """Run the study and write its outputs into ``config.out``; returns the training runs."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one Trainer per run: quiet
    datamodule = _DATA[config.data](config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    grid = [
        (n, i, k) for n in config.shortcut_depths for i in config.inits for k in config.num_units
    ]
    console = Console()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    runs: list[RunResult] = []
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("zero point: condition numbers", total=1 + len(grid))
        kappas = _zero_point_kappas(config, datamodule)
        bar.advance(task)
        for shortcut_depth, init, num_units in grid:
            bar.update(
                task, description=f"training n={shortcut_depth} {init:<10} {num_units:>3} units"
            )
            runs.append(_train_one(config, datamodule, shortcut_depth, init, num_units))
            bar.advance(task)
    _write_csv(config.out / "kappa_zero_point.csv", kappas)
    rows = [{k: v for k, v in asdict(r).items() if k not in ("losses", "spectra")} for r in runs]
    _write_csv(config.out / "summary.csv", rows)
    table = _markdown(
        [{k: row[k] for k in ("shortcut_depth", "init", "num_units", "kappa_init", "kappa_init_converged", "max_eigenvalue_start",
          "min_eigenvalue_start", "max_eigenvalue_end", "min_eigenvalue_end", "final_loss", "accuracy")}
         for row in rows]
    )  # fmt: skip
    kappa_table = _markdown(kappas)
    (config.out / "summary.md").write_text(
        f"# shortcut-study on {config.data} ({config.budget} budget, {config.max_steps} SGD steps, "
        f"lr {config.lr}, small init scale {config.small_scale})\n\n"
        f"## Condition number at the zero point\n\n{kappa_table}\n## Training runs\n\n{table}"
    )
    figures = _figures(config, kappas, runs)
    if progress:
        console.print(f"\n[bold]Zero point[/bold]\n{kappa_table}\n[bold]Training[/bold]\n{table}")
        console.print(
            f"Wrote {config.out / 'summary.csv'}, summary.md and {', '.join(p.name for p in figures)}"
        )
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shortcut-study",
        description="Reproduce the comparisons of 'Demystifying ResNet' as a table and figures.",
    )
    parser.add_argument("--out", type=Path, default=Path("study_out"), help="output folder")
    parser.add_argument(
        "--data", choices=list(_DATA), default="digits", help="dataset (digits: offline)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where MNIST/CIFAR files are"
    )
    parser.add_argument(
        "--budget", choices=list(BUDGETS), default="default", help="size of the grid"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="SGD steps per run (overrides budget)"
    )
    parser.add_argument("--num-units", type=int, nargs="+", default=None, help="depths to train")
    parser.add_argument("--shortcut-depths", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--inits", nargs="+", default=list(INIT_NAMES), choices=list(INIT_NAMES))
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point of ``shortcut-study``."""
    ns = _parser().parse_args(args)
    config = StudyConfig(
        out=ns.out,
        data=ns.data,
        data_dir=ns.data_dir,
        budget=ns.budget,
        max_steps=ns.max_steps,
        num_units=tuple(ns.num_units) if ns.num_units else None,
        shortcut_depths=tuple(ns.shortcut_depths),
        inits=tuple(ns.inits),
        lr=ns.lr,
        seed=ns.seed,
    )
    try:
        run_study(config)
    except FileNotFoundError as error:
        raise SystemExit(f"shortcut-study: {error}") from None


if __name__ == "__main__":
    main()
