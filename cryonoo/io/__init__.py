"""Reading and writing the field's file formats: MRC, RELION ``.star``, cryoSPARC ``.cs`` and
cryoDRGN ``.pkl`` files, plus lazy particle-image sources.

Numpy arrays go in, numpy arrays come out; nothing here imports model code. Every writer is
atomic (:mod:`cryonoo.io.atomic`), every pickle is read with a restricted unpickler
(:func:`safe_load_pickle`), and problems with a file raise :class:`ParticleFileError` naming the
file (and the row, column or index) and the fix.

Modules
-------
``atomic``     :func:`atomic_write`, :func:`atomic_path`.
``mrc``        :func:`read_mrc` (memory-mapped), :func:`write_mrc`, :class:`ParticleFileError`.
``stack``      :func:`open_images` → :class:`ImageSource` (``.mrcs``, ``.txt``, ``.star``, ``.cs``).
``star``       :func:`read_star`, :func:`star_poses`, :func:`star_ctf`, :func:`write_star`.
``cryosparc``  :func:`read_cs`, :func:`cs_poses`, :func:`cs_ctf`.
``cryodrgn``   pose/CTF/latent/index pickles (cryoDRGN *model* directories: :mod:`cryonoo.interop`).
"""

from cryonoo.io.atomic import atomic_path, atomic_write
from cryonoo.io.cryodrgn import (
    UnsafePickleError,
    load_ctf_pkl,
    load_indices,
    load_poses,
    load_split,
    load_z_pkl,
    safe_load_pickle,
    save_ctf_pkl,
    save_poses,
    save_z_pkl,
)
from cryonoo.io.cryosparc import cs_ctf, cs_field, cs_poses, read_cs
from cryonoo.io.mrc import MRCHeaderInfo, ParticleFileError, read_mrc, read_mrc_header, write_mrc
from cryonoo.io.stack import (
    CsSource,
    ImageSource,
    MRCSource,
    StarSource,
    Subset,
    TxtSource,
    check_finite,
    open_images,
)
from cryonoo.io.star import (
    StarFile,
    StarTable,
    pose_columns,
    read_star,
    star_ctf,
    star_poses,
    write_star,
)

__all__ = [
    "CsSource",
    "ImageSource",
    "MRCHeaderInfo",
    "MRCSource",
    "ParticleFileError",
    "StarFile",
    "StarSource",
    "StarTable",
    "Subset",
    "TxtSource",
    "UnsafePickleError",
    "atomic_path",
    "atomic_write",
    "check_finite",
    "cs_ctf",
    "cs_field",
    "cs_poses",
    "load_ctf_pkl",
    "load_indices",
    "load_poses",
    "load_split",
    "load_z_pkl",
    "open_images",
    "pose_columns",
    "read_cs",
    "read_mrc",
    "read_mrc_header",
    "read_star",
    "safe_load_pickle",
    "save_ctf_pkl",
    "save_poses",
    "save_z_pkl",
    "star_ctf",
    "star_poses",
    "write_mrc",
    "write_star",
]
