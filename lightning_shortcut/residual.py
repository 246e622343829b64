"""Residual units ``h <- h + W_n ... W_1 h`` with a shortcut of configurable depth ``n``, the object
studied by Li et al., "Demystifying ResNet" (arXiv 1611.01186)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Literal

from torch import Tensor, nn

from lightning_shortcut.hessian._validation import check_choice, check_positive_int
from lightning_shortcut.hessian.params import branch_parameters

__all__ = [
    "ResidualStack",
    "ResidualUnit",
    "make_activation",
    "residual_parameters",
    "residual_weight_layers",
]

ActivationSpec = str | nn.Module | None

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
_LAYERS = ("linear", "conv")


def make_activation(activation: ActivationSpec) -> nn.Module | None:
    """Build a fresh activation module from a name, a module (deep-copied) or ``None``.

    Raises:
        ValueError: if ``activation`` is an unknown name.
        TypeError: if it is neither ``None``, a string nor an ``nn.Module``.
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        return _ACTIVATIONS[check_choice("activation", activation.lower(), _ACTIVATIONS)]()
    if isinstance(activation, nn.Module):
        return copy.deepcopy(activation)
    raise TypeError(
        f"`activation` must be None, a name such as 'relu' or an nn.Module, got {activation!r}."
    )


class ResidualUnit(nn.Module):
    """One residual unit ``h <- h + branch(h)`` whose branch has ``shortcut_depth`` weight layers.

    Args:
        width: number of features (``layer="linear"``) or channels (``layer="conv"``); the unit keeps
            the input's shape.
        shortcut_depth: number of weight layers on the branch (the paper's ``n``).
        layer: ``"linear"`` (``nn.Linear`` on the last dimension) or ``"conv"`` (``nn.Conv2d`` with
            ``kernel_size`` and the padding that keeps the spatial shape, on ``(N, C, H, W)``).
        activation: nonlinearity between the branch's layers: ``None`` (a linear branch), a name
            (``"relu"``, ``"tanh"``, ...) or a module.
        bias: whether the branch's layers have biases.
        post_activation: optional nonlinearity after the addition, as in the original ResNet.
        kernel_size: odd kernel size of the convolutions.

    Raises:
        TypeError, ValueError: on a bad ``width``, ``shortcut_depth``, ``layer``, ``activation`` or
            ``kernel_size``; the message names the value.

    Example:
        ```python
        unit = ResidualUnit(16, shortcut_depth=2, activation="relu")
        out = unit(torch.randn(8, 16))
        ```
    """

    def __init__(
        self,
        width: int,
        shortcut_depth: int = 2,
        *,
        layer: Literal["linear", "conv"] = "linear",
        activation: ActivationSpec = None,
        bias: bool = False,
        post_activation: ActivationSpec = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.width = check_positive_int("width", width)
        self.shortcut_depth = check_positive_int("shortcut_depth", shortcut_depth)
        self.layer = check_choice("layer", layer, _LAYERS)
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd to keep the shape, got {kernel_size}.")
        make_activation(activation)  # validated even when shortcut_depth == 1
        modules: list[nn.Module] = []
        for index in range(shortcut_depth):
            if index > 0 and activation is not None:
                modules.append(make_activation(activation))
            if layer == "linear":
                modules.append(nn.Linear(width, width, bias=bias))
            else:
                modules.append(
                    nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, bias=bias)
                )
        self.branch = nn.Sequential(*modules)
        self.post_activation = make_activation(post_activation)

    @property
    def weight_layers(self) -> list[nn.Linear | nn.Conv2d]:
        """The branch's weight layers, first to last."""
        return [m for m in self.branch if isinstance(m, nn.Linear | nn.Conv2d)]

    def branch_parameters(self) -> list[nn.Parameter]:
        """The branch's weights (and biases), first layer to last: the paper's parameters. The
        engine's ``params="residual"`` asks every module with this method, yours too."""
        return [param for layer in self.weight_layers for param in layer.parameters()]

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` that names the shape if ``x`` does not have ``width`` features."""
        if self.layer == "linear":
            if x.ndim < 1 or x.shape[-1] != self.width:
                raise ValueError(
                    f"Expected inputs with width={self.width} features in the last dimension, "
                    f"got a tensor of shape {tuple(x.shape)}."
                )
        elif x.ndim not in (3, 4) or x.shape[-3] != self.width:
            raise ValueError(
                f"Expected inputs of shape (N, {self.width}, H, W) or ({self.width}, H, W), got a "
                f"tensor of shape {tuple(x.shape)}."
            )

    def forward(self, x: Tensor) -> Tensor:
        out = x + self.branch(x)
        if self.post_activation is not None:
            out = self.post_activation(out)
        return out

    def extra_repr(self) -> str:
        return f"width={self.width}, shortcut_depth={self.shortcut_depth}, layer={self.layer!r}"


class ResidualStack(nn.Module):
    """``num_units`` residual units of the same width and shortcut depth, applied in sequence; the
    output has the input's shape.

    Args:
        width: features (``layer="linear"``) or channels (``layer="conv"``).
        num_units: number of residual units.
        shortcut_depth: weight layers per branch (the paper's ``n``): 1, 2 (the paper's choice) or more.
        layer: ``"linear"`` or ``"conv"``.
        activation: nonlinearity between a branch's layers (``None`` for the paper's linear network).
        bias: whether branch layers have biases (off by default, as in the theory).
        post_activation: optional nonlinearity after each addition.
        kernel_size: kernel size of the convolutions.

    Raises:
        TypeError, ValueError: on a bad argument, naming the value; at call time, on an input whose
            feature or channel size is not ``width``.

    Example:
        ```python
        stack = ResidualStack(width=16, num_units=32, shortcut_depth=2)
        ZeroInit(scale=1e-3)(stack)
        out = stack(torch.randn(64, 16))
        ```
    """

    def __init__(
        self,
        width: int,
        num_units: int,
        shortcut_depth: int = 2,
        *,
        layer: Literal["linear", "conv"] = "linear",
        activation: ActivationSpec = None,
        bias: bool = False,
        post_activation: ActivationSpec = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.num_units = check_positive_int("num_units", num_units)
        self.units = nn.ModuleList(
            ResidualUnit(
                width,
                shortcut_depth,
                layer=layer,
                activation=activation,
                bias=bias,
                post_activation=post_activation,
                kernel_size=kernel_size,
            )
            for _ in range(num_units)
        )
        self.width = width
        self.shortcut_depth = shortcut_depth
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        self.units[0].check_input(x)
        for unit in self.units:
            x = unit(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, num_units={self.num_units}, "
            f"shortcut_depth={self.shortcut_depth}, layer={self.layer!r}"
        )


def residual_units(model: nn.Module) -> Iterator[ResidualUnit]:
    """Every :class:`ResidualUnit` inside ``model`` (the model itself included), in module order."""
    return (module for module in model.modules() if isinstance(module, ResidualUnit))


def residual_weight_layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The branch weight layers of every residual unit inside ``model``, in module order."""
    return [layer for unit in residual_units(model) for layer in unit.weight_layers]


def residual_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The residual-branch parameters (weights and biases) in ``model``, once each in module order:
    those of every module with a :meth:`ResidualUnit.branch_parameters` method."""
    return branch_parameters(model)
