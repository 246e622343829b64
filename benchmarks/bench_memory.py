"""Extra peak memory of a Hessian measurement over a training footprint, with its products.

For each model, every configuration runs in a fresh process that builds the model and its batch,
warms up (a forward and a backward, gradients then dropped), and measures the peak memory of the
configuration *over that baseline* (the weights and the batch are not counted), except
``footprint``:

- ``footprint``: the peak of a fresh process that builds the model and its batch and takes five
  steps of SGD with momentum 0.9, over the process once its imports are done (weights, batch,
  gradients, momentum, activations and the runtime's first-use costs; the imports themselves,
  780 MiB of resident libraries with this CUDA build of torch, are not counted): the goals' measure
  ("x footprint");
- ``training``: the five steps alone over the warmed-up baseline (gradients, momentum buffers,
  activations; "x training", the stricter ratio);
- ``floor``: the first-order graph of the batch and 20 products of a plain power iteration holding
  one vector (nothing else): what any method built on these products needs;
- ``values``: a default ``hessian_eigenvalues(model, batch)`` (top and bottom, ``tol=1e-3``): the
  values-only pass, three vectors;
- ``values, stderr``: the same with ``stderr=True``: the pass run twice, the second summing the two
  extreme eigenvectors, then the standard errors;
- ``max_basis=b``: the same call with ``vectors=True`` and ``solver_options={"max_basis": b}``: the
  basis solver, what every call ran before the values-only pass; the default basis is marked;
- ``monitor``: the monitor's default measurements (``tol=1e-2``, ``max_iter=100``,
  ``compute_spectrum`` with its settings, ``vectors=False``): with the standard errors (one in
  10: the values-only pass run twice) and without (the other nine), and ``monitor, basis``: a
  measurement with the standard errors on the 16-vector basis, as every one was before;
- on CUDA also ``max_basis=b, host_basis``: the basis kept in host memory, and ``values,
  host_basis``.

On the CPU the peak is the process's peak resident memory (``VmHWM``, reset through
``/proc/self/clear_refs`` after the baseline), with glibc's mmap threshold fixed at 64 KiB so that
every freed buffer goes back to the system and resident memory follows the live tensors; on CUDA it
is ``torch.cuda.max_memory_allocated`` over the allocated baseline. Columns: the extra peak in MiB,
in parameter vectors (the extra over the size of the parameters in the model's dtype), as a multiple
of training's, the products, and the largest error of the two values over ``tol * max|lambda|`` (the
row's ``tol``) against a reference at ``tol=1e-6``.

Models (``benchmarks/_models.py``): ``wide_mlp`` (ReLU 1024-2048-2048-10, 6.3M parameters, 256
samples), ``transformer`` (Lightning's demo Transformer, 5.8M parameters, 16 sequences of 32 tokens)
and ``cifar_conv`` (the CIFAR recipe's conv net, 149k parameters, 64 images: its activations, not its
parameters, dominate).

Run: ``python benchmarks/bench_memory.py [--threads 2] [--models ...] [--bases 6 10 16 20]``
(default ``--bases 16``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _models import bench_model, describe_machine, print_table

from lightning_shortcut.hessian import hessian_eigenvalues
from lightning_shortcut.hessian.context import hessian_operator
from lightning_shortcut.hessian.operator import cross_entropy_loss
from lightning_shortcut.hessian.settings import HessianSettings
from lightning_shortcut.hessian.solvers import DEFAULT_MAX_BASIS
from lightning_shortcut.hessian.spectrum import compute_spectrum

MODELS = ["wide_mlp", "transformer", "cifar_conv"]
TOL = 1e-3
TRAINING_STEPS = 5
FLOOR_PRODUCTS = 20


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


class _Peak:
    """The peak memory of a block over the memory at its start: the allocator's on CUDA, the
    resident memory's (``VmHWM`` reset at the start) on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> _Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # the high-water mark starts again from the resident memory
            self.base = _status("VmRSS")
        return self

    def __exit__(self, *_) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.extra = _status("VmHWM") - self.base


def _train(model, batch) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(TRAINING_STEPS):
        cross_entropy_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {}


def _floor(model, batch) -> dict:
    """Power iteration holding one vector besides the graph and the product."""
    generator = torch.Generator().manual_seed(0)
    with hessian_operator(model, batch, None, HessianSettings()) as operator:
        vector = operator.random_vector(generator)
        vector /= vector.norm()
        for _ in range(FLOOR_PRODUCTS):
            product = operator(vector)
            norm = product.norm()
            vector = product.div_(norm)  # the previous vector is freed
        return {"max": float(norm), "products": operator.num_products}


def _spectrum(model, batch, settings: dict) -> dict:
    spectrum = compute_spectrum(model, batch, None, HessianSettings(**settings))
    return {"max": spectrum.max, "min": spectrum.min, "products": spectrum.num_hvps}


def child(name: str, configuration: str, options: dict, device: torch.device) -> dict:
    """Measure one configuration in this (fresh) process."""
    model, batch = bench_model(name, device)
    cross_entropy_loss(model, batch).backward()  # kernels, threads and allocator warmed up
    for param in model.parameters():
        param.grad = None
    run = {"training": _train, "floor": _floor}.get(configuration)
    with _Peak(device) as peak:
        answer = run(model, batch) if run else _spectrum(model, batch, options)
    return {**answer, "extra": peak.extra}


def footprint(name: str, device: torch.device) -> dict:
    """The peak of a fresh process that builds the model and its batch and takes five training
    steps, over the process once its imports are done (``imports``: their resident memory, the
    interpreter and torch's libraries, not counted)."""
    imports = _status("VmRSS")
    with _Peak(device) as peak:
        _train(*bench_model(name, device))
    return {"extra": peak.extra, "imports": imports}


