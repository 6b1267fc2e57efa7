"""RELION ``.star`` files: a small dependency-free parser, poses, CTF parameters and a writer.

Conventions
-----------
* A file is a sequence of ``data_<name>`` blocks, each with ``_key value`` pairs and/or one
  ``loop_`` table (labels, then whitespace-separated rows; quoted values and ``#`` comments
  allowed). Blocks are keyed by ``<name>``: ``data_optics`` → ``"optics"``, ``data_`` → ``""``.
  Columns whose every value parses as a number are stored as float64, the others as strings;
  :func:`read_star_raw` keeps every value as its string token, and :func:`write_star_blocks`
  writes such blocks back unchanged (a lossless rewrite, comments and alignment aside).
* RELION 3.1+ has a ``data_optics`` table; the particle table is the largest other table.
  Per-particle optics values are looked up through ``_rlnOpticsGroup``; a label absent from the
  optics table (or a RELION 3.0 file with no optics table) is read from the particle table.
* Poses follow cryoDRGN's ``parse_pose_star``: ``R = relion_euler_to_matrix(rot, tilt, psi)``
  (degrees, RELION's ``Euler_angles2matrix``), translations = ``(_rlnOriginX, _rlnOriginY)`` pixels
  or ``(_rlnOriginXAngst, _rlnOriginYAngst) / Apix``, no sign change, divided by the box ``D``
  (``_rlnImageSize`` or ``box=``) → fractions of the box.
* CTF rows follow cryoDRGN's ``ctf.pkl``: ``[D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase]``
  (pixels, Å, Å, Å, degrees, kV, mm, fraction, degrees), float32.
* Row numbers in messages are 1-based data rows of the table.
* torch (for the Euler conversions) is imported on first use, keeping ``import cryonoo.io`` light.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from cryonoo.io.atomic import atomic_write
from cryonoo.io.mrc import ParticleFileError

__all__ = [
    "StarFile",
    "StarTable",
    "pose_columns",
    "read_star",
    "read_star_raw",
    "star_ctf",
    "star_poses",
    "write_star",
    "write_star_blocks",
]

_TOKEN = re.compile(r""""([^"]*)"|'([^']*)'|(\S+)""")


@dataclass
class StarTable:
    """One ``data_`` block: loop ``columns`` (label with leading ``_`` → ``(N,)`` float64 or
    string array) and ``_key value`` ``pairs`` (strings)."""

    name: str
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __contains__(self, label: object) -> bool:
        return label in self.columns

    def column(self, label: str) -> np.ndarray:
        """``(N,)`` values of ``label``, float64 or str (KeyError names the block and labels)."""
        if label not in self.columns:
            raise KeyError(f"column {label} not in block data_{self.name} (has {self.labels})")
        return self.columns[label]


def _to_float(values: np.ndarray, label: str, where: object) -> np.ndarray:
    try:
        return values.astype(np.float64, copy=False)
    except ValueError:
        for row, v in enumerate(values, start=1):
            try:
                float(v)
            except ValueError:
                msg = f"{where}, row {row}, column {label}: {str(v)!r} is not a number"
                raise ParticleFileError(msg) from None
        raise


@dataclass
class StarFile:
    """A parsed ``.star`` file: ``blocks`` by name (see the module docstring)."""

    path: Path
    blocks: dict[str, StarTable]

    @property
    def optics(self) -> StarTable | None:
        """The ``data_optics`` table (RELION 3.1+), if any."""
        return self.blocks.get("optics")

    @property
    def relion31(self) -> bool:
        return self.optics is not None

    @property
    def particles(self) -> StarTable:
        """The largest table other than ``data_optics``."""
        tables = [b for n, b in self.blocks.items() if n != "optics" and b.labels]
        if not tables:
            raise ParticleFileError(f"{self.path}: no particle table (no loop_ but data_optics)")
        return max(tables, key=len)

    def __len__(self) -> int:
        return len(self.particles)

    @cached_property
    def _optics_rows(self) -> np.ndarray:
        """Per particle, the row of its optics group in the optics table."""
        opt, part = self.optics, self.particles
        assert opt is not None
        if "_rlnOpticsGroup" not in part or len(opt) == 0:
            if len(opt) == 1:
                return np.zeros(len(part), np.int64)
            raise ParticleFileError(
                f"{self.path}: {len(opt)} optics groups and no usable _rlnOpticsGroup column in "
                "the particle table; give each particle an existing optics group"
            )
        groups = _to_float(part.column("_rlnOpticsGroup"), "_rlnOpticsGroup", self.path)
        known = _to_float(opt.column("_rlnOpticsGroup"), "_rlnOpticsGroup", f"{self.path} optics")
        order = np.argsort(known)
        rows = order[np.searchsorted(known, groups, sorter=order).clip(0, len(known) - 1)]
        bad = known[rows] != groups
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ParticleFileError(
                f"{self.path}, row {row + 1}: unknown optics group {groups[row]:g} "
                f"(data_optics defines {sorted(int(g) for g in set(known.tolist()))}); "
                "fix _rlnOpticsGroup"
            )
        return rows

    def values(self, label: str) -> np.ndarray | None:
        """``(N,)`` per-particle values of ``label``: optics table first, then particle table."""
        opt = self.optics
        if opt is not None and label in opt and "_rlnOpticsGroup" in opt:
            return opt.column(label)[self._optics_rows]
        if label in self.particles:
            return self.particles.column(label)
        return None

    def floats(self, label: str, hint: str = "") -> np.ndarray:
        """``(N,)`` float64 values of ``label``; ParticleFileError (column, file) if absent."""
        vals = self.values(label)
        if vals is None:
            where = "particle or optics table" if self.relion31 else "particle table"
            raise ParticleFileError(
                f"{self.path}: required column {label} not found in the {where}"
                + (f"; {hint}" if hint else "")
            )
        return _to_float(vals, label, self.path)


