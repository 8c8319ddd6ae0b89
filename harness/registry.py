"""One strict registry type for models, methods and targets.

Light registry, heavy implementation, joined by a string: an entry is either an object or a
``"module:attr"`` string that is imported only when the entry is used, so listing targets never
imports onnxruntime, openvino, tvm or tensorrt. Duplicate names raise (as torchvision does);
unknown names answer with a did-you-mean; other packages add entries through entry points.
"""
from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, Iterator, TypeVar

from harness.errors import UserError

T = TypeVar("T")


def import_string(spec: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


class Registry(Generic[T]):
    """Names -> objects (or lazy ``"module:attr"`` strings)."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self._group = entry_point_group
        self._entries: dict[str, Any] = {}
        self._loaded: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str, entry: Any) -> None:
        """Add ``name``; a second registration of the same name is an error, never an overwrite."""
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self._group is None:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self._group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def entry(self, name: str) -> Any:
        """The raw entry of ``name``: a ``"module:attr"`` string lets another process import it."""
        self._load_plugins()
        if name not in self._entries:
            raise UserError(unknown_message(self.kind, name, list(self._entries)))
        return self._entries[name]

    def load(self, name: str) -> Any:
        """The entry for ``name`` imported but not instantiated (e.g. a class to construct)."""
        entry = self.entry(name)
        return import_string(entry) if isinstance(entry, str) else entry

    def get(self, name: str) -> T:
        """The entry for ``name``, imported on first use; unknown names raise a UserError."""
        self._load_plugins()
        if name not in self._entries:
            raise UserError(unknown_message(self.kind, name, list(self._entries)))
        if name not in self._loaded:
            entry = self._entries[name]
            obj = import_string(entry) if isinstance(entry, str) else entry
            self._loaded[name] = obj() if isinstance(obj, type) else obj
        return self._loaded[name]


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    # names that contain what was typed first ("ort" -> "ort-cpu"), then spelling neighbours
    contains = [k for k in known if name and name.lower() in k.lower()]
    close = list(dict.fromkeys(contains + difflib.get_close_matches(name, known, n=3, cutoff=0.4)))[:3]
    hint = f"; did you mean: {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    return f"unknown {kind} {name!r}{hint}"
