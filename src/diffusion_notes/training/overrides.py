"""`--set key=value` on the command line: a model config with some fields changed.

Values are parsed with the field's type (int, float, bool, str, optional, or
JSON for anything else), and a field the config lacks is an error that lists
the ones it has.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable

from diffusion_notes.run_files import _to_tuple_if_needed, config_to_dict


def _parse_value(text: str, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        hint = non_none[0] if len(non_none) == 1 else None
    try:
        if hint is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(text)
        value = json.loads(text)
        return _to_tuple_if_needed(value, hint)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"--set {key}={text}: cannot read {text!r} as {name}") from None


def parse_overrides(items: Iterable[str] | dict | None) -> dict:
    """Turn ["hidden=16", "num_blocks=1"] into {"hidden": "16", "num_blocks": "1"} (a dict passes through)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config, overrides: Iterable[str] | dict | None):
    """A copy of the dataclass `config` with `overrides` applied.

    String values are parsed with the field's type (int, float, bool, str,
    optional, or JSON for anything else); other values are used as given.
    """
    overrides = parse_overrides(overrides)
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    values = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(
                f"--set {key}: {type(config).__name__} has no field {key!r}; its fields: {', '.join(sorted(fields))}"
            )
        values[key] = _parse_value(value, hints.get(key), key) if isinstance(value, str) else value
    return dataclasses.replace(config, **values)


def config_diff(config, default) -> dict:
    """Fields of `config` that differ from `default`, as JSON values (for a `--set` command line)."""
    a, b = config_to_dict(config), config_to_dict(default)
    return {k: v for k, v in a.items() if b.get(k) != v}