def _measure(name, configuration, options, device, threads) -> dict:
    """Run :func:`child` in a fresh process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    arguments = [name, configuration, json.dumps(options), str(device), str(threads)]
    output = subprocess.run(
        [sys.executable, __file__, "--child", *arguments],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if output.returncode:
        raise RuntimeError(f"{name} {configuration} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def _reference(name: str, device: torch.device) -> tuple[float, float]:
    model, batch = bench_model(name, device)
    spectrum = hessian_eigenvalues(
        model, batch, tol=1e-6, max_iter=600, solver_options={"max_basis": 100}, vectors=True
    )
    return spectrum.max, spectrum.min


def bench(name: str, device: torch.device, threads: int, bases: list[int]) -> list[dict]:
    model, _ = bench_model(name, torch.device("cpu"))
    params = sum(p.numel() for p in model.parameters())
    vector = params * next(model.parameters()).element_size()
    largest, smallest = _reference(name, device)
    threshold = TOL * max(abs(largest), abs(smallest))
    cuda = device.type == "cuda"
    monitor = {"tol": 1e-2, "max_iter": 100, "stderr": "cold", "vectors": False}
    configurations = [
        ("footprint", {}),
        ("training", {}),
        ("floor", {}),
        ("values", {"tol": TOL, "vectors": False}),
        ("values, stderr", {"tol": TOL, "vectors": False, "stderr": True}),
    ]
    if cuda:
        host = {"tol": TOL, "vectors": False, "solver_options": {"host_basis": True}}
        configurations.append(("values, host_basis", host))
    for basis in bases:
        options = {"tol": TOL, "vectors": True, "solver_options": {"max_basis": basis}}
        configurations.append((f"max_basis={basis}", options))
        if cuda:
            host = {**options, "solver_options": {"max_basis": basis, "host_basis": True}}
            configurations.append((f"max_basis={basis}, host_basis", host))
    configurations += [
        ("monitor, stderr (1 in 10)", monitor),
        ("monitor, values (9 in 10)", {**monitor, "stderr": False}),
        ("monitor, basis (before)", {**monitor, "vectors": None}),
    ]
    rows, training, whole = [], None, None
    for configuration, options in configurations:
        kind = configuration if configuration in ("footprint", "training", "floor") else "spectrum"
        try:
            answer = _measure(name, kind, options, device, threads)
        except RuntimeError as error:  # the sampling error cannot chunk every batch
            print(f"{name} {configuration}: {str(error).splitlines()[-1]}", file=sys.stderr)
            continue
        extra = answer["extra"]
        training = extra if configuration == "training" else training
        whole = extra if configuration == "footprint" else whole
        basis = options.get("solver_options", {}).get("max_basis")
        if configuration == "footprint":
            print(f"{name}: imports {answer['imports'] / 2**20:.0f} MiB", file=sys.stderr)
        row = {
            "model": f"{name} ({params / 1e6:.2g}M)",
            "configuration": configuration + (" (default)" if basis == DEFAULT_MAX_BASIS else ""),
            "extra MiB": extra / 2**20,
            "vectors": extra / vector,
            "x footprint": extra / whole,
            "x training": extra / training if training else "",
            "products": answer.get("products", ""),
        }
        if "min" in answer:
            errors = abs(answer["max"] - largest), abs(answer["min"] - smallest)
            row["error / tol"] = max(errors) / (threshold * options["tol"] / TOL)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--bases", nargs="+", type=int, default=[DEFAULT_MAX_BASIS])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, configuration, options, device, threads = args.child
        torch.set_num_threads(int(threads))
        device = torch.device(device)
        answer = (
            footprint(name, device)
            if configuration == "footprint"
            else child(name, configuration, json.loads(options), device)
        )
        print(json.dumps(answer))
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# Extra peak memory over training, {date.today()}, {describe_machine(device)}")
    print(f"torch {torch.__version__}; default max_basis={DEFAULT_MAX_BASIS}, tol={TOL}")
    bases = sorted(set(args.bases))
    rows = [row for name in args.models for row in bench(name, device, args.threads, bases)]
    print_table("Extra peak memory and products of a default call", rows)
    _print_goals(rows)


def _print_goals(rows: list[dict]) -> None:
    """The issue's goals per model: a values-only call and the monitor's default measurements
    within 1.5x the training footprint, values within ``tol``; the products against the default
    basis; the floor, below which no method built on these products goes."""
    print("\n## Goals: extra peak <= 1.5x the training footprint, every value within tol\n")
    for model in dict.fromkeys(row["model"] for row in rows):
        own = {row["configuration"]: row for row in rows if row["model"] == model}
        default = next((row for key, row in own.items() if key.endswith("(default)")), None)
        for key, row in own.items():
            if not key.startswith(("values", "monitor")) or key.endswith("(before)"):
                continue
            # the monitor's measurements against the monitor's before, the calls against the basis
            basis = own.get("monitor, basis (before)") if key.startswith("monitor") else default
            met = row["x footprint"] <= 1.5 and row["error / tol"] <= 1.0
            products = f", {row['products'] / basis['products']:.2f}x" if basis else ""
            print(
                f"- {model}, {key}: {row['x footprint']:.2f}x the footprint "
                f"({row['x training']:.2f}x training), error {row['error / tol']:.2g} tol, "
                f"{row['products']} products{products} the basis' ({'met' if met else 'NOT met'})"
            )
        floor = own["floor"]
        print(f"- {model}: the floor {floor['x footprint']:.2f}x ({floor['x training']:.2f}x)")


if __name__ == "__main__":
    main()