def _tokens(line: str) -> list[str]:
    """Whitespace-separated values of one line; quotes group, ``#`` starts a comment."""
    if '"' not in line and "'" not in line:
        toks = line.split()
    else:  # a quoted value: group 1 or 2 (possibly empty), else group 3
        toks = [next((g for g in m.groups() if g is not None), "") for m in _TOKEN.finditer(line)]
    cut = next((i for i, t in enumerate(toks) if t.startswith("#")), None) if "#" in line else None
    return toks if cut is None else toks[:cut]


def _loop_columns(
    path: Path,
    name: str,
    labels: list[str],
    lines: list[str],
    linenos: list[int],
    keep_text: bool = False,
) -> dict[str, np.ndarray]:
    """Split a loop's data lines into per-column arrays (one bulk split when possible).

    Numeric columns become float64 unless ``keep_text``, which keeps each value as its token.
    """
    ncols = len(labels)
    text = "".join(lines)
    simple = not any(c in text for c in "\"'#")
    tokens = text.split() if simple else []
    if not simple or len(tokens) % ncols:  # slow path: per line, with line numbers for errors
        tokens, pending = [], []
        for lineno, line in zip(linenos, lines, strict=True):
            pending.extend(_tokens(line))
            if len(pending) > ncols:
                raise ParticleFileError(
                    f"{path}, line {lineno}: {len(pending)} values for {ncols} columns in "
                    f"data_{name}"
                )
            if len(pending) == ncols:
                tokens += pending
                pending = []
        if pending:
            raise ParticleFileError(
                f"{path}, line {linenos[-1]}: incomplete row in data_{name} "
                f"({len(pending)} of {ncols} values)"
            )
    if keep_text:
        return {lab: np.array(tokens[j::ncols], dtype=str) for j, lab in enumerate(labels)}
    columns = {}
    for j, lab in enumerate(labels):
        try:  # numeric columns are stored as float64 (8 bytes per value)
            columns[lab] = np.array(tokens[j::ncols], dtype=np.float64)
        except ValueError:
            columns[lab] = np.array(tokens[j::ncols], dtype=str)
    return columns


def read_star(path: str | os.PathLike[str]) -> StarFile:
    """Parse a ``.star`` file (RELION 3.0 single table or 3.1+ optics + particles)."""
    return _read(Path(os.fspath(path)), keep_text=False)


def read_star_raw(path: str | os.PathLike[str]) -> StarFile:
    """Parse a ``.star`` file keeping every loop value as the string token read (quotes removed).

    Blocks, labels and rows keep the file's order; with :func:`write_star_blocks` this gives a
    lossless rewrite (comments and column alignment aside).
    """
    return _read(Path(os.fspath(path)), keep_text=True)


