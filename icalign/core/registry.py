"""Named extension points: the registries of ranking losses (``losses.LOSSES``) and of
reward-corruption models (``tasks.CORRUPTIONS``). A config names an entry; everything that
computes with it (training, the health gate, references, sweeps) looks the name up here, so a
registered entry reaches all of them and none can stay on another definition.

Run identity: a built-in entry is named by its name alone (the run folders of the published
objective and corruptions keep their names), and cannot be replaced. A user-registered entry
is also named by :func:`source_hash` of its function, so editing the function's body and
rerunning trains a new run instead of loading the stale one.
"""

from __future__ import annotations

import hashlib
import inspect
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import jax

from icalign.core.validate import check_choice

__all__ = ["Registry", "FieldView", "source_hash"]

_PLAIN = (numbers.Number, str, bytes, type(None))


def _plain(value) -> str:
    """A value's repr if it is plain data (stable across processes), else its type's name
    (a repr with a memory address would give every process another hash)."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_plain(v) for v in value) + ")"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def source_hash(fn: Callable) -> str:
    """A hash of what ``fn`` computes: its source text (``inspect.getsource``; the code
    object's bytecode, constants and names where no source is available), its default
    arguments and the plain values (numbers, strings) its closure captured. Functions it calls
    are not followed: put what decides the numbers in the registered function itself."""
    target = getattr(fn, "__func__", fn)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is None:
            raise ValueError(f"cannot fingerprint {fn!r}: register a plain Python function (def or lambda)") from None
        text = code.co_code.hex() + repr(code.co_consts) + repr(code.co_names)
    cells = [c.cell_contents for c in (getattr(target, "__closure__", None) or ())]
    extra = _plain(getattr(target, "__defaults__", None)) + _plain(sorted((getattr(target, "__kwdefaults__", None)
                                                                           or {}).items())) + _plain(cells)
    return hashlib.sha256((text + "\0" + extra).encode()).hexdigest()[:16]


class Registry(Mapping):
    """name -> entry (a frozen dataclass with a ``fn`` field). ``field`` names the config
    field that selects an entry (it appears in error messages)."""

    def __init__(self, what: str, field: str):
        self.what, self.field = what, field
        self._entries: dict[str, Any] = {}
        self._builtin: set[str] = set()

    def __getitem__(self, name):
        return self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def get_checked(self, name, field: str | None = None):
        """The entry called ``name``; a ValueError naming ``field`` and the allowed names if none."""
        return self._entries[check_choice(field or self.field, name, self._entries)]

    def add(self, name: str, entry, builtin: bool = False) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() or c in "=.,[]\"'" for c in name):
            raise ValueError(f"a {self.what} name must be a non-empty string without spaces, quotes, '=', '.', "
                             f"',' or brackets (it is given as {self.field}=NAME), got {name!r}")
        if name in self._builtin:
            raise ValueError(f"{self.what} {name!r} is built in and cannot be replaced; register yours under "
                             f"another name (built in: {sorted(self._builtin)})")
        if not callable(entry.fn):
            raise ValueError(f"the {self.what} {name!r} must be a function, got {entry.fn!r}")
        fingerprint = None if builtin else source_hash(entry.fn)
        replaced = name in self._entries
        self._entries[name] = entry
        object.__setattr__(entry, "fingerprint", fingerprint)
        if builtin:
            self._builtin.add(name)
        if replaced:
            # Compiled programs take the name as a static argument: drop them so none keeps
            # running the replaced function.
            jax.clear_caches()

    def remove(self, name: str) -> None:
        if name in self._builtin:
            raise ValueError(f"{self.what} {name!r} is built in and cannot be removed")
        check_choice(f"{self.what} name", name, self._entries)
        del self._entries[name]
        jax.clear_caches()

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin

    def identity(self, name: str) -> str | None:
        """None for a built-in entry (named by its name), else the hash of its function."""
        return self.get_checked(name).fingerprint


class FieldView(Mapping):
    """A read-only view name -> one field of every entry of a registry (for example the
    default levels of every corruption model), always in step with the registry."""

    def __init__(self, registry: Registry, attr: str):
        self._registry, self._attr = registry, attr

    def __getitem__(self, name):
        return getattr(self._registry[name], self._attr)

    def __iter__(self):
        return iter(self._registry)

    def __len__(self):
        return len(self._registry)

    def __repr__(self):
        return repr(dict(self))
