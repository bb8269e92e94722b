"""The one registry type: name -> object, so the CLI and suite files can refer to things by string.

Registration is explicit (a decorator or a call in the module that defines the object); there is no
import-time scanning. ``Registry.get`` of an unknown name raises :class:`UnknownNameError` listing the
known names.

One pattern for every registry: each instance lives in its package's ``registry.py``
(``attacks/registry.py`` holds ATTACKS and OBJECTIVES; ``losses``, ``models``, ``data``,
``corruptions``, ``certify``, ``training/methods`` and ``evaluation`` one each), the modules that
register import it from there, and the package ``__init__`` imports those modules (an explicit
list) and re-exports the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from robustlab.errors import RobustlabError, UnknownNameError

T = TypeVar("T")


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """A named collection of objects of one kind (``"attack"``, ``"model"``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(
        self, name: str, obj: T | None = None, *, help: str | None = None
    ) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            key = _normalize(name)
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice.")
            self._items[key] = item
            doc = help or " ".join(
                (getattr(item, "__doc__", None) or "").strip().split("\n\n")[0].split()
            )
            self._help[key] = doc
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        key = _normalize(name)
        if key not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownNameError(f"Unknown {self.kind} '{name}'; known {self.kind}s: {known}.")
        return self._items[key]

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Look up ``name`` and call it with ``kwargs`` (for registered classes and factories).

        A keyword the factory does not take is a :class:`RobustlabError` listing the valid ones.
        """
        factory = self.get(name)
        if not callable(factory):
            raise TypeError(f"{self.kind} '{name}' is not callable.")
        params = inspect.signature(factory).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            valid = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
            unknown = sorted(set(kwargs) - set(valid))
            if unknown:
                raise RobustlabError(
                    f"{self.kind} '{_normalize(name)}' takes no argument {unknown[0]!r}; "
                    f"valid arguments: {', '.join(valid) or 'none'}."
                )
        return factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description, for ``robustlab list``."""
        return {k: self._help[k] for k in self.names()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalize(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