def _read(path: Path, keep_text: bool) -> StarFile:
    """The parser behind :func:`read_star` (``keep_text=False``) and :func:`read_star_raw`."""
    blocks: dict[str, StarTable] = {}
    cur: StarTable | None = None
    labels: list[str] = []
    lines: list[str] = []
    linenos: list[int] = []
    in_loop = False

    def finish() -> None:
        nonlocal in_loop, labels, lines, linenos
        if cur is not None and in_loop:
            cur.columns = _loop_columns(path, cur.name, labels, lines, linenos, keep_text)
        in_loop, labels, lines, linenos = False, [], [], []

    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, start=1):
            s = raw.lstrip()
            if not s or s[0] == "#":
                continue
            if in_loop and lines and s[0] != "_" and not s.startswith(("data_", "loop_")):
                lines.append(raw)  # fast path for the bulk of a table
                linenos.append(lineno)
                continue
            toks = _tokens(s)
            head = toks[0] if toks else ""
            if head.startswith("data_"):
                finish()
                if head[5:] in blocks:
                    raise ParticleFileError(f"{path}, line {lineno}: duplicate block {head}")
                cur = blocks[head[5:]] = StarTable(head[5:])
            elif cur is None:
                raise ParticleFileError(f"{path}, line {lineno}: content before any data_ block")
            elif head == "loop_":
                finish()
                if cur.columns:
                    raise ParticleFileError(f"{path}, line {lineno}: second loop_ in the block")
                in_loop = True
            elif head.startswith("_") and in_loop and not lines:
                labels.append(head)
            elif head.startswith("_"):
                finish()
                cur.pairs[head] = toks[1] if len(toks) > 1 else ""
            elif in_loop and labels:
                lines.append(raw)
                linenos.append(lineno)
            else:
                raise ParticleFileError(f"{path}, line {lineno}: value {head!r} outside a loop_")
        finish()
    return StarFile(path, blocks)


def _as_star(star: StarFile | str | os.PathLike[str]) -> StarFile:
    return star if isinstance(star, StarFile) else read_star(star)


def _box(star: StarFile, box: int | None) -> np.ndarray:
    if box is not None:
        return np.full(len(star), float(box))
    return star.floats("_rlnImageSize", "pass the box size in pixels (box=, -D)")


