"""Config files, independent of any schema: YAML with `base:` inheritance, dotted `key=value` overrides, and
typed dataclasses built from plain dicts.

The schema (which sections and keys exist) lives with the code that owns each section: `model.config`,
`data.config`, `train.config`. This module only knows how to read YAML and fill dataclasses:
- YAML is read with a SafeLoader that also reads `3e-4` as a float and refuses duplicate keys in a mapping.
- A key the dataclass does not declare is an error suggesting the closest valid key.
- A value of the wrong type names the key, the value and the expected type; floats must be finite.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError

# ---- YAML ----------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`, which nobody writes) and refuses a
    key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings _Loader reads as floats, so a saved '1e5' reloads as a string."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_tree(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving `base:` (a path relative to the file, or a list of them) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _chain:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(str(p) for p in (*_chain, resolved))}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a YAML text file (it is not valid UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    merged: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be a path or a list of paths, got {base!r}")
        merged = deep_merge(merged, load_yaml_tree(path.parent / base, (*_chain, resolved)))
    return deep_merge(merged, raw)


# ---- overrides -----------------------------------------------------------------------------------------------


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a raw config dict; values are parsed as YAML."""
    raw = deep_merge({}, raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value (for example train.max_steps=200)")
        value = parse_yaml(text, f"override {key}")
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent, or an empty section (`train:` with every key commented out)
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
            node[part] = node = dict(child)  # copy on write: the caller's nested dicts stay untouched
        node[parts[-1]] = value
    return raw


# ---- dict -> dataclasses -------------------------------------------------------------------------------------


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a (nested) config dataclass."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str, root: type) -> ConfigError:
    """Suggest, in order: a similar key of the same section (`model.eps` -> `model.norm_eps`), the same key in
    another section (`train.lr` -> `optim.lr`), or the closest key anywhere."""
    valid = all_keys(root) + [f.name for f in dataclasses.fields(root)]
    section, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    close = close or [s for s in siblings if len(leaf) >= 3 and (leaf in s or s in leaf)][:1]
    guesses = [f"{section}.{close[0]}" if section else close[0]] if close else []
    guesses = guesses or [k for k in valid if k.rpartition(".")[2] == leaf]
    guesses = guesses or difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean '{guesses[0]}'?)" if guesses else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        expected = " or ".join(_type_name(a) for a in args).replace("NoneType", "null")
        raise ConfigError(f"config key '{key}' expects {expected}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if isinstance(value, str) and args == (str,):
            value = [value]  # `data.sources=file.txt` on the command line means a one-item list
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r} ({type(value).__name__})")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported config field type {tp} for {key}")
    if not ok:
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    return float(value) if tp is float else value


def build(cls: type, raw: Any, prefix: str = "", root: type | None = None) -> Any:
    """A `cls` dataclass from a plain dict: nested dataclass fields recurse, every value is type-checked, and an
    unknown key suggests the closest key of `root` (the top-level schema; `cls` itself by default)."""
    root = root or cls
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise _unknown_key(f"{prefix}{key}", root)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, f"{prefix}{key}.", root)
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)




def dump_yaml(data: dict) -> str:
    """YAML text that load_yaml_tree reads back to equal data."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
