"""The package layout's one-way rules: ``ad.interp`` is built on the model, never under it."""

import ast
from pathlib import Path

AD = Path(__file__).resolve().parents[2] / "ad"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_nothing_outside_ad_interp_imports_it():
    offenders = []
    for path in sorted(AD.rglob("*.py")):
        if AD / "interp" in path.parents:
            continue
        bad = [n for n in _imports(path) if n == "ad.interp" or n.startswith("ad.interp.")]
        if bad:
            offenders.append(f"{path.relative_to(AD.parent)}: {bad}")
    assert not offenders, "ad.interp must not be imported from the rest of ad/:\n" + "\n".join(offenders)


def test_the_rule_would_catch_an_import(tmp_path):
    """The checker sees both import forms (a test that can fail)."""
    f = tmp_path / "x.py"
    f.write_text("import ad.interp.sae\nfrom ad.interp import probes\n")
    assert {"ad.interp.sae", "ad.interp", "ad.interp.probes"} <= _imports(f)
