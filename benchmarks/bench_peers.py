"""Our Lanczos against the two peers, hessian-eigenthings 1.0.0a5 and pyhessian 0.1, side by side.

Each tool stops by its own convergence test:

- ours: ``hessian_eigenvalues(method="lanczos")`` at its default ``tol=1e-3`` (every value within
  ``tol * max|lambda|`` by its reported bound);
- hessian-eigenthings: ``lanczos(operator, k=1, which="LA")`` (and ``which="SA"``: a second run for
  the bottom end) at its default ``tol=1e-4``. Its Lanczos runs exactly ``max_iter`` steps and only
  *reports* ``converged`` (relative residual ``< tol``); a user raises ``max_iter`` until it holds.
  The rows take the smallest ``max_iter`` whose run reports converged (found by a search that is not
  timed, which favours it), up to ``--peer-max-iter``;
- pyhessian: ``hessian(...).eigenvalues(top_n=1)`` at its default ``tol=1e-3`` (relative change of
  the Rayleigh quotient); it has no bottom-end solver, so "both ends" runs it through our
  ``method="pyhessian"`` wrapper (power iteration on ``H +- s I``, shifted losses).

Printed per model (a tanh MLP, a small CNN, a 269k-parameter MLP) and case (``lambda_max`` alone,
both ends): products, median wall time, the true error relative to ``max|lambda|`` of a tight
reference (our Lanczos in float64 at ``tol=1e-8`` on a float64 copy of the model) and each peer's
time over ours (above 1: ours is faster). Then the warm-start case: a short minibatch SGD run
measured every ``--every`` steps, ours with ``start=previous`` against the peers cold
(eigenthings at the ``max_iter`` its first measurement needed; ours cold beside them), with the mean products per
measurement after the first, total time and the largest error along the run.

Confirmed in hessian-eigenthings 1.0.0a5 (``algorithms/lanczos.py``, ``operators/hessian.py``):
``lanczos(operator, k=1)`` defaults to ``max_iter = min(2 * k, n - 1) = 2`` Lanczos steps whatever
``tol`` says (the "default" column: its error with defaults, flagged unconverged but returned
without a warning); its ``HessianOperator`` averages the batches' products with equal weights
(``total / n_batches``), so a short last batch is over-weighted (the last table: its ``lambda_max``
of the 269k MLP's 512 samples split 448 + 64 is 18% above that of the whole, ours is exact);
and each of its products rebuilds the forward and first backward (no cached first-order graph).

Run: ``python benchmarks/bench_peers.py [--threads 1] [--repeats 3] [--skip warm]``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import bench_model, describe_machine, print_table, synchronize
from bench_hessian import _pyhessian_top

from lightning_shortcut.hessian import hessian_eigenvalues


def _small_cnn(device: torch.device, seed: int = 0):
    """Two 3x3 convolutions (tanh, max-pooling) and a linear head on 256 samples of 3x16x16: 10k parameters."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    ).to(device)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 3, 16, 16, generator=generator).to(device)
    y = torch.randint(0, 10, (256,), generator=generator).to(device)
    return model, (x, y)


def _mlp_269k(device: torch.device, seed: int = 0):
    """784-256-256-10 ReLU MLP (269,322 parameters) on 512 random MNIST-shaped samples."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    ).to(device)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 1, 28, 28, generator=generator).to(device)
    y = torch.randint(0, 10, (512,), generator=generator).to(device)
    return model, (x, y)


MODELS = {
    "tanh_mlp": lambda device: bench_model("tanh_mlp", device),  # 64-128-128-10, 1024 samples
    "small_cnn": _small_cnn,
    "mlp_269k": _mlp_269k,
}


def _loss(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _reference(model, batch):
    """(lambda_max, lambda_min) of a float64 copy, within 1e-8 max|lambda| (float32 products
    themselves round at about 1e-7)."""
    model64 = copy.deepcopy(model).double()
    batch64 = (batch[0].double(), batch[1])
    spectrum = hessian_eigenvalues(
        model64, batch64, tol=1e-8, max_iter=1000, solver_options={"max_basis": 100}
    )
    return spectrum.max, spectrum.min


def _eigenthings(model, batch, which: str, max_iter: int | None):
    """hessian-eigenthings' Lanczos: (value, products, converged by its own test)."""
    import hessian_eigenthings as he

    operator = he.HessianOperator(model, [batch], _loss)
    kwargs = {} if max_iter is None else {"max_iter": max_iter}
    result = he.lanczos(operator, k=1, which=which, seed=0, **kwargs)
    return float(result.eigenvalues[0]), result.iterations, bool(result.converged.all())


# the max_iter values tried, about 25% apart: the search costs about four runs at the answer
_STEPS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150, 200)


def _eigenthings_steps(model, batch, which: str, limit: int) -> int:
    """The smallest ``max_iter`` whose run reports converged (``limit`` if none up to it)."""
    for steps in _STEPS:
        if steps >= limit:
            break
        if _eigenthings(model, batch, which, steps)[2]:
            return steps
    return limit