def star_poses(
    star: StarFile | str | os.PathLike[str], box: int | None = None, apix: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of every particle: ``rots (N, 3, 3)`` float64 and ``trans (N, 2)`` box fractions."""
    import torch

    from cryonoo.physics.rotations import relion_euler_to_matrix

    star = _as_star(star)
    angles = [star.floats(c) for c in ("_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi")]
    rots = relion_euler_to_matrix(*(torch.from_numpy(a) for a in angles)).numpy()
    d = _box(star, box)
    if star.values("_rlnOriginX") is not None and star.values("_rlnOriginY") is not None:
        shift = np.stack([star.floats("_rlnOriginX"), star.floats("_rlnOriginY")], 1)
    elif star.values("_rlnOriginXAngst") is not None:
        hint = "pass the pixel size in Å (apix=, --apix)"
        a = np.full(len(star), float(apix)) if apix else star.floats("_rlnImagePixelSize", hint)
        ang = np.stack([star.floats("_rlnOriginXAngst"), star.floats("_rlnOriginYAngst")], 1)
        shift = ang / a[:, None]
    else:
        warnings.warn(
            f"{star.path}: no _rlnOriginX/Y or _rlnOriginX/YAngst columns; translations set to 0",
            stacklevel=2,
        )
        shift = np.zeros((len(star), 2))
    return rots, shift / d[:, None]


def star_ctf(
    star: StarFile | str | os.PathLike[str],
    box: int | None = None,
    apix: float | None = None,
    kv: float | None = None,
    cs: float | None = None,
    w: float | None = None,
    ps: float | None = None,
) -> np.ndarray:
    """``(N, 9)`` float32 CTF table ``[D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase]``.

    ``box``, ``apix``, ``kv``, ``cs``, ``w``, ``ps`` (phase shift, degrees) override the file;
    a missing ``_rlnPhaseShift`` means 0.
    """
    star = _as_star(star)
    n = len(star)

    def col(label: str, override: float | None, flag: str, default: float | None = None):
        if override is None and (default is None or star.values(label) is not None):
            return star.floats(label, f"give it explicitly ({flag})")
        return np.full(n, float(default if override is None else override))

    cols = [
        _box(star, box),
        col("_rlnImagePixelSize", apix, "apix=, --apix"),
        star.floats("_rlnDefocusU"),
        star.floats("_rlnDefocusV"),
        star.floats("_rlnDefocusAngle"),
        col("_rlnVoltage", kv, "kv=, --kv"),
        col("_rlnSphericalAberration", cs, "cs=, --cs"),
        col("_rlnAmplitudeContrast", w, "w=, -w"),
        col("_rlnPhaseShift", ps, "ps=, --ps", default=0.0),
    ]
    return np.stack(cols, 1).astype(np.float32)


def pose_columns(
    rots: np.ndarray, trans: np.ndarray | None, box: int, apix: float | None = None
) -> dict[str, np.ndarray]:
    """Star columns for poses: Euler angles (degrees) and origins (Å if ``apix`` else pixels)."""
    import torch

    from cryonoo.physics.rotations import matrix_to_relion_euler

    r = torch.as_tensor(np.asarray(rots, dtype=np.float64))
    rot, tilt, psi = (a.numpy() for a in matrix_to_relion_euler(r))
    out = {"_rlnAngleRot": rot, "_rlnAngleTilt": tilt, "_rlnAnglePsi": psi}
    if trans is not None:
        px = np.asarray(trans, dtype=np.float64) * box
        if apix is None:
            out.update(_rlnOriginX=px[:, 0], _rlnOriginY=px[:, 1])
        else:
            out.update(_rlnOriginXAngst=px[:, 0] * apix, _rlnOriginYAngst=px[:, 1] * apix)
    return out


def _format(v: np.ndarray) -> np.ndarray:
    if v.dtype.kind in "iub":
        return v.astype(np.int64).astype(str)
    if v.dtype.kind == "f":
        return np.char.mod("%.10g", v)
    s = np.char.decode(v, "utf-8") if v.dtype.kind == "S" else v.astype(str)
    quote = (np.char.str_len(s) == 0) | np.char.startswith(s, "#")
    quote |= (np.char.find(s, " ") >= 0) | (np.char.find(s, "\t") >= 0)
    return np.where(quote, np.char.add(np.char.add('"', s), '"'), s)


def _block(name: str, columns: dict[str, np.ndarray]) -> list[str]:
    cols = [_format(v) for v in columns.values()]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(f"data_{name}: columns have different lengths {[len(c) for c in cols]}")
    lines = ["", "# version 30001", "", f"data_{name}", "", "loop_"]
    lines += [f"{lab} #{i}" for i, lab in enumerate(columns, start=1)]
    return [*lines, *(" ".join(row) for row in zip(*cols, strict=True)), ""]


def write_star(
    path: str | os.PathLike[str],
    particles: Mapping[str, np.ndarray],
    optics: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write a star file atomically: RELION 3.1 (``data_optics`` + ``data_particles``) when
    ``optics`` is given, else a RELION 3.0 single ``data_`` table.

    Columns are ``label → (N,) array`` (labels with or without the leading ``_``); floats are
    written with 10 significant digits. Optics groups are numbered 1… unless given; with one
    optics group and no ``_rlnOpticsGroup`` particle column, every particle gets group 1.
    """

    def norm(cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {
            ("" if k.startswith("_") else "_") + k: np.asarray(v).reshape(-1)
            for k, v in cols.items()
        }
        if not out:
            raise ValueError("write_star needs at least one column")
        return out

    part = norm(particles)
    if optics is None:
        lines = _block("", part)
    else:
        opt = norm(optics)
        n_opt = len(next(iter(opt.values())))
        opt = {"_rlnOpticsGroup": np.arange(1, n_opt + 1), **opt}
        if "_rlnOpticsGroup" not in part:
            if n_opt != 1:
                raise ValueError(f"{n_opt} optics groups: give particles a _rlnOpticsGroup column")
            part["_rlnOpticsGroup"] = np.ones(len(next(iter(part.values()))), np.int64)
        lines = _block("optics", opt) + _block("particles", part)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _table_lines(table: StarTable) -> list[str]:
    """``data_<name>``, its ``_key value`` pairs, then its ``loop_`` (labels and rows)."""
    lines = ["", "# version 30001", "", f"data_{table.name}", ""]
    for key, value in table.pairs.items():
        lines.append(f"{key} {_format(np.array([value], dtype=str))[0]}")
    if not table.columns:
        return lines
    cols = [_format(v) for v in table.columns.values()]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(
            f"data_{table.name}: columns have different lengths {[len(c) for c in cols]}"
        )
    lines += ["loop_", *(f"{lab} #{i}" for i, lab in enumerate(table.columns, start=1))]
    return [*lines, *(" ".join(row) for row in zip(*cols, strict=True)), ""]


def write_star_blocks(
    path: str | os.PathLike[str], blocks: StarFile | Mapping[str, StarTable]
) -> None:
    """Write every block of ``blocks`` (a :class:`StarFile` or ``name → StarTable``) atomically.

    Blocks, pairs, labels and rows keep their order; string values are written as they are
    (quoted when empty, starting with ``#`` or holding whitespace) and floats with 10 significant
    digits, so a :func:`read_star_raw` table is re-emitted verbatim.
    """
    tables = blocks.blocks if isinstance(blocks, StarFile) else blocks
    if not tables:
        raise ValueError("write_star_blocks needs at least one block")
    lines = [line for table in tables.values() for line in _table_lines(table)]
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
