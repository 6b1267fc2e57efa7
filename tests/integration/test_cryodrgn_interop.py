"""cryoDRGN's own parsers read the .star/.cs subsets that `cryonoo select` writes.

Runs ``benchmarks/cryodrgn_interop.py`` (see its docstring for the checks) when cryoDRGN can be
run: ``import cryodrgn`` works in this interpreter, or ``CRYONOO_CRYODRGN`` names the ``python``
of an environment with cryoDRGN (or its ``cryodrgn`` executable). Skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from cryonoo.io.star import read_star_raw, write_star_blocks

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cryodrgn_interop.py"
_spec = importlib.util.spec_from_file_location("cryodrgn_interop", _SCRIPT)
assert _spec is not None and _spec.loader is not None
interop = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = interop
_spec.loader.exec_module(interop)

PYTHON = interop.cryodrgn_python(None)
pytestmark = [
    pytest.mark.samples,
    pytest.mark.skipif(
        PYTHON is None or not Path(PYTHON).exists(),
        reason="cryoDRGN is not importable here and CRYONOO_CRYODRGN does not name the python "
        "(or cryodrgn executable) of an environment with cryoDRGN",
    ),
]
EXPECTED = {
    "star": ["Starfile.load", "parse_star", "filter_star", "parse_pose_star", "parse_ctf_star"],
    "cs": ["parse_pose_csparc", "parse_ctf_csparc", "filter_cs"],
}


def _by_case(report: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for check in report["checks"]:
        out.setdefault(check["case"], {})[check["check"]] = check
    return out


def test_cryodrgn_reads_what_select_writes(samples, tmp_path):
    cases = interop.make_cases(samples, tmp_path, seed=0)
    assert {c["kind"] for c in cases} == {"star", "cs"}
    report = interop.run_checks(PYTHON, cases, tmp_path)
    checks = _by_case(report)
    for case in cases:
        names = [*EXPECTED[case["kind"]], "cryonoo parse"]
        assert sorted(checks[case["name"]]) == sorted(names), case["name"]
    failed = [c for c in report["checks"] if not c["ok"]]
    assert not failed, failed


def test_a_changed_subset_fails_the_checks(samples, tmp_path):
    """Rows in another order (.star) or one altered record (.cs) are caught."""
    wanted = ("relion31.star", interop.CS)
    cases = [c for c in interop.make_cases(samples, tmp_path, seed=1) if c["name"] in wanted]
    for case in cases:
        if case["kind"] == "star":
            star = read_star_raw(case["subset"])
            part = star.particles
            part.columns = {k: v[::-1] for k, v in part.columns.items()}
            write_star_blocks(case["subset"], star)
        else:
            records = np.load(case["subset"])
            records["ctf/df1_A"][0] += 1.0
            with open(case["subset"], "wb") as f:
                np.save(f, records)
    checks = _by_case(interop.run_checks(PYTHON, cases, tmp_path))
    star, cs = checks["relion31.star"], checks[interop.CS]
    assert not star["parse_star"]["ok"] and not star["filter_star"]["ok"]
    assert not star["parse_pose_star"]["ok"] and not star["parse_ctf_star"]["ok"]
    assert star["Starfile.load"]["ok"]
    assert not cs["parse_ctf_csparc"]["ok"] and not cs["filter_cs"]["ok"]
    assert cs["parse_pose_csparc"]["ok"]
