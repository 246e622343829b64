"""Hessian-vector products in blocks of k vectors against k sequential products.

On the recipes' models (``benchmarks/_models.py``) with a Hessian batch of ``--samples`` samples,
each way of computing ``H V`` for a block ``V`` of k = 2, 4, 8 random vectors is timed against k
sequential products of :class:`~lightning_shortcut.hessian.operator.HessianOperator` (double
backward on the cached first-order graph, what every solver uses today):

- ``batched``: ``torch.autograd.grad(..., is_grads_batched=True)`` on the same cached graph (one
  vmapped second backward for the block);
- ``func``: ``torch.func.vmap`` over forward-over-reverse products (``jvp`` of ``grad`` of the loss
  as a function of the parameters), which rebuilds the forward and backward for each block;
- ``func_seq``: the same ``torch.func`` product, one vector at a time (the cost of the functional
  form itself, without the vmap).

Printed per model and k: the wall time per vector of each, the ratio ``sequential / block`` (above
1: the block is cheaper per vector) and the largest relative difference between the block's
products and the sequential ones (``max |block - sequential| / max |sequential|`` over the block).
Then what a block costs in products: scipy's LOBPCG with blocks of 1, 2, 4, 8 (products through
``batched``) on ``digits_mlp``, iterations raised until its ``lambda_max`` is within 1e-3.

What it shows (one thread of a shared 2-core CPU, torch 2.14.1, November 2026; timings there move by
up to 2x between runs, hence the interleaved rounds): a block pays only where a product is dominated
by per-call overhead. ``batched`` is 1.5-2.0x cheaper per vector on ``digits_mlp`` (35k
parameters, 256 samples) at k = 4 and 8 but 0.8-1.2x on 512 samples, 0.8-1.2x on ``mnist_mlp``
(182k, 256 or 512 samples) and 0.9-1.1x on ``cifar_conv`` (compute-bound convolutions); ``func``
is 0.5-1.2x (it rebuilds the forward and backward for every block). All agree with the sequential
products to float32 rounding (relative differences below 2e-6). And a block needs more products
for the same answer: LOBPCG reached 1e-3 on ``digits_mlp``'s ``lambda_max`` with 8 products in
blocks of 1, 16 of 2, 44 of 4 and 64 of 8, more than the per-vector saving gives back. So no block eigensolver is registered: on the CPU a block method
does not win in wall time at equal accuracy. On a GPU, where small models are launch-bound, the
per-vector ratio may be larger; not measured (no GPU was lent).

Run: ``python benchmarks/bench_block_products.py [--threads 1] [--repeats 5] [--samples 256]``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

sys.path.insert(0, str(Path(__file__).parent))
from _models import (
    RECIPE_MODELS,
    describe_machine,
    median_time,
    print_table,
    recipe_model,
    synchronize,
)

from lightning_shortcut.hessian import hessian_eigenvalues
from lightning_shortcut.hessian.context import hessian_context
from lightning_shortcut.hessian.operator import HessianOperator, cross_entropy_loss
from lightning_shortcut.hessian.settings import HessianSettings


def _interleaved(methods, device, repeats):
    """Median wall time of each method and median ratio to the first, timed in rotation.

    Each round times every method once, in an order that rotates between rounds, so the drift of a
    shared machine's clock falls on all of them alike; a ratio is taken within a round.
    """
    names = list(methods)
    results = {name: fn() for name, fn in methods.items()}  # warm-up, and the products to compare
    times = {name: [] for name in names}
    for round_ in range(repeats):
        rotation = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in rotation:
            synchronize(device)
            start = time.perf_counter()
            methods[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    first = names[0]
    medians = {name: statistics.median(times[name]) for name in names}
    ratios = {
        name: statistics.median(a / b for a, b in zip(times[first], times[name], strict=True))
        for name in names[1:]
    }
    return medians, ratios, results


def _batched_products(operator: HessianOperator, block: torch.Tensor) -> torch.Tensor:
    """``H V`` for the rows of ``block`` in one vmapped backward through the cached graph."""
    grads = operator._cached
    chunks = torch.split(block, operator.numels, dim=1)
    products = torch.autograd.grad(
        grads,
        operator.params,
        grad_outputs=[
            c.reshape(block.shape[0], *s) for c, s in zip(chunks, operator.shapes, strict=True)
        ],
        retain_graph=True,
        is_grads_batched=True,
    )
    return torch.cat([p.reshape(block.shape[0], -1) for p in products], dim=1)


def _functional_product(model, batch, names, params):
    """``v -> H v`` through ``torch.func`` (forward-over-reverse), vectors as flat tensors."""
    inputs, targets = batch
    shapes = [p.shape for p in params]
    numels = [p.numel() for p in params]
    buffers = dict(model.named_buffers())

    def loss(values):
        state = {**dict(zip(names, values, strict=True)), **buffers}
        logits = functional_call(model, state, (inputs,))
        return torch.nn.functional.cross_entropy(logits, targets)

    def product(vector):
        tangents = tuple(
            c.reshape(s) for c, s in zip(torch.split(vector, numels), shapes, strict=True)
        )
        _, out = jvp(grad(loss), (tuple(params),), (tangents,))
        return torch.cat([o.reshape(-1) for o in out])

    return product


def bench_model(name, device, repeats, samples, sizes):
    model, _ = recipe_model(name, device)
    shape = RECIPE_MODELS[name][0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *shape, generator=generator).to(device)
    batch = (x, torch.randint(0, 10, (samples,), generator=generator).to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    rows = []
    with hessian_context(model, HessianSettings()):
        operator = HessianOperator(model, [batch], cross_entropy_loss, params)
        generator = torch.Generator().manual_seed(0)
        full = torch.randn(max(sizes), operator.dim, generator=generator).to(device)
        operator(full[0])  # builds the first-order graph once, as a solver's first product does
        functional = _functional_product(model, batch, names, [p.detach() for p in params])
        batched_functional = vmap(functional)
        for k in sizes:
            block = full[:k]
            methods = {
                "seq": lambda b=block: torch.stack([operator(v) for v in b]),
                "batched": lambda b=block: _batched_products(operator, b),
                "func": lambda b=block: batched_functional(b),
                "func_seq": lambda b=block: torch.stack([functional(v) for v in b]),
            }
            medians, ratios, products = _interleaved(methods, device, repeats)
            sequential = products["seq"]
            row = {"model": name, "k": k, "seq_ms/vec": 1e3 * medians["seq"] / k}
            for method in list(methods)[1:]:
                difference = (products[method] - sequential).abs().max() / sequential.abs().max()
                row[f"{method}_ms/vec"] = 1e3 * medians[method] / k
                row[f"seq/{method}"] = ratios[method]
                row[f"{method}_rel_diff"] = float(difference)
            rows.append(row)
        operator.free_graph()
    return rows


def bench_lobpcg(name, device, samples, blocks, target=1e-3):
    """LOBPCG (scipy) on ``H`` with blocks of ``b`` vectors, products as blocks (``batched``), until
    its ``lambda_max`` is within ``target`` of a tight reference: what a block costs in products.

    LOBPCG's iterations are raised until the true error meets ``target`` (its own stopping test
    is left out: this measures what the block buys, not when to stop); our Lanczos at its default
    ``tol=1e-3`` is the row above them.
    """
    from scipy.sparse.linalg import LinearOperator as ScipyOperator
    from scipy.sparse.linalg import lobpcg

    model, _ = recipe_model(name, device)
    shape = RECIPE_MODELS[name][0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *shape, generator=generator).to(device)
    batch = (x, torch.randint(0, 10, (samples,), generator=generator).to(device))
    reference = hessian_eigenvalues(
        model, batch, bottom_k=0, tol=1e-6, max_iter=500, solver_options={"max_basis": 100}
    ).max
    seconds, ours = median_time(lambda: hessian_eigenvalues(model, batch, bottom_k=0), device)
    rows = [{
        "model": name, "method": "ours (Lanczos, tol=1e-3)", "products": ours.num_hvps,
        "s": seconds, "rel_error": abs(ours.max - reference) / abs(reference),
    }]  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    with hessian_context(model, HessianSettings()):
        operator = HessianOperator(model, [batch], cross_entropy_loss, params)
        operator(torch.zeros(operator.dim, device=device))  # the cached first-order graph
        count = [0]

        def matmat(block):
            vectors = torch.from_numpy(np.ascontiguousarray(block.T)).to(operator.like)
            count[0] += vectors.shape[0]
            return _batched_products(operator, vectors).double().cpu().numpy().T

        def matvec(vector):
            return matmat(vector.reshape(-1, 1)).reshape(vector.shape)

        hessian = ScipyOperator(
            (operator.dim, operator.dim), matvec=matvec, matmat=matmat, dtype=np.float64
        )
        for size in blocks:
            for iterations in (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50):
                start = np.random.default_rng(0).standard_normal((operator.dim, size))

                def solve(s=start, i=iterations):
                    count[0] = 0
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "not reaching the requested tolerance"
                        return lobpcg(hessian, s, largest=True, maxiter=i, tol=1e-12)[0]

                seconds, values = median_time(solve, device)
                error = abs(float(values.max()) - reference) / abs(reference)
                if error <= target:
                    break
            rows.append({
                "model": name, "method": f"LOBPCG, block of {size}",
                "products": count[0], "s": seconds, "rel_error": error,
            })  # fmt: skip
        operator.free_graph()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256, help="Hessian batch size")
    # a product of cifar_conv takes ~40 s on 256 samples on one busy core: fewer by default there
    parser.add_argument("--conv-samples", type=int, default=32, help="cifar_conv's batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--models", nargs="*", default=list(RECIPE_MODELS))
    parser.add_argument("--lobpcg-models", nargs="*", default=["digits_mlp"])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = describe_machine(device)
    print(
        f"# Block Hessian-vector products, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"# {machine}, torch {torch.__version__}")
    print(f"# python {' '.join(sys.argv)}")
    for name in args.models:
        samples = args.conv_samples if name == "cifar_conv" else args.samples
        rows = bench_model(name, device, args.repeats, samples, args.sizes)
        print_table(f"{name}, {samples} samples: per-vector time, block vs sequential", rows)

    rows = [
        row
        for name in args.lobpcg_models
        for row in bench_lobpcg(name, device, args.samples, args.blocks)
    ]
    if rows:
        print_table(
            f"lambda_max to 1e-3 ({args.samples} samples): LOBPCG's products and time by block size",
            rows,
        )


if __name__ == "__main__":
    main()
