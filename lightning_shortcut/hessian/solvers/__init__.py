"""Eigensolvers on symmetric operators, one registry of them (:data:`SOLVERS`): ``"lanczos"``,
``"lanczos_values"``, ``"power"`` and ``"pyhessian"`` built in (the docs' engine page, "Solvers").
"""

from lightning_shortcut.hessian.solvers.base import (
    SOLVERS,
    EigenResult,
    Solver,
    SolverSpec,
    register_solver,
)

# importing the solvers' modules registers them
from lightning_shortcut.hessian.solvers.lanczos import DEFAULT_MAX_BASIS, LanczosProcess, lanczos
from lightning_shortcut.hessian.solvers.lanczos_values import VALUES_ONLY, lanczos_values
from lightning_shortcut.hessian.solvers.power import power_iteration
from lightning_shortcut.hessian.solvers.pyhessian import pyhessian_power_iteration

__all__ = [
    "DEFAULT_MAX_BASIS",
    "SOLVERS",
    "VALUES_ONLY",
    "EigenResult",
    "LanczosProcess",
    "Solver",
    "SolverSpec",
    "lanczos",
    "lanczos_values",
    "power_iteration",
    "pyhessian_power_iteration",
    "register_solver",
]
