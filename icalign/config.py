"""Experiment configs: overrides by dotted key, TOML files, round trips through JSON.

An experiment's config is a frozen dataclass whose fields are values or nested frozen
dataclasses (``model``, ``train``, ``eval``, ...); each validates itself on construction.
This module changes such a config from strings without editing code:

* :func:`override` applies ``"model.n_layers=4"``-style assignments, parsing each value to
  the field's declared type. An unknown key lists the valid keys at its level; a value that
  does not parse, or that the config's own validation rejects, names the key, the value and
  what is allowed. Nothing here traces or compiles anything.
* :func:`load_toml` reads a saved variant (tables for the nested parts); :func:`to_toml`
  writes one, so ``icalign run NAME --show-config > my.toml`` round-trips through
  ``--config my.toml``.
* :func:`to_dict` / :func:`from_dict` store a resolved config in a result JSON and rebuild
  it; :func:`short_hash` names a variant's output folder.

``None`` (a derived field such as ``model.head_dim``) is written ``none``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from icalign.core.validate import parse_input_file

__all__ = ["ConfigError", "override", "load_toml", "to_toml", "to_dict", "from_dict", "short_hash", "keys",
           "describe_keys"]


class ConfigError(ValueError):
    """A config key or value that cannot be used (the message names it)."""


def _is_config(obj) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def keys(cfg, prefix: str = "") -> list[str]:
    """Every settable dotted key of ``cfg``."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out += keys(value, f"{prefix}{f.name}.") if _is_config(value) else [f"{prefix}{f.name}"]
    return out


def describe_keys(cfg, prefix: str = "", values: bool = True) -> list[tuple[str, str]]:
    """(dotted key, description) for every settable key of ``cfg``: its type, its value in
    ``cfg`` (with ``values``), the allowed values and a help text where the field's metadata
    gives them (``dataclasses.field(metadata={"help": ..., "choices": ...})``; choices may be
    a function, for a registry that grows at run time)."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _is_config(value):
            out += describe_keys(value, f"{prefix}{f.name}.", values)
            continue
        tp = _hints(type(cfg))[f.name]
        parts = [_describe(tp)] + ([f"default {_plain(value)}"] if values else [])
        choices = f.metadata.get("choices")
        if choices:
            each = "each " if typing.get_origin(_unwrap_optional(tp)[0]) is tuple else ""
            parts.append(f"{each}one of " + ", ".join(map(str, choices() if callable(choices) else choices)))
        text = "; ".join(parts)
        out.append((f"{prefix}{f.name}", text + (f". {f.metadata['help']}" if f.metadata.get("help") else "")))
    return out


def _plain(v) -> str:
    if v is None or isinstance(v, bool):
        return str(v).lower()
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _describe(tp) -> str:
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        name = f"a list of {typing.get_args(inner)[0].__name__} (a,b or [a, b])"
    else:
        name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(inner, str(inner))
    return name + (" or none" if optional else "")


def _parse_scalar(tp, raw):
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.strip().lower() in ("true", "1", "yes")
        raise ValueError
    if tp is int:
        if isinstance(raw, bool):
            raise ValueError
        if isinstance(raw, int):
            return raw
        text = str(raw).strip().replace("_", "")
        return int(text)
    if tp is float:
        if isinstance(raw, bool):
            raise ValueError
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise ValueError
        return raw
    raise ValueError


def _list_items(text: str) -> list[str]:
    """The items of a list written ``a,b``, ``[a, b]`` or as TOML writes it, ``["a", "b"]``."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items = [x.strip() for x in text.split(",") if x.strip()]
    return [x[1:-1] if len(x) >= 2 and x[0] == x[-1] and x[0] in "\"'" else x for x in items]


def parse_value(tp, raw):
    """``raw`` (a string from the command line, or a TOML value) as type ``tp``."""
    inner, optional = _unwrap_optional(tp)
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null"))):
        return None
    if typing.get_origin(inner) is tuple:
        elem = typing.get_args(inner)[0]
        items = raw if isinstance(raw, (list, tuple)) else _list_items(str(raw))
        return tuple(_parse_scalar(elem, x.strip() if isinstance(x, str) else x) for x in items)
    return _parse_scalar(inner, raw)


