"""``LinearTeacherDataModule``: a synthetic task with a known linear answer."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_shortcut.data.base import TensorDataModule
from lightning_shortcut.hessian._validation import check_positive_int

__all__ = ["LinearTeacherDataModule"]


class LinearTeacherDataModule(TensorDataModule):
    """A linear teacher task: ``x ~ N(0, I_width)``, ``y = T x`` (plus optional noise), with
    ``T = I + teacher_scale * G / sqrt(width)``, ``G`` Gaussian: a linear residual net fits it."""

    num_classes = 0

    def __init__(
        self,
        width: int = 16,
        num_train: int = 1024,
        num_test: int = 256,
        teacher_scale: float = 0.5,
        noise: float = 0.0,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, num_workers, seed)
        self.width = check_positive_int("width", width)
        self.num_train = check_positive_int("num_train", num_train)
        self.num_test = check_positive_int("num_test", num_test)
        self.teacher_scale = float(teacher_scale)
        self.noise = float(noise)
        self.input_shape = (width,)

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        gaussian = torch.randn(self.width, self.width, generator=generator)
        teacher = torch.eye(self.width) + self.teacher_scale * gaussian / self.width**0.5
        x = torch.randn(self.num_train + self.num_test, self.width, generator=generator)
        y = x @ teacher.T + self.noise * torch.randn(x.shape, generator=generator)
        return x[: self.num_train], y[: self.num_train], x[self.num_train :], y[self.num_train :]
