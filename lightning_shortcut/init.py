"""Initialization strategies: called on any module, a strategy initializes the branch weights of
every :class:`~lightning_shortcut.ResidualUnit` inside it, zeroes their biases and returns it. Draws
are made on the CPU in float32, so one seed gives the same weights on every device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

from lightning_shortcut.hessian._validation import check_choice, check_non_negative_float
from lightning_shortcut.residual import residual_weight_layers

__all__ = [
    "INIT_STRATEGIES",
    "InitStrategy",
    "OrthogonalInit",
    "XavierInit",
    "ZeroInit",
    "init_strategy",
]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class InitStrategy(ABC):
    """Base class: initializes residual-branch weights; subclasses implement :meth:`sample`.

    Args:
        zero_bias: zero the biases of the branch layers (the theory has none).
        generator: optional CPU ``torch.Generator``; the global RNG is used when ``None``.
    """

    def __init__(self, *, zero_bias: bool = True, generator: torch.Generator | None = None) -> None:
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"`generator` must be a CPU generator, got one on {generator.device}.")
        self.zero_bias = zero_bias
        self.generator = generator

    @abstractmethod
    def sample(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        """Return a float32 CPU tensor of ``shape`` holding the new weight."""

    @torch.no_grad()
    def __call__(self, module: ModuleT) -> ModuleT:
        layers = residual_weight_layers(module)
        if not layers:
            raise ValueError(
                f"{type(self).__name__} found no ResidualUnit/ResidualStack inside "
                f"{type(module).__name__}; it only initializes residual branches."
            )
        for layer in layers:
            layer.weight.copy_(self.sample(layer.weight.shape, self.generator))
            if self.zero_bias and layer.bias is not None:
                layer.bias.zero_()
        return module

    def __repr__(self) -> str:  # a subclass's own arguments, such as ZeroInit(scale=0.001)
        own = (f"{k}={v!r}" for k, v in vars(self).items() if k not in ("zero_bias", "generator"))
        return f"{type(self).__name__}({', '.join(own)})"


class ZeroInit(InitStrategy):
    """The paper's zero initial point, or "small weights" i.i.d. ``N(0, scale^2)`` when ``scale > 0``.

    Args:
        scale: standard deviation of the weights; ``0.0`` gives exact zeros.

    Example:
        ```python
        model = ZeroInit(scale=1e-3)(ResidualStack(16, num_units=8))
        ```
    """

    def __init__(
        self,
        scale: float = 0.0,
        *,
        zero_bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(zero_bias=zero_bias, generator=generator)
        self.scale = check_non_negative_float("scale", scale)

    def sample(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        if self.scale == 0.0:
            return torch.zeros(shape)
        return torch.randn(shape, generator=generator) * self.scale


class XavierInit(InitStrategy):
    """Glorot/Xavier initialization of the branch weights, a baseline of the paper.

    Args:
        gain: scaling factor.
        distribution: ``"uniform"`` (Glorot and Bengio's form) or ``"normal"``.
    """

    def __init__(
        self,
        gain: float = 1.0,
        distribution: Literal["uniform", "normal"] = "uniform",
        *,
        zero_bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(zero_bias=zero_bias, generator=generator)
        self.gain = check_non_negative_float("gain", gain)
        self.distribution = check_choice("distribution", distribution, ("uniform", "normal"))

    def sample(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        init = nn.init.xavier_uniform_ if self.distribution == "uniform" else nn.init.xavier_normal_
        return init(torch.empty(shape), gain=self.gain, generator=generator)


class OrthogonalInit(InitStrategy):
    """(Semi-)orthogonal branch weights scaled by ``gain``, a baseline of the paper.

    Convolution kernels are made orthogonal in their flattened ``(out, in * k * k)`` form.
    """

    def __init__(
        self, gain: float = 1.0, *, zero_bias: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(zero_bias=zero_bias, generator=generator)
        self.gain = check_non_negative_float("gain", gain)

    def sample(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        return nn.init.orthogonal_(torch.empty(shape), gain=self.gain, generator=generator)


#: The named initializations of the recipes and the study: name -> (strategy class, arguments).
INIT_STRATEGIES: dict[str, tuple[type[InitStrategy], dict[str, float]]] = {
    "zero": (ZeroInit, {"scale": 0.0}),
    "small": (ZeroInit, {"scale": 0.001}),
    "xavier": (XavierInit, {}),
    "orthogonal": (OrthogonalInit, {}),
}


def init_strategy(name: str, **overrides: float) -> InitStrategy:
    """The strategy :data:`INIT_STRATEGIES` names ``name``, its arguments updated by ``overrides``.

    Example:
        ```python
        init_strategy("small", scale=1e-4)  # ZeroInit(scale=0.0001)
        ```
    """
    strategy, arguments = INIT_STRATEGIES[check_choice("init", name, INIT_STRATEGIES)]
    return strategy(**{**arguments, **overrides})
