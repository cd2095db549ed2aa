"""Checks of the options given to public calls, at entry, with errors that name the fix.

Every public call of every domain that takes a count (``batch_size``, ``top_k``, ``max_new_tokens``, a
``max_len``...) or a list of molecules checks it here before any work starts, so that a wrong
option never turns into NaN predictions, a silently shortened table or a raw library error.

Examples
--------
>>> from biomed_toolkit.core.validation import check_int
>>> check_int(8, "batch_size", where="predict")
8
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Literal, overload

from biomed_toolkit.core.errors import InputError


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages (a 400-digit int stays readable).

    Examples
    --------
    >>> short_repr(10**100, 12)
    '100000000...'
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@overload
def check_int(
    value: object, name: str, *, where: str, minimum: int = ..., allow_none: Literal[False] = ...,
    error: type[InputError] = ..., example: int | None = ...,
) -> int: ...


@overload
def check_int(
    value: object, name: str, *, where: str, minimum: int = ..., allow_none: bool,
    error: type[InputError] = ..., example: int | None = ...,
) -> int | None: ...


def check_int(
    value: object,
    name: str,
    *,
    where: str,
    minimum: int = 1,
    allow_none: bool = False,
    error: type[InputError] = InputError,
    example: int | None = None,
) -> int | None:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum`` (or ``None`` when allowed).

    Parameters
    ----------
    value
        The option as given (``bool`` and non-integral numbers are refused).
    name, where
        Option and call names, for the message (``"batch_size"``, ``"mammal.predict"``).
    minimum
        Smallest accepted value.
    allow_none
        Accept ``None`` (returned as is).
    error
        The error class raised (:class:`InputError` or a subclass).
    example
        A good value to show in the fix (default ``max(minimum, 1)``).

    Raises
    ------
    InputError
        Naming the option, the call, the value given and an accepted example.

    Examples
    --------
    >>> check_int(None, "top_k", where="virtual_screen", allow_none=True) is None
    True
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and int(value) >= minimum:  # type: ignore[arg-type]
        return int(value)  # type: ignore[arg-type]
    accepted = f"an integer >= {minimum}" + (" or None" if allow_none else "")
    good = example if example is not None else max(minimum, 1)
    raise error(
        f"{where}: {name} must be {accepted}, got {short_repr(value)} ({type(value).__name__}); "
        f"pass e.g. {name}={good}"
    )


def check_positive_float(value: object, name: str, *, where: str, allow_none: bool = False) -> float | None:
    """Return ``value`` as a ``float`` if it is a finite number ``> 0`` (or ``None`` when allowed).

    Examples
    --------
    >>> check_positive_float(1e-4, "learning_rate", where="finetune")
    0.0001
    """
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and v > 0:
            return v
    accepted = "a finite number > 0" + (" or None" if allow_none else "")
    raise InputError(f"{where}: {name} must be {accepted}, got {short_repr(value)}; pass e.g. {name}=1e-4")


def check_list(value: object, name: str, *, where: str, example: str) -> list[object]:
    """``value`` as a list; a single string (or a mapping / non-iterable) is refused.

    A string is iterable, so ``"CCO"`` would otherwise become the three molecules ``C``, ``C``, ``O``.

    Parameters
    ----------
    example
        One element to show in the fix (``"CCO"`` gives ``pass ["CCO"]``).

    Examples
    --------
    >>> check_list(("CCO", "CCN"), "smiles_list", where="virtual_screen", example="CCO")
    ['CCO', 'CCN']
    """
    if isinstance(value, str | bytes):
        raise InputError(
            f"{where}: {name} must be a list, got the single string {short_repr(value)} (a string would be "
            f"read character by character); pass [{short_repr(value)}] for one item"
        )
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise InputError(
            f"{where}: {name} must be a list (or another sequence), got {type(value).__name__}; "
            f"pass e.g. [{example!r}]"
        )
    return list(value)


__all__ = ["check_int", "check_list", "check_positive_float", "short_repr"]
