"""Nested plain data (YAML) to a tree of frozen dataclasses, with `--set key=value` overrides: every unknown key
and every value of the wrong type, numbers that are not finite included (in sections, lists and mappings alike),
stops with one line naming the key and what it must be. Knows nothing of the
product's sections; `workflows.config` defines them and checks their values."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal

import yaml

from tasks.errors import UserError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", str: "string", int: "integer", float: "number", bool: "true/false"}.get(
        tp, str(tp)
    )


def _finite(key: str, value: int | float) -> float:
    """`value` as a float, or UserError naming `key` for NaN, an infinity or an integer past float's range
    (YAML's `.nan` and `.inf` are numbers, but no setting means anything with them)."""
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not math.isfinite(number):
        raise UserError(f"config key {key!r} must be a finite number, got {value!r}")
    return number


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` converted to type `tp`, or raise UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except UserError:
                continue
        raise UserError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise UserError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(key, v, item_tp) for v in value)
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _coerce(f"{key}.{k}", v, typing.get_args(tp)[1]) for k, v in value.items()}
        raise UserError(f"config key {key!r} must be a mapping of names to {_type_name(typing.get_args(tp)[1])}s, "
                        f"got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(key, value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from nested plain data, sections built recursively and every value checked
    against its field's type; `prefix` is the section's key path, for the messages."""
    if not isinstance(data, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'top level'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(
            f"unknown config key {prefix + str(unknown[0])!r}; valid keys here: {', '.join(prefix + n for n in names)}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, data[name], tp)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value), the value read as YAML (`3`, `true`, `[0, 1]`, `null`)."""
    if "=" not in text:
        raise UserError(f"--set expects KEY=VALUE (for example sample.size=500), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def with_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """A deep copy of `data` with every `--set a.b=value` applied (sections created where missing)."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data
