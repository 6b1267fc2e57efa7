"""The package's layers hold: every ``cryonoo`` import (top-level or inside a function) points
down the map of ``docs/architecture.md``. A new subpackage must be placed in ``ALLOWED``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cryonoo"

_BASE = {"registry", "types"}
_BELOW_EXPERIMENTS = {"physics", "io", "data", "models", "ssl", "eval", "interop", "train", *_BASE}
#: subpackage (or top-level module) → what it may import of cryonoo, besides itself
ALLOWED: dict[str, set[str]] = {
    "registry": set(),
    "types": set(),
    "physics": {"registry"},
    "io": {"physics", *_BASE},
    "data": {"physics", "io", *_BASE},
    "models": {"physics", *_BASE},
    "ssl": {"physics", *_BASE},
    "eval": {"physics", "io", *_BASE},
    "interop": {"physics", "io", "models", *_BASE},
    "train": {"physics", "io", "models", "ssl", "interop", *_BASE},
    "analysis": {"physics", "io", "eval", *_BASE},
    "experiments": _BELOW_EXPERIMENTS,
    "registries": {"registry"},  # imports the registries' modules by name (importlib)
    "cli": {*_BELOW_EXPERIMENTS, "analysis", "experiments", "registries"},
    "__init__": set(),
}


def _unit(path: Path, root: Path = PACKAGE) -> str:
    """The layer a file belongs to: its subpackage, or the top-level module's name."""
    return path.relative_to(root).with_suffix("").parts[0]


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, imported cryonoo module) of every import statement in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "cryonoo":
                found += [(node.lineno, f"cryonoo.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("cryonoo.")]


def wrong_imports(root: Path = PACKAGE) -> list[str]:
    """ "file:line: A imports B" for every import under ``root`` that ``ALLOWED`` forbids."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        source = _unit(path, root)
        for line, module in _imports(ast.parse(path.read_text(), str(path))):
            target = module.split(".")[1]
            if target != source and target not in ALLOWED.get(source, set()):
                where = f"{path.relative_to(root.parent)}:{line}"
                wrong.append(f"{where}: {source} imports {target}")
    return wrong


def test_every_unit_is_placed():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(ALLOWED), f"place these in ALLOWED: {sorted(units - set(ALLOWED))}"


def test_imports_point_down_the_layers():
    wrong = wrong_imports()
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    """The rule itself can fail: upward imports, also inside a function, are reported."""
    root = tmp_path / "cryonoo"
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "bad.py").write_text(
        "from cryonoo.eval import fsc\nfrom cryonoo.io import mrc\n\n"
        "def f():\n    from cryonoo.train.run import load_run\n    import cryonoo.cli\n"
    )
    assert wrong_imports(root) == [
        "cryonoo/eval/bad.py:5: eval imports train",
        "cryonoo/eval/bad.py:6: eval imports cli",
    ]
