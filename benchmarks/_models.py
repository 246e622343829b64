"""The recipe models and data shared by the benchmarks (random data of the recipes' shapes)."""

from __future__ import annotations

import torch

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
