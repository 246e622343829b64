"""What every eigensolver takes and returns, and the registry that names them.

A solver is one function with one keyword signature::

    solve(operator, *, generator, top_k, bottom_k, min_abs, tol, max_iter, start) -> EigenResult

registered under a name with :func:`register_solver`. :func:`~lightning_shortcut.hessian.hessian_eigenvalues`,
:class:`~lightning_shortcut.callbacks.HessianEigenvalueMonitor` and argument validation read
:data:`SOLVERS`, so a registered solver works by name everywhere with no other change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_shortcut.hessian.linear_operator import LinearOperator

__all__ = ["COMMON_ARGUMENTS", "SOLVERS", "EigenResult", "Solver", "SolverSpec", "register_solver"]


@dataclass
class EigenResult:
    """Extreme eigenpairs of a symmetric operator, each value with a bound on its error.

    Attributes:
        top: the largest eigenvalues, descending.
        bottom: the smallest eigenvalues, ascending.
        top_vectors: unit eigenvector estimates of ``top`` (flat, like the operator's vectors).
        bottom_vectors: the same for ``bottom``.
        top_errors: for each value of ``top``, a bound on ``|value - true eigenvalue|``.
        bottom_errors: the same for ``bottom``.
        min_abs: the smallest ``|eigenvalue|`` (an upper bound on it where not resolved), or ``None``.
        min_abs_error: a bound on the error of ``min_abs``, or ``None``.
        scale: the largest ``|eigenvalue|`` seen, the scale of the tolerance.
        converged: whether every requested value met the tolerance.
        reason: why not, in words (empty when converged).
        neighbours: the Ritz vectors next to the extremes of the first run, kept for the next warm
            start (see the [warm rule][warm-rule] in the docs' engine page).
        frontiers: the lowest top-side and the highest bottom-side Ritz value among the first run's
            extreme vectors and ``neighbours`` (``None`` for an end it did not compute).
        warm: whether an answer came from a run started from the given ``start`` vectors (a warm
            run the warm rule gave up on is run again cold and does not count).
        abandoned: whether a warm run was given up and run again cold.
        stopped_warm: whether a run stopped on the evidence of its start vectors, before the
            products a cold run needs (see the [warm rule][warm-rule]).
    """

    top: list[float] = field(default_factory=list)
    bottom: list[float] = field(default_factory=list)
    top_vectors: list[Tensor] = field(default_factory=list)
    bottom_vectors: list[Tensor] = field(default_factory=list)
    top_errors: list[float] = field(default_factory=list)
    bottom_errors: list[float] = field(default_factory=list)
    min_abs: float | None = None
    min_abs_error: float | None = None
    scale: float = 0.0
    converged: bool = True
    reason: str = ""
    neighbours: list[Tensor] = field(default_factory=list)
    frontiers: tuple[float | None, float | None] = (None, None)
    warm: bool = False
    stopped_warm: bool = False
    abandoned: bool = False

    def fail(self, reason: str) -> None:
        """Mark the result as not converged, keeping the first reason given."""
        self.converged = False
        self.reason = self.reason or reason

    @classmethod
    def zeros(cls, top_k: int, bottom_k: int, min_abs: bool) -> EigenResult:
        """The exact answer for the zero operator."""
        return cls(
            top=[0.0] * top_k,
            bottom=[0.0] * bottom_k,
            top_errors=[0.0] * top_k,
            bottom_errors=[0.0] * bottom_k,
            min_abs=0.0 if min_abs else None,
            min_abs_error=0.0 if min_abs else None,
        )


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
        start: Sequence[Tensor] | None,
    ) -> EigenResult:
        """Find the extreme eigenvalues of ``operator``.

        Args:
            operator: the symmetric operator.
            generator: the private generator for random start vectors.
            top_k: number of largest eigenvalues.
            bottom_k: number of smallest eigenvalues.
            min_abs: also the smallest ``|eigenvalue|`` (only solvers registered with
                ``supports_min_abs=True`` are asked).
            tol: each returned value should be within ``tol * max|lambda|`` of the truth.
            max_iter: products per eigenvalue run.
            start: optional start vectors (for instance a previous call's eigenvectors), which a
                solver may use or ignore.

        Raises:
            NonFiniteProductError: if a product is not finite; the caller reports NaN.
        """
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
    description: str = ""
    validate_options: Callable[..., None] | None = None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise where ``solver_options`` enter: a name the solver does not take, or a value its
        ``validate_options`` refuses (so nothing fails later, inside a measurement).

        Raises:
            ValueError: naming the option and what the solver accepts.
        """
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
    description: str = "",
    validate_options: Callable[..., None] | None = None,
) -> Callable[[Solver], Solver]:
    """Register a solver under ``name`` (a decorator); an existing name is replaced.

    Args:
        name: the name ``method=`` selects it by.
        supports_min_abs: whether it computes ``min_abs`` (only such solvers are asked for it).
        touches_grads: whether it calls ``.backward`` (accumulating into ``.grad``); the engine then
            snapshots gradient values around it.
        description: one line for the docs and error messages.
        validate_options: called with the solver's options (``solver_options``) where they enter,
            before any measurement; raises ``ValueError`` on a bad value.

    Example:
        ```python
        @register_solver("scipy", description="scipy.sparse.linalg.eigsh")
        def scipy_eigsh(operator, *, generator, top_k, bottom_k, min_abs, tol, max_iter, start):
            ...
            return EigenResult(top=..., bottom=..., top_errors=..., bottom_errors=...)

        hessian_eigenvalues(model, batch, method="scipy")
        ```
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A solver's name must be a non-empty string, got {name!r}.")

    def decorator(solve: Solver) -> Solver:
        SOLVERS[name] = SolverSpec(
            name, solve, supports_min_abs, touches_grads, description, validate_options
        )
        return solve

    return decorator
