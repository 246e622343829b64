"""The models and data shared by the benchmarks (random data of the recipes' shapes), and their
timing and table helpers."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from lightning_shortcut.models import ResidualClassifier

# name -> (input shape, ResidualClassifier kwargs, Hessian batch size on CPU, on CUDA)
RECIPE_MODELS = {
    "digits_mlp": ((1, 8, 8), {"width": 32, "num_units": 16, "layer": "linear"}, 512, 512),
    "mnist_mlp": ((1, 28, 28), {"width": 64, "num_units": 16, "layer": "linear"}, 512, 512),
    "cifar_conv": ((3, 32, 32), {"width": 32, "num_units": 8, "layer": "conv"}, 64, 512),
}


def recipe_model(name: str, device: torch.device, seed: int = 0):
    """A recipe model at PyTorch's default init with a random Hessian batch."""
    shape, kwargs, cpu_samples, cuda_samples = RECIPE_MODELS[name]
    torch.manual_seed(seed)
    model = ResidualClassifier(shape, 10, shortcut_depth=2, activation="relu", **kwargs).to(device)
    samples = cuda_samples if device.type == "cuda" else cpu_samples
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *shape, generator=generator).to(device)
    y = torch.randint(0, 10, (samples,), generator=generator).to(device)
    return model, (x, y)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# name -> (input features, hidden widths, activation, samples): plain MLPs of the engine issue
PLAIN_MLPS = {
    "tanh_mlp": (64, (128, 128), nn.Tanh, 1024),
    "wide_mlp": (1024, (2048, 2048), nn.ReLU, 256),  # 6.3M parameters
}
# name -> (vocabulary, model width, heads, feed-forward width, layers, sequences, tokens each)
TRANSFORMERS = {
    # lightning's demo Transformer (2 encoder and 2 decoder layers), 5.8M parameters of which 2.1M
    # in the embedding and the output layer: parameter-heavy, like a language model
    "transformer": (4096, 256, 4, 1024, 2, 16, 32),
}
# the models bench_hessian.py runs by default (bench_model also builds the Transformers)
BENCH_MODELS = [*RECIPE_MODELS, *PLAIN_MLPS]


class NextToken(nn.Module):
    """Lightning's demo Transformer reading a sequence as both source and target: ``model(tokens)``
    is the log-probabilities of every position's next token, rows flattened (a language model whose
    loss is the default cross-entropy against the next tokens)."""

    def __init__(self, vocab: int, width: int, heads: int, hidden: int, layers: int) -> None:
        super().__init__()
        from lightning.pytorch.demos import Transformer

        self.transformer = Transformer(vocab, width, heads, hidden, layers, dropout=0.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens, tokens)


def _transformer(name: str, device: torch.device, seed: int):
    vocab, width, heads, hidden, layers, sequences, length = TRANSFORMERS[name]
    torch.manual_seed(seed)
    model = NextToken(vocab, width, heads, hidden, layers).to(device)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (sequences, length + 1), generator=generator)
    inputs, targets = tokens[:, :-1].to(device), tokens[:, 1:].reshape(-1).to(device)
    return model, (inputs, targets)


def bench_model(name: str, device: torch.device, seed: int = 0):
    """A recipe model, a plain MLP or a Transformer at PyTorch's default init with a random batch."""
    if name in RECIPE_MODELS:
        return recipe_model(name, device, seed)
    if name in TRANSFORMERS:
        return _transformer(name, device, seed)
    features, widths, activation, samples = PLAIN_MLPS[name]
    torch.manual_seed(seed)
    layers, previous = [], features
    for width in widths:
        layers += [nn.Linear(previous, width), activation()]
        previous = width
    model = nn.Sequential(*layers, nn.Linear(previous, 10)).to(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator).to(device)
    y = torch.randint(0, 10, (samples,), generator=generator).to(device)
    return model, (x, y)


def describe_machine(device: torch.device) -> str:
    """The device in words for a benchmark's header: the GPU's name, or the CPU's model, its logical
    cores and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{model} CPU, {os.cpu_count()} logical cores, torch on {torch.get_num_threads()} threads"
    )


def median_time(fn, device: torch.device, repeats: int = 3):
    """``(median seconds, last result)`` of ``repeats`` calls of ``fn``, synchronized on CUDA."""
    times, result = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_table(title: str, rows: list[dict]) -> None:
    """A markdown table under a heading: one column per key seen (in order), empty rows left out."""
    rows = [row for row in rows if row]
    if not rows:
        return
    print(f"\n## {title}\n")
    keys = list(dict.fromkeys(key for row in rows for key in row))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [row.get(key, "") for key in keys]
        print(
            "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in cells) + " |"
        )
    sys.stdout.flush()
