"""Interoperation with other programs' *models*: cryoDRGN ``train_vae`` directories ↔ ``HetVAE``
(:mod:`cryonoo.interop.cryodrgn_model`; ``docs/interop.md``).

File formats alone (poses, CTF, latents, stacks) are :mod:`cryonoo.io`; this package sits above
``io`` and ``models`` because it builds models.
"""
