"""Guards that keep a Hessian computation free of side effects on the model and the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global CPU and CUDA RNG states on exit."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextmanager
def preserved_state(model: nn.Module, *, clone_grads: bool = False) -> Iterator[None]:
    """Restore on exit every submodule's ``training`` flag, every buffer's values, every
    parameter's ``.grad`` object (its values too with ``clone_grads``, for code that calls
    ``.backward``) and the global RNG states."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]

    def values_of(grad: Tensor | None) -> Tensor | None:
        return grad.detach().clone() if clone_grads and grad is not None else None

    grads = [(param, param.grad, values_of(param.grad)) for param in model.parameters()]
    with preserved_rng():
        try:
            yield
        finally:
            with torch.inference_mode(False), torch.no_grad():
                for module, training in modes:
                    module.training = training
                for buffer, saved in buffers:
                    buffer.copy_(saved)
                for param, grad, saved in grads:
                    if grad is not None and saved is not None:
                        grad.copy_(saved)
                    param.grad = grad


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Allow double backward: no ``inference_mode`` or ``no_grad``, math SDPA, no MHA fast path."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
