"""Which parameters a Hessian is taken over: ``params=`` resolved and checked against the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from torch import Tensor, nn

#: Which parameters to take the Hessian over: all trainable ones (``None`` or ``"all"``), the
#: ResidualStack branches (``"residual"``), a callable ``model -> parameters`` or the parameters.
ParamsSpec = (
    Literal["all", "residual"] | Callable[[nn.Module], Iterable[Tensor]] | Iterable[Tensor] | None
)

__all__ = [
    "ParamsSpec",
    "branch_parameters",
    "check_params_spec",
    "check_vector_size",
    "describe_params",
    "resolve_params",
]


def branch_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters the modules' ``branch_parameters()`` declare, once each, in module order."""
    unique: dict[int, Tensor] = {}
    for module in model.modules():
        declared = getattr(module, "branch_parameters", None)
        if callable(declared):
            unique.update((id(param), param) for param in declared())
    return list(unique.values())


def resolve_params(model: nn.Module, params: ParamsSpec) -> list[Tensor]:
    """The parameters to differentiate, checked against ``model`` (see :data:`ParamsSpec`).

    Raises:
        ValueError: if a parameter is not one of the model's, none requires grad, or
            ``"residual"`` finds no ResidualStack.
        TypeError: if ``params`` is none of the above.
    """
    params = check_params_spec(params)
    if params is None or params == "all":
        chosen = [p for p in model.parameters() if p.requires_grad]
        if not chosen:
            raise ValueError(f"{type(model).__name__} has no parameter that requires grad.")
        return chosen
    if params == "residual":
        chosen = branch_parameters(model)
        if not chosen:
            raise ValueError(
                f"params='residual' but {type(model).__name__} contains no ResidualStack (no "
                "module with a branch_parameters() method); pass params='all', a callable or the "
                "parameters."
            )
        return _checked(model, chosen)
    return _checked(model, list(params(model) if callable(params) else params))


def check_params_spec(params: ParamsSpec) -> ParamsSpec:
    """Return ``params`` if it is a :data:`ParamsSpec` (an iterable as a tuple, to be read more
    than once); ``ValueError`` on another string, ``TypeError`` on another kind."""
    if params is None:
        return None
    if isinstance(params, str):
        if params not in ("all", "residual"):
            raise ValueError(
                f"`params` must be 'all', 'residual', a callable or parameters, got {params!r}."
            )
        return params
    if callable(params) and not isinstance(params, Tensor):
        return params
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise TypeError(
            "`params` must be 'all', 'residual', a callable or an iterable of parameters, got "
            f"{type(params).__name__}."
        )
    return tuple(params)


def _checked(model: nn.Module, chosen: list[Tensor]) -> list[Tensor]:
    owned = {id(p) for p in model.parameters()}
    if not chosen:
        raise ValueError("`params` is empty; pass None for all trainable parameters.")
    for index, param in enumerate(chosen):
        if not isinstance(param, Tensor) or id(param) not in owned:
            raise ValueError(
                f"`params[{index}]` (shape {tuple(getattr(param, 'shape', ()))}) is not a parameter "
                f"of {type(model).__name__}."
            )
        if not param.requires_grad:
            raise ValueError(f"`params[{index}]` does not require grad.")
    if len({id(p) for p in chosen}) != len(chosen):
        raise ValueError("`params` lists a parameter more than once.")
    return chosen


def describe_params(params: ParamsSpec, model: nn.Module | None = None) -> str:
    """``params`` for an error message: parameters by their names in ``model``, else shapes."""
    if params is None or isinstance(params, str):
        return repr(params)
    if callable(params) and not isinstance(params, Tensor):
        return getattr(params, "__name__", type(params).__name__)
    names = {} if model is None else {id(p): name for name, p in model.named_parameters()}
    return "[{}]".format(
        ", ".join(
            repr(names[id(p)]) if id(p) in names else f"<tensor of shape {tuple(p.shape)}>"
            for p in params
        )
    )


def check_vector_size(
    vectors: Iterable[Tensor], dim: int, params: ParamsSpec, model: nn.Module
) -> None:
    """Raise a ``ValueError`` where a spectrum's vectors do not have the ``dim`` of ``params``."""
    for vector in vectors:
        if vector.numel() != dim:
            raise ValueError(
                f"The spectrum's vectors have {vector.numel()} entries but the parameters "
                f"(params={describe_params(params, model)}) of {type(model).__name__} have {dim}: "
                "pass the params the spectrum was measured with (under fully_shard a spectrum holds "
                "this rank's rows only)."
            )
