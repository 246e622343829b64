"""What every eigensolver takes and returns (:class:`Solver`), and the registry that names them
(:data:`SOLVERS`, filled by :func:`register_solver`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lightning_shortcut.hessian.linear_operator import LinearOperator
from lightning_shortcut.hessian.results import HessianSpectrum
from lightning_shortcut.hessian.tracking import WarmStart

__all__ = ["COMMON_ARGUMENTS", "SOLVERS", "EigenResult", "Solver", "SolverSpec", "register_solver"]


EigenResult = HessianSpectrum
"""What a solver returns: :class:`~lightning_shortcut.hessian.HessianSpectrum` itself."""


class Solver(Protocol):
    """The signature every registered solver has."""

    def __call__(
        self,
        operator: LinearOperator,
        *,
        generator: torch.Generator,
        top_k: int,
        bottom_k: int,
        min_abs: bool,
        tol: float,
        max_iter: int,
        start: WarmStart | None,
    ) -> HessianSpectrum:
        """Find the ``top_k`` largest and ``bottom_k`` smallest eigenvalues of ``operator`` (and
        ``min_abs``, if registered with ``supports_min_abs``) within ``tol * max|lambda|``, at most
        ``max_iter`` products per run, random starts drawn from ``generator``; ``start`` (a
        :class:`~lightning_shortcut.hessian.WarmStart`) may be ignored. A product that is not
        finite raises ``NonFiniteProductError``."""
        ...


#: The arguments every solver takes (:class:`Solver`); the others of its signature are its options.
COMMON_ARGUMENTS = frozenset(
    {"operator", "generator", "top_k", "bottom_k", "min_abs", "tol", "max_iter", "start"}
)


@dataclass(frozen=True)
class SolverSpec:
    """A registry entry: the solver and what it supports."""

    name: str
    solve: Solver
    supports_min_abs: bool = False
    touches_grads: bool = False
    validate_options: Callable[..., None] | None = None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise a ``ValueError`` on an option the solver does not take or refuses."""
        parameters = inspect.signature(self.solve).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        accepted = sorted(
            name
            for name, parameter in parameters.items()
            if name not in COMMON_ARGUMENTS
            and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        )
        for name in options:
            if name in COMMON_ARGUMENTS:
                raise ValueError(
                    f"`solver_options` sets {name!r}, an argument of its own: pass {name}= instead."
                )
            if not takes_any and name not in accepted:
                raise ValueError(
                    f"Solver {self.name!r} takes no option {name!r}; its options are {accepted}."
                )
        if self.validate_options is not None:
            self.validate_options(**options)


#: name -> :class:`SolverSpec`; fill it with :func:`register_solver`.
SOLVERS: dict[str, SolverSpec] = {}


def register_solver(
    name: str,
    *,
    supports_min_abs: bool = False,
    touches_grads: bool = False,
    validate_options: Callable[..., None] | None = None,
) -> Callable[[Solver], Solver]:
    """Register a solver under ``name`` (a decorator); an existing name is replaced.

    Args:
        name: the name ``method=`` selects it by.
        supports_min_abs: whether it computes ``min_abs`` (only such solvers are asked for it).
        touches_grads: whether it calls ``.backward``; the engine then restores ``.grad`` after it.
        validate_options: called with ``solver_options`` where they enter; raises ``ValueError``.

    Example:
        ```python
        @register_solver("scipy")
        def scipy_eigsh(operator, *, generator, top_k, bottom_k, min_abs, tol, max_iter, start):
            ...
            return HessianSpectrum(top=..., bottom=..., top_errors=..., bottom_errors=..., scale=...)

        hessian_eigenvalues(model, batch, method="scipy")
        ```
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A solver's name must be a non-empty string, got {name!r}.")

    def decorator(solve: Solver) -> Solver:
        SOLVERS[name] = SolverSpec(name, solve, supports_min_abs, touches_grads, validate_options)
        return solve

    return decorator