def _interleaved(methods, device, repeats):
    """Median wall time and last result of each method, timed in rotation (drift falls on all)."""
    names = list(methods)
    times = {name: [] for name in names}
    results = {}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            results[name] = methods[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(times[name]) for name in names}, results


def bench_cold(name, device, repeats, peer_max_iter):
    model, batch = MODELS[name](device)
    largest, smallest = _reference(model, batch)
    scale = max(abs(largest), abs(smallest))
    rows = []

    def error(value, truth):
        return abs(value - truth) / scale

    # lambda_max alone
    steps = _eigenthings_steps(model, batch, "LA", peer_max_iter)
    default_value, _, _ = _eigenthings(model, batch, "LA", None)
    seconds, results = _interleaved(
        {
            "ours": lambda: hessian_eigenvalues(model, batch, bottom_k=0),
            "eigenthings": lambda: _eigenthings(model, batch, "LA", steps),
            "pyhessian": lambda: _pyhessian_top(model, batch, device, 1e-3),
        },
        device,
        repeats,
    )
    ours, (he_value, he_hvps, he_converged), (py_value, py_hvps) = results.values()
    rows.append({
        "model": name,
        "case": "lambda_max",
        "ours: products, s, error": f"{ours.num_hvps}, {seconds['ours']:.3g}, {error(ours.max, largest):.1e}",
        "eigenthings: products, s, error": f"{he_hvps}{'' if he_converged else '*'}, {seconds['eigenthings']:.3g}, {error(he_value, largest):.1e}",
        "pyhessian: products, s, error": f"{py_hvps}, {seconds['pyhessian']:.3g}, {error(py_value, largest):.1e}",
        "eigenthings/ours": seconds["eigenthings"] / seconds["ours"],
        "pyhessian/ours": seconds["pyhessian"] / seconds["ours"],
        "eigenthings default (2 steps) error": f"{error(default_value, largest):.1e}",
    })  # fmt: skip

    # both ends: eigenthings runs twice (LA, SA); pyhessian through our shifted wrapper
    bottom_steps = _eigenthings_steps(model, batch, "SA", peer_max_iter)

    def eigenthings_both():
        top = _eigenthings(model, batch, "LA", steps)
        bottom = _eigenthings(model, batch, "SA", bottom_steps)
        return top[0], bottom[0], top[1] + bottom[1], top[2] and bottom[2]

    seconds, results = _interleaved(
        {
            "ours": lambda: hessian_eigenvalues(model, batch),
            "eigenthings": eigenthings_both,
            "pyhessian": lambda: hessian_eigenvalues(model, batch, method="pyhessian", tol=1e-3),
        },
        device,
        repeats,
    )
    ours, (he_top, he_bottom, he_hvps, he_converged), py = results.values()

    def both(top, bottom):
        return f"{max(error(top, largest), error(bottom, smallest)):.1e}"

    rows.append({
        "model": name,
        "case": "both ends",
        "ours: products, s, error": f"{ours.num_hvps}, {seconds['ours']:.3g}, {both(ours.max, ours.min)}",
        "eigenthings: products, s, error": f"{he_hvps}{'' if he_converged else '*'}, {seconds['eigenthings']:.3g}, {both(he_top, he_bottom)}",
        "pyhessian: products, s, error": f"{py.num_hvps}, {seconds['pyhessian']:.3g}, {both(py.max, py.min)}",
        "eigenthings/ours": seconds["eigenthings"] / seconds["ours"],
        "pyhessian/ours": seconds["pyhessian"] / seconds["ours"],
        "eigenthings default (2 steps) error": "",
    })  # fmt: skip
    return rows


def _sgd_steps(model, data, steps, generator, lr=0.05, batch_size=64):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    inputs, targets = data
    for _ in range(steps):
        index = torch.randint(0, inputs.shape[0], (batch_size,), generator=generator)
        _loss(model, (inputs[index], targets[index])).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _measurement(key, model, batch, device, bottom_k, previous, steps):
    """One measurement by ``key``'s tool: (products, lambda_max, lambda_min or None, spectrum)."""
    if key in ("warm", "cold"):
        start = previous if key == "warm" else None
        spectrum = hessian_eigenvalues(model, batch, bottom_k=bottom_k, start=start)
        return spectrum.num_hvps, spectrum.max, spectrum.min, spectrum
    if key == "eigenthings":
        top = _eigenthings(model, batch, "LA", steps[0])
        if not bottom_k:
            return top[1], top[0], None, None
        bottom = _eigenthings(model, batch, "SA", steps[1])
        return top[1] + bottom[1], top[0], bottom[0], None
    if not bottom_k:
        value, products = _pyhessian_top(model, batch, device, 1e-3)
        return products, value, None, None
    spectrum = hessian_eigenvalues(model, batch, method="pyhessian", tol=1e-3)
    return spectrum.num_hvps, spectrum.max, spectrum.min, None


