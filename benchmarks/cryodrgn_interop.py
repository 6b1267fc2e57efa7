"""cryoDRGN's own parsers read what ``cryonoo select`` writes.

For each sample ``.star`` (RELION 3.1, optics table first or last) and cryoSPARC ``.cs``,
``cryonoo select --index`` writes a seeded random subset (``STEM.ind.pkl``, ``STEM.star`` or
``STEM.cs``). Then, in an interpreter with cryoDRGN installed, cryoDRGN's code checks:

* ``.star``: ``cryodrgn.starfile.Starfile`` loads the subset; ``parse_star`` gives the original's
  rows ``ind`` (every column, same values) and the same optics table; ``cryodrgn_utils
  filter_star --ind STEM.ind.pkl`` on the original gives the same tables as the subset;
  ``cryodrgn parse_pose_star`` / ``parse_ctf_star`` on the subset give the rows ``ind`` of
  their output on the original.
* ``.cs``: ``cryodrgn parse_pose_csparc`` / ``parse_ctf_csparc`` likewise, and ``cryodrgn_utils
  filter_cs --ind STEM.ind.pkl`` writes the same records as the subset.

Finally ``cryonoo parse`` on each subset must agree with cryoDRGN's ``poses.pkl`` / ``ctf.pkl``.
Example::

    .venv/bin/python benchmarks/cryodrgn_interop.py --cryodrgn /tmp/cdrgn/bin/python

``--cryodrgn`` is the ``python`` of an environment with cryoDRGN, or its ``cryodrgn`` executable
(then the ``python`` beside it is used); default: ``$CRYONOO_CRYODRGN``, else this interpreter if
it can import cryodrgn. Prints one line per check and exits 1 if any check fails; ``--report``
also writes them as JSON. This file runs in the cryoDRGN interpreter too (``--cryodrgn-side``):
that part imports only the standard library, numpy, pandas and cryodrgn.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
STARS = ("relion31.star", "relion31.v2.star")
CS = "cryosparc_P12_J24_001_particles.cs"
Check = dict[str, Any]  # {"case", "check", "ok", "detail"}


# --------------------------------------------------------------------------- cryoDRGN side
def _check(case: str, name: str, fn: Any) -> Check:
    """Run ``fn()`` (returns a detail string or raises) as one named check."""
    try:
        return {"case": case, "check": name, "ok": True, "detail": fn() or ""}
    except Exception as exc:  # every failure is a result, reported with its message
        return {"case": case, "check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}


def _cryodrgn(utils: bool, *args: str) -> None:
    """Run ``cryodrgn ARGS`` (``cryodrgn_utils`` if ``utils``) in this process, output muted."""
    from cryodrgn.command_line import main_commands, util_commands

    argv, sys.argv = sys.argv, ["cryodrgn", *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            (util_commands if utils else main_commands)()
    except SystemExit as exc:  # argparse errors
        if exc.code:
            raise RuntimeError(f"cryodrgn {' '.join(args)} exited with {exc.code}") from None
    finally:
        sys.argv = argv


def _same_frames(a: Any, b: Any, what: str) -> str:
    """Raise unless two DataFrames have the same columns and values (index ignored)."""
    import pandas as pd

    if (a is None) != (b is None):
        raise AssertionError(f"{what}: one table is missing")
    if a is None:
        return "no table"
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=True, obj=what)
    return f"{what}: {a.shape[0]} rows × {a.shape[1]} columns equal"


def _same_pkl_rows(orig: Path, sub: Path, ind: Any) -> str:
    """Raise unless the arrays of pickle ``sub`` are the rows ``ind`` of those of ``orig``."""
    import pickle

    import numpy as np

    def arrays(path: Path) -> list[Any]:
        with open(path, "rb") as f:
            obj = pickle.load(f)
        return [np.asarray(x) for x in (obj if isinstance(obj, tuple) else (obj,))]

    a, b = arrays(orig), arrays(sub)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not np.array_equal(x[ind], y):
            raise AssertionError(f"array {i}: {np.abs(x[ind] - y).max()} max difference")
    return f"{len(b)} array(s) {[x.shape for x in b]} equal to the original's rows"


def _star_checks(case: dict, out: Path) -> list[Check]:
    """cryoDRGN's reading of a subset .star against the original (see the module docstring)."""
    from cryodrgn import utils
    from cryodrgn.starfile import Starfile, parse_star

    name, orig, sub, ind_pkl = case["name"], case["original"], case["subset"], case["ind"]
    ind = utils.load_pkl(ind_pkl)

    def load() -> str:
        star = Starfile.load(sub)
        if len(star) != len(ind) or not star.relion31:
            raise AssertionError(f"{len(star)} particles, relion31={star.relion31}")
        return f"{len(star)} particles, RELION 3.1 (optics table)"

    def rows() -> str:
        (o_df, o_opt), (s_df, s_opt) = parse_star(orig), parse_star(sub)
        return f"{_same_frames(o_df.iloc[ind], s_df, 'particles')}; " + _same_frames(
            o_opt, s_opt, "optics"
        )

    def filtered() -> str:
        _cryodrgn(True, "filter_star", orig, "--ind", ind_pkl, "-o", str(out / "filtered.star"))
        (f_df, f_opt), (s_df, s_opt) = parse_star(str(out / "filtered.star")), parse_star(sub)
        return f"{_same_frames(f_df, s_df, 'particles')}; {_same_frames(f_opt, s_opt, 'optics')}"

    checks = [_check(name, "Starfile.load", load), _check(name, "parse_star", rows)]
    checks.append(_check(name, "filter_star", filtered))
    for cmd in ("parse_pose_star", "parse_ctf_star"):
        checks.append(_check(name, cmd, lambda c=cmd: _parse_pair(c, case, out, ind)))
    return checks


