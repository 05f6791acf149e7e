"""Typed dataclass configs: YAML in, `--set a.b=c` overrides, errors that name the key and the fix.

Each config class validates its own values in `__post_init__`; this module builds nested dataclasses
from plain dicts, rejecting unknown keys and ill-typed values before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
                if isinstance(value, dict) and dataclasses.is_dataclass(a):
                    raise   # a mapping meant for this section: its own error names the bad field
        raise ConfigError(f"{key}: {value!r} fits none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not allowed; use {_type_name(tp)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (inner, *_) = get_args(tp) or (Any,)
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict | None, prefix: str = "") -> T:
    """Build `cls` from `data`, rejecting unknown keys (with a did-you-mean) and ill-typed values."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        renamed = getattr(cls, "RENAMED", {})  # keys a config class replaced: say by what
        if k in renamed:
            hint = f" (replaced by {renamed[k]})"
        raise ConfigError(f"unknown config key {_join(prefix, k)!r}{hint}; allowed keys under "
                          f"{prefix or 'the top level'}: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], _join(prefix, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(_rooted(prefix, str(e))) from None
    except TypeError as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def _rooted(prefix: str, msg: str) -> str:
    """Give a nested section's error its full key: prefix 'pretrain.optim' + 'optim.lr: ...' ->
    'pretrain.optim.lr: ...'; a message already rooted at the top section is left alone."""
    if not prefix:
        return msg
    top, last = prefix.split(".")[0], prefix.split(".")[-1]
    if msg.split(":")[0].split(".")[0].split("[")[0] == top:
        return msg
    if msg.startswith((last + ".", last + ":", last + "[")):
        head = prefix.rsplit(".", 1)[0] if "." in prefix else ""
        return f"{head}.{msg}" if head else msg
    return f"{prefix}: {msg}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set pretrain.max_steps=100")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides to a nested dict (values parsed as YAML scalars/lists)."""
    data = dict(data)
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is a value, not a section")
            else:
                nxt = node[p] = dict(nxt)
            node = nxt
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass --config configs/demo.yaml or another YAML")
    with open(p) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data = load_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def check(cond: bool, key: str, msg: str) -> None:
    """Validation helper for __post_init__: `check(x > 0, "lr", "must be > 0, e.g. 3e-4")`."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