WARM_KEYS = {"warm": "ours warm", "cold": "ours cold", "eigenthings": "eigenthings",
             "pyhessian": "pyhessian"}  # fmt: skip


def bench_warm(name, device, measurements, every, peer_max_iter):
    """Along ``(measurements - 1) * every`` SGD steps, one measurement every ``every`` steps."""
    model, batch = MODELS[name](device)
    generator = torch.Generator().manual_seed(1)
    cases = {"lambda_max": 0, "both ends": 1}
    # per case and tool: products and seconds after the first measurement, largest error
    totals = {case: {key: [0, 0.0, 0.0] for key in WARM_KEYS} for case in cases}
    previous = dict.fromkeys(cases)
    # the max_iter eigenthings' own test wanted at the start, kept along the run
    steps = (
        _eigenthings_steps(model, batch, "LA", peer_max_iter),
        _eigenthings_steps(model, batch, "SA", peer_max_iter),
    )
    for index in range(measurements):
        if index:
            _sgd_steps(model, batch, every, generator)
        largest, smallest = _reference(model, batch)
        scale = max(abs(largest), abs(smallest))
        for case, bottom_k in cases.items():
            for key in WARM_KEYS:
                synchronize(device)
                start = time.perf_counter()
                products, top, bottom, spectrum = _measurement(
                    key, model, batch, device, bottom_k, previous[case], steps
                )
                synchronize(device)
                seconds = time.perf_counter() - start
                error = abs(top - largest) / scale
                if bottom_k:
                    error = max(error, abs(bottom - smallest) / scale)
                total = totals[case][key]
                if index:
                    total[0] += products
                    total[1] += seconds
                total[2] = max(total[2], error)
                if key == "warm":
                    previous[case] = spectrum
    rows = []
    for case in cases:
        row = {"model": name, "case": case, "measurements": measurements}
        for key, label in WARM_KEYS.items():
            products, seconds, worst = totals[case][key]
            row[f"{label}: products after the first, s, max error"] = (
                f"{products / (measurements - 1):.1f}, {seconds:.3g}, {worst:.1e}"
            )
        warm_seconds = totals[case]["warm"][1]
        row["eigenthings/ours warm"] = totals[case]["eigenthings"][1] / warm_seconds
        row["pyhessian/ours warm"] = totals[case]["pyhessian"][1] / warm_seconds
        rows.append(row)
    return rows


def bench_weighting(device):
    """hessian-eigenthings on uneven batches (448 + 64) against the whole batch of 512."""
    import hessian_eigenthings as he

    model, (x, y) = _mlp_269k(device)
    largest, _ = _reference(model, (x, y))
    split = [(x[:448], y[:448]), (x[448:], y[448:])]
    operator = he.HessianOperator(model, split, _loss)
    theirs = float(he.lanczos(operator, k=1, which="LA", max_iter=40, seed=0).eigenvalues[0])
    ours = hessian_eigenvalues(model, split, bottom_k=0).max
    return [{
        "model": "mlp_269k, batches 448 + 64",
        "lambda_max (whole batch, reference)": largest,
        "eigenthings (40 steps)": theirs,
        "eigenthings rel. error": abs(theirs - largest) / abs(largest),
        "ours (size-weighted)": ours,
        "ours rel. error": abs(ours - largest) / abs(largest),
    }]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--peer-max-iter", type=int, default=100)
    parser.add_argument("--measurements", type=int, default=6)
    parser.add_argument("--every", type=int, default=25, help="SGD steps between measurements")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cold", "warm", "weighting"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = describe_machine(device)
    now = datetime.datetime.now(datetime.UTC)
    print(f"# Peers: ours vs hessian-eigenthings vs pyhessian, {now:%Y-%m-%d %H:%M} UTC")
    print(f"# {machine}, torch {torch.__version__}")
    print(f"# python {' '.join(sys.argv)}")
    print("# error: |value - reference| / max|lambda|; '*': the peer's own test never held")
    if "cold" not in args.skip:
        rows = [
            row
            for name in args.models
            for row in bench_cold(name, device, args.repeats, args.peer_max_iter)
        ]
        print_table("Cold, each stopping by its own convergence test", rows)
    if "warm" not in args.skip:
        rows = [
            row
            for name in args.models
            for row in bench_warm(name, device, args.measurements, args.every, args.peer_max_iter)
        ]
        print_table(
            f"Along SGD (batch 64, lr 0.05, momentum 0.9), a measurement every {args.every} steps: "
            "ours warm (start=previous) and cold, the peers cold",
            rows,
        )
    if "weighting" not in args.skip:
        print_table(
            "Uneven batches: equal weights (eigenthings) vs size weights (ours)",
            bench_weighting(device),
        )


if __name__ == "__main__":
    main()
