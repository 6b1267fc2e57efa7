"""A small generic name → factory registry.

Every interchangeable component of cryonoo (encoders, decoders, SSL heads and objectives,
augmenters, central-slice projectors, built-in phantoms) lives in one :class:`Registry`, so it
can be chosen by name from Python and from the command line::

    from cryonoo.registry import Registry

    SOLVERS = Registry("solver")

    @SOLVERS.register("fast")
    def make_fast(scale: float = 1.0): ...

    SOLVERS.build("fast", scale=2.0)

Unknown and duplicate names raise ``KeyError`` listing the registered choices.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component.

    Parameters
    ----------
    kind:
        Human-readable name of the component kind, used in error messages (``"encoder"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str | None = None, *, help: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: ``obj.__name__``).

        ``help`` is a one-line description shown by ``cryonoo list``; it defaults to the first
        line of the object's docstring.
        """

        def decorator(obj: T) -> T:
            key = name or obj.__name__
            self.add(key, obj, help=help)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, help: str | None = None) -> None:
        """Register ``obj`` under ``name`` without a decorator."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._items:
            raise KeyError(
                f"{self.kind} {name!r} is already registered (by {self._items[name]!r}); "
                f"registered {self.kind}s: {', '.join(self.names())}"
            )
        self._items[name] = obj
        doc = help if help is not None else (obj.__doc__ or "").strip().splitlines()
        self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")

    def get(self, name: str) -> T:
        """Return the factory registered under ``name``."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise KeyError(
                f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names()) or '(none)'}"
            ) from None

    def build(self, spec: str | Any, /, **kwargs: Any) -> Any:
        """Build a component from a name, or pass an already-built object through.

        Keyword arguments whose value is ``None`` are dropped, so the factory's defaults apply.
        """
        if not isinstance(spec, str):
            return spec
        factory = self.get(spec)
        return factory(**{k: v for k, v in kwargs.items() if v is not None})

    def accepts(self, name: str) -> frozenset[str] | None:
        """The keyword names the factory ``name`` takes (``None`` when it takes ``**kwargs``).

        The one place cryonoo routes arguments by a factory's signature: callers with a shared
        pool of settings (the model's geometry, a recipe's SSL options) give each component the
        part it declares."""
        params = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return frozenset(
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    def build_accepted(self, spec: str | Any, /, **kwargs: Any) -> Any:
        """:meth:`build` with only the keyword arguments the factory takes (:meth:`accepts`)."""
        if not isinstance(spec, str):
            return spec
        names = self.accepts(spec)
        if names is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in names}
        return self.build(spec, **kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def describe(self, name: str) -> str:
        """One-line description of the entry ``name``."""
        self.get(name)
        return self._help[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
