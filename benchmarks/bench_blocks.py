"""What a per-block measurement costs, against one whole-model measurement and one per block.

On the recipes' models (``benchmarks/_models.py``, at PyTorch's default init) with
``blocks="residual"`` (one block per residual unit: 16 on the MLPs, 8 on ``cifar_conv``), three ways
are timed, each at the default ``tol=1e-3`` with ``top_k = bottom_k = 1``:

- ``whole``: one whole-model measurement, ``hessian_eigenvalues(params="residual")`` (the Hessian
  over all the units at once; it says nothing per block, and is the cost a monitor already pays);
- ``per_block``: one whole-model measurement per block, ``hessian_eigenvalues(params=block)`` for
  every block in turn (what a user does without ``block_eigenvalues``);
- ``blocks``: ``block_eigenvalues``: the registered solver on each block's view of one operator
  that keeps every batch's first-order graph.

Each on the Hessian batch as one batch and as ``--chunks`` batches (how the monitor hands over a
Hessian batch larger than its ``chunk_size``: without a kept first-order graph every product makes
a forward and backward per batch, which a per-block measurement makes once for all blocks).
Printed per model and layout: seconds, Hessian-vector products (block products for ``blocks``)
and how many times faster than ``per_block`` each way is. The per-block values agree (printed: the
largest relative difference of ``blocks``' ``lambda_max`` from ``per_block``'s).

Then one round of products on its own: the ``B`` products ``H_bb v_b`` through the blocks' views
(restricted double backwards) against ``B`` whole products ``H v``, in milliseconds.

What it shows (one thread of a shared 2-core CPU, torch 2.14.1, December 2026; the tables are in
docs/blocks.md): ``blocks`` is 1.06-1.12 times faster than ``per_block`` on one batch and 2.7-3.3
times on 4 batches (the threaded lockstep it replaced: 0.92 and 1.85-2.19 in the same conditions).
Against ``whole`` a per-block measurement costs 2.6-4.9 times more on one batch. No GPU was lent:
``--device cuda`` is unmeasured.

Run: ``python benchmarks/bench_blocks.py [--threads 1] [--repeats 3] [--models digits_mlp]``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _models import RECIPE_MODELS, describe_machine, print_table, recipe_model, synchronize

from lightning_shortcut.hessian import block_eigenvalues, hessian_eigenvalues, resolve_blocks
from lightning_shortcut.hessian.context import hessian_operator
from lightning_shortcut.hessian.settings import HessianSettings


def _timed(fn, device):
    """``(seconds, result)`` of one call (the callers time the ways in rotation)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _per_block(model, data, blocks):
    spectra = {
        name: hessian_eigenvalues(model, data, params=params) for name, params in blocks.items()
    }
    return {
        "max": {name: s.max for name, s in spectra.items()},
        "products": sum(s.num_hvps for s in spectra.values()),
    }


def bench_measurements(name, device, repeats, samples, chunks):
    model, (x, y) = recipe_model(name, device)
    x, y = x[:samples], y[:samples]
    blocks = resolve_blocks(model, "residual")
    layouts = {"1 batch": (x, y)}
    if chunks > 1:
        size = -(-samples // chunks)
        layouts[f"{chunks} batches"] = [
            (x[i : i + size], y[i : i + size]) for i in range(0, samples, size)
        ]
    rows = []
    for layout, data in layouts.items():
        ways = {
            "whole": lambda d=data: hessian_eigenvalues(model, d, params="residual"),
            "per_block": lambda d=data: _per_block(model, d, blocks),
            "blocks": lambda d=data: block_eigenvalues(model, d),
        }
        times = {way: [] for way in ways}
        results = {}
        for round_ in range(repeats):  # in rotation, so a busy machine's drift falls on all
            order = list(ways)[round_ % len(ways) :] + list(ways)[: round_ % len(ways)]
            for way in order:
                seconds, results[way] = _timed(ways[way], device)
                times[way].append(seconds)
        reference = results["per_block"]["max"]
        for way in ways:
            result = results[way]
            seconds = statistics.median(times[way])
            row = {"model": name, "data": layout, "blocks": len(blocks), "way": way, "s": seconds}
            if way == "whole":
                row["products"] = result.num_hvps
            elif way == "per_block":
                row["products"] = result["products"]
            else:
                row["products"] = result.num_hvps
                row["max_rel_diff"] = max(
                    abs(result.max[b] - reference[b]) / abs(reference[b]) for b in blocks
                )
                row["converged"] = str(result.all_converged)
            row["per_block/way"] = statistics.median(times["per_block"]) / seconds
            rows.append(row)
    return rows


def bench_step(name, device, repeats, samples):
    """One round of products: each block's through its view, against whole products."""
    model, (x, y) = recipe_model(name, device)
    x, y = x[:samples], y[:samples]
    blocks = list(resolve_blocks(model, "residual").values())
    params = [param for block in blocks for param in block]
    settings = HessianSettings(params=params)
    with hessian_operator(model, (x, y), None, settings) as operator:
        views = [operator.view(block) for block in blocks]
        generator = torch.Generator().manual_seed(0)
        vectors = [
            torch.randn(view.dim, generator=generator, dtype=torch.float64).to(operator.like)
            for view in views
        ]
        padded = operator.like.new_zeros(operator.dim)
        ways = {
            "views": lambda: [view(vector) for view, vector in zip(views, vectors, strict=True)],
            # B whole products H v, as B whole-model measurements each pay per round
            "whole_products": lambda: [operator(padded) for _ in blocks],
        }
        for fn in ways.values():
            fn()  # builds the kept first-order graph
        times = {way: [] for way in ways}
        for _ in range(repeats):
            for way, fn in ways.items():
                times[way].append(_timed(fn, device)[0])
    row = {"model": name, "samples": samples, "blocks": len(blocks)}
    for way in ways:
        row[f"{way}_ms"] = 1e3 * statistics.median(times[way])
    row["whole/views"] = row["whole_products_ms"] / row["views_ms"]
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256, help="Hessian batch size of the MLPs")
    # a product of cifar_conv on the CPU takes about 150 times one of digits_mlp
    parser.add_argument("--conv-samples", type=int, default=16, help="cifar_conv's batch size")
    parser.add_argument("--chunks", type=int, default=4, help="batches of the second layout")
    parser.add_argument("--models", nargs="*", default=["digits_mlp", "mnist_mlp"])
    args = parser.parse_args()
    unknown = set(args.models) - set(RECIPE_MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {list(RECIPE_MODELS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# Per-block measurements, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {describe_machine(device)}, torch {torch.__version__}")
    print(f"# python {' '.join(sys.argv)}")
    for name in args.models:
        samples = args.conv_samples if name == "cifar_conv" else args.samples
        print_table(
            f"{name}, {samples} samples: one round of block products (ms)",
            bench_step(name, device, args.repeats, samples),
        )
        print_table(
            f"{name}, {samples} samples: a measurement of every block (tol=1e-3)",
            bench_measurements(name, device, args.repeats, samples, args.chunks),
        )


if __name__ == "__main__":
    main()
