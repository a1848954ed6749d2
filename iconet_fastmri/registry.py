"""One registry class for everything users extend by name (masks, models).

A :class:`Registry` maps names to factories (classes or functions). The same
rules hold for every kind:

* ``register(name, factory)`` adds one; an existing name is an error unless
  ``overwrite=True``; names are non-empty strings and factories callable;
* other packages add entries without editing this one through a Python
  entry-point group (e.g. ``iconet_fastmri.masks``), loaded once, on the
  first look-up; a name registered in code wins over an entry point;
* an unknown name is a ``ValueError`` that lists the registered names;
* ``build(name, **kwargs)`` checks the keyword arguments against the
  factory's signature first, so a typo is named rather than passed on.
"""

from __future__ import annotations

from importlib import metadata
from inspect import signature
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

__all__ = ["Registry"]


class Registry:
    """Names -> factories, with entry points and strict keyword checks.

    Args:
        kind: what the entries are, for messages (``"mask"``, ``"model"``).
        entry_point_group: the Python entry-point group other packages use.
        builtins: the entries registered at start.
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str,
        builtins: Optional[Mapping[str, Callable[..., Any]]] = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._entry_points_loaded = False
        for name, factory in (builtins or {}).items():
            self.register(name, factory)

    # ------------------------------------------------------------------ entries
    def register(self, name: str, factory: Callable[..., Any], overwrite: bool = False) -> None:
        """Register ``factory`` under ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise TypeError(f"{self.kind} factory for {name!r} must be callable, got {factory!r}")
        if name in self._entries and not overwrite:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
            )
        self._entries[name] = factory

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plugins that replace themselves)."""
        self._entries.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry in metadata.entry_points(group=self.entry_point_group):
            if entry.name not in self._entries:
                self._entries[entry.name] = entry.load()

    def reload_entry_points(self) -> None:
        """Look at the installed entry points again on the next look-up."""
        self._entry_points_loaded = False

    def names(self) -> List[str]:
        """All registered names, entry points included, sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; a ``ValueError`` listing the names otherwise."""
        self._load_entry_points()
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def name_of(self, factory: Callable[..., Any]) -> Optional[str]:
        """The name ``factory`` is registered under (``None`` if it is not)."""
        self._load_entry_points()
        for name, entry in self._entries.items():
            if entry is factory:
                return name
        return None

    # ------------------------------------------------------------------ building
    def accepted_kwargs(self, name: str) -> Optional[List[str]]:
        """The keyword arguments the factory takes (``None``: it takes any)."""
        factory = self.get(name)
        try:
            params = signature(factory).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return None
        return [k for k, p in params.items() if k != "self" and p.kind != p.VAR_POSITIONAL]

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """A ``ValueError`` naming every keyword argument ``name`` does not take."""
        accepted = self.accepted_kwargs(name)
        if accepted is None:
            return
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} does not take argument(s) {unknown}; it takes {accepted}"
            )

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with ``kwargs`` (checked first)."""
        self.check_kwargs(name, kwargs)
        return self.get(name)(**kwargs)
