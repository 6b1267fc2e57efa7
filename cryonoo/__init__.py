"""cryonoo: amortized heterogeneous cryo-EM reconstruction with self-distillation.

Subpackages
-----------
``cryonoo.physics``  lattice, Fourier/Hartley transforms, CTF, rotations, shifts, masks,
                     central-slice projection, noise (pure batched torch functions).
``cryonoo.registry`` the :class:`~cryonoo.registry.Registry` behind every pluggable component.
``cryonoo.types``    ``Batch``, ``StepOutput`` and the plug-in protocols.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryonoo")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "uninstalled"

__all__ = ["__version__"]
