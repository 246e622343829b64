"""``HessianSettings``: what a measurement asks for, validated once where the values enter.

The public functions and the monitor take flat keyword options and build one
:class:`HessianSettings`, which refuses a bad value there; everything below reads that object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_shortcut.hessian._validation import (
    check_bool,
    check_choice,
    check_float,
    check_non_negative_int,
    check_positive_int,
)
from lightning_shortcut.hessian.linear_operator import LinearOperator, NonFiniteProductError
from lightning_shortcut.hessian.params import ParamsSpec, check_params_spec
from lightning_shortcut.hessian.results import NON_FINITE, HessianSpectrum
from lightning_shortcut.hessian.solvers import SOLVERS, SolverSpec
from lightning_shortcut.hessian.solvers.lanczos_values import (
    VALUES_ONLY,
    extreme_vectors,
    lanczos_values,
    refuse,
)
from lightning_shortcut.hessian.tracking import WarmStart

__all__ = ["HVPS", "MODES", "AllReduce", "HessianSettings", "Hvp", "Mode"]

#: ``"eval"`` (dropout off, BatchNorm on running statistics) or ``"train"``.
Mode = Literal["eval", "train"]
MODES = ("eval", "train")
#: How a Hessian-vector product is taken: by double backward (exact) or by the central difference
#: of two gradients (first derivatives only).
Hvp = Literal["autograd", "finite_difference"]
HVPS = ("autograd", "finite_difference")
#: A sum across processes of one tensor (a new tensor), such as ``torch.distributed``'s all-reduce.
AllReduce = Callable[[Tensor], Tensor]


@dataclass(frozen=True, kw_only=True)
class HessianSettings:
    """The settings of a measurement: which Hessian, how its products are taken, which solver asks
    for what, and what comes back. Frozen; every value is checked when it is made.

    The fields mean what the keyword options of the same names mean in
    :func:`~lightning_shortcut.hessian.hessian_eigenvalues`; a function that does not solve for
    eigenvalues reads only the operator's (``params``, ``mode``, ``hvp``, ``seed``,
    ``all_reduce``). Derive a variant with :func:`dataclasses.replace`, which checks it again.

    Raises:
        ValueError: on a value outside what is accepted, or a combination the engine cannot
            compute (``min_abs`` with a solver without it, ``stderr`` in train mode, what
            ``"lanczos_values"`` cannot give, ...), naming the value and what is accepted.
        TypeError: on a value of the wrong type.

    Example:
        ```python
        settings = HessianSettings(top_k=2, tol=1e-2, params="residual")
        dataclasses.replace(settings, bottom_k=0)
        ```
    """

    # the operator: which Hessian, how its products are taken
    params: ParamsSpec = None
    mode: Mode = "eval"
    hvp: Hvp = "autograd"
    seed: int = 0
    all_reduce: AllReduce | None = None
    # the solver and what it is asked for
    method: str = "lanczos"
    top_k: int = 1
    bottom_k: int = 1
    min_abs: bool = False
    tol: float = 1e-3
    max_iter: int | None = None
    #: read-only once the settings are made
    solver_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # what comes back besides the values
    stderr: bool | Literal["cold"] = False
    #: the eigenvectors: ``True`` wanted, ``False`` not (values alone where the solver can),
    #: ``None`` (settings passed along: the monitor, the block and stability measurements) whatever
    #: ``method`` gives; :func:`~lightning_shortcut.hessian.hessian_eigenvalues` passes ``False``
    vectors: bool | None = None
    #: the registry entry of ``method`` (set when the settings are made)
    solver: SolverSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        solver = SOLVERS[check_choice("method", self.method, SOLVERS)]
        object.__setattr__(self, "solver", solver)
        self._check_operator()
        self._check_request()
        options = {} if self.solver_options is None else self.solver_options
        if not isinstance(options, Mapping):
            raise TypeError(
                f"`solver_options` must be a mapping of option names to values, got "
                f"{type(options).__name__}."
            )
        object.__setattr__(self, "solver_options", MappingProxyType(dict(options)))
        solver.check_options(self.solver_options)
        if self.vectors is not None:
            check_bool("vectors", self.vectors)
        refusal = refuse(self.top_k, self.bottom_k, self.min_abs, bool(self.vectors), start=False)
        if self.method == VALUES_ONLY and refusal:
            raise ValueError(refusal)
        if not (self.stderr is True or self.stderr is False or self.stderr == "cold"):
            raise ValueError(f"`stderr` must be True, False or 'cold', got {self.stderr!r}.")
        if self.stderr and self.mode != "eval":
            raise ValueError(
                f"`stderr={self.stderr!r}` needs mode='eval' (a loss that is a mean over samples), "
                f"got mode={self.mode!r}."
            )

    def _check_operator(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("hvp", self.hvp, HVPS)
        if self.hvp != "autograd" and self.solver.touches_grads:
            raise ValueError(
                f"hvp={self.hvp!r} needs a solver of the operator ('autograd' with a solver that "
                f"runs on the model); method={self.method!r} runs on the model's gradients."
            )
        check_non_negative_int("seed", self.seed)
        object.__setattr__(self, "params", check_params_spec(self.params))
        if self.all_reduce is not None and not callable(self.all_reduce):
            raise TypeError(
                "`all_reduce` must be None or a callable summing a tensor across processes, got "
                f"{type(self.all_reduce).__name__}."
            )

    def _check_request(self) -> None:
        check_non_negative_int("top_k", self.top_k)
        check_non_negative_int("bottom_k", self.bottom_k)
        check_bool("min_abs", self.min_abs)
        if self.top_k == 0 and self.bottom_k == 0 and not self.min_abs:
            raise ValueError(
                "Nothing to compute: `top_k` and `bottom_k` are 0 and `min_abs` is False."
            )
        if self.min_abs and not self.solver.supports_min_abs:
            supported = [name for name, spec in SOLVERS.items() if spec.supports_min_abs]
            raise ValueError(
                f"`min_abs=True` needs a solver that computes it ({supported}), got "
                f"method={self.method!r}."
            )
        check_float("tol", self.tol, low=0.0, high=1.0, include_low=False, include_high=False)
        if self.max_iter is not None:
            check_positive_int("max_iter", self.max_iter)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # copied and pickled as the keywords that make it (a read-only mapping does not pickle)
        made = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return partial(HessianSettings, **made | {"solver_options": dict(self.solver_options)}), ()

    @property
    def fixed_seed(self) -> int | None:
        """The global RNG seed before each forward (``seed``) in train mode, so that dropout masks
        are the same in every product; ``None`` in eval mode."""
        return self.seed if self.mode == "train" else None

    @property
    def products_per_run(self) -> int:
        """``max_iter``, or its default: 300 products per eigenvalue run, 1000 with ``min_abs``
        (the smallest ``|eigenvalue|`` sits inside the spectrum, where Lanczos converges slowly)."""
        if self.max_iter is not None:
            return self.max_iter
        return 1000 if self.min_abs else 300

    def solve(self, operator: LinearOperator, *, start: WarmStart | None = None) -> HessianSpectrum:
        """Run the solver on ``operator`` as these settings ask (its generator seeded with
        ``seed``): the answer :meth:`~lightning_shortcut.hessian.HessianSpectrum.completed`, or NaN
        values (:meth:`~lightning_shortcut.hessian.HessianSpectrum.nan`) where a product was not
        finite. The one call of a solver in the engine.

        Raises:
            ValueError: where ``top_k`` or ``bottom_k`` is above the operator's dimension.
            RuntimeError: where the solver returns another number of values than asked.
        """
        for name, count in (("top_k", self.top_k), ("bottom_k", self.bottom_k)):
            if count > operator.dim:
                raise ValueError(
                    f"`{name}={count}` asks for more eigenvalues than the Hessian has: its "
                    f"dimension is {operator.dim}."
                )
        solve, method = self._solver_for(warm=start is not None)
        try:
            result = solve(
                operator,
                generator=torch.Generator().manual_seed(self.seed),
                top_k=self.top_k,
                bottom_k=self.bottom_k,
                min_abs=self.min_abs,
                tol=self.tol,
                max_iter=self.products_per_run,
                start=start,
                **self.solver_options,
            )
        except NonFiniteProductError:
            return HessianSpectrum.nan(self, NON_FINITE, operator.num_products)
        if (len(result.top), len(result.bottom)) != (self.top_k, self.bottom_k):
            raise RuntimeError(
                f"Solver {self.method!r} returned {len(result.top)} top and {len(result.bottom)} "
                f"bottom values where top_k={self.top_k} and bottom_k={self.bottom_k} were asked."
            )
        done = result.completed(self, operator.num_products)
        return done if method == self.method else replace(done, method=method)

    def _solver_for(self, warm: bool) -> tuple[Callable[..., HessianSpectrum], str]:
        """The solver a call runs and its name: the values-only pass where it gives what is asked."""
        values_only = self.method == VALUES_ONLY or (
            self.method == "lanczos"
            and self.vectors is False
            and not refuse(self.top_k, self.bottom_k, self.min_abs, False, warm)
        )
        if not values_only:
            return self.solver.solve, self.method
        needs_vectors = self.stderr is True or (self.stderr == "cold" and not warm)
        return (extreme_vectors if needs_vectors else lanczos_values), VALUES_ONLY
