"""Eigensolvers on symmetric operators, one registry of them (:data:`SOLVERS`).

Built in: ``"lanczos"`` (thick-restart Lanczos, the default), ``"lanczos_values"`` (Lanczos for
values alone, three vectors: what a call that wants no eigenvector runs), ``"power"`` (shifted power
iteration) and ``"pyhessian"`` (pyhessian 0.1, wrapped). Add one with :func:`register_solver`; every solver has
the signature of :class:`Solver` and returns a
:class:`~lightning_shortcut.hessian.HessianSpectrum` (``EigenResult`` is the same type).
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