def _parse_pair(cmd: str, case: dict, out: Path, ind: Any) -> str:
    """Run cryoDRGN's ``cmd`` on the original and on the subset; compare their .pkl rows."""
    o, s = out / f"{cmd}.original.pkl", out / f"{cmd}.subset.pkl"
    _cryodrgn(False, cmd, case["original"], "-o", str(o))
    _cryodrgn(False, cmd, case["subset"], "-o", str(s))
    return _same_pkl_rows(o, s, ind)


def _cs_checks(case: dict, out: Path) -> list[Check]:
    """cryoDRGN's reading of a subset .cs against the original."""
    import numpy as np
    from cryodrgn import utils

    name, ind = case["name"], utils.load_pkl(case["ind"])
    checks = [
        _check(name, cmd, lambda c=cmd: _parse_pair(c, case, out, ind))
        for cmd in ("parse_pose_csparc", "parse_ctf_csparc")
    ]

    def filtered() -> str:
        path = out / "filtered.cs"
        _cryodrgn(True, "filter_cs", case["original"], "--ind", case["ind"], "-o", str(path))
        a, b = np.load(path), np.load(case["subset"])
        if a.dtype != b.dtype or a.tobytes() != b.tobytes():
            raise AssertionError("filter_cs records differ from the subset .cs")
        return f"{len(a)} records, {len(a.dtype.names)} fields, byte-identical"

    checks.append(_check(name, "filter_cs", filtered))
    return checks


def cryodrgn_side(spec_path: Path) -> int:
    """Run every case of ``spec_path`` (JSON) with cryoDRGN; write its ``report`` (JSON)."""
    import cryodrgn

    spec = json.loads(spec_path.read_text())
    checks: list[Check] = []
    for case in spec["cases"]:
        out = Path(case["workdir"])
        checks += _star_checks(case, out) if case["kind"] == "star" else _cs_checks(case, out)
    Path(spec["report"]).write_text(json.dumps({"version": cryodrgn.__version__, "checks": checks}))
    return 0


# --------------------------------------------------------------------------- cryonoo side
def cryodrgn_python(spec: str | None) -> str | None:
    """The ``python`` of a cryoDRGN environment, from ``--cryodrgn``/``$CRYONOO_CRYODRGN``."""
    spec = spec or os.environ.get("CRYONOO_CRYODRGN")
    if spec:
        path = Path(spec)
        return str(path if "python" in path.name else path.with_name("python"))
    return sys.executable if importlib.util.find_spec("cryodrgn") is not None else None


def _cryonoo(*args: object) -> None:
    """Run ``cryonoo ARGS`` in this process; RuntimeError with its output on failure."""
    from typer.testing import CliRunner

    from cryonoo.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"cryonoo {' '.join(map(str, args))}: {result.output}")


