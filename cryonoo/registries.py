"""Every registry of cryonoo in one place (imports the modules that populate them).

Components from other packages register through the entry-point group ``cryonoo.plugins``:
each entry point names a module (or a callable) whose import registers its parts, e.g. in the
plug-in's ``pyproject.toml``::

    [project.entry-points."cryonoo.plugins"]
    my_parts = "my_package.cryonoo_parts"

:func:`load_plugins` imports them once; :func:`all_registries` and every ``cryonoo`` command
call it, so a plug-in's components appear in ``cryonoo list`` and in every ``--ssl``,
``--augment`` or ``--encoder`` choice.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points

from cryonoo.registry import Registry

__all__ = ["PLUGIN_GROUP", "all_registries", "load_plugins"]

#: the entry-point group third-party components register through
PLUGIN_GROUP = "cryonoo.plugins"
_LOADED: dict[str, str] = {}

# (registry attribute, module that defines and populates it)
_REGISTRY_MODULES: tuple[tuple[str, str], ...] = (
    ("PROJECTORS", "cryonoo.physics.slice"),
    ("PHANTOMS", "cryonoo.data.phantoms"),
    ("POSITIONAL", "cryonoo.models.positional"),
    ("ENCODERS", "cryonoo.models.encoders"),
    ("DECODERS", "cryonoo.models.decoders"),
    ("MODELS", "cryonoo.models.zoo"),
    ("HEADS", "cryonoo.ssl.heads"),
    ("SSL", "cryonoo.ssl.objectives"),
    ("AUGMENTERS", "cryonoo.ssl.augment"),
)


def load_plugins() -> dict[str, str]:
    """Import every ``cryonoo.plugins`` entry point not imported yet (calling it when it is a
    callable); returns ``{name: "ok" | error}``. A plug-in that fails to load is reported with a
    warning naming it and the error, and the rest of cryonoo works without it."""
    for point in entry_points(group=PLUGIN_GROUP):
        if point.name in _LOADED:
            continue
        try:
            loaded = point.load()
            if callable(loaded):
                loaded()
            _LOADED[point.name] = "ok"
        except Exception as exc:  # a broken third-party package must not break cryonoo
            _LOADED[point.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"cryonoo plug-in {point.name!r} ({point.value}) failed to load: "
                f"{_LOADED[point.name]}",
                stacklevel=2,
            )
    return dict(_LOADED)


def all_registries() -> dict[str, Registry]:
    """``{"PROJECTORS": Registry, …}``: every registry of cryonoo, in dependency order (with
    the plug-ins' components, :func:`load_plugins`)."""
    found: dict[str, Registry] = {}
    for attr, module_name in _REGISTRY_MODULES:
        module = importlib.import_module(module_name)
        found[attr] = getattr(module, attr)
    load_plugins()
    return found
