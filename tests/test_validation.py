import math
import re

import pytest

from lightning_shortcut.hessian._validation import (
    check_choice,
    check_float,
    check_fraction,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_positive_ints,
)


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (check_positive_int, 3, 3),
        (check_non_negative_int, 0, 0),
        (check_positive_ints, [1, 28, 28], (1, 28, 28)),
        (check_positive_float, 2, 2.0),
        (check_non_negative_float, 0.0, 0.0),
        (check_fraction, 0.25, 0.25),
    ],
)
def test_accepted_values_are_returned(check, value, expected):
    result = check("x", value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_positive_int, True),
        (check_positive_int, 1.0),
        (check_positive_int, "2"),
        (check_non_negative_int, None),
        (check_positive_ints, (1, 2.0)),
        (check_positive_ints, 3),
        (check_positive_float, False),
        (check_non_negative_float, "10%"),
        (check_fraction, None),
    ],
)
def test_a_wrong_type_is_a_type_error(check, value):
    with pytest.raises(TypeError, match=rf"`x` must be .*, got {re.escape(repr(value))}"):
        check("x", value)


@pytest.mark.parametrize(
    ("check", "value", "accepted"),
    [
        (check_positive_int, 0, ">= 1"),
        (check_non_negative_int, -1, ">= 0"),
        (check_positive_ints, (), "non-empty"),
        (check_positive_ints, [1, 0], "positive ints"),
        (check_positive_float, 0.0, "> 0"),
        (check_non_negative_float, -0.1, ">= 0"),
        (check_non_negative_float, math.inf, "finite"),
        (check_positive_float, math.nan, "finite"),
        (check_fraction, 1.0, r"\[0, 1\)"),
    ],
)
def test_a_wrong_value_is_a_value_error(check, value, accepted):
    with pytest.raises(ValueError, match=rf"`x` must be .*{accepted}.*, got "):
        check("x", value)


def test_float_range_and_choices():
    assert check_float("tol", 0.5, low=0, high=1, include_low=False, include_high=False) == 0.5
    with pytest.raises(ValueError, match=r"`tol` must be a float in \(0, 1\), got 1"):
        check_float("tol", 1, low=0, high=1, include_low=False, include_high=False)
    assert check_choice("mode", "eval", ("eval", "train")) == "eval"
    with pytest.raises(
        ValueError, match=r"Unknown mode 'test'; expected one of \['eval', 'train'\]"
    ):
        check_choice("mode", "test", ("eval", "train"))
    with pytest.raises(ValueError, match="Unknown data"):
        check_choice("data", ["mnist"], {"mnist": 1})  # unhashable: not a choice either