def _select(kind: str, src: Path, n: int, out: Path, seed: int) -> dict:
    """``cryonoo select --index`` a seeded random subset of ``src``; the case for the child."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = max(1, min(n - 1, round(0.4 * n)))
    ind = np.sort(rng.choice(n, size=k, replace=False))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "z.npy", rng.normal(size=(n, 2)).astype(np.float32))
    np.save(out / "index.npy", ind)
    stem = out / "picked"
    _cryonoo("select", out / "z.npy", "-o", stem, "--index", out / "index.npy", f"--{kind}", src)
    return {
        "name": src.name,
        "kind": kind,
        "original": str(src),
        "subset": f"{stem}.{kind}",
        "ind": f"{stem}.ind.pkl",
        "workdir": str(out),
    }


def make_cases(samples: Path, workdir: Path, seed: int) -> list[dict]:
    """One selection per sample file present in ``samples``."""
    from cryonoo.io.cryosparc import read_cs
    from cryonoo.io.star import read_star

    cases = []
    for i, name in enumerate(STARS):
        if (samples / name).is_file():
            n = len(read_star(samples / name))
            cases.append(_select("star", samples / name, n, workdir / f"star{i}", seed + i))
    if (samples / CS).is_file():
        n = len(read_cs(samples / CS))
        cases.append(_select("cs", samples / CS, n, workdir / "cs", seed + len(STARS)))
    return cases


_PARSED = {
    "star": ("parse_pose_star", "parse_ctf_star"),
    "cs": ("parse_pose_csparc", "parse_ctf_csparc"),
}


def _agrees_with_cryonoo_parse(case: dict) -> str:
    """``cryonoo parse`` of the subset against cryoDRGN's parse of the subset."""
    import numpy as np

    from cryonoo.io.cryodrgn import load_ctf_pkl, load_poses

    work = Path(case["workdir"])
    _cryonoo("parse", case["subset"], "-o", work / "cryonoo")
    pose_cmd, ctf_cmd = _PARSED[case["kind"]]
    theirs = load_poses(work / f"{pose_cmd}.subset.pkl")
    for a, b in zip(load_poses(work / "cryonoo" / "poses.pkl"), theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    ctf = load_ctf_pkl(work / "cryonoo" / "ctf.pkl")
    np.testing.assert_allclose(ctf, load_ctf_pkl(work / f"{ctf_cmd}.subset.pkl"), rtol=1e-6)
    return f"poses (atol 1e-5) and ctf (rtol 1e-6) of {len(ctf)} particles agree"


def run_checks(python: str, cases: list[dict], workdir: Path) -> dict:
    """Every check of ``cases`` (cryoDRGN side in ``python``, then ``cryonoo parse``).

    Returns ``{"version": cryoDRGN's version, "checks": [{case, check, ok, detail}, …]}``.
    """
    spec = {"cases": cases, "report": str(workdir / "cryodrgn_report.json")}
    (workdir / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [python, str(Path(__file__).resolve()), "--cryodrgn-side", str(workdir / "spec.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads(Path(spec["report"]).read_text())
    for case in cases:
        check = _check(case["name"], "cryonoo parse", lambda c=case: _agrees_with_cryonoo_parse(c))
        report["checks"].append(check)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cryodrgn", help="python (or cryodrgn executable) with cryoDRGN")
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="sample-file directory")
    parser.add_argument("-o", "--outdir", type=Path, help="work directory (default: temporary)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subsets")
    parser.add_argument("--report", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--cryodrgn-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cryodrgn_side is not None:
        return cryodrgn_side(args.cryodrgn_side)
    python = cryodrgn_python(args.cryodrgn)
    if python is None:
        parser.error("cryoDRGN not found: pass --cryodrgn or set CRYONOO_CRYODRGN")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.outdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cases = make_cases(args.samples, work, args.seed)
        if not cases:
            parser.error(f"no sample files ({', '.join((*STARS, CS))}) in {args.samples}")
        report = run_checks(python, cases, work)
    print(f"cryoDRGN {report['version']}")
    for c in report["checks"]:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['case']:<40} {c['check']:<18} {c['detail']}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    return 0 if all(c["ok"] for c in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
