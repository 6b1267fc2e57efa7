"""Every registry of cryonoo in one place (imports the modules that populate them)."""

from __future__ import annotations

import importlib

from cryonoo.registry import Registry

__all__ = ["all_registries"]

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


def all_registries() -> dict[str, Registry]:
    """``{"PROJECTORS": Registry, …}``: every registry of cryonoo, in dependency order."""
    found: dict[str, Registry] = {}
    for attr, module_name in _REGISTRY_MODULES:
        module = importlib.import_module(module_name)
        found[attr] = getattr(module, attr)
    return found
