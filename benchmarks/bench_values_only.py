"""Products of the values-only Lanczos pass against the basis solver, on three held-out models.

Models (none of them tuned against; float32; built here): ``tanh_digits`` (tanh MLP 64-96-64-10 on
512 ``digits`` images, 13k parameters), ``cnn_digits`` (two 3x3 convolutions, 8 and 16 channels,
and a linear head on 512 ``digits`` images, 12k) and ``relu_784`` (ReLU MLP 784-300-100-10 on 256
random inputs, 267k), each at PyTorch's default init, and ``tanh_digits`` trained (300 full-batch
steps of SGD with momentum, lr 0.1).

For each: the products of a default ``hessian_eigenvalues`` call (``tol=1e-3``; the values-only
pass) and of the same call with ``vectors=True`` (the 16-vector basis, what every call ran
before), both ends and the bottom alone, with the error of each value against scipy's ``eigsh``
(``tol=1e-10`` on the same float32 products) over ``tol * max|lambda|``, and the products at which
the pass's bounds first met ``tol`` from the 20-product floor on (the settled-ends safeguard adds the
rest); the products of
``stderr=True`` both ways (the pass run twice against the basis, and the two products of the
standard errors); the smallest eigenvalue of the trained model at ``tol=1e-4`` against shifted
power iteration; and the products at every ``tol`` from 0.3 to 1e-4 (a looser ``tol`` should never
cost more). Then the issue's goals.

Run: ``python benchmarks/bench_values_only.py [--threads 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator as ScipyOperator
from scipy.sparse.linalg import eigsh
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import describe_machine, print_table

from lightning_shortcut.hessian import hessian_eigenvalues
from lightning_shortcut.hessian.context import hessian_operator
from lightning_shortcut.hessian.operator import cross_entropy_loss
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.solvers._stopping import MIN_PRODUCTS, StoppingRule

TOL = 1e-3
TOLS = [0.3, 0.1, 1e-2, 1e-3, 1e-4]


def _digits(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.data[:count], dtype=torch.float32) / 16.0
    images = (images - images.mean()) / images.std()
    return images.view(-1, 1, 8, 8), torch.tensor(digits.target[:count])


def held_out(name: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    if name.startswith("tanh_digits"):
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 64), nn.Tanh(),
            nn.Linear(64, 10),
        )  # fmt: skip
        batch = _digits(512)
        if name.endswith("trained"):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            for _ in range(300):
                optimizer.zero_grad()
                cross_entropy_loss(model, batch).backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return model, batch
    if name == "cnn_digits":
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
            nn.Linear(16 * 4 * 4, 10),
        )  # fmt: skip
        return model, _digits(512)
    generator = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    inputs = torch.randn(256, 784, generator=generator)
    return model, (inputs, torch.randint(0, 10, (256,), generator=generator))


def eigsh_extremes(operator) -> tuple[float, float]:
    """scipy's ``eigsh`` (ARPACK) at ``tol=1e-10`` on ``operator``'s products, in float64 on its
    side: the largest and the smallest eigenvalue."""

    def product(vector: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(np.asarray(vector).reshape(-1)).to(operator.like)
        return operator(flat).double().numpy()

    scipy_operator = ScipyOperator((operator.dim, operator.dim), matvec=product, dtype=np.float64)
    top = eigsh(scipy_operator, k=1, which="LA", tol=1e-10, ncv=40)[0][0]
    bottom = eigsh(scipy_operator, k=1, which="SA", tol=1e-10, ncv=40)[0][0]
    return float(top), float(bottom)


def reference(model: nn.Module, batch) -> tuple[float, float]:
    """:func:`eigsh_extremes` of the model's Hessian on ``batch``."""
    with hessian_operator(model, batch, None, HessianSettings()) as operator:
        return eigsh_extremes(operator)


def bound_met(model: nn.Module, batch, top_k: int) -> int | None:
    """The products at which the values pass's error bounds first meet ``tol`` from the floor on:
    where it would stop without the settled-ends safeguard (which then adds the rest)."""
    first: list[int] = []
    assess = StoppingRule.assess

    def recording(rule: StoppingRule, check):
        answer = assess(rule, check)
        threshold = rule.tol * answer.scale
        errors = [answer.bottom_error] + ([answer.top_error] if rule.ends.top else [])
        if check.products >= MIN_PRODUCTS and max(errors) <= threshold and not first:
            first.append(check.products)
        return answer

    StoppingRule.assess = recording
    try:
        hessian_eigenvalues(model, batch, top_k=top_k, tol=TOL)
    finally:
        StoppingRule.assess = assess
    return first[0] if first else None


