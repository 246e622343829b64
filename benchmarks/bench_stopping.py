"""When may a cold Lanczos run stop? The settled-ends window, measured on the runs it guards.

The values-only pass is unrestarted: its Ritz values after ``k`` products are those of the whole
Krylov space ``K_k`` whatever rule stops it, so one pass of ``--products`` products per case and
seed gives every rule's answer at once. For each case (a model at some weights, or a matrix with a
known spectrum) and seed (the start vector), the pass's tridiagonal is kept; at each check (the
pass's schedule: every product up to 40, then every 5%) the rule's bounds are taken as
:class:`~lightning_shortcut.hessian.solvers._stopping.StoppingRule` takes them, and each candidate
*settled window* decides where the run stops:

- ``half``: the wanted ends moved by at most ``tol * max|lambda|`` since the run had half its
  products (the rule); ``half, floor 20``: the same without the separated floor of the top alone;
- ``quarter``, ``fifth``: since it had three quarters, four fifths of them;
- ``none``: no window (the floor and the bounds alone).

Every rule keeps the floor (20 products; 10 for a separated top alone but in ``half, floor 20``). A run is *wrong* where a
returned value is more than ``tol * max|lambda|`` from the reference (scipy's ``eigsh`` at
``tol=1e-10`` on the same products, or the matrix's known spectrum), and its *bound fails* where the
error exceeds the bound it reports. Cases:

- ``gd_tanh``, ``sgd_digits_mlp``, ``digits_recipe``: the runs of ``bench_tracking.py`` (full-batch
  descent on a tanh MLP to the edge of stability; minibatch SGD on the digits recipe model; the
  digits recipe itself, whose ends are tight clusters), every 100 (the recipe every 140) steps;
- the four held-out models of ``bench_values_only.py``;
- ``bn_cnn_fashion``: a BatchNorm CNN after two epochs of Adam on 12,000 Fashion-MNIST images
  (``/usr/share/datasets/fashion-mnist``; skipped where absent), where a Ritz value of the bulk near
  zero once passed for a far end 200 times larger;
- ``far_end``, ``cluster``: the tests' spectra (an outlier, a dense bulk and a far negative end 13
  times smaller; a top cluster 0.2% apart above a bulk).

Run: ``python benchmarks/bench_stopping.py [--threads 2] [--seeds 10] [--products 160]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import describe_machine, print_table
from bench_tracking import RUNS
from bench_values_only import eigsh_extremes, held_out

from lightning_shortcut.hessian.context import hessian_operator
from lightning_shortcut.hessian.operator import cross_entropy_loss, resolve_params
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.solvers._stopping import (
    MIN_PRODUCTS,
    SEPARATED_MIN_PRODUCTS,
    SEPARATION,
    Check,
    Ends,
    StoppingRule,
    check_due,
)
from lightning_shortcut.hessian.solvers._vectors import random_unit_vector
from lightning_shortcut.hessian.solvers.lanczos_values import _recurrence, ritz

TOLS = (1e-2, 1e-3)
ENDS = {"both": (True, True), "top": (True, False), "bottom": (False, True)}
#: the share of its products over which a run's ends must have held still (0: no window), and
#: whether a separated top alone may stop at the separated floor
WINDOWS = {
    "half": (1 / 2, True),
    "half, floor 20": (1 / 2, False),
    "quarter": (1 / 4, True),
    "fifth": (1 / 5, True),
    "none": (0.0, True),
}
FASHION = Path("/usr/share/datasets/fashion-mnist")


class Trajectory:
    """One unrestarted pass: the extremes of ``T_k`` and their bounds after each product."""

    def __init__(self, alphas: list[float], betas: list[float], space) -> None:
        self.rows = []  # (products, largest, smallest, top_error, bottom_error, second_largest)
        bounds = StoppingRule(Ends(top=True, bottom=True), 0.5, len(alphas), space)  # its bounds
        for products in range(1, len(alphas) + 1):
            values, vectors = ritz(alphas[:products], betas[:products])
            beta = betas[products - 1]
            check = Check(products, values, beta * vectors[-1].abs(), beta=beta)
            assessment = bounds.assess(check)
            second = float(values[-2]) if products > 1 else float(values[-1])
            row = (products, float(values[-1]), float(values[0]))
            self.rows.append((*row, assessment.top_error, assessment.bottom_error, second))

    def stop(self, ends: tuple[bool, bool], tol: float, window: tuple[float, bool]) -> tuple:
        """The row where a run with this window stops (or the last)."""
        want_top, want_bottom = ends
        share, separated_floor = window
        for index, (products, largest, smallest, top, bottom, second) in enumerate(self.rows):
            last = index == len(self.rows) - 1
            if not (check_due(products) or last):
                continue
            threshold = tol * max(abs(largest), abs(smallest))
            met = (not want_top or top <= threshold) and (not want_bottom or bottom <= threshold)
            separated = largest - second >= SEPARATION * 1e-3 * threshold / tol
            top_alone = want_top and not want_bottom and separated_floor
            floor = SEPARATED_MIN_PRODUCTS if top_alone and separated else MIN_PRODUCTS
            since = int(products * (1 - share))  # the rule: products // 2 for half
            then = next(
                (r for r in reversed(self.rows[: index + 1]) if r[0] <= since), self.rows[0]
            )
            settled = (not want_top or abs(largest - then[1]) <= threshold) and (
                not want_bottom or abs(smallest - then[2]) <= threshold
            )
            if last or (met and products >= floor and settled):
                return self.rows[index]
        raise AssertionError("unreachable")


def _pass(operator, seed: int, products: int) -> Trajectory:
    generator = torch.Generator().manual_seed(seed)
    alphas, betas = [], []
    for alpha, beta in _recurrence(operator, random_unit_vector(operator, generator)):
        alphas.append(alpha)
        betas.append(beta)
        if len(alphas) >= products:
            break
    return Trajectory(alphas, betas, operator)


def _bn_cnn_fashion():
    from lightning_shortcut.data import read_idx

    images = (
        torch.from_numpy(read_idx(FASHION / "train-images-idx3-ubyte.gz")[:12000]).float() / 255
    )
    labels = torch.from_numpy(read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:12000]).long()
    images = ((images - images.mean()) / images.std()).unsqueeze(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for rows in torch.randperm(len(images), generator=generator).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(images[rows]), labels[rows]).backward()
            optimizer.step()
    model.eval()
    return model, (images[:256], labels[:256])


class _Quadratic(nn.Module):
    """``0.5 w^T A w`` at ``w = 0``: the Hessian is ``A``."""

    def __init__(self, eigenvalues: list[float], seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(
            torch.randn(len(eigenvalues), len(eigenvalues), generator=generator)
        )
        matrix = basis @ torch.diag(torch.tensor(eigenvalues)) @ basis.T
        self.register_buffer("matrix", (matrix + matrix.T) / 2)
        self.weight = nn.Parameter(torch.zeros(len(eigenvalues)))

    def forward(self, _):
        return 0.5 * self.weight @ self.matrix @ self.weight


def _quadratic_loss(model, batch):
    return model(batch)


def cases() -> Iterator[tuple[str, Callable, tuple[float, float] | None]]:
    """``(name, build, known)``: ``build(seed) -> (model, batch, loss_fn, params)`` and the known
    extremes (``None``: taken with ``eigsh``)."""
    for name, every in (("gd_tanh", 100), ("sgd_digits_mlp", 100), ("digits_recipe", 140)):
        steps = 6 * every
        model, batch, loss_fn, step, spec = RUNS[name](steps)
        params = resolve_params(model, spec) if spec else None
        for index in range(steps + 1):
            if index % every == 0:
                yield f"{name}@{index}", lambda _, a=(model, batch, loss_fn, params): a, None
            if index < steps:
                step(index)
    networks = ["tanh_digits", "tanh_digits_trained", "cnn_digits", "relu_784"]
    for name in networks:
        model, batch = held_out(name)
        yield name, lambda _, a=(model, batch, cross_entropy_loss, None): a, None
    if FASHION.exists():
        model, batch = _bn_cnn_fashion()
        yield "bn_cnn_fashion", lambda _, a=(model, batch, cross_entropy_loss, None): a, None
    for name, spectrum in (
        ("far_end", [160.0, 40.0, *torch.linspace(-0.5, 0.5, 400).tolist(), -12.0]),
        ("cluster", [10.0, 9.98, 9.96, 9.95, 9.93, *torch.linspace(-0.3, 0.3, 300).tolist()]),
    ):

        def build(seed: int, spectrum: list[float] = spectrum) -> tuple:
            return _Quadratic(spectrum, seed), (torch.zeros(1),), _quadratic_loss, None

        yield name, build, (max(spectrum), min(spectrum))


def study(seeds: int, products: int) -> list[dict]:
    tallies = {
        (window, tol, ends): {"runs": 0, "wrong": 0, "bound fails": 0, "products": []}
        for window in WINDOWS
        for tol in TOLS
        for ends in ENDS
    }
    for name, build, known in cases():
        reference = known
        for seed in range(seeds):
            model, batch, loss_fn, params = build(seed)
            with hessian_operator(
                model, batch, loss_fn, HessianSettings(params=params)
            ) as operator:
                if reference is None:
                    reference = eigsh_extremes(operator)
                trajectory = _pass(operator, seed, products)
            top_ref, bottom_ref = reference
            scale = max(abs(top_ref), abs(bottom_ref))
            for (window, tol, ends), tally in tallies.items():
                row = trajectory.stop(ENDS[ends], tol, WINDOWS[window])
                stop, largest, smallest, top_bound, bottom_bound, _ = row
                want_top, want_bottom = ENDS[ends]
                wrong = (want_top and abs(largest - top_ref) > tol * scale) or (
                    want_bottom and abs(smallest - bottom_ref) > tol * scale
                )
                fails = (want_top and abs(largest - top_ref) > top_bound) or (
                    want_bottom and abs(smallest - bottom_ref) > bottom_bound
                )
                if wrong:
                    print(
                        f"wrong: {name} seed {seed} {window} tol {tol:g} {ends} at {stop}: "
                        f"{largest:.5g}/{top_ref:.5g} {smallest:.5g}/{bottom_ref:.5g}",
                        flush=True,
                    )
                tally["runs"] += 1
                tally["wrong"] += wrong
                tally["bound fails"] += fails
                tally["products"].append(stop)
        print(f"{name}: done", file=sys.stderr, flush=True)
    return [
        {
            "window": window,
            "tol": tol,
            "ends": ends,
            "runs": tally["runs"],
            "wrong": tally["wrong"],
            "bound fails": tally["bound fails"],
            "mean products": statistics.mean(tally["products"]),
        }
        for (window, tol, ends), tally in tallies.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--products", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# Settled-ends windows, {date.today()}, {describe_machine(torch.device('cpu'))}")
    summary = study(args.seeds, args.products)
    print_table("Runs that returned a value more than tol from the reference", summary)


if __name__ == "__main__":
    main()
