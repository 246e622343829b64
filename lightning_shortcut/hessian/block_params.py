"""Which parameters each block holds: ``blocks=`` resolved and checked against the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from torch import Tensor, nn

from lightning_shortcut.hessian.params import ParamsSpec, describe_params, resolve_params

__all__ = ["BlockMembers", "BlocksSpec", "resolve_blocks"]

#: What a block is made of: a parameter's or a module's name in the model (a module's name stands
#: for all its parameters), a parameter, a module, or an iterable of these.
BlockMembers = str | Tensor | nn.Module | Iterable[str | Tensor | nn.Module]
#: How the parameters are cut into blocks: ``"residual"`` (one block per module that declares its
#: residual branch with a ``branch_parameters()`` method, such as every unit of a
#: :class:`~lightning_shortcut.ResidualStack`), ``"modules"`` (the model's top-level modules, and
#: each parameter of its own), a mapping ``name -> members`` or a callable ``model -> mapping``.
BlocksSpec = (
    Literal["residual", "modules"]
    | Mapping[str, BlockMembers]
    | Callable[[nn.Module], Mapping[str, BlockMembers]]
)


def _declared_blocks(model: nn.Module, blocks: BlocksSpec) -> Mapping[Any, Any]:
    if blocks == "residual":
        declared = {
            name or type(model).__name__: list(module.branch_parameters())
            for name, module in model.named_modules()
            if callable(getattr(module, "branch_parameters", None))
        }
        if not declared:
            raise ValueError(
                f"blocks='residual' but {type(model).__name__} contains no ResidualStack (no "
                "module with a branch_parameters() method); pass blocks='modules', a mapping "
                "name -> parameters or a callable returning one."
            )
        return declared
    if blocks == "modules":  # the top-level modules, and each of the model's own parameters
        return dict(model.named_children()) | dict(model.named_parameters(recurse=False))
    if isinstance(blocks, str):
        raise ValueError(
            f"`blocks` must be 'residual', 'modules', a mapping or a callable, got {blocks!r}."
        )
    if callable(blocks) and not isinstance(blocks, Mapping):
        blocks = blocks(model)
    if not isinstance(blocks, Mapping):
        raise TypeError(
            "`blocks` must be 'residual', 'modules', a mapping name -> parameters or a callable "
            f"model -> such a mapping; got (or the callable returned) {type(blocks).__name__}."
        )
    return blocks


def _members(model: nn.Module, block: str, members: Any, names: Mapping[int, str]) -> list[Tensor]:
    if isinstance(members, str | Tensor | nn.Module):
        members = [members]
    elif not isinstance(members, Iterable):
        raise TypeError(
            f"Block {block!r}: members must be parameter or module names, parameters, modules or "
            f"an iterable of these, got {type(members).__name__}."
        )
    found: list[Tensor] = []
    for index, member in enumerate(members):
        if isinstance(member, str):
            matched = [
                param
                for name, param in model.named_parameters()
                if name == member or name.startswith(member + ".")
            ]
            if not matched:
                example = next(iter(names.values()), None)
                raise ValueError(
                    f"Block {block!r}: {member!r} matches no parameter of {type(model).__name__} "
                    f"(give a parameter's name such as {example!r} or a module's)."
                )
            owned = matched
        elif isinstance(member, nn.Module):
            owned = list(member.parameters())
        elif isinstance(member, Tensor):
            owned = [member]
        else:
            raise TypeError(
                f"Block {block!r}: member {index} must be a name, a parameter or a module, got "
                f"{type(member).__name__}."
            )
        for param in owned:
            if id(param) not in names:
                raise ValueError(
                    f"Block {block!r}: member {index} (a tensor of shape {tuple(param.shape)}) is "
                    f"not a parameter of {type(model).__name__}."
                )
        found += owned
    return found


def resolve_blocks(
    model: nn.Module, blocks: BlocksSpec, params: ParamsSpec = None
) -> dict[str, list[Tensor]]:
    """The blocks as ``name -> parameters``, checked against ``model``, in the order given; only
    the parameters of ``params`` are kept (a block you named that is left with none is refused).

    Args:
        model: the model.
        blocks: a :data:`BlocksSpec`; members are parameter or module names, parameters, modules or
            iterables of these.
        params: the parameters the Hessian is taken over.

    Returns:
        ``name -> parameters``, each parameter once.

    Raises:
        ValueError: naming the blocks, where two share a parameter, a member matches none of the
            model's parameters, a block is empty or unnamed, ``"residual"`` finds no residual
            unit, or no block is left.
        TypeError: if ``blocks`` or a block's members are of none of the accepted kinds.

    Example:
        ```python
        blocks = resolve_blocks(model, {"encoder": "encoder", "head": [model.head.weight]})
        ```
    """
    chosen = {id(param) for param in resolve_params(model, params)}
    names = {id(param): name for name, param in model.named_parameters()}
    named_by_user = blocks not in ("residual", "modules")
    owners: dict[int, str] = {}
    resolved: dict[str, list[Tensor]] = {}
    declared = _declared_blocks(model, blocks)
    for block, members in declared.items():
        if not isinstance(block, str) or not block:
            raise ValueError(f"A block's name must be a non-empty string, got {block!r}.")
        kept: list[Tensor] = []
        for param in _members(model, block, members, names):
            if id(param) not in chosen or any(param is other for other in kept):
                continue
            if id(param) in owners:
                raise ValueError(
                    f"Blocks {owners[id(param)]!r} and {block!r} overlap: both hold parameter "
                    f"{names[id(param)]!r}; a parameter may be in one block only."
                )
            owners[id(param)] = block
            kept.append(param)
        if kept:
            resolved[block] = kept
        elif named_by_user:
            raise ValueError(
                f"Block {block!r} is empty: it holds no parameter of the Hessian (none that "
                f"requires grad among params={describe_params(params, model)})."
            )
    if not resolved:
        named = blocks if isinstance(blocks, str) else list(declared)
        raise ValueError(
            f"No block of blocks={named!r} holds a parameter of the Hessian "
            f"(params={describe_params(params, model)})."
        )
    return resolved