def compare(name: str) -> list[dict]:
    model, batch = held_out(name)
    params = sum(p.numel() for p in model.parameters())
    top, bottom = reference(model, batch)
    threshold = TOL * max(abs(top), abs(bottom))
    rows = []
    for ends, top_k in (("both", 1), ("bottom", 0)):
        row = {"model": f"{name} ({params / 1e3:.0f}k)", "ends": ends}
        for label, vectors in (("values", False), ("basis", True)):
            spectrum = hessian_eigenvalues(model, batch, top_k=top_k, tol=TOL, vectors=vectors)
            errors = [abs(spectrum.min - bottom)] + ([abs(spectrum.max - top)] if top_k else [])
            row[f"{label} products"] = spectrum.num_hvps
            row[f"{label} error / tol"] = max(errors) / threshold
        row["ratio"] = row["values products"] / row["basis products"]
        row["values: bounds met at"] = bound_met(model, batch, top_k)
        rows.append(row)
    stderr = {"model": rows[0]["model"], "ends": "both, stderr=True"}
    for label, vectors in (("values", False), ("basis", True)):
        stderr[f"{label} products"] = hessian_eigenvalues(
            model, batch, tol=TOL, stderr=True, vectors=vectors
        ).num_hvps
    stderr["ratio"] = stderr["values products"] / stderr["basis products"]
    rows.append(stderr)
    return rows


def monotone(name: str) -> dict:
    model, batch = held_out(name)
    row = {"model": name}
    for tol in TOLS:
        both = hessian_eigenvalues(model, batch, tol=tol).num_hvps
        alone = hessian_eigenvalues(model, batch, bottom_k=0, tol=tol).num_hvps
        row[f"tol={tol:g}"] = f"{both} / {alone}"
    return row


def bottom_against_power() -> dict:
    model, batch = held_out("tanh_digits_trained")
    _, bottom = reference(model, batch)
    row = {"model": "tanh_digits_trained", "lambda_min": bottom}
    for method in ("lanczos", "power"):
        spectrum = hessian_eigenvalues(
            model, batch, method=method, top_k=0, tol=1e-4, max_iter=20000
        )
        row[f"{method} products"] = spectrum.num_hvps
        row[f"{method} error"] = abs(spectrum.min - bottom)
    row["power / lanczos"] = row["power products"] / row["lanczos products"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# Values-only Lanczos against the basis, {date.today()}, {describe_machine(torch.device('cpu'))}"
    )
    rows = [row for name in ("tanh_digits", "cnn_digits", "relu_784") for row in compare(name)]
    print_table(f"Products of a call at tol={TOL}: values-only pass against the basis", rows)
    power = bottom_against_power()
    print_table("The smallest eigenvalue of the trained tanh MLP at tol=1e-4", [power])
    tols = [
        monotone(name) for name in ("tanh_digits", "tanh_digits_trained", "cnn_digits", "relu_784")
    ]
    print_table("Products at each tol (both ends / the top alone)", tols)
    print("\n## Goals\n")
    for row in rows:
        goal = {"both": 0.9, "bottom": 0.75}.get(row["ends"])
        if goal is not None:
            print(
                f"- {row['model']}, {row['ends']}: {row['ratio']:.2f}x the basis' products "
                f"(goal <= {goal}), errors {row['values error / tol']:.2g} tol "
                f"({'met' if row['ratio'] <= goal and row['values error / tol'] <= 1 else 'NOT met'})"
            )
    ratio = power["lanczos products"] / power["power products"]
    print(
        f"- trained tanh MLP, lambda_min at tol=1e-4: {ratio:.3f} of shifted power's products (goal <= 0.1)"
    )
    for row in tols:
        counts = [tuple(int(n) for n in row[f"tol={tol:g}"].split(" / ")) for tol in TOLS]
        pairs = itertools.pairwise(counts)
        ok = all(x <= y for a, b in pairs for x, y in zip(a, b, strict=True))
        print(f"- {row['model']}: a looser tol never costs more: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
