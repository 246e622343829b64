"""``shortcut-study``: the command line, built from :class:`StudyConfig` with jsonargparse; it
speaks LightningCLI's dialect (``--print_config``, ``--config FILE``, later flags winning)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

import docstring_parser
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_shortcut.study.config import StudyConfig
from lightning_shortcut.study.runner import run_study

__all__ = ["build_parser", "main"]


def _argument_type(hint: Any) -> tuple[Any, bool]:
    """The parser's type for a field's type hint, and whether the flag takes several values."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
    (inner,) = members
    if typing.get_origin(inner) is tuple:
        return typing.get_args(inner)[0], True
    return (inner | None if optional else inner), False


def build_parser() -> ArgumentParser:
    """The ``shortcut-study`` parser: ``--config``, ``--print_config`` and one flag per field."""
    parser = ArgumentParser(
        prog="shortcut-study",
        description="Reproduce the comparisons of 'Demystifying ResNet' as a table and figures.",
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file such as --print_config writes"
    )
    helps = {p.arg_name: p.description for p in docstring_parser.parse(StudyConfig.__doc__).params}
    hints = typing.get_type_hints(StudyConfig)
    for field in dataclasses.fields(StudyConfig):
        names = [f"--{field.name}"]
        if "_" in field.name:
            names.append(f"--{field.name.replace('_', '-')}")
        kind, several = _argument_type(hints[field.name])
        options: dict[str, Any] = {"type": kind, "help": helps.get(field.name)}
        options["default"] = list(field.default) if several and field.default else field.default
        if several:
            options["nargs"] = "+"
        if "choices" in field.metadata:  # the registry or budget names, read now
            options["type"] = Literal[tuple(field.metadata["choices"])]
        parser.add_argument(*names, **options)
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point of ``shortcut-study``; ``args`` default to ``sys.argv[1:]``."""
    parser = build_parser()
    namespace = parser.parse_args(args)
    try:
        config = StudyConfig(**{f.name: namespace[f.name] for f in dataclasses.fields(StudyConfig)})
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    try:
        run_study(config)
    except FileNotFoundError as error:
        raise SystemExit(f"shortcut-study: {error}") from None
