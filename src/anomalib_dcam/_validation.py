# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Argument checks that name the option at fault and what it accepts."""

from enum import Enum
from typing import TypeVar

EnumT = TypeVar("EnumT", bound=Enum)


def coerce_choice(value: object, choices: type[EnumT], option: str) -> EnumT:
    """Turn a string or enum member into a member of ``choices``.

    Args:
        value: The value the user passed (a member, its value or its name, any case).
        choices: The enum of accepted values.
        option: The option's name, used in the error message.

    Returns:
        The matching enum member.

    Raises:
        ValueError: If ``value`` is not one of the accepted values.
    """
    if isinstance(value, choices):
        return value
    if isinstance(value, str):
        for member in choices:
            if value.lower() in {str(member.value).lower(), member.name.lower()}:
                return member
    accepted = ", ".join(repr(member.value) for member in choices)
    msg = f"{option}={value!r} is not supported; accepted values are {accepted}."
    raise ValueError(msg)


def check_non_negative(value: float, option: str) -> float:
    """Return ``value`` as a float, or raise if it is negative or not a number.

    Raises:
        ValueError: If ``value`` is negative, NaN or not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        msg = f"{option}={value!r} is not accepted; it must be a number >= 0."
        raise ValueError(msg)
    return float(value)


def check_positive(value: float, option: str) -> float:
    """Return ``value`` as a float, or raise if it is not strictly positive.

    Raises:
        ValueError: If ``value`` is zero, negative, NaN or not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        msg = f"{option}={value!r} is not accepted; it must be a number > 0."
        raise ValueError(msg)
    return float(value)


def check_unit_interval(value: float, option: str, meaning: str = "") -> float:
    """Return ``value`` as a float, or raise if it is not a number in ``[0, 1]``.

    Args:
        value: The option's value.
        option: The option's name, for the message.
        meaning: What the values mean, appended to the message (e.g. ``"0 switches it off"``).

    Raises:
        ValueError: If ``value`` is outside ``[0, 1]``, NaN or not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        msg = f"{option}={value!r} is not accepted; it must be a number in [0, 1]{': ' + meaning if meaning else ''}."
        raise ValueError(msg)
    return float(value)
