"""The typed reading of a settings block a user writes (a trial config and its ``certify``
block, a sweep spec's ``resources``, ``attack_eval``, ``stages`` and ``schedule``).

The block's frozen dataclass is the one definition of its keys; :func:`parse_block` checks a
mapping against it with a pydantic 2 model derived from its fields, in strict mode: no ``"3"``
or ``true`` for an integer, no ``1.5`` for an integer, no ``1`` for true, no ``inf``; an integer
where a number is expected (read as a float); a YAML list where the field is a tuple. The first
problem (in the order the user wrote the keys) is one line naming the dotted key, an unknown key
with a "did you mean" (``common.errors.unknown_key``). Ranges and keys that depend on each other
are the block's own ``validate`` (:func:`check_at_least` for the lower bounds most keys have).
pydantic is imported on the first parse, not with the module.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from smoothadv.common.errors import UserError, unknown_key

T = TypeVar("T")
# pydantic's error type → what the key expects (the wording of the hand-written checks before)
_EXPECTED = {"int_type": "an integer", "bool_type": "true or false", "float_type": "a number",
             "finite_number": "a finite number", "string_type": "a string",
             "list_type": "a list of numbers", "model_type": "a mapping"}


def parse_block(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """``cls`` from ``values``, each key typed strictly (see above); absent keys take ``cls``'s
    defaults. A problem names ``{prefix}{key}`` (``certify.`` + ``n0``); ranges are unchecked."""
    from pydantic import ValidationError

    try:
        typed = _model(cls).model_validate(_plain(cls, values)).model_dump(exclude_unset=True)
    except ValidationError as e:
        errors = sorted(e.errors(include_url=False), key=lambda err: _order(values, err["loc"]))
        raise _problem(cls, errors[0], prefix) from None
    return _build(cls, typed)


def _plain(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as a dict, a nested block's too (what a strict model reads)."""
    plain = dict(values)
    for key, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint) and isinstance(plain.get(key), Mapping):
            plain[key] = _plain(hint, plain[key])
    return plain


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The field types of the dataclass ``cls``, resolved (its module writes them as strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _model(cls: type) -> Any:
    """The strict pydantic model of ``cls``'s fields: a tuple field reads a list, a dataclass
    field its own model. Defaults are never read (unset keys are left out, cls fills them)."""
    from pydantic import ConfigDict, create_model

    def field_type(hint: Any) -> Any:
        if dataclasses.is_dataclass(hint):
            return _model(hint)
        if typing.get_origin(hint) is tuple:
            return list[typing.get_args(hint)[0]]
        return hint

    config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    return create_model(f"{cls.__name__}Keys", __config__=config,
                        **{name: (field_type(hint), None) for name, hint in _hints(cls).items()})


def _build(cls: type[T], typed: dict[str, Any]) -> T:
    """``cls`` from the model's values: nested blocks built, lists back to tuples."""
    hints = _hints(cls)
    for key, value in typed.items():
        if dataclasses.is_dataclass(hints[key]):
            typed[key] = _build(hints[key], value)
        elif isinstance(value, list):
            typed[key] = tuple(value)
    return cls(**typed)


def _order(values: Any, loc: tuple) -> list[int]:
    """Where the key at ``loc`` stands in what the user wrote (an unknown place last)."""
    rank = []
    for part in loc:
        keys = list(values) if isinstance(values, Mapping) else []
        rank.append(keys.index(part) if part in keys else len(keys))
        values = values.get(part) if isinstance(values, Mapping) else None
    return rank


def _problem(cls: type, error: dict[str, Any], prefix: str) -> UserError:
    """One line for pydantic's ``error``: the dotted key (list positions left out) and what it
    expects."""
    loc = error["loc"]
    if error["type"] in ("extra_forbidden", "invalid_key"):
        for part in loc[:-1]:
            cls = _hints(cls)[part]
        name = prefix + ".".join(str(p) for p in loc)
        return unknown_key(name, loc[-1], _hints(cls))
    name = prefix + ".".join(p for p in loc if isinstance(p, str))
    value = error["input"]
    if value is None and isinstance(loc[-1], str):
        return UserError(f"{name}: must be set (got null)")
    expected = _EXPECTED.get(error["type"])
    if expected is None:  # not one this module's field types give; pydantic's own words
        return UserError(f"{name}: {error['msg']}, got {value!r}")
    return UserError(f"{name}: expected {expected}, got {value!r}")


def check_at_least(block: object, prefix: str, bound: int, *keys: str) -> None:
    """Each of ``keys`` of ``block`` is ≥ ``bound``, else one line naming ``{prefix}{key}``."""
    for key in keys:
        value = getattr(block, key)
        if value < bound:
            raise UserError(f"{prefix}{key}: must be ≥ {bound}, got {value}")