def _apply(cfg, changes: dict, prefix: str = ""):
    """``cfg`` with ``changes`` ({field: raw value or nested dict}) applied, each section
    rebuilt once with all its changed fields, so constraints between fields (such as
    eval.sensitivity_contexts <= eval.contexts) are checked on the final values only."""
    names = [f.name for f in dataclasses.fields(cfg)]
    values = {}
    for name, raw in changes.items():
        key = f"{prefix}{name}"
        if name not in names:
            level = f"under {prefix.rstrip('.')!r}" if prefix else "at the top level"
            raise ConfigError(f"unknown config key {key!r}; valid keys {level}: {', '.join(names)}")
        current = getattr(cfg, name)
        if isinstance(raw, dict):
            if not _is_config(current):
                raise ConfigError(f"config key {key!r} is a value, not a section")
            values[name] = _apply(current, raw, f"{key}.")
            continue
        if _is_config(current):
            raise ConfigError(f"config key {key!r} is a section; set one of its keys: "
                              f"{', '.join(keys(current, key + '.'))}")
        tp = _hints(type(cfg))[name]
        sweep = f"{name}_grid"
        if sweep in names and typing.get_origin(_unwrap_optional(tp)[0]) is not tuple:
            if isinstance(raw, str) and "," in raw:
                # a list given to a scalar that has a grid (train.lr=1e-3,3e-3,1e-2) sweeps it: the
                # runs train at every value in one program, the protocol choosing among them
                if sweep in changes:
                    raise ConfigError(f"config key {key!r} is given a list and {prefix}{sweep} is set too: both set "
                                      "the grid; give one")
                name, key, tp = sweep, f"{prefix}{sweep}", _hints(type(cfg))[sweep]
            elif sweep not in changes:
                # one value alone means that value: a preset's grid must not silently override it
                values[sweep] = ()
        try:
            values[name] = parse_value(tp, raw)
        except (ValueError, TypeError):
            raise ConfigError(f"config key {key!r}: cannot use {raw!r}; expected {_describe(tp)}") from None
    try:
        return dataclasses.replace(cfg, **values)
    except (ValueError, TypeError) as err:
        given = [(f"{prefix}{k}", v) for k, v in changes.items() if not isinstance(v, dict)]
        what = (f"config key {given[0][0]!r} = {given[0][1]!r} is" if len(given) == 1
                else "config keys " + ", ".join(f"{k!r} = {v!r}" for k, v in given) + " are")
        raise ConfigError(f"{what} not allowed: {err}") from None


def override(cfg, assignments: Iterable[str] | dict):
    """``cfg`` with every ``"dotted.key=value"`` assignment (or ``{key: value}``) applied (a
    later assignment of the same key wins); each changed section is validated once, by its
    own constructor, with all its new values."""
    items = assignments.items() if isinstance(assignments, dict) else [_split(a) for a in assignments]
    nested: dict = {}
    for key, raw in items:
        *parents, last = key.split(".")
        node = nested
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r}: {'.'.join(parents[:i + 1])!r} is a value, not a section")
        if isinstance(node.get(last), dict):
            raise ConfigError(f"config key {key!r} is a section; set one of its keys")
        node[last] = raw
    return _apply(cfg, nested)


def _split(assignment: str) -> tuple[str, str]:
    if "=" not in assignment:
        raise ConfigError(f"--set needs KEY=VALUE (for example model.n_layers=4), got {assignment!r}")
    key, value = assignment.split("=", 1)
    return key.strip(), value.strip()


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


MAX_TOML_BYTES = 2**20  #: a config is a few hundred bytes; anything near this is another file


def load_toml(cfg, path) -> Any:
    """``cfg`` with the values of the TOML file ``path`` applied (see :func:`override`). The
    file must be a regular file of at most 1 MiB (a folder or FIFO is refused without being
    opened) holding valid, not absurdly nested, TOML."""
    path = Path(path)
    try:
        table = parse_input_file("--config", path, MAX_TOML_BYTES, tomllib.loads, "TOML", tomllib.TOMLDecodeError)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return override(cfg, _flatten(table))


def _toml_value(v) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def to_toml(cfg, comments: bool = False) -> str:
    """The resolved config as TOML (top-level values first, then one table per section);
    with ``comments`` each key is preceded by its description (:func:`describe_keys`)."""
    about = dict(describe_keys(cfg, values=False)) if comments else {}

    def entry(prefix, obj, f):
        note = about.get(prefix + f.name)
        return ([f"# {note}"] if note else []) + [f"{f.name} = {_toml_value(getattr(obj, f.name))}"]

    lines, tables = [], []
    for f in dataclasses.fields(cfg):
        if _is_config(getattr(cfg, f.name)):
            tables.append((f.name, getattr(cfg, f.name)))
        else:
            lines += entry("", cfg, f)
    for name, sub in tables:
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(sub):
            lines += entry(f"{name}.", sub, f)
    return "\n".join(lines) + "\n"


def to_dict(cfg) -> dict:
    """Nested plain dict (tuples become lists in JSON)."""
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict):
    """Rebuild a config of type ``cls`` from :func:`to_dict` output (e.g. a result's
    ``config``); unknown keys are an error, missing keys keep ``cls``'s defaults."""
    hints = _hints(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in hints:
            raise ConfigError(f"{cls.__name__} has no field {k!r}; fields: {', '.join(hints)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v)
        else:
            inner, _ = _unwrap_optional(tp)
            kwargs[k] = tuple(v) if typing.get_origin(inner) is tuple and v is not None else v
    return cls(**kwargs)


def short_hash(cfg, n: int = 8) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
