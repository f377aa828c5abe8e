"""The layers' import rule: launch -> systems -> models / datasets -> core. No module imports a layer above its own;
datasets/ does not import models/, and core/ imports nothing else of ours."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("core", "datasets", "models", "systems", "tools", "launch", "benchmarks")
FORBIDDEN = {
    "core": {"datasets", "models", "systems", "tools", "launch", "benchmarks"},
    "datasets": {"models", "systems", "tools", "launch", "benchmarks"},
    "models": {"datasets", "systems", "tools", "launch", "benchmarks"},
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source`` (``import a.b`` and ``from a.b import c`` give ``a``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_packages_finds_every_form_of_import() -> None:
    source = "import systems.base\nfrom launch import main\nfrom . import sibling\nimport os, tools.summarize as s\n"
    assert imported_packages(source) == {"systems", "launch", "os", "tools"}
    assert imported_packages("def f():\n    from systems.video import orbit_path\n") == {"systems"}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(layer: str) -> None:
    modules = sorted((ROOT / layer).rglob("*.py"))
    assert len(modules) >= 4  # the walk finds the package
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path.read_text()) & FORBIDDEN[layer])
             for path in modules}
    assert {path: names for path, names in wrong.items() if names} == {}
