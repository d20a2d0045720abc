"""Typed, frozen configuration: dataclasses whose defaults are the paper's, built from YAML.

Every layer defines its own section as a frozen dataclass with a ``validate()`` method that raises
:class:`ConfigError` naming the field and the allowed range. :func:`from_dict` builds any such dataclass
from a nested dict, rejecting unknown keys and wrong types before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sigma_ray.infra.checks import ConfigError, check_choice

T = TypeVar("T")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and dicts to dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name} = {value!r} matches none of {tp}")
    if origin is typing.Literal:
        check_choice(name, value, typing.get_args(tp))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=name)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(kt, k, f"{name}.key"): _coerce(vt, v, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    Nested dataclass fields take nested dicts. ``validate()`` runs on the result when ``cls`` defines it. A class
    whose fields repeat one another's values defines ``fill_derived(data) -> data``, which fills the repeated keys
    that ``data`` leaves out from the ones it states, so a file states each fact once.
    """
    data = dict(data or {})
    fill = getattr(cls, "fill_derived", None)
    if callable(fill):
        data = fill(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix}" if prefix else ""
        close = [m for k in unknown for m in difflib.get_close_matches(k, fields, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}{hint}; "
                          f"allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(hints[key], value, name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix}.{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None
    return obj


def to_dict(obj: Any) -> Any:
    """A plain dict/list/scalar tree of a config, suitable for YAML (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=10"`` -> (["train", "epochs"], 10); the value is parsed as YAML (so ``false`` is False)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    if not raw.strip():
        return keys, ""
    try:
        return keys, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({yaml_problem(e)})") from None


def yaml_problem(error: yaml.YAMLError, path: str | Path | None = None) -> str:
    """A YAML syntax error in one line: ``FILE:LINE: what`` (lines counted from 1), without the parser's
    echo of the source."""
    mark = getattr(error, "problem_mark", None)
    what = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    if context:
        what = f"{what} ({context})"
    if mark is None:
        return f"{path}: {what}" if path is not None else what
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{path}:{mark.line + 1}: {what} ({where})" if path is not None else f"{what} at {where}"


def merge_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides to a nested dict (a copy); keys are checked later by from_dict."""
    out = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


BASE_KEY = "base"   # a config file's other file that it changes: ``base: demo.yaml`` (relative to the file)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` written over it: mappings merge key by key, any other value replaces (a copy)."""
    out = _deep_copy(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _deep_copy(v)
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping). A top-level ``base: OTHER.yaml`` (a path relative
    to this file) reads that file first and writes this one over it (:func:`deep_merge`), so an experiment states
    only what it changes; bases may have bases, a cycle is an error."""
    path = Path(path)
    if not path.is_file():
        where = f" (the {BASE_KEY} of {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file {path} does not exist{where}")
    try:
        with path.open() as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_problem(e, path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: {BASE_KEY} must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: {BASE_KEY} {base} leads back to itself")
    return deep_merge(load_yaml(base_path, (*_seen, path.resolve())), data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file plus ``section.field=value`` overrides, validated."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, merge_overrides(data, overrides))


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w") as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)


def run_config_command(load: typing.Callable[[], Any], run: typing.Callable[[Any], int], dry_run: bool = False,
                       failures: typing.Mapping[type[Exception], int] | None = None) -> int:
    """The shape of every config-driven command: ``load()`` the config, print it and stop on ``dry_run``, else
    ``run(config)``. Exit status: run's status; 2 for a ConfigError (from loading or running), printed as
    ``config error: ...``; for an exception of a type in ``failures``, the status it maps to, the message printed
    as ``error: ...`` (no traceback)."""
    import sys

    try:
        config = load()
        if dry_run:
            print(yaml.safe_dump(to_dict(config), sort_keys=False))
            return 0
        return run(config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except tuple(failures or ()) as e:
        print(f"error: {e}", file=sys.stderr)
        return next(code for kind, code in failures.items() if isinstance(e, kind))
