"""One registry class for everything users extend by name (masks, k-space steps, models).

A :class:`Registry` maps names to factories (classes or functions). The same
rules hold for every kind:

* ``register(name, factory)`` adds one; an existing name is an error unless
  ``overwrite=True``; names are non-empty strings and factories callable;
* other packages add entries without editing this one through a Python
  entry-point group (e.g. ``iconet_fastmri.masks``), loaded once, on the
  first look-up; a name registered in code wins over an entry point;
* a dotted path ``package.module.ClassName`` names a factory in the user's
  own module, as jsonargparse's ``class_path`` does for models (see below);
* an unknown name is a ``ValueError`` that lists the registered names;
* ``build(name, **kwargs)`` checks the keyword arguments against the
  factory's signature first, so a typo is named rather than passed on.

Dotted paths, and who may make us import one. Importing a module runs its
code, so a dotted path is imported only on the say-so of the person running
the program: inside :func:`allow_imports` (which the CLI's entry point,
:func:`iconet_fastmri.cli.main`, opens around the whole command, so the
command line and its config files may name ``my_masks.EveryOtherLine``), or
with ``allow_import=True``; a path imported so stays usable in the process
(rebuilding the user's mask later needs no new permission). Everywhere else (the default: a checkpoint's
hyperparameters, a dataset cache, a prediction file's attributes, library
code) a dotted path is accepted only if it names a *registered* factory of a
module that is *already imported*; nothing is imported and anything else is a
``ValueError`` naming the path. This is the rule
:func:`iconet_fastmri.models.registered_name` applies to checkpoints' model
classes. Code that reads names from such files may also say so explicitly,
with ``allow_import=False`` or ``with allow_imports(False):``.

Where the module is found: on ``sys.path`` as Python finds any module
(``PYTHONPATH`` included); :func:`search_working_directory` (which the
CLI's entry point calls) appends the folder the command runs from, *after*
the installed packages, so ``my_masks.py`` next to you is found as under
``python -m`` (which puts the folder first), except that it can never shadow
an installed module (give yours a name no installed module has).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from inspect import signature
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

__all__ = ["Registry", "allow_imports", "imports_allowed", "search_working_directory", "is_dotted_path"]

#: Whether a dotted path may be imported here (see the module docstring); off unless
#: the user's own command opened :func:`allow_imports`.
_IMPORTS_ALLOWED: ContextVar[bool] = ContextVar("iconet_fastmri_registry_imports", default=False)

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def is_dotted_path(name: object) -> bool:
    """Whether ``name`` looks like ``package.module.Attribute`` (two or more identifiers)."""
    return isinstance(name, str) and _DOTTED.fullmatch(name) is not None


@contextmanager
def allow_imports(allowed: bool = True) -> Iterator[None]:
    """Within this block, registries import the module a dotted path names (``False``: they never do).

    For the user's own command line and config only: never around code that
    reads names from checkpoints, caches or data files.
    """
    token = _IMPORTS_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _IMPORTS_ALLOWED.reset(token)


def imports_allowed() -> bool:
    """Whether a dotted path would be imported here (see :func:`allow_imports`)."""
    return _IMPORTS_ALLOWED.get()


def search_working_directory() -> None:
    """Append the current working directory to ``sys.path`` (after the installed packages).

    So a dotted path (``--data.mask.name my_masks.EveryOtherLine``) and a
    jsonargparse ``class_path`` (``--model.model my_models.TinySR``) find the
    user's file in the folder the command runs from, without ``PYTHONPATH``.
    """
    cwd = os.path.abspath(os.getcwd())
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.append(cwd)


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
        #: Dotted paths imported on the user's say-so in this process (usable again anywhere in it).
        self._user_paths: Dict[str, Callable[..., Any]] = {}
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

    def get(self, name: str, allow_import: Optional[bool] = None) -> Callable[..., Any]:
        """The factory registered as ``name``, or the one a dotted path names.

        Args:
            name: a registered name, or ``package.module.Attribute``.
            allow_import: whether a dotted path may import its module
                (``None``: only inside :func:`allow_imports`). Without it, a
                dotted path must name a registered factory of an imported module.

        Raises:
            ValueError: an unknown name (the message lists the registered
                names), or a dotted path that cannot be used (named, with why).
        """
        self._load_entry_points()
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        if is_dotted_path(name):
            allowed = imports_allowed() if allow_import is None else bool(allow_import)
            if name in self._user_paths and allow_import is not False:
                return self._user_paths[name]
            found = self._resolve(name, allowed)
            if allowed:
                self._user_paths[name] = found
            return found
        raise ValueError(
            f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())} "
            f"(or give a dotted path, package.module.ClassName, to use one of your own)"
        )

    def _resolve(self, path: str, allowed: bool) -> Callable[..., Any]:
        """The object a dotted path names, importing its module only if ``allowed``."""
        parts = path.split(".")
        module = None
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
            module_name = ".".join(parts[:cut])
            if not allowed:
                module = sys.modules.get(module_name)
                if module is not None:
                    break
                continue
            try:
                module = importlib.import_module(module_name)
                break
            except ModuleNotFoundError as err:
                missing = err.name or ""
                if module_name == missing or module_name.startswith(missing + "."):
                    continue  # this prefix is not a module: try a shorter one
                raise ValueError(
                    f"{self.kind} {path!r}: importing {module_name!r} failed: {err}"
                ) from err
        if not allowed:
            found = _attribute(module, parts[cut:]) if module is not None else None
            if found is not None and self.name_of(found) is not None:
                return found
            raise ValueError(
                f"{self.kind} {path!r} is not a registered {self.kind}, and a dotted path is imported "
                f"only when your own command line or config names it (scripts/train_iconet_fastmri.py); "
                f"here (a name read from a checkpoint, cache or data file, or library code) nothing is "
                f"imported. Registered {self.kind}s: {', '.join(self.names())}. In Python, import your "
                f"module and register it, or build inside iconet_fastmri.registry.allow_imports()"
            )
        if module is None:
            raise ValueError(
                f"{self.kind} {path!r}: no module {parts[0]!r} can be imported; put {parts[0]}.py in "
                f"the folder you run from (scripts/train_iconet_fastmri.py looks there) or on PYTHONPATH"
            )
        found = _attribute(module, parts[cut:])
        where = getattr(module, "__file__", None) or module.__name__
        if found is None:
            raise ValueError(
                f"{self.kind} {path!r}: module {module.__name__!r} ({where}) has no attribute "
                f"{'.'.join(parts[cut:])!r}"
            )
        if not callable(found):
            raise ValueError(f"{self.kind} {path!r} ({where}) is not a class or function: {found!r}")
        return found

    def name_of(self, factory: Callable[..., Any]) -> Optional[str]:
        """The name ``factory`` is registered under (``None`` if it is not)."""
        self._load_entry_points()
        for name, entry in self._entries.items():
            if entry is factory:
                return name
        return None

    # ------------------------------------------------------------------ building
    def accepted_kwargs(self, name: str, allow_import: Optional[bool] = None) -> Optional[List[str]]:
        """The keyword arguments the factory takes (``None``: it takes any)."""
        factory = self.get(name, allow_import=allow_import)
        try:
            params = signature(factory).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return None
        return [k for k, p in params.items() if k != "self" and p.kind != p.VAR_POSITIONAL]

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any], allow_import: Optional[bool] = None) -> None:
        """A ``ValueError`` naming every keyword argument ``name`` does not take."""
        accepted = self.accepted_kwargs(name, allow_import=allow_import)
        if accepted is None:
            return
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} does not take argument(s) {unknown}; it takes {accepted}"
            )

    def build(self, name: str, *, allow_import: Optional[bool] = None, **kwargs: Any) -> Any:
        """Call the factory ``name`` (registered, or a dotted path: see :meth:`get`) with ``kwargs`` (checked first)."""
        factory = self.get(name, allow_import=allow_import)
        self.check_kwargs(name, kwargs, allow_import=allow_import)
        return factory(**kwargs)


def _attribute(obj: Any, names: List[str]) -> Any:
    """``obj.a.b`` for ``names == ["a", "b"]``; ``None`` where an attribute is missing."""
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj
