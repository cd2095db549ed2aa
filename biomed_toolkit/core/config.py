"""``BaseConfig``: one configuration base for every model family (plain data + JSON round trip).

A family's configuration is a ``@dataclass`` deriving from :class:`BaseConfig` that declares
fields only: option strings as ``Literal`` types and value ranges with :func:`bounded`, both
checked here on construction (a family's ``__post_init__`` keeps only checks that relate several
fields, after ``super().__post_init__()``). Reading and writing ``config.json``, reporting unknown
keys and checking value types are written here once.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass
... class ToyConfig(BaseConfig):
...     model_type = "toy"
...     width: int = 8
...     depth: int = bounded(2, ge=1)
>>> ToyConfig.from_dict(ToyConfig(width=4).to_dict())
ToyConfig(width=4, depth=2)
>>> ToyConfig(depth=0)
Traceback (most recent call last):
...
biomed_toolkit.core.errors.CheckpointError: depth must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from .errors import CheckpointError
from .log import get_logger

log = get_logger(__name__)

UnknownKeys = Literal["warn", "error", "ignore"]


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field whose value must lie in a range (``None`` passes when the field's type
    allows it); :class:`BaseConfig` checks it on construction.

    Examples
    --------
    >>> @dataclasses.dataclass
    ... class Dropout(BaseConfig):
    ...     p: float = bounded(0.1, ge=0.0, lt=1.0)
    >>> Dropout(p=1.5)
    Traceback (most recent call last):
    ...
    biomed_toolkit.core.errors.CheckpointError: p must be a number in [0.0, 1.0), got 1.5
    """
    return dataclasses.field(default=default, metadata={"bounds": (ge, gt, le, lt)})


@dataclasses.dataclass
class BaseConfig:
    """Base of every configuration class.

    Class attributes a family may set:

    ``model_type``
        Written into ``config.json`` and checked on reading (None: not written; the official
        layout of some families has no such key).
    ``unknown_keys``
        What reading does with keys the class does not know: ``"warn"`` (default: a warning
        naming them), ``"error"`` (:class:`CheckpointError`) or ``"ignore"``.
    ``nested``
        ``{"field": DataclassType}`` for fields holding another dataclass (or a list of them),
        rebuilt from plain dicts on reading.
    """

    model_type: ClassVar[str | None] = None
    unknown_keys: ClassVar[UnknownKeys] = "warn"
    nested: ClassVar[dict[str, type]] = {}

    def __post_init__(self) -> None:
        """Every ``Literal`` field holds one of its options; every :func:`bounded` field lies in
        its range."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints.get(f.name, Any)
            options = _literal_options(hint)
            if options and value not in options:
                raise CheckpointError(f"{f.name} must be one of {options}, got {value!r}")
            if "bounds" in f.metadata:
                _check_bounds(f.name, value, hint, *f.metadata["bounds"])

    # writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field (tuples become lists), plus ``model_type``."""
        out: dict[str, Any] = {}
        if self.model_type is not None:
            out["model_type"] = self.model_type
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return json.loads(json.dumps(out, default=str))

    def to_json_file(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` (sorted keys, indented) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    # reading ---------------------------------------------------------------------------------
    @classmethod
    def is_own_format(cls, data: Mapping[str, Any]) -> bool:
        """True when ``data`` was written by :meth:`to_dict` of this class."""
        return cls.model_type is not None and data.get("model_type") == cls.model_type

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> Self:
        """Build from a dict: unknown keys reported, value types checked, nested configs rebuilt.

        Raises
        ------
        CheckpointError
            When ``data`` is not a dict, names another ``model_type``, holds a value of the
            wrong type, or (``unknown_keys="error"``) a key the class does not know.
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(
                f"{source}: a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        found_type = data.pop("model_type", None)
        if cls.model_type is not None and found_type not in (None, cls.model_type):
            raise CheckpointError(
                f"{source}: model_type {found_type!r} is not {cls.model_type!r}; this folder holds "
                f"another kind of model")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(k for k in data if k not in names)
        if unknown and cls.unknown_keys == "error":
            raise CheckpointError(
                f"{source}: keys {cls.__name__} does not know: {unknown}; the file was written by "
                "another version or belongs to another model")
        if unknown and cls.unknown_keys == "warn":
            log.warning(f"{source}: ignoring keys {cls.__name__} does not know: {unknown}")
        kwargs = {k: v for k, v in data.items() if k in names}
        hints = typing.get_type_hints(cls)
        for key, value in kwargs.items():
            if key in cls.nested:
                kwargs[key] = _rebuild(cls.nested[key], value, f"{source}: {key}")
            elif not _fits(value, hints.get(key, Any)):
                raise CheckpointError(
                    f"{source}: {key}={value!r} is not a valid {_type_name(hints[key])}; fix the "
                    "value in config.json")
        try:
            return cls(**kwargs)
        except CheckpointError as exc:  # a family's own range checks: say which file as well
            if source in str(exc):
                raise
            raise CheckpointError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: invalid {cls.__name__} ({exc})") from exc

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Self:
        """Read ``config.json``; unreadable or invalid JSON raises :class:`CheckpointError`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path} does not exist: a model folder needs config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{path} is not valid JSON ({exc}); restore the file from the original model") from None
        return cls.from_dict(data, source=str(path))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _literal_options(hint: Any) -> tuple[Any, ...]:
    """The options of a ``Literal`` hint (also inside ``X | None``); () for other hints."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and typing.get_origin(inner[0]) is Literal:
            return (*typing.get_args(inner[0]), None)
    return ()


def _check_bounds(name: str, value: Any, hint: Any, ge: float | None, gt: float | None,
                  le: float | None, lt: float | None) -> None:
    optional = _fits(None, hint)
    if value is None and optional:
        return
    integer = not _fits(0.5, hint)
    kind = isinstance(value, int) if integer else isinstance(value, int | float)
    ok = (kind and not isinstance(value, bool)
          and (ge is None or value >= ge) and (gt is None or value > gt)
          and (le is None or value <= le) and (lt is None or value < lt))
    if ok:
        return
    if integer and le is None and lt is None and (ge is not None or gt is not None):
        rule = f"an integer >= {ge}" if ge is not None else f"an integer > {gt}"
    else:
        low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else "(-inf"
        high = f"{le}]" if le is not None else f"{lt})" if lt is not None else "inf)"
        rule = f"{'an integer' if integer else 'a number'} in {low}, {high}"
    raise CheckpointError(f"{name} must be {rule}{' or null' if optional else ''}, got {value!r}")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rebuild(kind: type, value: Any, where: str) -> Any:
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, list):
        return [_rebuild(kind, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{where}: expected an object for {kind.__name__}, got {value!r}")
    if issubclass(kind, BaseConfig):  # a whole nested configuration: its own checks apply
        return kind.from_dict(value, source=where)
    try:
        return kind(**value)
    except TypeError as exc:
        raise CheckpointError(f"{where}: invalid {kind.__name__} ({exc})") from exc


def _fits(value: Any, hint: Any) -> bool:
    """Loose JSON-level type check (containers by kind, not by element)."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    kind = origin or hint
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (list, tuple):
        return isinstance(value, list | tuple)
    if kind is dict:
        return isinstance(value, Mapping)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


__all__ = ["BaseConfig", "UnknownKeys", "bounded"]
