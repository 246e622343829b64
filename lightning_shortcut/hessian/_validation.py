"""Argument checks shared by the whole package (here, its lowest layer): a wrong type raises
``TypeError``, a value outside the accepted ones ``ValueError``, naming the argument, the value and
what is accepted; ``bool`` is never a number. Each returns the value (floats as ``float``)."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, TypeVar

T = TypeVar("T")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _wrong_type(name: str, value: object, accepted: str) -> TypeError:
    return TypeError(f"`{name}` must be {accepted}, got {value!r} ({type(value).__name__}).")


def _check_int(name: str, value: object, minimum: int, accepted: str) -> int:
    if not _is_int(value):
        raise _wrong_type(name, value, accepted)
    if value < minimum:
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int >= 1`` (``TypeError``/``ValueError`` otherwise)."""
    return _check_int(name, value, 1, "a positive int (>= 1)")


def check_non_negative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int >= 0`` (``TypeError``/``ValueError`` otherwise)."""
    return _check_int(name, value, 0, "an int >= 0")


def check_positive_ints(name: str, values: object) -> tuple[int, ...]:
    """Return ``values``, a non-empty list or tuple of positive ints, as a tuple."""
    accepted = "a non-empty sequence of positive ints"
    if not isinstance(values, list | tuple) or not all(_is_int(v) for v in values):
        raise _wrong_type(name, values, accepted)
    if not values or any(v < 1 for v in values):
        raise ValueError(f"`{name}` must be {accepted}, got {values!r}.")
    return tuple(values)


def check_float(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    include_low: bool = True,
    include_high: bool = True,
) -> float:
    """Return ``value`` as a finite ``float`` between ``low`` and ``high``."""
    accepted = _float_range(low, high, include_low, include_high)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _wrong_type(name, value, accepted)
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not (math.isfinite(value) and above and below):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    return float(value)


def _float_range(low: float, high: float, include_low: bool, include_high: bool) -> str:
    if math.isinf(low) and math.isinf(high):
        return "a finite float"
    if math.isinf(high):
        return f"a finite float {'>=' if include_low else '>'} {low:g}"
    if math.isinf(low):
        return f"a finite float {'<=' if include_high else '<'} {high:g}"
    left, right = "[" if include_low else "(", "]" if include_high else ")"
    return f"a float in {left}{low:g}, {high:g}{right}"


def check_positive_float(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float > 0`` (``TypeError``/``ValueError`` otherwise)."""
    return check_float(name, value, low=0.0, include_low=False)


def check_non_negative_float(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float >= 0`` (``TypeError``/``ValueError`` otherwise)."""
    return check_float(name, value, low=0.0)


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` in ``[0, 1)`` (``TypeError``/``ValueError`` otherwise)."""
    return check_float(name, value, low=0.0, high=1.0, include_high=False)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool`` (``TypeError`` otherwise, ``0`` and ``None`` too)."""
    if not isinstance(value, bool):
        raise _wrong_type(name, value, "a bool")
    return value


def check_choice(name: str, value: T, choices: Collection[Any]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` listing them."""
    try:
        known = value in choices
    except TypeError:  # an unhashable value asked of a dict or set: not one of them either
        known = False
    if not known:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {list(choices)}.")
    return value
