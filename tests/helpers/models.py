"""Small models for the engine and callback tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """Conv + BatchNorm + dropout + linear head, for 1x6x6 inputs and 3 classes."""

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))
        return self.head(self.drop(h.flatten(1)))


class TinyTransformer(nn.Module):
    """One encoder layer with attention over sequences of 4 tokens of size 4, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            4, 2, dim_feedforward=6, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(dim=1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def classification_data(shape, num_samples=32, num_classes=3, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, *shape, generator=generator, dtype=dtype)
    y = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return x, y


def ce_loss(x, y):
    return lambda model: F.cross_entropy(model(x), y)
