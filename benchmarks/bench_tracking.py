"""Tracking the spectrum along training: warm runs with cold audits against cold runs, side by side.

Along a training run measured on a fixed schedule, each measurement is made twice at the same
weights: cold (``hessian_eigenvalues`` from a random start, as before warm tracking) and tracked
(:class:`~lightning_shortcut.hessian.SpectrumTracker`: warm from the previous measurement's vectors,
a cold audit every ``audit_every``). Each value is checked against a tight cold reference
(``tol=1e-6``) at the same weights; the error is printed relative to ``max|lambda|`` and must stay
within ``tol``.

Runs:
- ``gd_tanh``: full-batch gradient descent on a tanh MLP (1000 samples, 64-128-128-10, squared loss,
  lr 0.2), 600 steps, measured every 25 (the edge of stability appears in its second half).
- ``sgd_<recipe>``: SGD (lr 0.05, momentum 0.9, batches of 64) on a recipe model with random data,
  measured every 25 steps on a 256-sample Hessian batch (the monitor's default).
- ``digits_recipe``: the digits recipe ``shortcut2_small_relu`` as its config runs it (real digits,
  ``ZeroInit(scale=0.001)``, SGD lr 0.05 with momentum 0.9, batches of 64, the residual parameters
  on 512 samples), measured every ``--every`` steps. Its extremes are tight clusters (the paper's
  values repeat over the 16 units) whose members trade places: the hard case for warm starts.

Run: ``python benchmarks/bench_tracking.py [--tol 1e-2] [--steps 600] [--every 25]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import recipe_model

from lightning_shortcut import ZeroInit
from lightning_shortcut.data import DigitsDataModule
from lightning_shortcut.hessian import SpectrumTracker, hessian_eigenvalues
from lightning_shortcut.hessian.operator import resolve_params


def _mse(model, batch):
    x, y = batch
    return 0.5 * F.mse_loss(model(x), F.one_hot(y, 10).float(), reduction="none").sum(1).mean()


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def gd_tanh(steps: int):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )
    x, y = torch.randn(1000, 64), torch.randint(0, 10, (1000,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)

    def step(_):
        optimizer.zero_grad()
        _mse(model, (x, y)).backward()
        optimizer.step()

    return model, (x, y), _mse, step, None


def sgd_recipe(name: str):
    def build(steps: int):
        model, (x, _) = recipe_model(name, torch.device("cpu"))
        generator = torch.Generator().manual_seed(1)
        data_x = torch.randn(4096, *x.shape[1:], generator=generator)
        data_y = torch.randint(0, 10, (4096,), generator=generator)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(index):
            rows = torch.randint(0, 4096, (64,), generator=generator)
            optimizer.zero_grad()
            _ce(model, (data_x[rows], data_y[rows])).backward()
            optimizer.step()

        return model, (data_x[:256], data_y[:256]), _ce, step, None

    return build


def digits_recipe(steps: int):
    model, _ = recipe_model("digits_mlp", torch.device("cpu"))
    ZeroInit(scale=0.001)(model)
    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup("fit")
    dataset = datamodule.train_dataloader().dataset
    inputs, targets = zip(*(dataset[index] for index in range(len(dataset))), strict=True)
    data_x, data_y = torch.stack(inputs), torch.as_tensor(targets)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def step(_):
        model.train()
        rows = torch.randint(0, len(data_x), (64,), generator=generator)
        optimizer.zero_grad()
        _ce(model, (data_x[rows], data_y[rows])).backward()
        optimizer.step()

    return model, (data_x[:512], data_y[:512]), _ce, step, "residual"


RUNS = {
    "gd_tanh": gd_tanh,
    "sgd_digits_mlp": sgd_recipe("digits_mlp"),
    "digits_recipe": digits_recipe,
}


def track(name: str, build, bottom_k: int, tol: float, steps: int, every: int, audit_every: int):
    model, batch, loss_fn, step, spec = build(steps)
    params = resolve_params(model, spec)
    tracker = SpectrumTracker(audit_every=audit_every)
    cold_products, tracked_products, tracked_seconds, cold_seconds = [], [], [], []
    worst_cold = worst_tracked = 0.0
    kinds, given_up = "", 0
    for index in range(steps + 1):
        if index % every == 0:
            args = dict(loss_fn=loss_fn, bottom_k=bottom_k, tol=tol, params=params)
            reference = hessian_eigenvalues(model, batch, **{**args, "tol": 1e-6})
            scale = max(abs(reference.max), abs(reference.min or 0.0))
            begin = time.perf_counter()
            cold = hessian_eigenvalues(model, batch, **args)
            cold_seconds.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            tracked = hessian_eigenvalues(model, batch, start=tracker.start(params), **args)
            tracked_seconds.append(time.perf_counter() - begin)
            tracker.update(tracked, params)
            kinds += "w" if tracked.warm_start else "C"
            given_up += tracked.warm_given_up
            cold_products.append(cold.num_hvps)
            tracked_products.append(tracked.num_hvps)
            for spectrum, worst in ((cold, "cold"), (tracked, "tracked")):
                error = abs(spectrum.max - reference.max)
                if bottom_k:
                    error = max(error, abs(spectrum.min - reference.min))
                if worst == "cold":
                    worst_cold = max(worst_cold, error / scale)
                else:
                    worst_tracked = max(worst_tracked, error / scale)
        if index < steps:
            step(index)
    ends = "top+bottom" if bottom_k else "top only"
    after = slice(1, None)
    print(
        f"| {name} | {ends} | {len(cold_products)} | "
        f"{statistics.mean(cold_products[after]):.1f} | {statistics.mean(tracked_products[after]):.1f} | "
        f"{statistics.mean(cold_seconds[after]) / statistics.mean(tracked_seconds[after]):.2f}x | "
        f"{worst_cold:.1e} | {worst_tracked:.1e} | {given_up} | {kinds} |",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--audit-every", type=int, default=10)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"# bench_tracking, {date.today()}, {platform.machine()} {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}: python benchmarks/bench_tracking.py "
        f"--tol {args.tol} --steps {args.steps} --every {args.every} --audit-every {args.audit_every} "
        f"--threads {args.threads}"
    )
    print(
        "| run | ends | measurements | cold products/meas. | tracked products/meas. | "
        "time cold/tracked | worst cold error | worst tracked error | warm given up | "
        "C=cold w=warm |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.runs:
        for bottom_k in (0, 1):
            track(name, RUNS[name], bottom_k, args.tol, args.steps, args.every, args.audit_every)


if __name__ == "__main__":
    main()
